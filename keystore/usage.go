package keystore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultUsageRotateThreshold is how many encryptions a version of an ENCRYPT
// key (AES-256-GCM with random 96-bit nonces) may make before the scheduler
// rotates the key. It is 2^30 − 2^27 (939,524,096): the issue's bound is "rotate
// before 2^30", and counts reach storage up to one flush interval late and the
// scheduler acts up to one pass interval later, so 2^27 (≈134 million)
// encryptions are left as headroom for that lag — about two minutes at a
// deployment-wide million encryptions a second. At 2^30 random nonces the
// chance of a nonce collision is still below 2^-36, far inside NIST SP
// 800-38D's 2^32 limit.
const DefaultUsageRotateThreshold uint64 = 1<<30 - 1<<27

// MaxUsageRotateThreshold is the highest usage threshold a deployment may
// set: 2^30 encryptions per version.
const MaxUsageRotateThreshold uint64 = 1 << 30

// lifecycleState is the Service's mutable lifecycle bookkeeping, kept apart
// from the immutable cache entries.
type lifecycleState struct {
	// threshold is Config.UsageRotateThreshold.
	threshold uint64

	// usage holds, per (key, version), the encryptions made on this replica
	// and not yet flushed to storage: usageKey → *atomic.Uint64. The hot
	// path only loads and adds; FlushUsage takes the counts, and removes a
	// counter found idle by marking it retired (retiredCounter) first, so
	// an add that raced with the removal sees the mark and counts again on
	// a fresh counter. Memory is bounded by the (key, version) pairs that
	// encrypted since the last flush, not by the number of tenants.
	usage sync.Map

	// leaderPasses counts scheduler passes run while holding the lease;
	// sweeps, the full sweeps of every tenant and key begun, and
	// sweepsDone, those that reached the end.
	leaderPasses, sweeps, sweepsDone atomic.Uint64

	// unwritten holds the storage keys of due hints whose writes failed
	// (an outage), written again by each count flush, which every replica
	// runs, until they are: a hint never written waits for the next full
	// sweep (24 h by default), and so does its work. At most
	// maxUnwrittenHints; past that, the full sweep finds the rest.
	unwrittenMu sync.Mutex
	unwritten   map[string]struct{}
}

// maxUnwrittenHints bounds the hints a replica keeps to write again.
const maxUnwrittenHints = 10_000

type usageKey struct {
	ref     KeyRef
	version uint32
}

// retiredCounter marks a counter FlushUsage removed from the map. Counts
// within one flush interval never come near it.
const retiredCounter uint64 = 1 << 63

func newLifecycleState(threshold uint64) *lifecycleState {
	if threshold == 0 {
		threshold = DefaultUsageRotateThreshold
	}
	return &lifecycleState{threshold: threshold}
}

// countEncrypt records one encryption by version v of ref. It does not
// allocate once the counter exists.
func (l *lifecycleState) countEncrypt(ref KeyRef, v uint32) {
	l.add(usageKey{ref: ref, version: v}, 1)
}

func (l *lifecycleState) add(k usageKey, n uint64) {
	for {
		c, ok := l.usage.Load(k)
		if !ok {
			c, _ = l.usage.LoadOrStore(k, new(atomic.Uint64))
		}
		if c.(*atomic.Uint64).Add(n)&retiredCounter == 0 {
			return
		}
		// Retired by a flush after we loaded it: count on a fresh counter.
		l.usage.CompareAndDelete(k, c)
	}
}

// collect takes every unflushed count, leaving the counters at zero, and
// retires counters that stayed idle since the last collection. Concurrent
// collections and adds never lose or double a count.
func (l *lifecycleState) collect() map[KeyRef]map[uint32]uint64 {
	out := make(map[KeyRef]map[uint32]uint64)
	take := func(k usageKey, n uint64) {
		if n == 0 {
			return
		}
		vs := out[k.ref]
		if vs == nil {
			vs = make(map[uint32]uint64)
			out[k.ref] = vs
		}
		vs[k.version] = saturatingAdd(vs[k.version], n)
	}
	l.usage.Range(func(k, v any) bool {
		c := v.(*atomic.Uint64)
		for {
			switch n := c.Load(); {
			case n&retiredCounter != 0:
				l.usage.CompareAndDelete(k, v)
				return true
			case n == 0:
				// Idle since the last collection: retire it.
				if c.CompareAndSwap(0, retiredCounter) {
					l.usage.CompareAndDelete(k, v)
					return true
				}
			default:
				if c.CompareAndSwap(n, 0) {
					take(k.(usageKey), n)
					return true
				}
			}
		}
	})
	return out
}

// giveBack returns counts whose flush failed, so the next flush retries them.
func (l *lifecycleState) giveBack(ref KeyRef, counts map[uint32]uint64) {
	for v, n := range counts {
		l.add(usageKey{ref: ref, version: v}, n)
	}
}

// dropTenant forgets the unflushed counts of a shredded tenant's keys.
func (l *lifecycleState) dropTenant(tenant string) {
	l.usage.Range(func(k, _ any) bool {
		if k.(usageKey).ref.Tenant == tenant {
			l.usage.Delete(k)
		}
		return true
	})
}

// FlushUsage adds the encryptions this replica counted since the last flush
// to the versions' persisted encrypt_count, with compare-and-swap, so the
// counts of every replica add up. RunCountFlush calls it every flush
// interval and once more when it stops. Counts whose
// write fails are kept for the next flush; counts of keys that no longer
// exist are dropped.
func (s *Service) FlushUsage(ctx context.Context) error {
	var errs []error
	for ref, counts := range s.life.collect() {
		if err := s.addEncryptCounts(ctx, ref, counts); err != nil {
			if errors.Is(err, ErrNotFound) {
				continue
			}
			s.life.giveBack(ref, counts)
			errs = append(errs, err)
		}
	}
	return joinCapped(errs)
}

// addEncryptCounts adds counts to the key's persisted per-version counts.
// It needs neither the tenant KEK nor the keyset, so counts made before a
// tenant was scheduled for deletion still reach storage.
func (s *Service) addEncryptCounts(ctx context.Context, ref KeyRef, counts map[uint32]uint64) error {
	rec, err := s.casKeyRecord(ctx, ref, "flush encrypt counts", func(rec *keyRecord) error {
		for v, n := range counts {
			if vr, ok := rec.version(v); ok {
				vr.EncryptCount = saturatingAdd(vr.EncryptCount, n)
			}
		}
		return nil
	})
	if err == nil {
		if _, due := s.rotationDue(rec, time.Time{}); due {
			// The usage threshold (a zero time: no rotation period counts).
			s.noteDue(ctx, s.now(), dueKeyKind, ref.Tenant+"/"+ref.Key)
		}
	}
	return err
}

// casKeyRecord is a read-modify-write of a key's metadata alone (not its
// keyset) with compare-and-swap, retrying on conflicts. It never creates a
// record: a key deleted meanwhile gives ErrNotFound.
func (s *Service) casKeyRecord(ctx context.Context, ref KeyRef, op string, mutate func(rec *keyRecord) error) (*keyRecord, error) {
	var out *keyRecord
	err := retryCAS(fmt.Sprintf("%s %s", op, ref), func() error {
		rec, ver, err := s.readKey(ctx, ref)
		if err != nil {
			return err
		}
		if err := mutate(rec); err != nil {
			return fmt.Errorf("%s %s: %w", op, ref, err)
		}
		b, err := encodeRecord(rec)
		if err != nil {
			return err
		}
		nver, err := s.store.Put(ctx, keyStorageKey(ref), b, ver)
		if err != nil {
			return storageErr(op, err)
		}
		s.m.countsWritten(ref, ver, nver)
		out = rec
		return nil
	})
	return out, err
}

func saturatingAdd(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}

// maxJoinedErrors bounds the errors one flush or pass reports.
const maxJoinedErrors = 10

// joinCapped joins at most maxJoinedErrors errors and says how many more
// there were.
func joinCapped(errs []error) error {
	if len(errs) > maxJoinedErrors {
		more := len(errs) - maxJoinedErrors
		errs = append(errs[:maxJoinedErrors:maxJoinedErrors], fmt.Errorf("and %d more errors", more))
	}
	return errors.Join(errs...)
}
