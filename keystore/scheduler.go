package keystore

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/tink-crypto/tink-go/v2/keyset"

	"github.com/custos-kms/custos/keystore/storage/lease"
)

// Scheduler defaults. They are the only defaults of these settings: the
// YAML configuration leaves them zero unless set.
const (
	// DefaultSchedulerInterval is how often the lease holder runs a pass.
	DefaultSchedulerInterval = 30 * time.Second
	// DefaultFlushInterval is how often every replica writes its encryption
	// counts to storage.
	DefaultFlushInterval = 10 * time.Second
	// stopTimeout bounds the final flush and the lease release on stop.
	stopTimeout = 5 * time.Second
)

// SchedulerConfig configures RunScheduler. Zero fields take the defaults.
type SchedulerConfig struct {
	// Interval is how often the lease is taken or renewed and, by its
	// holder, a pass run. Default DefaultSchedulerInterval.
	Interval time.Duration
	// HolderID names this replica in the lease; it must differ between
	// replicas. Default: host name, process id and a random suffix.
	HolderID string
	// LeaseTTL is how long the lease lasts without renewal, so how long a
	// dead holder's lease blocks the others. It must exceed Interval.
	// Default 3 × Interval.
	LeaseTTL time.Duration
	// SweepInterval is how often the lease holder visits every tenant and
	// key (a full sweep) instead of only the due-time index; the first pass
	// after taking the lease is always a sweep. Default DefaultSweepInterval.
	SweepInterval time.Duration
}

// DefaultSweepInterval is how often the lease holder sweeps every tenant and
// key to catch work whose due-time hint was lost.
const DefaultSweepInterval = 24 * time.Hour

func (c SchedulerConfig) normalize() (SchedulerConfig, error) {
	if c.Interval < 0 || c.LeaseTTL < 0 {
		return c, fmt.Errorf("%w: scheduler intervals must not be negative", ErrInvalidArgument)
	}
	if c.Interval == 0 {
		c.Interval = DefaultSchedulerInterval
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 3 * c.Interval
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = DefaultSweepInterval
	}
	if c.LeaseTTL <= c.Interval {
		return c, fmt.Errorf("%w: scheduler lease TTL %v must exceed the interval %v", ErrInvalidArgument, c.LeaseTTL, c.Interval)
	}
	if c.HolderID == "" {
		host, _ := os.Hostname()
		c.HolderID = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), rand.Text()[:8])
	}
	return c, nil
}

// RunScheduler runs the leased key maintenance of the whole deployment
// until ctx is done, then returns nil (or at once an ErrInvalidArgument for
// a bad cfg). Every Interval each replica running it tries to take or renew
// the scheduler lease (a storage record changed with compare-and-swap); the
// one holding it runs a pass: automatic rotation (rotation period due, or
// the primary's persisted count at Config.UsageRotateThreshold),
// destruction of versions whose destroy date has passed, and
// crypto-shredding of tenants whose deletion date has passed. When ctx is
// done it releases the lease, so another replica takes over at its next
// Interval. Failures are logged and retried on the next tick.
//
// Encryption counts are flushed by RunCountFlush, which every replica runs
// whether or not it takes part in the lease.
func (s *Service) RunScheduler(ctx context.Context, cfg SchedulerConfig) error {
	cfg, err := cfg.normalize()
	if err != nil {
		return err
	}
	pass := time.NewTicker(cfg.Interval)
	defer pass.Stop()
	var st leaderState
	for {
		s.leaderTick(ctx, cfg, &st)
		select {
		case <-ctx.Done():
			stop, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
			defer cancel()
			if err := s.releaseLease(stop, cfg.HolderID); err != nil {
				s.logger.Warn("scheduler: release lease failed", "error", err.Error())
			}
			return nil
		case <-pass.C:
		}
	}
}

// RunCountFlush adds this replica's encryption counts to storage
// (FlushUsage) every interval (default DefaultFlushInterval) until ctx is
// done, then once more, so every encryption served before ctx ended is
// counted. Every replica runs it. Each pass also writes the due hints
// whose writes failed (an outage), so that their work does not wait for
// the next full sweep.
func (s *Service) RunCountFlush(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultFlushInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			stop, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopTimeout)
			defer cancel()
			if err := s.FlushUsage(stop); err != nil {
				s.logger.Warn("final flush of encrypt counts failed", "error", err.Error())
			}
			if err := s.writeUnwrittenHints(stop); err != nil {
				s.logger.Warn("scheduler: due hints not written; the next full sweep will", "error", err.Error())
			}
			return
		case <-t.C:
			// Bounded: a storage connection gone silent (a failover
			// without a reset) must not hold back every key's counts
			// until TCP gives up; the counts not written are kept for
			// the next pass.
			pass, cancel := context.WithTimeout(ctx, s.flushTimeout)
			if err := s.FlushUsage(pass); err != nil && ctx.Err() == nil {
				s.logger.Warn("flush encrypt counts failed; will retry", "error", err.Error())
			}
			if err := s.writeUnwrittenHints(pass); err != nil && ctx.Err() == nil {
				s.logger.Warn("scheduler: due hints not written yet; will retry", "error", err.Error())
			}
			cancel()
		}
	}
}

// flushTimeout bounds one pass of RunCountFlush. With the default interval
// the stored counts then trail by well under the minute the usage
// threshold's headroom allows (lifecycle.md).
const flushTimeout = 30 * time.Second

// acquireLeaseWithin takes or renews the scheduler lease, giving up after
// the lease's TTL (the lease is lost by then anyway): a storage call gone
// silent must not stop the scheduler until TCP gives up.
func (s *Service) acquireLeaseWithin(ctx context.Context, cfg SchedulerConfig) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.LeaseTTL)
	defer cancel()
	return s.acquireLease(ctx, cfg.HolderID, cfg.LeaseTTL)
}

// leaderState is what the scheduler remembers between ticks while this
// replica holds the lease.
type leaderState struct {
	// lastSweep is when the last full sweep finished; zero: sweep on the
	// first pass holding the lease.
	lastSweep time.Time
	// resume, when sweeping, is the storage key of the last tenant a sweep
	// cut short (a failed list, say) finished: the next tick goes on after
	// it instead of starting over, so a sweep that keeps failing half-way
	// still reaches every tenant.
	resume   string
	sweeping bool
	// heldAt is when this replica last found the lease held by itself
	// (this machine's monotonic clock).
	heldAt time.Time
}

// leaderTick takes or renews the lease and, when held, runs one pass: the
// due-time index, or a full sweep when the last one is SweepInterval old
// (or this replica has not swept since it took the lease). During a sweep
// it renews the lease between tenants and between keys, and runs the due
// pass every Interval, so work that falls due meanwhile (a key past its
// usage threshold) does not wait for the sweep's end.
func (s *Service) leaderTick(ctx context.Context, cfg SchedulerConfig, st *leaderState) {
	if !st.heldAt.IsZero() && time.Since(st.heldAt) >= cfg.LeaseTTL {
		// Not renewed for its TTL (the lease unreachable, or this
		// replica's own tick stalled: a pause, a slow read): it lapsed,
		// and another replica may have held it meanwhile (and lost hints
		// in a crash). This one sweeps first when it holds it again, as
		// one taking it over does.
		*st = leaderState{}
	}
	// A lease runs from before the call that took it (the store dates it
	// from its own read): timed from the answer, a slow renewal made this
	// replica count on a lease already lapsed, beside its next holder.
	asked := time.Now()
	held, err := s.acquireLeaseWithin(ctx, cfg)
	if err != nil {
		if ctx.Err() == nil {
			s.logger.Warn("scheduler: lease", "error", err.Error())
		}
		return
	}
	if !held {
		*st = leaderState{} // whoever takes it over next sweeps first
		return
	}
	st.heldAt = asked
	s.life.leaderPasses.Add(1)
	now := s.now()
	// keep renews the lease every Interval while a pass goes on, and says
	// whether it is still held: a failed renewal stops the pass only when
	// less than an interval of the lease renewed last is left.
	lastRenew := asked
	keep := func() (held, renewed bool) {
		if time.Since(lastRenew) < cfg.Interval {
			return true, false
		}
		asked := time.Now()
		held, err := s.acquireLeaseWithin(ctx, cfg)
		if err != nil {
			return ctx.Err() == nil && time.Since(lastRenew) < cfg.LeaseTTL-cfg.Interval, false
		}
		if held {
			lastRenew = asked
			st.heldAt = lastRenew
		}
		return held, held
	}
	keepHeld := func() bool { held, _ := keep(); return held }
	due := func() {
		if err := s.duePass(ctx, keepHeld); err != nil && ctx.Err() == nil {
			s.logger.Error("scheduler: pass failed; will retry", "error", err.Error())
		}
	}
	if !st.sweeping && !st.lastSweep.IsZero() && now.Sub(st.lastSweep) < cfg.SweepInterval {
		due()
		return
	}
	if st.sweeping {
		due() // going on with a sweep cut short: what fell due meanwhile first
	} else {
		s.life.sweeps.Add(1)
		st.sweeping, st.resume = true, ""
	}
	start := time.Now()
	renew := func() bool {
		held, renewed := keep()
		if renewed {
			due() // what fell due since the sweep began does not wait for its end
		}
		return held
	}
	last, complete, err := s.sweep(ctx, st.resume, renew)
	if err != nil && ctx.Err() == nil {
		// Items that failed have hints (retried by the next passes);
		// a sweep cut short goes on at the next tick.
		s.logger.Error("scheduler: sweep met failures", "error", err.Error())
	}
	if errors.Is(err, errLeaseLost) {
		*st = leaderState{}
		return
	}
	if !complete {
		st.resume = last
		return
	}
	s.life.sweepsDone.Add(1)
	s.logger.Info("scheduler: full sweep finished", "seconds", time.Since(start).Seconds())
	*st = leaderState{lastSweep: now, heldAt: st.heldAt}
}

// errLeaseLost stops a sweep whose replica no longer holds the lease. It
// goes first in a joined error, which keeps only the first few.
var errLeaseLost = errors.New("scheduler: lease lost during the sweep")

// errScanCut marks a pass over a tenant's keys that a failed list cut
// short (as opposed to keys that failed, each of which has a hint).
var errScanCut = errors.New("scheduler: the list of keys was cut short")

// RunOnce flushes this replica's encryption counts and runs one full
// scheduler sweep (rotation, destruction, shredding, and the due-time hints
// of every future date), for tests and admin commands. It
// does not take the lease: every change re-checks its condition under
// compare-and-swap, so running it beside the lease holder never rotates a
// key twice or loses a write. It returns the failures joined (at most a
// few, then a count); the work that did not fail is done (a sweep cut
// short by the storage stops where it was cut).
func (s *Service) RunOnce(ctx context.Context) error {
	flushErr := s.FlushUsage(ctx)
	_, _, err := s.sweep(ctx, "", nil)
	return errors.Join(flushErr, err)
}

// acquireLease takes or renews the scheduler lease for holder.
func (s *Service) acquireLease(ctx context.Context, holder string, ttl time.Duration) (bool, error) {
	held, tookOver, err := s.lease().Acquire(ctx, holder, ttl)
	if tookOver {
		s.logger.Warn("scheduler: unreadable lease record; taken over")
	}
	if err != nil {
		return false, storageErr("scheduler lease", err)
	}
	return held, nil
}

// releaseLease releases the scheduler lease if holder holds it.
func (s *Service) releaseLease(ctx context.Context, holder string) error {
	if err := s.lease().Release(ctx, holder); err != nil {
		return storageErr("scheduler lease", err)
	}
	return nil
}

// lease is the scheduler's lease.
func (s *Service) lease() lease.Lease {
	return lease.Lease{Store: s.store, Key: leaseStorageKey, Now: s.now}
}

// sweep visits every tenant after the storage key after ("": from the
// first) once: shreds those past their deletion date, maintains the keys of
// active ones, and writes the due-time hints of every future date. A
// failure on one tenant or key does not stop the others; its work gets a
// hint for now, so the next pass retries it (a tenant whose keys could not
// be listed, a hint to list them again), unless that hint cannot be
// written either: then the sweep stops there. renew, if not nil, is called
// between tenants and between keys; when it reports the lease lost the
// sweep stops with errLeaseLost. complete is false when the sweep did not
// reach the end (a failed List, an unwritable hint, a lost lease, ctx
// done); last is then the storage key of the last tenant it finished.
func (s *Service) sweep(ctx context.Context, after string, renew func() bool) (last string, complete bool, err error) {
	var errs []error
	last = after
	for r, err := range s.scanAfter(ctx, "scheduler: list tenants", tenantPrefix, after) {
		if err != nil {
			return last, false, joinCapped(append(errs, err))
		}
		if err := ctx.Err(); err != nil {
			return last, false, err
		}
		if renew != nil && !renew() {
			return last, false, joinCapped(append([]error{errLeaseLost}, errs...))
		}
		tenant := strings.TrimPrefix(r.Key, tenantPrefix)
		if err := s.tenantPass(ctx, tenant, r.Value, renew); err != nil {
			if errors.Is(err, errLeaseLost) {
				return last, false, joinCapped(append([]error{err}, errs...))
			}
			if errors.Is(err, errScanCut) {
				// Keys of this tenant went unseen: a hint to scan them
				// again now, which the next due pass takes (as for an
				// undeletion), and the sweep goes on. Stopping here
				// would let one tenant whose list always fails keep
				// every sweep from finishing. Without the hint (the
				// store failing that too), the sweep is not finished
				// and the next tick goes on from this tenant.
				if s.noteDue(ctx, s.now(), dueKeysKind, tenant) != nil { // logged by noteDue
					return last, false, joinCapped(append(errs, err))
				}
			}
			errs = append(errs, err)
		}
		last = r.Key
	}
	return last, true, joinCapped(errs)
}

func (s *Service) tenantPass(ctx context.Context, tenant string, value []byte, renew func() bool) error {
	rec, err := decodeTenant(value)
	if err != nil {
		return fmt.Errorf("scheduler: tenant %q: %w", tenant, err)
	}
	switch rec.State {
	case TenantDeleteScheduled:
		// As a due pass does it: a shred that loses a race keeps its hint.
		if err := s.dueTenant(ctx, tenant); err != nil {
			s.noteDue(ctx, s.now(), dueTenantKind, tenant) // retried by the next pass
			return err
		}
		return nil
	case TenantActive:
		return s.keysPass(ctx, tenant, renew)
	}
	return nil
}

// keysPass maintains the keys of one tenant that have something due.
func (s *Service) keysPass(ctx context.Context, tenant string, renew func() bool) error {
	prefix := keyStoragePrefix(tenant)
	var errs []error
	for r, err := range s.scan(ctx, "scheduler: list keys", prefix) {
		if err != nil {
			return joinCapped(append([]error{fmt.Errorf("%w: %w", errScanCut, err)}, errs...))
		}
		if renew != nil && !renew() {
			return joinCapped(append([]error{errLeaseLost}, errs...))
		}
		ref := KeyRef{Tenant: tenant, Key: strings.TrimPrefix(r.Key, prefix)}
		rec, err := decodeKey(r.Value)
		if err != nil {
			errs = append(errs, fmt.Errorf("scheduler: key %s: %w", ref, err))
			continue
		}
		now := s.now()
		if _, due := s.rotationDue(rec, now); !due && !destroyDue(rec, now) {
			s.noteKeyDue(ctx, ref, rec) // the hint of its next date, if a write lost it
			continue
		}
		if err := s.maintainKey(ctx, ref); err != nil {
			if errors.Is(err, ErrTenantDeleted) || errors.Is(err, ErrNotFound) {
				return joinCapped(errs) // deleted meanwhile
			}
			s.noteKeyDue(ctx, ref, rec) // due now: retried by the next pass
			errs = append(errs, fmt.Errorf("scheduler: %w", err))
		}
	}
	return joinCapped(errs)
}

// rotationDue reports whether rec should rotate now, and why: its rotation
// period came round, or its primary made UsageRotateThreshold encryptions
// (ENCRYPT keys only: the bound is AES-GCM's random nonces; deterministic
// and MAC keys have no such limit, and rotating them by surprise would
// break equality lookups).
func (s *Service) rotationDue(rec *keyRecord, now time.Time) (string, bool) {
	if rec.RotationPeriod > 0 && !rec.NextRotationTime.After(now) {
		return "rotation period", true
	}
	if rec.Purpose == PurposeEncrypt {
		if vr, ok := rec.version(rec.Primary); ok && vr.EncryptCount >= s.life.threshold {
			return "usage threshold", true
		}
	}
	return "", false
}

// destroyDue reports whether a version of rec is due for destruction.
func destroyDue(rec *keyRecord, now time.Time) bool {
	for _, vr := range rec.Versions {
		if vr.State == VersionDestroyScheduled && !vr.DestroyTime.After(now) {
			return true
		}
	}
	return false
}

// maintainKey destroys the key's versions whose date has passed and rotates
// it if due, in one compare-and-swap that re-checks both, so concurrent
// passes (a RunOnce beside the lease holder) change the key once.
func (s *Service) maintainKey(ctx context.Context, ref KeyRef) error {
	var destroyed []uint32
	var why string
	_, err := s.updateKey(ctx, ref, "scheduled maintenance of", func(rec *keyRecord, h *keyset.Handle) (*keyset.Handle, error) {
		now := s.now().UTC()
		destroyed, why = nil, ""
		nh := h
		if destroyDue(rec, now) {
			m := keyset.NewManagerFromHandle(h)
			var err error
			if destroyed, err = destroyVersions(rec, m, now); err != nil {
				return nil, err
			}
			if nh, err = m.Handle(); err != nil {
				return nil, fmt.Errorf("keyset: %w", err)
			}
		}
		if reason, due := s.rotationDue(rec, now); due {
			var err error
			if nh, err = s.rotate(rec, nh); err != nil {
				return nil, err
			}
			why = reason
		}
		if len(destroyed) == 0 && why == "" {
			return nil, errUnchanged
		}
		return nh, nil
	})
	if errors.Is(err, errUnchanged) {
		return nil
	}
	if err != nil {
		return err
	}
	s.autoDestructions.Add(uint64(len(destroyed)))
	for _, v := range destroyed {
		s.logger.Info("key version destroyed", "key", ref.String(), "version", v)
	}
	if why != "" {
		s.autoRotations.Add(1)
		s.logger.Info("key rotated automatically", "key", ref.String(), "reason", why)
	}
	return nil
}
