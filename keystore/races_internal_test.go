package keystore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custos-kms/custos/envelope"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/memory"
)

// hookStore lets a test pause one Get of a chosen key (after or before the
// underlying read) and make the whole store unreachable.
type hookStore struct {
	storage.Store
	down atomic.Bool
	gets atomic.Int64 // Gets made, for the tests that bound them

	mu        sync.Mutex
	pauseKey  string
	before    bool          // pause before reading (else after)
	paused    chan struct{} // closed when the Get is paused
	release   chan struct{}
	armedOnce bool
}

func (h *hookStore) arm(key string, before bool) (paused, release chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pauseKey, h.before, h.armedOnce = key, before, true
	h.paused, h.release = make(chan struct{}), make(chan struct{})
	return h.paused, h.release
}

func (h *hookStore) take(key string) (bool, bool, chan struct{}, chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.armedOnce && key == h.pauseKey {
		h.armedOnce = false
		return true, h.before, h.paused, h.release
	}
	return false, false, nil, nil
}

func (h *hookStore) Get(ctx context.Context, key string) (storage.Record, error) {
	h.gets.Add(1)
	if h.down.Load() {
		return storage.Record{}, fmt.Errorf("test: %w", storage.ErrUnavailable)
	}
	hit, before, paused, release := h.take(key)
	if hit && before {
		close(paused)
		<-release
	}
	r, err := h.Store.Get(ctx, key)
	if hit && !before {
		close(paused)
		<-release
	}
	return r, err
}

func (h *hookStore) Put(ctx context.Context, key string, v []byte, expect uint64) (uint64, error) {
	if h.down.Load() {
		return 0, fmt.Errorf("test: %w", storage.ErrUnavailable)
	}
	return h.Store.Put(ctx, key, v, expect)
}

func newReviewSvc(t *testing.T) (*Service, *hookStore, func() *Service) {
	t.Helper()
	r, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	hs := &hookStore{Store: memory.New()}
	open := func() *Service {
		s, err := New(Config{Storage: hs, Root: r})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	return open(), hs, open
}

// setupRotated makes tenant t, ENCRYPT key k, a v1 ciphertext, and rotates to v2.
func setupRotated(t *testing.T, s *Service) (KeyRef, []byte) {
	ctx := context.Background()
	ref := KeyRef{Tenant: "t", Key: "k"}
	if _, err := s.CreateTenant(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateKey(ctx, ref, KeySpec{Purpose: PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	ct, _, err := s.Encrypt(ctx, ref, []byte("secret"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	return ref, ct
}

// Finding 1a: a load in flight overwrites the entry updateKey just cached on
// the same replica, so a disabled version keeps decrypting for the whole TTL.
func TestAnInFlightLoadCannotResurrectADisabledVersion(t *testing.T) {
	ctx := context.Background()
	setup, hs, open := newReviewSvc(t)
	ref, ct := setupRotated(t, setup)
	s := open() // cold caches

	paused, release := hs.arm(keyStorageKey(ref), false) // pause after reading the old record
	done := make(chan error, 1)
	go func() { _, _, err := s.Decrypt(ctx, ref, ct, nil); done <- err }()
	within(t, paused, "the load to pause")
	if _, err := s.DisableKeyVersion(ctx, ref, 1); err != nil {
		t.Fatal(err)
	}
	close(release)
	within(t, done, "the in-flight call to return") // the in-flight request itself may succeed; that is fine

	if _, _, err := s.Decrypt(ctx, ref, ct, nil); !errors.Is(err, ErrKeyVersionDisabled) {
		t.Fatalf("decrypt with version 1 after DisableKeyVersion returned: got err=%v, want ErrKeyVersionDisabled", err)
	}
}

// Finding 1b: same race across replicas: the change notification arrives
// while the load is in flight, and the stale entry is cached afterwards.
func TestARemoteChangeDuringALoadIsNotUndone(t *testing.T) {
	ctx := context.Background()
	a, hs, open := newReviewSvc(t)
	ref, ct := setupRotated(t, a)
	b := open() // replica B, cold

	paused, release := hs.arm(keyStorageKey(ref), false)
	done := make(chan error, 1)
	go func() { _, _, err := b.Decrypt(ctx, ref, ct, nil); done <- err }()
	within(t, paused, "the load to pause")
	if _, err := a.DisableKeyVersion(ctx, ref, 1); err != nil {
		t.Fatal(err)
	}
	r, err := hs.Store.Get(ctx, keyStorageKey(ref))
	if err != nil {
		t.Fatal(err)
	}
	b.m.apply(storage.Change{Key: keyStorageKey(ref), Version: r.Version}) // what B's watcher delivers
	close(release)
	within(t, done, "the in-flight call to return")

	if _, _, err := b.Decrypt(ctx, ref, ct, nil); !errors.Is(err, ErrKeyVersionDisabled) {
		t.Fatalf("replica B after the notification: got err=%v, want ErrKeyVersionDisabled", err)
	}
}

// Checked fine: the tenant-deletion analogue is protected by tenantGen.
func TestAnInFlightLoadCannotResurrectADeletedTenant(t *testing.T) {
	ctx := context.Background()
	a, hs, open := newReviewSvc(t)
	ref, ct := setupRotated(t, a)
	b := open()
	paused, release := hs.arm(keyStorageKey(ref), false)
	done := make(chan error, 1)
	go func() { _, _, err := b.Decrypt(ctx, ref, ct, nil); done <- err }()
	within(t, paused, "the load to pause")
	if _, err := a.DeleteTenant(ctx, "t", 0); err != nil {
		t.Fatal(err)
	}
	r, _ := hs.Store.Get(ctx, tenantStorageKey("t"))
	b.m.apply(storage.Change{Key: tenantStorageKey("t"), Version: r.Version})
	close(release)
	within(t, done, "the in-flight call to return")
	if _, _, err := b.Encrypt(ctx, ref, []byte("x"), nil); !errors.Is(err, ErrTenantDeleted) {
		t.Fatalf("got %v, want ErrTenantDeleted", err)
	}
}

// Finding 2: one ciphertext naming a not-yet-known version evicts the cached
// key before reloading; during a storage outage the key is then gone for
// every caller although its entry was fresh.
func TestAForgedVersionDoesNotEvictTheCacheDuringAnOutage(t *testing.T) {
	ctx := context.Background()
	s, hs, _ := newReviewSvc(t)
	ref, ct := setupRotated(t, s)
	if _, _, err := s.Encrypt(ctx, ref, []byte("warm"), nil); err != nil {
		t.Fatal(err)
	}
	hs.down.Store(true)
	if _, _, err := s.Encrypt(ctx, ref, []byte("x"), nil); err != nil {
		t.Fatalf("cached key during outage before the bogus ciphertext: %v", err)
	}
	bogus := append([]byte(nil), ct...)
	bogus[4] = 3 // names version 3 (newest known is 2)
	_, _, err := s.Decrypt(ctx, ref, bogus, nil)
	t.Logf("bogus decrypt: %v", err)
	if _, _, err := s.Encrypt(ctx, ref, []byte("x"), nil); err != nil {
		t.Fatalf("cached (fresh) key after one bogus ciphertext during outage: %v", err)
	}
}

// Finding 3: loads are shared (singleflight) but run with the first caller's
// context: its cancellation fails every other caller sharing the load.
func TestACancelledCallerDoesNotFailASharedLoad(t *testing.T) {
	setup, hs, open := newReviewSvc(t)
	ref, _ := setupRotated(t, setup)
	s := open()
	paused, release := hs.arm(keyStorageKey(ref), true) // pause before reading
	ctx1, cancel1 := context.WithCancel(context.Background())
	err1 := make(chan error, 1)
	go func() { _, _, err := s.Encrypt(ctx1, ref, []byte("a"), nil); err1 <- err }()
	within(t, paused, "the load to pause")
	err2 := make(chan error, 1)
	go func() { _, _, err := s.Encrypt(context.Background(), ref, []byte("b"), nil); err2 <- err }()
	time.Sleep(100 * time.Millisecond) // let caller 2 join the shared load
	cancel1()
	close(release)
	t.Logf("caller 1 (cancelled): %v", <-err1)
	if err := <-err2; err != nil {
		t.Fatalf("caller 2 (healthy context) failed because caller 1 cancelled: %v", err)
	}
}

// A forged version prefix costs at most one reload a second per key: in
// single calls, and inside one batch call, whose items share the key the
// batch looked up (each case on a fresh service, so none inherits another's
// limit).
func TestForgedVersionsCostAtMostOneReload(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name string
		op   string // the batch's operation; "" for single calls
		call func(s *Service, b *Batch, ref KeyRef, ct []byte)
	}{
		{"Decrypt", "", func(s *Service, _ *Batch, ref KeyRef, ct []byte) { s.Decrypt(ctx, ref, ct, nil) }},
		{"DecryptBatch", "decrypt", func(_ *Service, b *Batch, _ KeyRef, ct []byte) { b.Decrypt(ctx, ct, nil) }},
		{"RewrapBatch", "rewrap", func(_ *Service, b *Batch, _ KeyRef, ct []byte) { b.Rewrap(ctx, ct, nil) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, hs, _ := newReviewSvc(t)
			ref, ct := setupRotated(t, s)
			bogus := append([]byte(nil), ct...)
			bogus[4] = 200 // a version far beyond any the key has
			var b *Batch
			if c.op != "" {
				var err error
				if b, err = s.Batch(ctx, ref, c.op); err != nil {
					t.Fatal(err)
				}
				defer b.Done()
			}
			before := hs.gets.Load()
			for range 100 {
				c.call(s, b, ref, bogus)
			}
			// One reload (a tenant read and a key read) finds no such
			// version; the next 99 within the second read nothing.
			if n := hs.gets.Load() - before; n > 2 {
				t.Fatalf("100 forged items on a warm cache: %d storage Gets, want at most 2", n)
			}
		})
	}
}

// A batch that meets a version another replica created since it began
// reloads the key once and serves the rest of its items from that.
func TestABatchReloadsOnceForANewVersion(t *testing.T) {
	ctx := context.Background()
	s, hs, open := newReviewSvc(t)
	ref, _ := setupRotated(t, s)
	b, err := s.Batch(ctx, ref, "decrypt")
	if err != nil {
		t.Fatal(err)
	}
	other := open()
	if _, err := other.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	ct, v, err := other.Encrypt(ctx, ref, []byte("new"), nil)
	if err != nil {
		t.Fatal(err)
	}
	before := hs.gets.Load()
	for range 100 {
		if pt, got, err := b.Decrypt(ctx, ct, nil); err != nil || got != v || string(pt) != "new" {
			t.Fatalf("decrypt of version %d: %q, version %d, %v", v, pt, got, err)
		}
	}
	b.Done()
	if n := hs.gets.Load() - before; n > 2 {
		t.Fatalf("100 items of a version the batch did not know: %d storage Gets, want at most 2", n)
	}
}

// A forged item whose reload found no such version, but did find a newer
// real one (another replica rotated), leaves the batch on what the reload
// found: the batch's later items of that real version decrypt, instead of
// failing as not authentic until the reload limit lapses.
func TestAForgedItemDoesNotStrandABatchOnAnOldKey(t *testing.T) {
	ctx := context.Background()
	s, _, open := newReviewSvc(t)
	ref, ct := setupRotated(t, s)
	b, err := s.Batch(ctx, ref, "decrypt")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Done()
	other := open()
	if _, err := other.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	newCT, v, err := other.Encrypt(ctx, ref, []byte("new"), nil)
	if err != nil {
		t.Fatal(err)
	}
	bogus := append([]byte(nil), ct...)
	bogus[4] = 200 // a version far beyond any the key has
	if _, _, err := b.Decrypt(ctx, bogus, nil); !errors.Is(err, ErrInvalidCiphertext) {
		t.Fatalf("forged item: %v, want ErrInvalidCiphertext", err)
	}
	if pt, got, err := b.Decrypt(ctx, newCT, nil); err != nil || got != v || string(pt) != "new" {
		t.Fatalf("item of version %d after a forged one: %q, version %d, %v", v, pt, got, err)
	}
}

func TestADisabledVersionCanBeDestroyed(t *testing.T) {
	ctx := context.Background()
	s, _, _ := newReviewSvc(t)
	ref, ct := setupRotated(t, s)
	if _, err := s.DisableKeyVersion(ctx, ref, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DestroyKeyVersion(ctx, ref, 1, 0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Decrypt(ctx, ref, ct, nil); !errors.Is(err, ErrKeyVersionDestroyed) {
		t.Fatal(err)
	}
}

// within waits for a value on ch for at most 10s, failing the test with
// what it waited for.
func within[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("waited 10s for %s", what)
	}
	var zero T
	return zero
}

// A call that starts after its tenant was deleted does not join a load of
// the key that read the tenant before the deletion.
func TestACallAfterADeletionDoesNotJoinALoadFromBeforeIt(t *testing.T) {
	ctx := context.Background()
	a, hs, open := newReviewSvc(t)
	ref, _ := setupRotated(t, a)
	b := open() // cold caches
	paused, release := hs.arm(keyStorageKey(ref), false)
	first := make(chan error, 1)
	go func() { _, _, err := b.Encrypt(ctx, ref, []byte("x"), nil); first <- err }()
	within(t, paused, "the load to pause, the tenant read")
	if _, err := b.DeleteTenant(ctx, "t", 0); err != nil {
		t.Fatal(err)
	}
	second := make(chan error, 1)
	go func() { _, _, err := b.Encrypt(ctx, ref, []byte("x"), nil); second <- err }()
	time.Sleep(50 * time.Millisecond) // time to join the paused load, if it could
	close(release)
	within(t, first, "the call from before the deletion to return")
	select {
	case err := <-second:
		if !errors.Is(err, ErrTenantDeleted) {
			t.Fatalf("a call after the deletion: %v, want ErrTenantDeleted", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the call after the deletion did not return")
	}
}

// Sealed page tokens open on every replica, also after a root rewrap (the
// key is re-wrapped, not replaced); a token not sealed by the deployment
// is refused; a page-token key the root does not open is an integrity
// failure for the servers, as a tenant KEK's would be, and root rewrap
// replaces it.
func TestPageTokensAreSealedForTheWholeDeployment(t *testing.T) {
	ctx := context.Background()
	a, hs, open := newReviewSvc(t)
	b := open()
	tok, err := a.SealPageToken(ctx, encodePageToken("tenant-9"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := b.OpenPageToken(ctx, tok); err != nil || got != encodePageToken("tenant-9") {
		t.Fatalf("another replica opened %q, %v", got, err)
	}
	for _, bad := range []string{encodePageToken("tenant-9"), "!!", tok[:len(tok)-2]} {
		if _, err := b.OpenPageToken(ctx, bad); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("token %q: %v, want ErrInvalidArgument", bad, err)
		}
	}
	before, err := hs.Store.Get(ctx, pageTokenKeyKey)
	if err != nil {
		t.Fatal(err)
	}
	if found, replaced, err := a.RewrapPageTokenKey(ctx); err != nil || !found || replaced {
		t.Fatalf("rewrap of the page-token key: found %v, replaced %v, %v; want it re-wrapped", found, replaced, err)
	}
	after, err := hs.Store.Get(ctx, pageTokenKeyKey)
	if err != nil || after.Version == before.Version {
		t.Fatalf("the page-token key after a rewrap: version %d (was %d), %v; want it re-wrapped", after.Version, before.Version, err)
	}
	if got, err := open().OpenPageToken(ctx, tok); err != nil || got != encodePageToken("tenant-9") {
		t.Fatalf("a new replica after the rewrap opened %q, %v", got, err)
	}
	if _, err := hs.Store.Put(ctx, pageTokenKeyKey, []byte("wrapped under another root"), after.Version); err != nil {
		t.Fatal(err)
	}
	if _, err := open().SealPageToken(ctx, encodePageToken("tenant-9")); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("a page-token key the root does not open: %v, want ErrIntegrity", err)
	}
	if got, err := a.OpenPageToken(ctx, tok); err != nil || got != encodePageToken("tenant-9") {
		t.Fatalf("a replica that has the key keeps opening tokens: %q, %v", got, err)
	}
	// The operator's way out: root rewrap replaces a key the root does not
	// open, and new replicas seal and open with the new one.
	if _, replaced, err := a.RewrapPageTokenKey(ctx); err != nil || !replaced {
		t.Fatalf("rewrap of a page-token key the root does not open: replaced %v, %v; want it replaced", replaced, err)
	}
	c := open()
	fresh, err := c.SealPageToken(ctx, encodePageToken("tenant-9"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := open().OpenPageToken(ctx, fresh); err != nil || got != encodePageToken("tenant-9") {
		t.Fatalf("a token under the replaced key: %q, %v", got, err)
	}
}

// flakyRoot is a real local root that counts its unwraps and can be made
// unreachable.
type flakyRoot struct {
	root.Root
	down, denied atomic.Bool
	unwraps      atomic.Int64
}

func (r *flakyRoot) Unwrap(ctx context.Context, w, aad []byte) ([]byte, error) {
	r.unwraps.Add(1)
	if r.down.Load() {
		return nil, fmt.Errorf("test root: %w", root.ErrUnavailable)
	}
	if r.denied.Load() {
		return nil, errors.New("test root: permission denied (a misconfiguration)")
	}
	return r.Root.Unwrap(ctx, w, aad)
}

// twoReplicas opens two services on one store and one root, neither
// watching: what one writes, the other misses until a test says otherwise.
func twoReplicas(t *testing.T) (a, b *Service, hs *hookStore, rt *flakyRoot) {
	t.Helper()
	lr, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	rt = &flakyRoot{Root: lr}
	hs = &hookStore{Store: memory.New()}
	open := func() *Service {
		s, err := New(Config{Storage: hs, Root: rt})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	return open(), open(), hs, rt
}

// A change notice that makes everything suspect (the watch listening again)
// makes each cached key read its records back before it serves, without
// asking the root: during a root outage at that moment every unchanged key
// serves, and during a storage outage each serves within its grace.
func TestEverythingSuspectRereadsButServesThroughOutages(t *testing.T) {
	ctx := context.Background()
	s, _, hs, rt := twoReplicas(t)
	ref, ct := setupRotated(t, s)
	if _, _, err := s.Encrypt(ctx, ref, []byte("warm"), nil); err != nil {
		t.Fatal(err)
	}
	gets, unwraps := hs.gets.Load(), rt.unwraps.Load()
	s.m.apply(storage.Change{})
	rt.down.Store(true)
	if _, _, err := s.Encrypt(ctx, ref, []byte("x"), nil); err != nil {
		t.Fatalf("encrypt during a root outage right after everything became suspect: %v", err)
	}
	if hs.gets.Load() == gets {
		t.Fatal("a suspect key served without reading its records back")
	}
	if n := rt.unwraps.Load() - unwraps; n != 0 {
		t.Fatalf("re-checking an unchanged key asked the root %d times, want 0", n)
	}
	rt.down.Store(false)

	s.m.apply(storage.Change{})
	hs.down.Store(true)
	if _, _, err := s.Encrypt(ctx, ref, []byte("x"), nil); err != nil {
		t.Fatalf("encrypt during a storage outage right after everything became suspect: %v, want the cached key within its grace", err)
	}
	if _, _, err := s.Decrypt(ctx, ref, ct, nil); err != nil {
		t.Fatalf("decrypt during the storage outage: %v", err)
	}
}

// A key version another replica disabled while this one was not listening
// never serves again once everything is suspect: not when the reload that
// follows meets a root outage, and not when the caller's deadline ends the
// re-check.
func TestASuspectEntryVoidedByAMissedChangeNeverServesAgain(t *testing.T) {
	ctx := context.Background()
	a, b, hs, rt := twoReplicas(t)
	ref, ct := setupRotated(t, a)
	if _, _, err := a.Decrypt(ctx, ref, ct, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.DisableKeyVersion(ctx, ref, 1); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Decrypt(ctx, ref, ct, nil); err != nil {
		t.Fatalf("the missed change is unseen until a notice says so, got %v", err)
	}
	a.m.apply(storage.Change{})

	// The caller's deadline ends the re-check while the key read hangs.
	paused, release := hs.arm(keyStorageKey(ref), true)
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, _, err := a.Decrypt(short, ref, ct, nil)
	cancel()
	select {
	case <-paused:
	case <-time.After(10 * time.Second):
		t.Fatal("the re-check never read the key record")
	}
	close(release)
	if err == nil {
		t.Fatal("a suspect entry served a disabled version when the caller's deadline ended its re-check")
	}

	// The reload finds the change; the KEK it needs is cached, so even a
	// root outage does not keep it from refusing.
	rt.down.Store(true)
	if _, _, err := a.Decrypt(ctx, ref, ct, nil); !errors.Is(err, ErrKeyVersionDisabled) {
		t.Fatalf("decrypt of the disabled version during a root outage: %v, want ErrKeyVersionDisabled, never the plaintext", err)
	}
	rt.down.Store(false)
	if _, _, err := a.Decrypt(ctx, ref, ct, nil); !errors.Is(err, ErrKeyVersionDisabled) {
		t.Fatalf("decrypt of the disabled version: %v, want ErrKeyVersionDisabled", err)
	}
}

// A tenant shredded and created again under the same id while this replica
// was not listening: once everything is suspect, neither its old key nor
// its old KEK serves the new tenant.
func TestATenantCreatedAgainUnseenGetsNothingOfItsPredecessor(t *testing.T) {
	ctx := context.Background()
	a, b, _, _ := twoReplicas(t)
	ref, ct := setupRotated(t, a)
	if _, _, err := a.Decrypt(ctx, ref, ct, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.DeleteTenant(ctx, ref.Tenant, 0); err != nil {
		t.Fatal(err)
	}
	b.now = func() time.Time { return time.Now().Add(400 * 24 * time.Hour) }
	if ok, err := b.shredTenant(ctx, ref.Tenant); !ok || err != nil {
		t.Fatalf("shred: %v, %v", ok, err)
	}
	if _, err := b.CreateTenant(ctx, ref.Tenant); err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateKey(ctx, ref, KeySpec{Purpose: PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	a.m.apply(storage.Change{})
	if _, _, err := a.Decrypt(ctx, ref, ct, nil); err == nil {
		t.Fatal("the shredded tenant's ciphertext decrypted after everything became suspect")
	}
	ct2, _, err := a.Encrypt(ctx, ref, []byte("new"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, _, err := b.Decrypt(ctx, ref, ct2, nil); err != nil || string(pt) != "new" {
		t.Fatalf("the new tenant's key on the other replica: %q, %v", pt, err)
	}
	// The KEK alone: a new key of the new tenant, loaded on a replica that
	// still caches the old tenant's KEK, must be opened with the new KEK.
	ref2 := KeyRef{Tenant: ref.Tenant, Key: "k2"}
	if _, err := b.CreateKey(ctx, ref2, KeySpec{Purpose: PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Encrypt(ctx, ref2, []byte("x"), nil); err != nil {
		t.Fatalf("a key of the re-created tenant: %v", err)
	}
}

// A root re-wrap gives a tenant's KEK new wrapped bytes, not a new KEK: a
// replica that cached the KEK keeps serving it through a root outage after
// the re-wrap's change notice.
func TestARootRewrapKeepsTheCachedKEKThroughARootOutage(t *testing.T) {
	ctx := context.Background()
	a, b, hs, rt := twoReplicas(t)
	ref, _ := setupRotated(t, a)
	if _, _, err := a.Encrypt(ctx, ref, []byte("warm"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.RewrapTenantKEKs(ctx, nil); err != nil {
		t.Fatal(err)
	}
	r, err := hs.Get(ctx, tenantStorageKey(ref.Tenant))
	if err != nil {
		t.Fatal(err)
	}
	a.m.apply(storage.Change{Key: tenantStorageKey(ref.Tenant), Version: r.Version})
	rt.down.Store(true)
	if _, _, err := a.Encrypt(ctx, ref, []byte("x"), nil); err != nil {
		t.Fatalf("encrypt during a root outage after a root re-wrap: %v, want the cached KEK", err)
	}
}

// A MAC under a version another replica made is verified after a reload;
// when the storage cannot be read for it, the caller gets ErrUnavailable,
// never "not valid".
func TestVerifyMACReportsAnOutageNotAnInvalidMAC(t *testing.T) {
	ctx := context.Background()
	a, b, hs, _ := twoReplicas(t)
	ref := KeyRef{Tenant: "t", Key: "m"}
	if _, err := a.CreateTenant(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateKey(ctx, ref, KeySpec{Purpose: PurposeMAC}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.ComputeMAC(ctx, ref, []byte("warm")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	mac, v, err := b.ComputeMAC(ctx, ref, []byte("data"))
	if err != nil || v != 2 {
		t.Fatalf("MAC under the new version: v%d, %v", v, err)
	}
	hs.down.Store(true)
	if ok, err := a.VerifyMAC(ctx, ref, []byte("data"), mac); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("verify a MAC of an unseen version during a storage outage: %v, %v; want ErrUnavailable", ok, err)
	}
	hs.down.Store(false)
	// A failed reload is tried again a second later.
	a.now = func() time.Time { return time.Now().Add(2 * time.Second) }
	if ok, err := a.VerifyMAC(ctx, ref, []byte("data"), mac); !ok || err != nil {
		t.Fatalf("verify after the outage: %v, %v", ok, err)
	}
}

// A tenant whose KEK the root refuses to unwrap (a denied policy) costs one
// root call per backoff, not one per request; an outage is not remembered,
// so a root that comes back serves at once.
func TestARefusedUnwrapIsNotRetriedForEveryRequest(t *testing.T) {
	ctx := context.Background()
	a, b, _, rt := twoReplicas(t)
	ref, _ := setupRotated(t, b) // cached on b, not on a
	rt.denied.Store(true)
	before := rt.unwraps.Load()
	for range 10 {
		if _, _, err := a.Encrypt(ctx, ref, []byte("x"), nil); err == nil || errors.Is(err, ErrUnavailable) {
			t.Fatalf("encrypt for an uncached tenant the root refuses: %v, want the refusal", err)
		}
	}
	if n := rt.unwraps.Load() - before; n != 1 {
		t.Fatalf("10 requests asked the root %d times within the backoff, want 1", n)
	}
	rt.denied.Store(false)
	rt.down.Store(true)
	ref2 := KeyRef{Tenant: "t2", Key: "k"}
	if _, err := b.CreateTenant(ctx, "t2"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateKey(ctx, ref2, KeySpec{Purpose: PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Encrypt(ctx, ref2, []byte("x"), nil); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("encrypt during a root outage: %v, want ErrUnavailable", err)
	}
	rt.down.Store(false)
	if _, _, err := a.Encrypt(ctx, ref2, []byte("x"), nil); err != nil {
		t.Fatalf("encrypt right after the root came back: %v", err)
	}
}

// A lost lease stays visible in a pass's error however many keys failed
// before it (a joined error keeps only the first few).
func TestALostLeaseIsNotHiddenByManyFailedKeys(t *testing.T) {
	ctx := context.Background()
	s, hs, _ := newReviewSvc(t)
	if _, err := s.CreateTenant(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	for i := range maxJoinedErrors + 5 {
		if _, err := hs.Store.Put(ctx, fmt.Sprintf("keys/t/k%02d", i), []byte("not a key record"), 0); err != nil {
			t.Fatal(err)
		}
	}
	calls := 0
	renew := func() bool { calls++; return calls <= maxJoinedErrors+2 }
	if err := s.keysPass(ctx, "t", renew); !errors.Is(err, errLeaseLost) {
		t.Fatalf("keysPass after the lease was lost: %v, want errLeaseLost among its errors", err)
	}
}

// Associated data reserved for data keys is no reason to skip the key:
// Decrypt and Rewrap answer for an unknown key, a deleted tenant or a key
// of another purpose as they would for any field, as their batches do.
func TestReservedAssociatedDataIsCheckedAfterTheKey(t *testing.T) {
	ctx := context.Background()
	s, _, _ := newReviewSvc(t)
	ref, ct := setupRotated(t, s)
	reserved := dataKeyAAD([]byte("x"))
	if _, _, err := s.Decrypt(ctx, KeyRef{Tenant: ref.Tenant, Key: "nope"}, ct, reserved); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Decrypt on an unknown key: %v, want ErrNotFound", err)
	}
	if _, _, err := s.Rewrap(ctx, KeyRef{Tenant: ref.Tenant, Key: "nope"}, ct, reserved); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Rewrap on an unknown key: %v, want ErrNotFound", err)
	}
	if _, _, err := s.Decrypt(ctx, ref, ct, reserved); !errors.Is(err, ErrInvalidCiphertext) {
		t.Fatalf("Decrypt on the key: %v, want ErrInvalidCiphertext", err)
	}
	if _, err := s.DeleteTenant(ctx, ref.Tenant, 0); err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"Decrypt": func() error { _, _, err := s.Decrypt(ctx, ref, ct, reserved); return err },
		"Rewrap":  func() error { _, _, err := s.Rewrap(ctx, ref, ct, reserved); return err },
	} {
		if err := call(); !errors.Is(err, ErrTenantDeleted) {
			t.Fatalf("%s on a deleted tenant: %v, want ErrTenantDeleted", name, err)
		}
	}
}

// A ListKeys page token pages the tenant it was made for: on another
// tenant it is refused, not used to skip that tenant's keys.
func TestAListKeysPageTokenIsBoundToItsTenant(t *testing.T) {
	ctx := context.Background()
	s, _, _ := newReviewSvc(t)
	for _, tn := range []string{"a", "b"} {
		if _, err := s.CreateTenant(ctx, tn); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"k1", "k2", "k3"} {
			if _, err := s.CreateKey(ctx, KeyRef{Tenant: tn, Key: k}, KeySpec{Purpose: PurposeEncrypt}); err != nil {
				t.Fatal(err)
			}
		}
	}
	_, tok, err := s.ListKeys(ctx, "a", 2, "")
	if err != nil || tok == "" {
		t.Fatalf("first page of a: %q, %v", tok, err)
	}
	if keys, _, err := s.ListKeys(ctx, "a", 2, tok); err != nil || len(keys) != 1 || keys[0].ID != "k3" {
		t.Fatalf("second page of a: %v, %v", keys, err)
	}
	if _, _, err := s.ListKeys(ctx, "b", 2, tok); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("a's page token on b: %v, want ErrInvalidArgument", err)
	}
}

// A batch whose reload for an unknown version met an outage gives its other
// such items the same answer: a batch of forged prefixes during an outage
// costs one storage read, not one per item.
func TestABatchReloadsOnceThroughAnOutage(t *testing.T) {
	ctx := context.Background()
	s, hs, _ := newReviewSvc(t)
	ref, ct := setupRotated(t, s)
	if _, _, err := s.Decrypt(ctx, ref, ct, nil); err != nil {
		t.Fatal(err)
	}
	forged := bytes.Clone(ct)
	binary.BigEndian.PutUint32(forged[1:5], 7) // a version in the reload window
	hs.down.Store(true)
	before := hs.gets.Load()
	b, err := s.Batch(ctx, ref, "decrypt")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Done()
	for i := range 50 {
		if _, _, err := b.Decrypt(ctx, forged, nil); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("item %d during the outage: %v, want ErrUnavailable", i, err)
		}
	}
	if n := hs.gets.Load() - before; n > 2 {
		t.Fatalf("50 forged items read the storage %d times during the outage, want at most 2", n)
	}
	// A single call after the outage reloads (a failed reload is tried
	// again a second later).
	hs.down.Store(false)
	s.now = func() time.Time { return time.Now().Add(2 * time.Second) }
	if _, _, err := s.Decrypt(ctx, ref, forged, nil); !errors.Is(err, ErrInvalidCiphertext) {
		t.Fatalf("the forged ciphertext after the outage: %v, want ErrInvalidCiphertext", err)
	}
}

// pausingList pauses the first List of one prefix after it has read, so a
// test can act between a listing and the deletes made from it.
type pausingList struct {
	storage.Store
	prefix          string
	paused, release chan struct{}
	once            sync.Once
}

func (p *pausingList) List(ctx context.Context, prefix, after string, limit int) ([]storage.Record, error) {
	recs, err := p.Store.List(ctx, prefix, after, limit)
	if prefix == p.prefix {
		p.once.Do(func() {
			close(p.paused)
			<-p.release
		})
	}
	return recs, err
}

// Two shreds of one tenant at once (a lease that changed hands mid-shred,
// or RunOnce beside the holder): when one finishes and the id is created
// again, the other must not go on deleting the new tenant's keys.
func TestAStaleShredSparesTheTenantCreatedAgain(t *testing.T) {
	t.Run("with a key", func(t *testing.T) { staleShred(t, true) })
	// Without keys the stale shred finds nothing to delete, and meets the
	// new tenant record only at its last delete: a race it lost, not a
	// failure.
	t.Run("without keys", func(t *testing.T) { staleShred(t, false) })
}

func staleShred(t *testing.T, withKey bool) {
	ctx := context.Background()
	pausePrefix := keyStoragePrefix("t")
	if !withKey {
		pausePrefix = LockoutStoragePrefix("t") // the last listing before the tenant record's delete
	}
	lr, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	mem := memory.New()
	ref := KeyRef{Tenant: "t", Key: "k"}
	pl := &pausingList{Store: mem, prefix: pausePrefix, paused: make(chan struct{}), release: make(chan struct{})}
	a, err := New(Config{Storage: mem, Root: lr})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Storage: pl, Root: lr})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateTenant(ctx, ref.Tenant); err != nil {
		t.Fatal(err)
	}
	if withKey {
		if _, err := a.CreateKey(ctx, ref, KeySpec{Purpose: PurposeEncrypt}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.DeleteTenant(ctx, ref.Tenant, 0); err != nil {
		t.Fatal(err)
	}
	later := func() time.Time { return time.Now().Add(400 * 24 * time.Hour) }
	a.now, b.now = later, later
	type result struct {
		ok  bool
		err error
	}
	done := make(chan result, 1)
	go func() {
		ok, err := b.shredTenant(ctx, ref.Tenant)
		done <- result{ok, err}
	}()
	within(t, pl.paused, "the stale shred lists the old records")
	if ok, err := a.shredTenant(ctx, ref.Tenant); !ok || err != nil {
		t.Fatalf("shred: %v, %v", ok, err)
	}
	if _, err := a.CreateTenant(ctx, ref.Tenant); err != nil {
		t.Fatal(err)
	}
	if withKey {
		if _, err := a.CreateKey(ctx, ref, KeySpec{Purpose: PurposeEncrypt}); err != nil {
			t.Fatal(err)
		}
	}
	close(pl.release)
	r := within(t, done, "the stale shred ends")
	if r.ok || r.err != nil {
		t.Errorf("the stale shred: shredded %v, error %v; want neither", r.ok, r.err)
	}
	if _, err := mem.Get(ctx, keyStorageKey(ref)); withKey && err != nil {
		t.Fatalf("the new tenant's key after the stale shred: %v", err)
	}
	if _, err := mem.Get(ctx, tenantStorageKey(ref.Tenant)); err != nil {
		t.Fatalf("the new tenant's record after the stale shred: %v", err)
	}
}

// The same for envelopes: an envelope whose data key names a version in the
// reload window costs the batch one storage read during an outage, not one
// per item, whether the batch decrypts or rewraps it.
func TestABatchOfEnvelopesReloadsOnceThroughAnOutage(t *testing.T) {
	ctx := context.Background()
	s, hs, _ := newReviewSvc(t)
	ref, ct := setupRotated(t, s)
	if _, _, err := s.Decrypt(ctx, ref, ct, nil); err != nil {
		t.Fatal(err)
	}
	_, wrapped, _, err := s.GenerateDataKey(ctx, ref, []byte(envelope.DataKeyContext), true)
	if err != nil {
		t.Fatal(err)
	}
	forgedWrapped := bytes.Clone(wrapped)
	binary.BigEndian.PutUint32(forgedWrapped[1:5], 7) // a version in the reload window
	k, err := envelope.NewKey(make([]byte, 32), forgedWrapped)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := k.Seal([]byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{"decrypt", "rewrap"} {
		hs.down.Store(true)
		before := hs.gets.Load()
		b, err := s.Batch(ctx, ref, op)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 50 {
			if op == "decrypt" {
				_, _, err = b.Decrypt(ctx, forged, nil)
			} else {
				_, _, err = b.Rewrap(ctx, forged, nil)
			}
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("%s: item %d during the outage: %v, want ErrUnavailable", op, i, err)
			}
		}
		b.Done()
		if n := hs.gets.Load() - before; n > 2 {
			t.Fatalf("%s: 50 forged envelopes read the storage %d times during the outage, want at most 2", op, n)
		}
		hs.down.Store(false)
	}
}

// The same when the tenant's KEK is cached but past its TTL (within its
// grace): a refusal is remembered for it too, not met again by every
// request's reload.
func TestARefusedUnwrapIsNotRetriedForAStaleCachedKEK(t *testing.T) {
	ctx := context.Background()
	lr, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	rt := &flakyRoot{Root: lr}
	s, err := New(Config{Storage: memory.New(), Root: rt, CacheTTL: 20 * time.Millisecond, UnavailableGrace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := setupRotated(t, s)
	if _, _, err := s.Encrypt(ctx, ref, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // past the TTL, within the grace
	rt.denied.Store(true)
	before := rt.unwraps.Load()
	for range 10 {
		if _, _, err := s.Encrypt(ctx, ref, []byte("x"), nil); err == nil || errors.Is(err, ErrUnavailable) {
			t.Fatalf("encrypt with a stale KEK the root now refuses: %v, want the refusal", err)
		}
	}
	if n := rt.unwraps.Load() - before; n != 1 {
		t.Fatalf("10 requests asked the root %d times within the backoff, want 1", n)
	}
}

// An entry made suspect (the watch listening again) stays suspect when
// this replica's count flush rewrites its key record: the flush checks only
// the key record, not the tenant's, which another replica may have changed
// unseen (here: scheduled for deletion). A caller whose deadline ends the
// re-check is not served from it.
func TestACountFlushKeepsAnEntrySuspect(t *testing.T) {
	ctx := context.Background()
	a, b, hs, _ := twoReplicas(t)
	ref, _ := setupRotated(t, a)
	if _, _, err := a.Encrypt(ctx, ref, []byte("counted"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.DeleteTenant(ctx, ref.Tenant, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	a.m.apply(storage.Change{})
	if err := a.FlushUsage(ctx); err != nil {
		t.Fatal(err)
	}

	paused, release := hs.arm(tenantStorageKey(ref.Tenant), true)
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, _, err := a.Encrypt(short, ref, []byte("after the flush"), nil)
	cancel()
	if err == nil {
		t.Fatal("a suspect entry of a tenant deleted elsewhere encrypted after a count flush, without its records read back")
	}
	select {
	case <-paused:
	case <-time.After(10 * time.Second):
		t.Fatal("the re-check never read the tenant record")
	}
	close(release)
	if _, _, err := a.Encrypt(ctx, ref, []byte("x"), nil); !errors.Is(err, ErrTenantDeleted) {
		t.Fatalf("encrypt once the re-check can read: %v, want ErrTenantDeleted", err)
	}
	// The change found, the old entry does not serve in a later outage.
	hs.down.Store(true)
	if _, _, err := a.Encrypt(ctx, ref, []byte("x"), nil); err == nil {
		t.Fatal("the suspect entry of a tenant found deleted encrypted again once the storage went down")
	}
}

// clockedReplica opens a service on hs and rt with a clock the test moves,
// a one-minute cache TTL and an hour's grace.
func clockedReplica(t *testing.T, hs *hookStore, rt *flakyRoot) (*Service, *atomic.Int64) {
	t.Helper()
	var offset atomic.Int64
	s, err := New(Config{Storage: hs, Root: rt, CacheTTL: time.Minute, UnavailableGrace: time.Hour,
		Now: func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }})
	if err != nil {
		t.Fatal(err)
	}
	return s, &offset
}

// A cached key whose reload was refused (its tenant deleted elsewhere)
// never serves again: not in a storage outage after it, within the grace
// that would let a key whose reload could not be made serve.
func TestARefusedKeyDoesNotServeAgainInALaterOutage(t *testing.T) {
	ctx := context.Background()
	_, b, hs, rt := twoReplicas(t)
	ref, _ := setupRotated(t, b)
	other := secondKey(t, b, ref)
	a, offset := clockedReplica(t, hs, rt)
	cacheKeys(t, a, ref, other)
	if _, err := b.DeleteTenant(ctx, ref.Tenant, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	offset.Add(int64(2 * time.Minute)) // past the TTL
	if _, _, err := a.Encrypt(ctx, ref, []byte("x"), nil); !errors.Is(err, ErrTenantDeleted) {
		t.Fatalf("encrypt past the TTL: %v, want ErrTenantDeleted", err)
	}
	hs.down.Store(true)
	for _, r := range []KeyRef{ref, other} { // the tenant's other key too
		if _, _, err := a.Encrypt(ctx, r, []byte("x"), nil); err == nil {
			t.Fatalf("%s, of a tenant found deleted, encrypted again once the storage went down", r)
		}
	}
}

// cacheKeys encrypts once with each key, so that s caches it.
func cacheKeys(t *testing.T, s *Service, refs ...KeyRef) {
	t.Helper()
	for _, r := range refs {
		if _, _, err := s.Encrypt(context.Background(), r, []byte("cached"), nil); err != nil {
			t.Fatal(err)
		}
	}
}

// secondKey creates another ENCRYPT key of ref's tenant.
func secondKey(t *testing.T, s *Service, ref KeyRef) KeyRef {
	t.Helper()
	other := KeyRef{Tenant: ref.Tenant, Key: ref.Key + "-2"}
	if _, err := s.CreateKey(context.Background(), other, KeySpec{Purpose: PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	return other
}

// A cached KEK the root then refused to unwrap again (a revoked permission)
// never serves again: not in a root outage after it.
func TestAKEKTheRootRefusedDoesNotServeAgainInALaterOutage(t *testing.T) {
	ctx := context.Background()
	_, b, hs, rt := twoReplicas(t)
	ref, _ := setupRotated(t, b)
	other := secondKey(t, b, ref)
	a, offset := clockedReplica(t, hs, rt)
	cacheKeys(t, a, ref, other)
	offset.Add(int64(2 * time.Minute)) // past the TTL
	rt.denied.Store(true)
	if _, _, err := a.Encrypt(ctx, ref, []byte("x"), nil); err == nil || errors.Is(err, ErrUnavailable) {
		t.Fatalf("encrypt with the root refusing: %v, want its refusal", err)
	}
	rt.denied.Store(false)
	rt.down.Store(true)
	offset.Add(int64(10 * time.Second))      // past the refusal's backoff
	for _, r := range []KeyRef{ref, other} { // the tenant's other key too
		if _, _, err := a.Encrypt(ctx, r, []byte("x"), nil); err == nil {
			t.Fatalf("%s: a KEK the root refused encrypted again once the root became unreachable", r)
		}
	}
}

// stallPuts is a store whose writes of one key wait until their context
// ends: a storage connection gone silent.
type stallPuts struct {
	storage.Store
	key     string
	stalled chan struct{} // receives once a write waits
	release chan struct{} // closed: writes go on
}

func (s *stallPuts) Put(ctx context.Context, key string, v []byte, expect uint64) (uint64, error) {
	if key == s.key {
		select {
		case s.stalled <- struct{}{}:
		default:
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("test: %w", ctx.Err())
		case <-s.release:
		}
	}
	return s.Store.Put(ctx, key, v, expect)
}

// A count flush whose write stalls is cut by its bound, so the other keys'
// counts still reach storage at the next pass: the flush loop waited for
// ever (until TCP gave up), holding back every key's counts.
func TestAStalledCountFlushDoesNotHoldBackTheOthers(t *testing.T) {
	ctx := context.Background()
	r, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	st := &stallPuts{Store: memory.New(), stalled: make(chan struct{}, 1), release: make(chan struct{})}
	s, err := New(Config{Storage: st, Root: r})
	if err != nil {
		t.Fatal(err)
	}
	s.flushTimeout = 200 * time.Millisecond
	stuck, other := KeyRef{Tenant: "t", Key: "stuck"}, KeyRef{Tenant: "t", Key: "other"}
	if _, err := s.CreateTenant(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []KeyRef{stuck, other} {
		if _, err := s.CreateKey(ctx, ref, KeySpec{Purpose: PurposeEncrypt}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s.Encrypt(ctx, stuck, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	st.key = keyStorageKey(stuck) // set before the loop starts: no race
	run, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); s.RunCountFlush(run, 20*time.Millisecond) }()
	defer func() { close(st.release); stop(); <-done }()
	select {
	case <-st.stalled:
	case <-time.After(10 * time.Second):
		t.Fatal("the flush never wrote the stalled key")
	}
	if _, _, err := s.Encrypt(ctx, other, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := s.GetKey(ctx, other)
		if err != nil {
			t.Fatal(err)
		}
		if info.Versions[0].EncryptCount == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the other key's count never reached storage while one key's flush stalled")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A change notice for a key this replica neither caches nor is loading
// leaves the cache alone: its marker pushed a live entry out, and every
// replica's count flush writes each key it used, so a replica serving
// some tenants lost its entries to the keys others used.
func TestNoticesForKeysNotCachedEvictNothing(t *testing.T) {
	ctx := context.Background()
	r, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Storage: memory.New(), Root: r, CacheSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateTenant(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	refs := []KeyRef{{Tenant: "t", Key: "a"}, {Tenant: "t", Key: "b"}}
	for _, ref := range refs {
		if _, err := s.CreateKey(ctx, ref, KeySpec{Purpose: PurposeEncrypt}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Encrypt(ctx, ref, []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	_, _, evictions := s.CacheStats()
	for i, other := range []string{"c", "d", "e"} {
		s.m.apply(storage.Change{Key: keyStorageKey(KeyRef{Tenant: "t", Key: other}), Version: uint64(1000 + i)})
	}
	_, misses, _ := s.CacheStats()
	for _, ref := range refs {
		if _, _, err := s.Encrypt(ctx, ref, []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	_, missesAfter, evictionsAfter := s.CacheStats()
	if evictionsAfter != evictions || missesAfter != misses {
		t.Fatalf("notices for keys not cached: %d evictions and %d misses, want none", evictionsAfter-evictions, missesAfter-misses)
	}
	// A notice for a key that is cached still voids its entry.
	s.m.apply(storage.Change{Key: keyStorageKey(refs[0]), Version: 1 << 40})
	if _, _, err := s.Encrypt(ctx, refs[0], []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if _, m, _ := s.CacheStats(); m != missesAfter+1 {
		t.Fatalf("a notice for a cached key: %d misses after it, want 1", m-missesAfter)
	}
}

// A tenant found deleted or shredded by the re-check of a suspect entry
// (the watch listening again after missing the change) voids every key of
// it cached here: only the refreshed key left the cache, and the others
// served in a later storage outage.
func TestATenantFoundGoneOnARecheckVoidsAllItsKeys(t *testing.T) {
	for _, shred := range []bool{false, true} {
		t.Run(fmt.Sprintf("shredded=%v", shred), func(t *testing.T) {
			ctx := context.Background()
			a, b, hs, _ := twoReplicas(t)
			ref, _ := setupRotated(t, b)
			other := secondKey(t, b, ref)
			cacheKeys(t, a, ref, other)
			if _, err := b.DeleteTenant(ctx, ref.Tenant, 0); err != nil {
				t.Fatal(err)
			}
			if shred {
				b.now = func() time.Time { return time.Now().Add(400 * 24 * time.Hour) } // past the default waiting period
				if ok, err := b.shredTenant(ctx, ref.Tenant); !ok || err != nil {
					t.Fatalf("shred: %v, %v", ok, err)
				}
			}
			a.m.apply(storage.Change{}) // the watch listening again: everything suspect
			if _, _, err := a.Encrypt(ctx, ref, []byte("x"), nil); err == nil {
				t.Fatal("the re-check of a tenant gone encrypted")
			}
			hs.down.Store(true)
			if _, _, err := a.Encrypt(ctx, other, []byte("x"), nil); err == nil {
				t.Fatal("another key of the tenant found gone encrypted once the storage went down")
			}
		})
	}
}

// Ciphertexts naming a version the cached key does not know, during a
// storage outage, cost at most one reload attempt a second, not a storage
// read each: a caller with decrypt on the key could otherwise turn every
// call into one.
func TestUnknownVersionsDuringAnOutageReloadOnceASecond(t *testing.T) {
	ctx := context.Background()
	s, _, hs, _ := twoReplicas(t)
	ref, ct := setupRotated(t, s)
	if _, _, err := s.Decrypt(ctx, ref, ct, nil); err != nil {
		t.Fatal(err)
	}
	forged := append([]byte(nil), ct...)
	forged[4] = 3 // the version after the primary (2): a reload looks for it
	hs.down.Store(true)
	gets := hs.gets.Load()
	for range 20 {
		if _, _, err := s.Decrypt(ctx, ref, forged, nil); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("an unknown version during an outage: %v, want ErrUnavailable", err)
		}
	}
	if n := hs.gets.Load() - gets; n > 2 {
		t.Fatalf("%d storage reads for 20 calls within a second, want at most one reload's", n)
	}
}

// A reload for an unknown version that finds the tenant deleted (the watch
// missed it) voids the tenant's cached keys, as the cache's own refresh
// does: they served on, and again in a later outage.
func TestAReloadForAnUnknownVersionThatFindsTheTenantGoneVoidsItsKeys(t *testing.T) {
	ctx := context.Background()
	a, b, hs, _ := twoReplicas(t)
	ref, ct := setupRotated(t, b)
	cacheKeys(t, a, ref)
	if _, err := b.DeleteTenant(ctx, ref.Tenant, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	forged := append([]byte(nil), ct...)
	forged[4] = 3 // the version after the primary (2): a reload looks for it
	if _, _, err := a.Decrypt(ctx, ref, forged, nil); !errors.Is(err, ErrTenantDeleted) {
		t.Fatalf("the reload for an unknown version: %v, want ErrTenantDeleted", err)
	}
	hs.down.Store(true)
	if _, _, err := a.Encrypt(ctx, ref, []byte("x"), nil); err == nil {
		t.Fatal("the key of a tenant found deleted encrypted again once the storage went down")
	}
}

// A name that holds another key since it was cached (its tenant shredded
// and created again, or a store restored, unseen by this replica), of
// another purpose with more versions: a call naming a version only the
// new key has reloads it, and must refuse the new purpose rather than
// call a primitive the entry does not have.
func TestAReloadThatFindsAnotherPurposeIsRefused(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name          string
		cached, other Purpose
		call          func(s *Service, ref KeyRef, msg []byte) error
	}{
		{"decrypt", PurposeEncrypt, PurposeMAC, func(s *Service, ref KeyRef, msg []byte) error {
			_, _, err := s.Decrypt(ctx, ref, msg, nil)
			return err
		}},
		{"verify MAC", PurposeMAC, PurposeEncrypt, func(s *Service, ref KeyRef, msg []byte) error {
			_, err := s.VerifyMAC(ctx, ref, []byte("data"), msg)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
			if err != nil {
				t.Fatal(err)
			}
			open := func(st storage.Store) *Service {
				s, err := New(Config{Storage: st, Root: r})
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
			mk := func(s *Service, p Purpose, versions int) KeyRef {
				ref := KeyRef{Tenant: "t", Key: "k"}
				if _, err := s.CreateTenant(ctx, "t"); err != nil {
					t.Fatal(err)
				}
				if _, err := s.CreateKey(ctx, ref, KeySpec{Purpose: p}); err != nil {
					t.Fatal(err)
				}
				for range versions - 1 {
					if _, err := s.RotateKey(ctx, ref); err != nil {
						t.Fatal(err)
					}
				}
				return ref
			}
			store := memory.New()
			s := open(store)
			ref := mk(s, tc.cached, 1)
			if _, err := s.m.key(ctx, ref); err != nil { // cached
				t.Fatal(err)
			}
			elsewhere := memory.New()
			other := open(elsewhere)
			mk(other, tc.other, 2)
			for _, key := range []string{tenantStorageKey("t"), keyStorageKey(ref)} {
				rec, err := elsewhere.Get(ctx, key)
				if err != nil {
					t.Fatal(err)
				}
				cur, err := store.Get(ctx, key)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := store.Put(ctx, key, rec.Value, cur.Version); err != nil {
					t.Fatal(err)
				}
			}
			msg := make([]byte, 5+32)
			msg[0] = 1
			binary.BigEndian.PutUint32(msg[1:], 2) // a version only the new key has
			err = tc.call(s, ref, msg)
			if !errors.Is(err, ErrWrongPurpose) {
				t.Fatalf("a call reaching the key now of purpose %v: %v, want ErrWrongPurpose", tc.other, err)
			}
		})
	}
}

// A notice about another tenant (one created, re-wrapped or shredded
// elsewhere) during a load does not keep what the load read from being
// cached, nor, through the KEK, from being cached next time: with one
// generation for all tenants, a replica writing tenant records one after
// another (custos root rewrap on PostgreSQL) kept every replica's loads
// from caching anything.
func TestANoticeAboutAnotherTenantDoesNotStopALoadFromCaching(t *testing.T) {
	ctx := context.Background()
	a, hs, open := newReviewSvc(t)
	ref, ct := setupRotated(t, a)
	other := "x"
	for i := 0; a.m.gens.stripe(other) == a.m.gens.stripe(ref.Tenant); i++ {
		other = fmt.Sprint("x", i) // a tenant of another stripe
	}
	if _, err := a.CreateTenant(ctx, other); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{tenantStorageKey(ref.Tenant), keyStorageKey(ref)} {
		b := open()
		paused, release := hs.arm(key, false)
		done := make(chan error, 1)
		go func() { _, _, err := b.Decrypt(ctx, ref, ct, nil); done <- err }()
		within(t, paused, "the load to pause")
		r, err := hs.Store.Get(ctx, tenantStorageKey(other))
		if err != nil {
			t.Fatal(err)
		}
		b.m.apply(storage.Change{Key: tenantStorageKey(other), Version: r.Version})
		close(release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if _, _, ok := b.m.keks.get(ref.Tenant); !ok {
			t.Errorf("paused at %s: the tenant's KEK was not cached", key)
		}
		if e, _, ok := b.m.keys.get(ref); !ok || e.tombstone() {
			t.Errorf("paused at %s: the key was not cached", key)
		}
		_, before, _ := b.CacheStats()
		if _, _, err := b.Decrypt(ctx, ref, ct, nil); err != nil {
			t.Fatal(err)
		}
		if _, after, _ := b.CacheStats(); after != before {
			t.Errorf("paused at %s: the next call loaded again (misses %d → %d)", key, before, after)
		}
	}
}

// A load of a tenant's KEK that a notice of that tenant's deletion
// overtook does not put the KEK back in memory: a shredded tenant's KEK
// stayed there until it expired.
func TestAKEKLoadOvertakenByTheTenantsDeletionIsNotCached(t *testing.T) {
	ctx := context.Background()
	a, hs, open := newReviewSvc(t)
	ref, ct := setupRotated(t, a)
	b := open()
	paused, release := hs.arm(tenantStorageKey(ref.Tenant), false)
	done := make(chan error, 1)
	go func() { _, _, err := b.Decrypt(ctx, ref, ct, nil); done <- err }()
	within(t, paused, "the load to pause")
	b.m.apply(storage.Change{Key: tenantStorageKey(ref.Tenant)}) // deleted (version 0)
	close(release)
	<-done
	if _, _, ok := b.m.keks.get(ref.Tenant); ok {
		t.Fatal("the KEK of a tenant deleted during its load was cached")
	}
}

// A batch whose key is refused on reload (its tenant deleted, unseen when
// the batch began) gives the refusal to its other items of new versions,
// rather than reloading for each: 10,000 items meant 10,000 reads and as
// many walks of the whole key cache under its lock.
func TestABatchRefusedOnReloadDoesNotReloadPerItem(t *testing.T) {
	ctx := context.Background()
	s, hs, _ := newReviewSvc(t)
	ref, ct := setupRotated(t, s)
	b, err := s.Batch(ctx, ref, "decrypt")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Done()
	// The tenant deleted behind the batch's back (another replica's write,
	// its notice not yet here).
	rec, err := hs.Store.Get(ctx, tenantStorageKey(ref.Tenant))
	if err != nil {
		t.Fatal(err)
	}
	if err := hs.Store.Delete(ctx, rec.Key, rec.Version); err != nil {
		t.Fatal(err)
	}
	newer := append([]byte(nil), ct...)
	binary.BigEndian.PutUint32(newer[1:], b.e.rec.maxVersion()+1)
	before := hs.gets.Load()
	for range 100 {
		if _, _, err := b.Decrypt(ctx, newer, nil); err == nil || errors.Is(err, ErrInvalidCiphertext) {
			t.Fatalf("an item of a newer version with the tenant gone: %v, want the refusal", err)
		}
	}
	if n := hs.gets.Load() - before; n > 2 {
		t.Fatalf("100 items of a newer version with the tenant gone: %d storage reads, want one reload", n)
	}
}

// A stale shred of an older incarnation, stalled while the id was created
// and shredded again, does not put its older tombstone over the newer one
// (which covers more: a restore would bring the later tenant back).
func TestAnOlderTombstoneDoesNotReplaceANewerOne(t *testing.T) {
	ctx := context.Background()
	s, hs, _ := newReviewSvc(t)
	t1 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	t2 := t1.Add(48 * time.Hour)
	if err := s.writeTombstone(ctx, tenantRecord{CreateTime: t2, ShredTime: t2.Add(time.Hour)}, "acme"); err != nil {
		t.Fatal(err)
	}
	if err := s.writeTombstone(ctx, tenantRecord{CreateTime: t1, ShredTime: t1.Add(time.Hour)}, "acme"); err != nil {
		t.Fatal(err)
	}
	rec, err := hs.Get(ctx, TombstonePrefix+"acme")
	if err != nil {
		t.Fatal(err)
	}
	ts, err := ParseTombstone(rec.Value)
	if err != nil {
		t.Fatal(err)
	}
	if !ts.CreateTime.Equal(t2) {
		t.Fatalf("the tombstone after an older incarnation's shred: created %v, want the newer %v", ts.CreateTime, t2)
	}
}
