package keystore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/storage"
)

// readCounter counts a store's reads.
type readCounter struct {
	storage.Store
	gets, lists atomic.Int64
	listed      atomic.Int64 // records the lists returned
}

func (c *readCounter) Get(ctx context.Context, k string) (storage.Record, error) {
	c.gets.Add(1)
	return c.Store.Get(ctx, k)
}

func (c *readCounter) List(ctx context.Context, prefix, after string, limit int) ([]storage.Record, error) {
	c.lists.Add(1)
	recs, err := c.Store.List(ctx, prefix, after, limit)
	c.listed.Add(int64(len(recs)))
	return recs, err
}

func (c *readCounter) reset() { c.gets.Store(0); c.lists.Store(0); c.listed.Store(0) }

// manyTenants adds n tenants, each with one key, by copying the records of
// tenant "seed" and its key "k" under other names: enough for the
// scheduler, which reads the metadata of due records only (the copies'
// wrapped material would not open under their new names, and is never
// opened here).
func manyTenants(t *testing.T, f *lcFixture, n int) {
	t.Helper()
	ctx := context.Background()
	f.newKey("seed", "k", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	tr, err := f.store.Get(ctx, "tenants/seed")
	if err != nil {
		t.Fatal(err)
	}
	kr, err := f.store.Get(ctx, "keys/seed/k")
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		name := fmt.Sprintf("t%05d", i)
		if _, err := f.store.Put(ctx, "tenants/"+name, tr.Value, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := f.store.Put(ctx, "keys/"+name+"/k", kr.Value, 0); err != nil {
			t.Fatal(err)
		}
	}
}

// Among 10,000 tenants, due work is found through the due-time index with a
// handful of reads, not by visiting every tenant; a pass with nothing due
// reads one page of the index.
func TestDueWorkIsFoundThroughTheIndexNotByWalking(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	const tenants = 10000
	manyTenants(t, f, tenants)
	rotating := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt, RotationPeriod: time.Hour})
	destroying := f.newKey("acme", "old", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	f.rotate(destroying)
	if _, err := f.ks.DestroyKeyVersion(ctx, destroying, 1, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	doomed := f.newKey("doomed", "k", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	if _, err := f.ks.DeleteTenant(ctx, doomed.Tenant, 24*time.Hour); err != nil {
		t.Fatal(err)
	}

	counter := &readCounter{Store: f.store}
	cfg := f.cfg
	cfg.Storage = counter
	ks, err := keystore.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	reads := func() int64 { return counter.gets.Load() + counter.listed.Load() }

	t.Run("with nothing due, a pass reads one page of the index", func(t *testing.T) {
		counter.reset()
		if err := keystore.DuePass(ctx, ks); err != nil {
			t.Fatal(err)
		}
		if counter.lists.Load() != 1 || counter.gets.Load() != 0 {
			t.Errorf("%d lists, %d gets", counter.lists.Load(), counter.gets.Load())
		}
	})
	t.Run("a due rotation is done with a few reads", func(t *testing.T) {
		f.clock.Advance(61 * time.Minute)
		counter.reset()
		if err := keystore.DuePass(ctx, ks); err != nil {
			t.Fatal(err)
		}
		if k := f.getKey(rotating); k.PrimaryVersion != 2 {
			t.Fatalf("primary %d after the due pass, want 2", k.PrimaryVersion)
		}
		if n := reads(); n > 50 {
			t.Errorf("%d records read among %d tenants; the pass walked them", n, tenants)
		}
	})
	t.Run("a due destruction and a due shredding likewise", func(t *testing.T) {
		f.clock.Advance(24 * time.Hour)
		counter.reset()
		if err := keystore.DuePass(ctx, ks); err != nil {
			t.Fatal(err)
		}
		if k := f.getKey(destroying); k.Versions[0].State != keystore.VersionDestroyed {
			t.Errorf("version 1 is %v, want destroyed", k.Versions[0].State)
		}
		if _, err := f.ks.GetTenant(ctx, doomed.Tenant); err == nil {
			t.Error("the tenant past its deletion date was not shredded")
		}
		if k := f.getKey(rotating); k.PrimaryVersion != 3 {
			t.Errorf("the hourly key rotated to %d, want 3: its next hint was written by the last rotation", k.PrimaryVersion)
		}
		if n := reads(); n > 100 {
			t.Errorf("%d records read among %d tenants", n, tenants)
		}
	})
	t.Run("a lost hint is found by the next full sweep, which writes the hints again", func(t *testing.T) {
		for r, err := range scanAll(ctx, f.store, "due/") {
			if err != nil {
				t.Fatal(err)
			}
			if err := f.store.Delete(ctx, r.Key, r.Version); err != nil {
				t.Fatal(err)
			}
		}
		f.clock.Advance(61 * time.Minute)
		if err := keystore.DuePass(ctx, ks); err != nil {
			t.Fatal(err)
		}
		if k := f.getKey(rotating); k.PrimaryVersion != 3 {
			t.Fatalf("rotated without a hint: primary %d", k.PrimaryVersion)
		}
		if err := ks.RunOnce(ctx); err != nil { // the sweep
			t.Fatal(err)
		}
		if k := f.getKey(rotating); k.PrimaryVersion != 4 {
			t.Fatalf("the sweep did not rotate the due key: primary %d", k.PrimaryVersion)
		}
		hints := 0
		for r, err := range scanAll(ctx, f.store, "due/") {
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(r.Key, "/k/acme/pii") {
				hints++
			}
		}
		if hints != 1 {
			t.Fatalf("%d hints for acme/pii after the sweep, want its next rotation's", hints)
		}
	})
}

// The lease holder sweeps once when it takes the lease, then reads the
// index only.
func TestTheSchedulerSweepsOnceThenReadsTheIndex(t *testing.T) {
	f := newLCFixture(t)
	stop := startScheduler(t, f.ks, keystore.SchedulerConfig{Interval: 5 * time.Millisecond, LeaseTTL: time.Minute, HolderID: "a"})
	waitFor(t, "several passes", func() bool { return keystore.LeaderPasses(f.ks) >= 5 })
	stop()
	if n := keystore.Sweeps(f.ks); n != 1 {
		t.Fatalf("%d full sweeps in %d passes, want 1", n, keystore.LeaderPasses(f.ks))
	}
}

// scanAll lists every record under prefix.
func scanAll(ctx context.Context, s storage.Store, prefix string) func(func(storage.Record, error) bool) {
	return func(yield func(storage.Record, error) bool) {
		recs, err := s.List(ctx, prefix, "", 1000)
		if err != nil {
			yield(storage.Record{}, err)
			return
		}
		for _, r := range recs {
			if !yield(r, nil) {
				return
			}
		}
	}
}

// Work that fell due while the tenant was scheduled for deletion is done
// soon after an undeletion, not only at the next full sweep.
func TestDueWorkPutOffByADeletionIsDoneAfterTheUndeletion(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt, RotationPeriod: time.Hour})
	if _, err := f.ks.DeleteTenant(ctx, "acme", 0); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * time.Hour)
	if err := keystore.DuePass(ctx, f.ks); err != nil { // the key's hint comes due; its tenant is deleted
		t.Fatal(err)
	}
	if _, err := f.ks.UndeleteTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if err := keystore.DuePass(ctx, f.ks); err != nil {
		t.Fatal(err)
	}
	if k := f.getKey(ref); k.PrimaryVersion != 2 {
		t.Fatalf("primary %d after the undeletion and a due pass, want 2", k.PrimaryVersion)
	}
}

// slowLister makes every List of a tenant's keys take a while, so that a
// full sweep outlasts the scheduler lease.
type slowLister struct{ storage.Store }

func (s slowLister) List(ctx context.Context, prefix, after string, limit int) ([]storage.Record, error) {
	if strings.HasPrefix(prefix, "keys/") {
		time.Sleep(2 * time.Millisecond)
	}
	return s.Store.List(ctx, prefix, after, limit)
}

// A sweep that outlasts the lease renews it as it goes: another replica
// does not take over and sweep again, so one sweep is done in all.
func TestASweepLongerThanTheLeaseKeepsIt(t *testing.T) {
	f := newLCFixture(t)
	manyTenants(t, f, 1000) // about 2 s of sweeping, several lease lifetimes
	var replicas []*keystore.Service
	for range 2 {
		cfg := f.cfg
		cfg.Storage = slowLister{f.store}
		cfg.Now = time.Now // leases expire in real time here
		ks, err := keystore.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		replicas = append(replicas, ks)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	for i, ks := range replicas {
		go func() {
			done <- ks.RunScheduler(ctx, keystore.SchedulerConfig{Interval: 20 * time.Millisecond, LeaseTTL: 400 * time.Millisecond, HolderID: fmt.Sprint(i)})
		}()
	}
	time.Sleep(3500 * time.Millisecond)
	cancel()
	for range 2 {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("RunScheduler did not return within 10s")
		}
	}
	t.Logf("sweeps %d %d passes %d %d", keystore.Sweeps(replicas[0]), keystore.Sweeps(replicas[1]), keystore.LeaderPasses(replicas[0]), keystore.LeaderPasses(replicas[1]))
	if n := keystore.Sweeps(replicas[0]) + keystore.Sweeps(replicas[1]); n != 1 {
		t.Fatalf("%d sweeps started by the two replicas, want 1", n)
	}
}

// conflictOnce makes the next versioned Put of its key lose a race: another
// writer (say `custos root rewrap`) rewrites the record just before it.
type conflictOnce struct {
	storage.Store
	key atomic.Pointer[string]
}

func (c *conflictOnce) Put(ctx context.Context, key string, v []byte, expect uint64) (uint64, error) {
	if k := c.key.Load(); k != nil && *k == key && expect > 0 && c.key.CompareAndSwap(k, nil) {
		if cur, err := c.Store.Get(ctx, key); err == nil {
			if _, err := c.Store.Put(ctx, key, cur.Value, cur.Version); err != nil {
				return 0, err
			}
		}
	}
	return c.Store.Put(ctx, key, v, expect)
}

// A shred that loses a race for the tenant's record keeps its due hint: the
// next pass shreds the tenant, not the next full sweep a day later.
func TestAShredThatLosesARaceIsRetriedByTheNextPass(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	cs := &conflictOnce{Store: f.store}
	f.store = cs
	ks := f.replica()
	if _, err := ks.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.DeleteTenant(ctx, "acme", 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(25 * time.Hour)
	key := "tenants/acme"
	cs.key.Store(&key)
	if err := keystore.DuePass(ctx, ks); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Get(ctx, key); err != nil {
		t.Fatalf("the tenant after the pass that lost the race: %v, want it still there", err)
	}
	if err := keystore.DuePass(ctx, ks); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Get(ctx, key); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the tenant after the next pass: %v, want it shredded", err)
	}
}

// A shred in a full sweep that loses a race for the tenant's record keeps
// a due hint too: the next pass shreds the tenant, even when the hint the
// deletion wrote was lost (which the sweep exists to recover).
func TestAShredInASweepThatLosesARaceIsRetriedByTheNextPass(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	cs := &conflictOnce{Store: f.store}
	f.store = cs
	ks := f.replica()
	if _, err := ks.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.DeleteTenant(ctx, "acme", 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	for r, err := range scanAll(ctx, f.store, "due/") {
		if err != nil {
			t.Fatal(err)
		}
		if err := f.store.Delete(ctx, r.Key, r.Version); err != nil {
			t.Fatal(err)
		}
	}
	f.clock.Advance(25 * time.Hour)
	key := "tenants/acme"
	cs.key.Store(&key)
	if err := ks.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Get(ctx, key); err != nil {
		t.Fatalf("the tenant after the sweep that lost the race: %v, want it still there", err)
	}
	if err := keystore.DuePass(ctx, ks); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Get(ctx, key); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the tenant after the next due pass: %v, want it shredded", err)
	}
}

// flakyLeaseStore fails every third write of the scheduler lease, and
// every second list of tenants, as a storage that hiccups does.
type flakyLeaseStore struct {
	slowLister
	leasePuts, tenantLists atomic.Int64
	failLists              bool
}

func (s *flakyLeaseStore) Put(ctx context.Context, key string, v []byte, expect uint64) (uint64, error) {
	if key == "scheduler/lease" && s.leasePuts.Add(1)%3 == 0 {
		return 0, fmt.Errorf("test store: %w", storage.ErrUnavailable)
	}
	return s.slowLister.Put(ctx, key, v, expect)
}

func (s *flakyLeaseStore) List(ctx context.Context, prefix, after string, limit int) ([]storage.Record, error) {
	if s.failLists && prefix == "tenants/" && s.tenantLists.Add(1)%2 == 0 {
		return nil, fmt.Errorf("test store: %w", storage.ErrUnavailable)
	}
	return s.slowLister.List(ctx, prefix, after, limit)
}

// A sweep that outlasts the lease finishes although some of its renewals
// fail (the lease is still good until its TTL), and although lists of
// tenants fail now and then (the next tick goes on where it stopped).
func TestASweepFinishesThroughStorageHiccups(t *testing.T) {
	for _, failLists := range []bool{false, true} {
		t.Run(fmt.Sprintf("failing lists %v", failLists), func(t *testing.T) {
			f := newLCFixture(t)
			manyTenants(t, f, 1000) // about 2 s of sweeping, several lease lifetimes
			cfg := f.cfg
			cfg.Storage = &flakyLeaseStore{slowLister: slowLister{f.store}, failLists: failLists}
			cfg.Now = time.Now // leases expire in real time here
			ks, err := keystore.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			stop := startScheduler(t, ks, keystore.SchedulerConfig{Interval: 20 * time.Millisecond, LeaseTTL: 400 * time.Millisecond, HolderID: "a"})
			deadline := time.Now().Add(30 * time.Second)
			for keystore.SweepsDone(ks) == 0 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			stop()
			if keystore.SweepsDone(ks) == 0 {
				t.Fatalf("no sweep finished in 30 s (%d begun, %d passes)", keystore.Sweeps(ks), keystore.LeaderPasses(ks))
			}
		})
	}
}

// cancelOnDuePut cancels a context when the first due-time hint is written,
// as a caller that gives up during an undeletion does.
type cancelOnDuePut struct {
	storage.Store
	cancel func()
}

func (c *cancelOnDuePut) Put(ctx context.Context, key string, v []byte, expect uint64) (uint64, error) {
	if strings.HasPrefix(key, "due/") {
		c.cancel()
	}
	return c.Store.Put(ctx, key, v, expect)
}

// The work of every key put off by a deletion is done after the undeletion,
// however many keys the tenant has, even when the caller of the undeletion
// gives up as soon as it can.
func TestAnUndeletionHandsEveryKeysPutOffWorkToTheScheduler(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	const n = 300 // more than a page of a scan
	for i := range n {
		f.newKey("acme", fmt.Sprintf("k%03d", i), keystore.KeySpec{Purpose: keystore.PurposeEncrypt, RotationPeriod: time.Hour})
	}
	if _, err := f.ks.DeleteTenant(ctx, "acme", 0); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * time.Hour)
	if err := keystore.DuePass(ctx, f.ks); err != nil { // the keys' hints come due; the tenant is deleted
		t.Fatal(err)
	}
	uctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f.store = &cancelOnDuePut{Store: f.store, cancel: cancel}
	ks := f.replica()
	if _, err := ks.UndeleteTenant(uctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if err := keystore.DuePass(ctx, ks); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		ref := keystore.KeyRef{Tenant: "acme", Key: fmt.Sprintf("k%03d", i)}
		if k := f.getKey(ref); k.PrimaryVersion != 2 {
			t.Fatalf("%s: primary %d after the undeletion and a due pass, want 2", ref, k.PrimaryVersion)
		}
	}
}

// slowDueDeletes makes every delete of a due-time hint take a while, so
// that a due pass over many hints outlasts the scheduler lease.
type slowDueDeletes struct{ storage.Store }

func (s slowDueDeletes) Delete(ctx context.Context, key string, expect uint64) error {
	if strings.HasPrefix(key, "due/") {
		time.Sleep(2 * time.Millisecond)
	}
	return s.Store.Delete(ctx, key, expect)
}

// A due pass that outlasts the lease renews it as it goes: the other
// replica never takes over in the middle of it.
func TestADuePassLongerThanTheLeaseKeepsIt(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	due := time.Now().Add(-time.Minute).Unix()
	for i := range 1000 { // about 2 s of deletes, five lease lifetimes
		if _, err := f.store.Put(ctx, fmt.Sprintf("due/%012d/k/gone/k%04d", due, i), []byte(`{"format":1}`), 0); err != nil {
			t.Fatal(err)
		}
	}
	var replicas []*keystore.Service
	for range 2 {
		cfg := f.cfg
		cfg.Storage = slowDueDeletes{f.store}
		cfg.Now = time.Now // leases expire in real time here
		ks, err := keystore.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		replicas = append(replicas, ks)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 2)
	for i, ks := range replicas {
		go func() {
			done <- ks.RunScheduler(rctx, keystore.SchedulerConfig{Interval: 20 * time.Millisecond, LeaseTTL: 400 * time.Millisecond, HolderID: fmt.Sprint(i)})
		}()
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if recs, err := f.store.List(ctx, "due/", "", 1); err == nil && len(recs) == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	for range 2 {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("RunScheduler did not return within 10s")
		}
	}
	if recs, err := f.store.List(ctx, "due/", "", 1); err != nil || len(recs) != 0 {
		t.Fatalf("hints left after 20 s: %d, %v", len(recs), err)
	}
	a, b := keystore.LeaderPasses(replicas[0]), keystore.LeaderPasses(replicas[1])
	if a > 0 && b > 0 {
		t.Fatalf("both replicas held the lease during one due pass (%d and %d passes)", a, b)
	}
}

// keyLists counts the lists of one tenant's keys.
type keyLists struct {
	storage.Store
	prefix string
	n      atomic.Int64
}

func (c *keyLists) List(ctx context.Context, prefix, after string, limit int) ([]storage.Record, error) {
	if prefix == c.prefix {
		c.n.Add(1)
	}
	return c.Store.List(ctx, prefix, after, limit)
}

// An undeletion's pass over the tenant's keys runs once, even when a key
// fails: that key is retried by its own hint, not by scanning every key of
// the tenant again at each pass.
func TestAnUndeletedTenantsKeysAreScannedOnceDespiteAFailingKey(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	f.newKey("acme", "good", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	if _, err := f.store.Put(ctx, "keys/acme/bad", []byte("not a key record"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ks.DeleteTenant(ctx, "acme", 0); err != nil {
		t.Fatal(err)
	}
	kl := &keyLists{Store: f.store, prefix: "keys/acme/"}
	f.store = kl
	ks := f.replica()
	if _, err := ks.UndeleteTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		_ = keystore.DuePass(ctx, ks)
		f.clock.Advance(time.Minute)
	}
	if n := kl.n.Load(); n != 1 {
		t.Fatalf("the undeleted tenant's keys were listed %d times in three passes, want 1", n)
	}
}

// startScheduler runs ks's scheduler until the returned stop, which waits
// for it (at most 10 s) and fails the test on its error.
func startScheduler(t *testing.T, ks *keystore.Service, cfg keystore.SchedulerConfig) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ks.RunScheduler(ctx, cfg) }()
	return func() {
		t.Helper()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("RunScheduler did not return within 10s")
		}
	}
}

// failKeyListOnce fails the first list of one tenant's keys.
type failKeyListOnce struct {
	storage.Store
	prefix string
	failed atomic.Bool
}

func (s *failKeyListOnce) List(ctx context.Context, prefix, after string, limit int) ([]storage.Record, error) {
	if prefix == s.prefix && s.failed.CompareAndSwap(false, true) {
		return nil, fmt.Errorf("test store: %w", storage.ErrUnavailable)
	}
	return s.Store.List(ctx, prefix, after, limit)
}

// A sweep whose list of a tenant's keys fails leaves a hint to scan them
// again, which the next due pass takes: a key whose hint was lost is still
// maintained (the sweep counted the tenant as done, and the key waited for
// the next full sweep, a day later).
func TestASweepCutShortInATenantsKeysLeavesAHintForThem(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	f.newKey("t0", "k", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	ref := f.newKey("t1", "k", keystore.KeySpec{Purpose: keystore.PurposeEncrypt, RotationPeriod: time.Hour})
	f.newKey("t2", "k", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	f.clock.Advance(2 * time.Hour)
	hints, err := f.store.List(ctx, "due/", "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hints { // lost, as in a crash between a write and its hint
		if err := f.store.Delete(ctx, h.Key, h.Version); err != nil {
			t.Fatal(err)
		}
	}
	cfg := f.cfg
	cfg.Storage = &failKeyListOnce{Store: f.store, prefix: "keys/t1/"}
	ks, err := keystore.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := startScheduler(t, ks, keystore.SchedulerConfig{Interval: 5 * time.Millisecond, LeaseTTL: time.Minute, HolderID: "a"})
	waitFor(t, "the due rotation", func() bool { return f.getKey(ref).PrimaryVersion == 2 })
	stop()
	if n := keystore.SweepsDone(ks); n != 1 {
		t.Fatalf("%d sweeps finished, want the first (not held up by the failed list)", n)
	}
}

// lostDeleteAnswer commits the first delete of a due-time hint and then
// reports the storage unavailable, as a connection lost after the commit
// does.
type lostDeleteAnswer struct {
	storage.Store
	lost atomic.Bool
}

func (s *lostDeleteAnswer) Delete(ctx context.Context, key string, expect uint64) error {
	err := s.Store.Delete(ctx, key, expect)
	if err == nil && strings.HasPrefix(key, "due/") && s.lost.CompareAndSwap(false, true) {
		return fmt.Errorf("test store: connection lost: %w", storage.ErrUnavailable)
	}
	return err
}

// A due hint whose delete had an unknown outcome still has its work done
// (the work re-checks its condition): the hint may be gone, and the work
// waited for the next full sweep.
func TestDueWorkIsDoneWhenItsHintsDeleteHadAnUnknownOutcome(t *testing.T) {
	f := newLCFixture(t)
	ref := f.newKey("t1", "k", keystore.KeySpec{Purpose: keystore.PurposeEncrypt, RotationPeriod: time.Hour})
	store := &lostDeleteAnswer{Store: f.store}
	ks := f.keystoreOn(t, store)
	stop := startScheduler(t, ks, keystore.SchedulerConfig{Interval: 5 * time.Millisecond, LeaseTTL: 10 * time.Hour, HolderID: "a"})
	waitFor(t, "the first sweep", func() bool { return keystore.SweepsDone(ks) >= 1 })
	f.clock.Advance(2 * time.Hour)
	waitFor(t, "the hint's delete", func() bool { return store.lost.Load() })
	passes := keystore.LeaderPasses(ks)
	waitFor(t, "two more passes", func() bool { return keystore.LeaderPasses(ks) >= passes+2 })
	stop()
	if n := keystore.Sweeps(ks); n != 1 {
		t.Fatalf("%d sweeps; the due pass must have done it", n)
	}
	if k := f.getKey(ref); k.PrimaryVersion != 2 {
		t.Fatalf("primary %d, want the due rotation done", k.PrimaryVersion)
	}
}

// outageAfterDueDelete deletes the first due hint it is asked to, then
// fails every call until up is called: the hint is gone, and neither the
// work nor the hint written again for it gets through.
type outageAfterDueDelete struct {
	storage.Store
	down, tripped atomic.Bool
	rewriteLost   atomic.Bool // a hint's write was refused during the outage
}

func (s *outageAfterDueDelete) err() error {
	if s.down.Load() {
		return fmt.Errorf("test store: %w", storage.ErrUnavailable)
	}
	return nil
}

func (s *outageAfterDueDelete) Delete(ctx context.Context, key string, expect uint64) error {
	if err := s.err(); err != nil {
		return err
	}
	err := s.Store.Delete(ctx, key, expect)
	if err == nil && strings.HasPrefix(key, "due/") && s.tripped.CompareAndSwap(false, true) {
		s.down.Store(true)
	}
	return err
}

func (s *outageAfterDueDelete) Get(ctx context.Context, key string) (storage.Record, error) {
	if err := s.err(); err != nil {
		return storage.Record{}, err
	}
	return s.Store.Get(ctx, key)
}

func (s *outageAfterDueDelete) Put(ctx context.Context, key string, v []byte, expect uint64) (uint64, error) {
	if err := s.err(); err != nil {
		if strings.HasPrefix(key, "due/") {
			s.rewriteLost.Store(true)
		}
		return 0, err
	}
	return s.Store.Put(ctx, key, v, expect)
}

func (s *outageAfterDueDelete) List(ctx context.Context, prefix, after string, limit int) ([]storage.Record, error) {
	if err := s.err(); err != nil {
		return nil, err
	}
	return s.Store.List(ctx, prefix, after, limit)
}

// A due hint deleted by a pass whose work then met an outage, and whose
// rewrite failed too, is written again once the storage is back (by the
// count flush every replica runs): its work does not wait for the next
// full sweep (24 h by default).
func TestAHintLostToAnOutageIsWrittenAgain(t *testing.T) {
	f := newLCFixture(t)
	ref := f.newKey("t1", "k", keystore.KeySpec{Purpose: keystore.PurposeEncrypt, RotationPeriod: time.Hour})
	store := &outageAfterDueDelete{Store: f.store}
	ks := f.keystoreOn(t, store)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	flushed := make(chan struct{})
	go func() { ks.RunCountFlush(ctx, 5*time.Millisecond); close(flushed) }()
	defer func() { cancel(); <-flushed }()
	stop := startScheduler(t, ks, keystore.SchedulerConfig{Interval: 5 * time.Millisecond, LeaseTTL: 10 * time.Hour, SweepInterval: 1000 * time.Hour, HolderID: "a"})
	defer stop()
	waitFor(t, "the first sweep", func() bool { return keystore.SweepsDone(ks) >= 1 })
	f.clock.Advance(2 * time.Hour)
	waitFor(t, "the hint deleted, its work failed and its rewrite refused", func() bool { return store.rewriteLost.Load() })
	passes := keystore.LeaderPasses(ks)
	store.down.Store(false)
	waitFor(t, "the due rotation", func() bool {
		k, err := ks.GetKey(context.Background(), ref)
		return err == nil && k.PrimaryVersion == 2
	})
	if n := keystore.Sweeps(ks); n != 1 {
		t.Fatalf("%d sweeps (%d passes since the outage); the due pass must have done it", n, keystore.LeaderPasses(ks)-passes)
	}
}

// leaseOutage fails the scheduler lease's reads and writes while down.
type leaseOutage struct {
	storage.Store
	down atomic.Bool
}

func (s *leaseOutage) Get(ctx context.Context, key string) (storage.Record, error) {
	if key == keystore.LeaseStorageKey && s.down.Load() {
		return storage.Record{}, fmt.Errorf("test store: %w", storage.ErrUnavailable)
	}
	return s.Store.Get(ctx, key)
}

func (s *leaseOutage) Put(ctx context.Context, key string, v []byte, expect uint64) (uint64, error) {
	if key == keystore.LeaseStorageKey && s.down.Load() {
		return 0, fmt.Errorf("test store: %w", storage.ErrUnavailable)
	}
	return s.Store.Put(ctx, key, v, expect)
}

// A replica that could not reach the lease for longer than its TTL
// sweeps when it holds the lease again, as a replica taking it over does:
// another may have held it meanwhile and lost hints in a crash.
func TestALeaseUnreachableForItsTTLIsSweptAfter(t *testing.T) {
	f := newLCFixture(t)
	store := &leaseOutage{Store: f.store}
	ks := f.keystoreOn(t, store)
	const ttl = 100 * time.Millisecond
	stop := startScheduler(t, ks, keystore.SchedulerConfig{Interval: 5 * time.Millisecond, LeaseTTL: ttl, SweepInterval: 1000 * time.Hour, HolderID: "a"})
	defer stop()
	waitFor(t, "the first sweep", func() bool { return keystore.SweepsDone(ks) >= 1 })
	store.down.Store(true)
	time.Sleep(3 * ttl) // the lease out of reach for longer than its TTL
	store.down.Store(false)
	waitFor(t, "a sweep after the lease came back", func() bool { return keystore.Sweeps(ks) >= 2 })
}

// keystoreOn is a keystore of f's configuration on store (a wrapper of
// f's).
func (f *lcFixture) keystoreOn(t *testing.T, store storage.Store) *keystore.Service {
	t.Helper()
	cfg := f.cfg
	cfg.Storage = store
	ks, err := keystore.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// lostAnswer writes a Put on one key and then reports it failed, as a
// connection lost after COMMIT does: the write landed, the caller cannot
// know.
type lostAnswer struct {
	storage.Store
	key atomic.Pointer[string]
}

func (l *lostAnswer) Put(ctx context.Context, key string, value []byte, expect uint64) (uint64, error) {
	v, err := l.Store.Put(ctx, key, value, expect)
	if k := l.key.Load(); err == nil && k != nil && *k == key {
		l.key.Store(nil)
		return 0, fmt.Errorf("%w: connection lost after commit", storage.ErrUnavailable)
	}
	return v, err
}

// A deletion whose write landed but whose answer was lost still leaves its
// due hint: the tenant is shredded by the due pass after its date, not by
// the next full sweep (a day later by default). The retry the caller makes
// is refused (already scheduled) and wrote no hint either.
func TestADeletionWhoseAnswerWasLostIsShreddedOnTime(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	la := &lostAnswer{Store: f.store}
	f.store = la
	ks := f.replica()
	if _, err := ks.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	key := "tenants/acme"
	la.key.Store(&key)
	if _, err := ks.DeleteTenant(ctx, "acme", 24*time.Hour); err == nil {
		t.Fatal("DeleteTenant whose answer was lost succeeded")
	}
	if _, err := ks.DeleteTenant(ctx, "acme", 24*time.Hour); !errors.Is(err, keystore.ErrTenantDeleted) {
		t.Fatalf("DeleteTenant again: %v, want ErrTenantDeleted (already scheduled)", err)
	}
	f.clock.Advance(25 * time.Hour)
	if err := keystore.DuePass(ctx, ks); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Get(ctx, key); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the tenant after the due pass past its date: %v, want it shredded", err)
	}
}

// A version scheduled for destruction whose answer was lost is destroyed
// on time: the retry is refused (already scheduled) and wrote no hint, so
// it waited for the next full sweep.
func TestADestructionWhoseAnswerWasLostHappensOnTime(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	la := &lostAnswer{Store: f.store}
	f.store = la
	ks := f.replica()
	if _, err := ks.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	ref := keystore.KeyRef{Tenant: "acme", Key: "k"}
	if _, err := ks.CreateKey(ctx, ref, keystore.KeySpec{Purpose: keystore.PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	key := "keys/acme/k"
	la.key.Store(&key)
	if _, err := ks.DestroyKeyVersion(ctx, ref, 1, 24*time.Hour); err == nil {
		t.Fatal("DestroyKeyVersion whose answer was lost succeeded")
	}
	if _, err := ks.DestroyKeyVersion(ctx, ref, 1, 24*time.Hour); !errors.Is(err, keystore.ErrWrongState) {
		t.Fatalf("DestroyKeyVersion again: %v, want ErrWrongState (already scheduled)", err)
	}
	f.clock.Advance(25 * time.Hour)
	if err := keystore.DuePass(ctx, ks); err != nil {
		t.Fatal(err)
	}
	k, err := ks.GetKey(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if st := k.Versions[0].State; st != keystore.VersionDestroyed {
		t.Fatalf("version 1 after the due pass past its date: %v, want DESTROYED", st)
	}
}

// slowDueList makes the due pass's next listing take pause, once: this
// replica holds up its own tick (a long GC pause, SIGSTOP, a slow read)
// with no error seen.
type slowDueList struct {
	storage.Store
	pause atomic.Int64 // nanoseconds; 0: none
}

func (s *slowDueList) List(ctx context.Context, prefix, after string, limit int) ([]storage.Record, error) {
	if prefix == "due/" {
		if d := s.pause.Swap(0); d > 0 {
			time.Sleep(time.Duration(d))
		}
	}
	return s.Store.List(ctx, prefix, after, limit)
}

// A replica whose lease lapsed while its own tick stalled (no error seen)
// sweeps when it holds the lease again: another replica may have held it
// meanwhile, and lost hints in a crash.
func TestALeaseLapsedByAStalledTickIsSweptAfter(t *testing.T) {
	f := newLCFixture(t)
	store := &slowDueList{Store: f.store}
	ks := f.keystoreOn(t, store)
	const ttl = 100 * time.Millisecond
	stop := startScheduler(t, ks, keystore.SchedulerConfig{Interval: 5 * time.Millisecond, LeaseTTL: ttl, SweepInterval: 1000 * time.Hour, HolderID: "a"})
	defer stop()
	waitFor(t, "the first sweep", func() bool { return keystore.SweepsDone(ks) >= 1 })
	store.pause.Store(int64(3 * ttl))
	waitFor(t, "a sweep after the stalled tick", func() bool { return keystore.Sweeps(ks) >= 2 })
}

// Moving a key's due date drops the hint of the old one: a deployment that
// sets a key's rotation period again and again (configuration applied every
// minute) or rotates it often left one hint per change, each kept until its
// date, the key's name in it.
func TestAKeyKeepsOneDueHint(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	ks := f.ks
	if _, err := ks.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	ref := keystore.KeyRef{Tenant: "acme", Key: "k"}
	if _, err := ks.CreateKey(ctx, ref, keystore.KeySpec{Purpose: keystore.PurposeEncrypt, RotationPeriod: 365 * 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	year := 365 * 24 * time.Hour
	for i := range 20 {
		f.clock.Advance(time.Minute)
		if i%2 == 0 {
			if _, err := ks.RotateKey(ctx, ref); err != nil {
				t.Fatal(err)
			}
		} else if _, err := ks.UpdateKey(ctx, ref, keystore.KeyUpdate{RotationPeriod: &year}); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := f.store.List(ctx, "due/", "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if strings.HasSuffix(r.Key, "/acme/k") {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d due hints for the key after 20 changes of its date, want 1", n)
	}
}

// refusedPut refuses a Put on one key without writing it, once: a storage
// outage or a full store.
type refusedPut struct {
	storage.Store
	key atomic.Pointer[string]
}

func (r *refusedPut) Put(ctx context.Context, key string, value []byte, expect uint64) (uint64, error) {
	if k := r.key.Load(); k != nil && *k == key {
		r.key.Store(nil)
		return 0, fmt.Errorf("%w: test store refuses the write", storage.ErrUnavailable)
	}
	return r.Store.Put(ctx, key, value, expect)
}

// A change whose write did not land (the storage refused it) keeps the
// key's due hint: the record still says what was due, and the due pass
// acts on it on time. The hint was dropped, and the destruction waited
// for the next full sweep.
func TestAFailedChangeKeepsTheDueHint(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	rp := &refusedPut{Store: f.store}
	f.store = rp
	ks := f.replica()
	if _, err := ks.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	ref := keystore.KeyRef{Tenant: "acme", Key: "k"}
	if _, err := ks.CreateKey(ctx, ref, keystore.KeySpec{Purpose: keystore.PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.DestroyKeyVersion(ctx, ref, 1, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	key := "keys/acme/k"
	rp.key.Store(&key)
	if _, err := ks.RestoreKeyVersion(ctx, ref, 1); err == nil {
		t.Fatal("RestoreKeyVersion whose write was refused succeeded")
	}
	f.clock.Advance(25 * time.Hour)
	if err := keystore.DuePass(ctx, ks); err != nil {
		t.Fatal(err)
	}
	k, err := ks.GetKey(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if st := k.Versions[0].State; st != keystore.VersionDestroyed {
		t.Fatalf("version 1 after the due pass past its date: %v, want DESTROYED (the restore did not land)", st)
	}
}
