package keystore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tink-crypto/tink-go/v2/tink"
	"golang.org/x/sync/singleflight"

	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/storage"
)

// materials is the unwrapped key material of this replica: tenant KEKs and
// keys, cached (bounded, with a TTL and an outage grace), loaded once for
// all concurrent callers (one storage read, one root unwrap), and kept
// coherent with what other replicas write (apply) and with this replica's
// own writes (noteVersion, invalidateTenant).
type materials struct {
	records
	root   root.Root
	logger *slog.Logger

	keks *lru[string, *kekEntry]
	// failed remembers, for retryBackoff, a tenant KEK the root refused to
	// unwrap (not an outage): the root is asked again once per backoff, not
	// once per request, however many requests name the tenant.
	failed *lru[string, *failedUnwrap]
	keys   *lru[KeyRef, *keyEntry]
	loads  singleflight.Group

	// reading counts, per key, the loads and re-checks in flight that read
	// its records: a change notice for a key neither cached nor being
	// read needs no tombstone (apply), which would push a live entry out.
	readingMu sync.Mutex
	reading   map[KeyRef]int

	// hits and misses count key lookups served fresh from the cache and
	// those that loaded (CacheStats).
	hits, misses atomic.Uint64

	// gens changes whenever cached material of a tenant is dropped
	// (deletion, undeletion, a tenant record changed on another replica). A
	// load that began before the change does not cache what it read, so a
	// tenant scheduled for deletion stops serving at once.
	gens generations
}

// generations count the invalidations of cached material: one counter
// for every tenant (a gap in the change feed) and one per stripe of
// tenants, so that a notice for one tenant stops only the loads of the
// tenants in its stripe from being cached. With one counter for all, a
// replica writing tenant records one after another (a root re-wrap, a
// shredding, tenants being created) kept every replica from caching any
// key whose load straddled a notice.
type generations struct {
	all     atomic.Uint64
	stripes [genStripes]atomic.Uint64
}

// genStripes is the number of tenant stripes: two tenants sharing one only
// cost each other a load now and then.
const genStripes = 256

// generation is what a load read of generations before it began.
type generation struct{ all, tenant uint64 }

func (g *generations) stripe(tenant string) *atomic.Uint64 {
	h := uint32(2166136261) // FNV-1a
	for i := range len(tenant) {
		h = (h ^ uint32(tenant[i])) * 16777619
	}
	return &g.stripes[h%genStripes]
}

// of reads the generation of tenant's material.
func (g *generations) of(tenant string) generation {
	return generation{all: g.all.Load(), tenant: g.stripe(tenant).Load()}
}

// same reports whether nothing of tenant was invalidated since at.
func (g *generations) same(tenant string, at generation) bool { return g.of(tenant) == at }

// bump invalidates tenant's material (and its stripe's).
func (g *generations) bump(tenant string) { g.stripe(tenant).Add(1) }

// bumpAll invalidates every tenant's material.
func (g *generations) bumpAll() { g.all.Add(1) }

// String is the generation as a singleflight key part.
func (at generation) String() string {
	return strconv.FormatUint(at.all, 10) + "." + strconv.FormatUint(at.tenant, 10)
}

// kekEntry is a cached, unwrapped tenant KEK and the creation time of the
// tenant record it came from. It serves only a record with the same
// creation time: a tenant shredded and created again under the same id,
// unseen by this replica, never gets its predecessor's KEK, while a root
// re-wrap (new wrapped bytes, the same KEK) keeps it.
type kekEntry struct {
	aead    tink.AEAD
	created time.Time
}

// failedUnwrap is a root's refusal to unwrap the wrapped KEK of the tenant
// record created at created.
type failedUnwrap struct {
	err     error
	created time.Time
	wrapped []byte
}

// keyEntry is a cached, unwrapped key: an immutable snapshot of its record
// and the primitives of its enabled versions.
type keyEntry struct {
	ref  KeyRef
	rec  *keyRecord
	prim primitives
	// ver and tenantVer are the storage versions of the key and tenant
	// records the entry was built from: a change notification for an older
	// or equal version (for example this replica's own write) keeps it.
	ver, tenantVer uint64
	// missed is when (unix ns) a reload last failed to find a version a
	// ciphertext named; another reload for an unknown version waits a second.
	missed atomic.Int64
	// reloadFailed is when (unix ns) such a reload last could not be
	// made (the storage or the root unreachable): the next is tried a
	// second later, not on every call naming an unknown version.
	reloadFailed atomic.Int64
	// suspect is set when a change may have been missed (the storage's
	// watch began again): the entry serves again only once the records it
	// was built from are read back unchanged, or while that read fails.
	suspect atomic.Bool
}

// tombstone reports whether e only records that version ver of its key was
// written elsewhere: it never serves, and only an entry built from that
// version or a newer one replaces it.
func (e *keyEntry) tombstone() bool { return e.rec == nil }

// activeTenant returns the KEK of an active tenant, from cache or by asking
// the root once, and the storage version of the tenant record it checked.
// When the root is unreachable, a KEK cached earlier keeps serving until its
// grace runs out.
func (m *materials) activeTenant(ctx context.Context, tenant string) (tink.AEAD, uint64, error) {
	gen := m.gens.of(tenant) // before the record is read: see the KEK's put
	rec, tver, err := m.readTenant(ctx, tenant)
	if err != nil {
		return nil, 0, err
	}
	if rec.State != TenantActive {
		return nil, 0, fmt.Errorf("tenant %q: %w", tenant, ErrTenantDeleted)
	}
	// A KEK cached for a record created at another time is another
	// tenant's of that id.
	cached, fresh, ok := m.keks.get(tenant)
	ok = ok && cached.created.Equal(rec.CreateTime)
	if ok && fresh {
		return cached.aead, tver, nil
	}
	if f, _, found := m.failed.get(tenant); found && f.created.Equal(rec.CreateTime) && bytes.Equal(f.wrapped, rec.WrappedKEK) {
		return nil, 0, f.err // the root refused within the backoff
	}
	v, err := m.shared(ctx, "kek\x00"+tenant+"\x00"+string(rec.WrappedKEK), func(ctx context.Context) (any, error) {
		if kek, fresh, ok := m.keks.get(tenant); ok && fresh && kek.created.Equal(rec.CreateTime) {
			return kek.aead, nil
		}
		raw, err := m.root.Unwrap(ctx, rec.WrappedKEK, tenantKEKAAD(tenant))
		if err != nil {
			err = rootErr(fmt.Sprintf("unwrap KEK of tenant %q", tenant), err)
			if !errors.Is(err, ErrUnavailable) {
				// A refusal (a denied policy, a blob that is not
				// authentic) is remembered; an outage is not, so that a
				// root that comes back serves at once. The KEK cached
				// before the refusal no longer serves, not in a later
				// root outage either.
				m.failed.put(tenant, &failedUnwrap{err: err, created: rec.CreateTime, wrapped: rec.WrappedKEK})
				m.dropTenant(tenant) // its KEK, and the keys unwrapped under it
			}
			return nil, err
		}
		m.failed.remove(tenant)
		kek, err := newKEKAEAD(raw)
		clear(raw)
		if err != nil {
			return nil, err
		}
		// Not cached if the tenant changed meanwhile (shredded, say): a
		// KEK no record needs any more must not go back into memory.
		m.keks.upsertIf(tenant, &kekEntry{aead: kek, created: rec.CreateTime}, func(*kekEntry) bool { return false },
			func() bool { return m.gens.same(tenant, gen) }, time.Time{})
		return kek, nil
	})
	if err != nil {
		if ok && errors.Is(err, ErrUnavailable) {
			if m.keks.postpone(tenant, retryBackoff) { // once per attempt, not per waiting caller
				m.logger.Warn("root unavailable; serving cached tenant KEK", "tenant", tenant)
			}
			return cached.aead, tver, nil
		}
		return nil, 0, err
	}
	return v.(tink.AEAD), tver, nil
}

// key returns the cached key entry, loading it on a miss. While the root or
// the storage is unreachable, an entry cached earlier keeps serving until its
// grace runs out, retrying the refresh every retryBackoff. A suspect entry
// (a change may have been missed) serves only once its records are read back
// unchanged, or while the storage cannot be read.
func (m *materials) key(ctx context.Context, ref KeyRef) (*keyEntry, error) {
	cached, fresh, ok := m.keys.get(ref)
	if ok && cached.tombstone() {
		ok = false
	}
	if ok && fresh {
		m.hits.Add(1)
		return cached, nil
	}
	m.misses.Add(1)
	suspect := ok && cached.suspect.Load()
	var e *keyEntry
	var err error
	if suspect {
		if e, err = m.recheck(ctx, ref, cached); err == nil && e == nil {
			// Changed: it reloads, and never serves the old entry again,
			// not in a later outage either.
			m.forgetKey(cached)
			e, err = m.loadKey(ctx, ref)
			return e, m.refused(ctx, ref, cached, err)
		}
	} else {
		e, err = m.loadKey(ctx, ref)
	}
	// While the storage or the root cannot be reached, the cached entry
	// serves; a suspect one only while the storage itself cannot be read,
	// not when the caller's deadline ended its check.
	if err != nil && ok && errors.Is(err, ErrUnavailable) && (!suspect || ctx.Err() == nil) {
		if m.keys.postpone(ref, retryBackoff) { // once per attempt, not per waiting caller
			msg := "refresh failed; serving cached key"
			if suspect {
				msg = "storage unavailable; serving cached key"
			}
			m.logger.Warn(msg, "key", ref.String(), "error", err.Error())
		}
		return cached, nil
	}
	if err != nil {
		if !ok {
			cached = nil
		}
		return nil, m.refused(ctx, ref, cached, err)
	}
	return e, nil
}

// refused handles the failure of a load or re-check of ref (cached: the
// entry it refreshed, or nil) and returns err. A refusal stands, unlike an
// outage or the caller's own deadline: what it voids leaves the cache, so
// that a later outage never serves it again. A tenant deleted or shredded
// voids every key of it cached here, not this one alone.
func (m *materials) refused(ctx context.Context, ref KeyRef, cached *keyEntry, err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) || ctx.Err() != nil {
		return err
	}
	if errors.Is(err, ErrTenantDeleted) || errors.Is(err, errTenantNotFound) {
		// Only when something of it is cached: calls naming a deleted
		// tenant must not each cost a walk of the cache.
		if _, _, kek := m.keks.get(ref.Tenant); cached != nil || kek {
			// With the generation moved on, as for a local deletion: a
			// load in flight that read the tenant before caches nothing.
			m.invalidateTenant(ref.Tenant)
		}
	} else if cached != nil {
		m.forgetKey(cached)
	}
	return err
}

// forgetKey drops e from the cache, unless another entry replaced it.
func (m *materials) forgetKey(e *keyEntry) {
	m.keys.removeValue(e.ref, e, func(a, b *keyEntry) bool { return a == b })
}

// recheck reads back the tenant and key records a suspect entry was built
// from. If neither changed (and the tenant is active) it caches and returns
// the entry as no longer suspect, fresh again within the grace it had; if either did, it
// returns nil. It asks the root nothing, so a root outage cannot make a
// changed entry serve.
func (m *materials) recheck(ctx context.Context, ref KeyRef, cached *keyEntry) (*keyEntry, error) {
	gen := m.gens.of(ref.Tenant)
	flight := "check\x00" + ref.String() + "\x00" + strconv.FormatUint(cached.ver, 10) + "\x00" + gen.String()
	v, err := m.shared(ctx, flight, func(ctx context.Context) (any, error) {
		defer m.beginRead(ref)()
		trec, tver, err := m.readTenant(ctx, ref.Tenant)
		if err != nil {
			return nil, err
		}
		_, ver, err := m.readKey(ctx, ref)
		if err != nil {
			return nil, err
		}
		if trec.State != TenantActive || tver != cached.tenantVer || ver != cached.ver {
			return (*keyEntry)(nil), nil
		}
		// Unchanged: it serves again, fresh for the TTL within the grace
		// it had. The records read back are not the root's answer, so
		// they renew no grace.
		e := &keyEntry{ref: cached.ref, rec: cached.rec, prim: cached.prim, ver: cached.ver, tenantVer: cached.tenantVer}
		// Not cached if it was replaced or the tenant's generation moved
		// meanwhile (a change may have come after these reads): it serves
		// this call, and the cache keeps what it holds.
		m.keys.renew(ref, func(old *keyEntry) (*keyEntry, bool) { return e, old == cached && m.gens.same(ref.Tenant, gen) })
		return e, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*keyEntry), nil
}

// loadTimeout bounds a shared load (storage reads and a root unwrap), which
// runs detached from the callers waiting for it.
const loadTimeout = 30 * time.Second

// shared runs fn once for all concurrent callers with the same key. fn runs
// on a context detached from any one caller's cancellation (bounded by
// loadTimeout), so a caller that gives up does not fail the others; each
// caller waits only as long as its own ctx allows.
func (m *materials) shared(ctx context.Context, key string, fn func(context.Context) (any, error)) (any, error) {
	ch := m.loads.DoChan(key, func() (any, error) {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), loadTimeout)
		defer cancel()
		return fn(lctx)
	})
	select {
	case r := <-ch:
		return r.Val, r.Err
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("%w: load: %w", ErrUnavailable, ctx.Err())
		}
		return nil, ctx.Err()
	}
}

// loadKey loads a key from storage into the cache; concurrent loads of one
// key share one storage read and one unwrap.
func (m *materials) loadKey(ctx context.Context, ref KeyRef) (*keyEntry, error) {
	// One load per generation: a caller after an invalidation (a tenant
	// deleted, say) never joins a load that read the tenant before it.
	gen := m.gens.of(ref.Tenant)
	v, err := m.shared(ctx, "key\x00"+ref.String()+"\x00"+gen.String(), func(ctx context.Context) (any, error) {
		defer m.beginRead(ref)()
		kek, tver, err := m.activeTenant(ctx, ref.Tenant)
		if err != nil {
			return nil, err
		}
		rec, ver, err := m.readKey(ctx, ref)
		if err != nil {
			return nil, err
		}
		e, err := m.newKeyEntry(ref, rec, kek)
		if err != nil {
			return nil, err
		}
		e.ver, e.tenantVer = ver, tver
		m.put(gen, e)
		return e, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*keyEntry), nil
}

func (m *materials) newKeyEntry(ref KeyRef, rec *keyRecord, kek tink.AEAD) (*keyEntry, error) {
	h, err := openKeyset(kek, ref, rec)
	if err != nil {
		m.logger.Error("stored keyset failed authentication", "key", ref.String())
		return nil, err
	}
	prim, err := newPrimitives(rec.Purpose, h)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", ref, err)
	}
	return &keyEntry{ref: ref, rec: rec, prim: prim}, nil
}

// noteVersion records that version ver of ref's record exists (written by
// this replica, or by another as a change notice says): an older entry, or
// an older record a load is still reading, can no longer be cached, even
// if the writer's own put is refused. A key neither cached nor being read
// gets no record of it, which would push a live entry out (every
// replica's count flush writes each key it used): so every reader of a
// key's records, writers included, counts itself with beginRead.
func (m *materials) noteVersion(ref KeyRef, ver uint64) {
	m.keys.upsertKnown(ref, &keyEntry{ref: ref, ver: ver}, func(old *keyEntry) bool { return old.ver >= ver },
		func() bool { return m.isReading(ref) })
}

// countsWritten notes that this replica rewrote ref's record from version
// old to nver changing only encryption counts (which the cache does not use):
// an entry built from old is as good as one built from nver, so it is kept
// under the new version instead of being reloaded when the change notice
// comes back.
func (m *materials) countsWritten(ref KeyRef, old, nver uint64) {
	renamed := m.keys.swap(ref, func(cur *keyEntry) (*keyEntry, bool) {
		if cur.tombstone() || cur.ver != old {
			return nil, false
		}
		e := &keyEntry{ref: cur.ref, rec: cur.rec, prim: cur.prim, ver: nver, tenantVer: cur.tenantVer}
		// The write checked the key record only: a suspect entry (its
		// tenant record may have changed unseen) stays suspect.
		e.suspect.Store(cur.suspect.Load())
		return e, true
	})
	if !renamed {
		m.noteVersion(ref, nver)
	}
}

// put caches e unless a tenant invalidation happened since gen was read:
// then what the caller read may already be stale, and the next call reloads.
// The check is made under the cache's lock, in the step that writes: an
// invalidation bumps gen before it takes that lock to drop entries, so it
// either stops this put or drops what it wrote.
func (m *materials) put(gen generation, e *keyEntry) {
	// A key serves no longer than the tenant KEK it was opened with: the
	// grace counts from the root's last answer, and a key reloaded from
	// storage during an outage (under the KEK of the grace) does not start
	// one of its own. (A KEK that has left the cache sets no limit: the
	// key's own TTL and grace apply.)
	limit, _ := m.keks.until(e.ref.Tenant)
	// Never replace an entry (or tombstone) from a newer record: a load that
	// read before a change must not undo it.
	m.keys.upsertIf(e.ref, e, func(old *keyEntry) bool { return old.ver > e.ver }, func() bool { return m.gens.same(e.ref.Tenant, gen) }, limit)
}

// invalidateTenant drops a tenant's cached KEK and keys, and makes loads
// that began before this call not cache what they read.
func (m *materials) invalidateTenant(tenant string) {
	m.gens.bump(tenant)
	m.dropTenant(tenant)
}

// dropTenant drops a tenant's cached KEK and keys.
func (m *materials) dropTenant(tenant string) {
	m.keks.remove(tenant)
	m.keys.removeIf(func(r KeyRef) bool { return r.Tenant == tenant })
}

// apply drops what a change may have made stale. A change that names
// the record version it wrote (Version > 0) drops only entries built from
// older versions, so a replica's own writes, echoed back by the storage, do
// not evict what it has just cached.
func (m *materials) apply(c storage.Change) {
	switch k := c.Key; {
	case k == "":
		// Anything may have changed unseen. Each key entry reads its
		// records back before it serves again (recheck); a KEK needs no
		// more than the tenant record every load reads (activeTenant). So
		// a storage stall that made every replica listen again costs a
		// read per key, not a root unwrap per tenant, and a root outage at
		// that moment fails nobody.
		m.gens.bumpAll()
		m.keys.staleAll(func(e *keyEntry) { e.suspect.Store(true) })
	case strings.HasPrefix(k, tenantPrefix):
		tenant := strings.TrimPrefix(k, tenantPrefix)
		m.gens.bump(tenant)
		if c.Version == 0 {
			// Deleted (shredded), or version unknown: the KEK may be gone.
			m.keks.remove(tenant)
		}
		// A tenant's KEK never changes while its record exists (a root
		// re-wrap wraps the same bytes); its state may, so the keys that
		// were checked against an older record go.
		m.keys.removeWhere(func(r KeyRef, e *keyEntry) bool {
			return r.Tenant == tenant && (c.Version == 0 || e.tenantVer < c.Version)
		})
	case strings.HasPrefix(k, keyPrefix):
		tenant, key, ok := strings.Cut(strings.TrimPrefix(k, keyPrefix), "/")
		if !ok {
			return
		}
		ref := KeyRef{Tenant: tenant, Key: key}
		if c.Version == 0 {
			// Deleted, or version unknown: drop it, and keep a load now in
			// flight from caching what it read before.
			m.gens.bump(tenant)
			m.keys.remove(ref)
			return
		}
		m.noteVersion(ref, c.Version)
	}
}

// beginRead counts a read of ref's records in flight until the returned
// func is called.
func (m *materials) beginRead(ref KeyRef) (end func()) {
	m.readingMu.Lock()
	if m.reading == nil {
		m.reading = make(map[KeyRef]int)
	}
	m.reading[ref]++
	m.readingMu.Unlock()
	return func() {
		m.readingMu.Lock()
		if m.reading[ref]--; m.reading[ref] == 0 {
			delete(m.reading, ref)
		}
		m.readingMu.Unlock()
	}
}

func (m *materials) isReading(ref KeyRef) bool {
	m.readingMu.Lock()
	defer m.readingMu.Unlock()
	return m.reading[ref] > 0
}

// Watch invalidates cached material whenever any replica sharing the storage
// changes a tenant or key, until ctx is done. It returns at once (nil) when
// the storage cannot notify (bbolt: one process owns the file). Run it in
// its own goroutine; it stops when ctx is cancelled.
func (s *Service) Watch(ctx context.Context) error {
	run, err := s.StartWatch(ctx)
	if err != nil {
		return err
	}
	run()
	return nil
}

// StartWatch begins watching (it returns once the storage is listening)
// and returns the loop that applies the changes until ctx is done; a
// server calls it before it answers, so that nothing it caches can miss a
// change. What was cached before the watch began may have changed unseen:
// it becomes suspect (apply). Without a storage that notifies, run returns
// at once.
func (s *Service) StartWatch(ctx context.Context) (run func(), err error) {
	w, ok := s.store.(storage.Watcher)
	if !ok {
		return func() {}, nil
	}
	changes, err := w.Watch(ctx)
	if err != nil {
		return nil, storageErr("watch", err)
	}
	s.m.apply(storage.Change{})
	return func() {
		for c := range changes {
			s.m.apply(c)
		}
	}, nil
}
