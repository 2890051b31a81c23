package keystore_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custos-kms/custos/internal/testkit"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/memory"
)

// switchableRoot is a real local root that can be made unreachable.
type switchableRoot struct {
	root.Root
	down  atomic.Bool
	calls atomic.Int64
}

func (r *switchableRoot) Wrap(ctx context.Context, pt, aad []byte) ([]byte, error) {
	r.calls.Add(1)
	if r.down.Load() {
		return nil, fmt.Errorf("test root: %w", root.ErrUnavailable)
	}
	return r.Root.Wrap(ctx, pt, aad)
}

func (r *switchableRoot) Unwrap(ctx context.Context, w, aad []byte) ([]byte, error) {
	r.calls.Add(1)
	if r.down.Load() {

		return nil, fmt.Errorf("test root: %w", root.ErrUnavailable)
	}
	return r.Root.Unwrap(ctx, w, aad)
}

type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestRootOutageServesCachedTenantsForTheGrace(t *testing.T) {
	ctx := context.Background()
	lr, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	rt := &switchableRoot{Root: lr}
	clock := &testClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	store := memory.New()
	setup, err := keystore.New(keystore.Config{Storage: store, Root: rt, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	for _, tn := range []string{"cached", "cold"} {
		if _, err := setup.CreateTenant(ctx, tn); err != nil {
			t.Fatal(err)
		}
		if _, err := setup.CreateKey(ctx, keystore.KeyRef{Tenant: tn, Key: "k"}, keystore.KeySpec{Purpose: keystore.PurposeEncrypt}); err != nil {
			t.Fatal(err)
		}
	}
	ks, err := keystore.New(keystore.Config{Storage: store, Root: rt, Now: clock.Now, CacheTTL: time.Minute, UnavailableGrace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cached := keystore.KeyRef{Tenant: "cached", Key: "k"}
	cold := keystore.KeyRef{Tenant: "cold", Key: "k"}
	ct, _, err := ks.Encrypt(ctx, cached, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}

	rt.down.Store(true)
	clock.Advance(10 * time.Minute) // past the TTL, inside the grace
	if _, _, err := ks.Encrypt(ctx, cached, []byte("y"), nil); err != nil {
		t.Fatalf("cached tenant during outage: %v", err)
	}
	if _, _, err := ks.Decrypt(ctx, cached, ct, nil); err != nil {
		t.Fatalf("cached tenant decrypt during outage: %v", err)
	}
	if _, _, err := ks.Encrypt(ctx, cold, []byte("y"), nil); !errors.Is(err, keystore.ErrUnavailable) {
		t.Fatalf("uncached tenant during outage: got %v, want ErrUnavailable", err)
	}
	// During the outage a stale entry retries the root at most once per backoff.
	before := rt.calls.Load()
	for range 50 {
		if _, _, err := ks.Encrypt(ctx, cached, []byte("y"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := rt.calls.Load() - before; n > 0 {
		t.Fatalf("root called %d times for 50 requests within one backoff", n)
	}

	rt.down.Store(false)
	clock.Advance(10 * time.Second)
	if _, _, err := ks.Encrypt(ctx, cold, []byte("y"), nil); err != nil {
		t.Fatalf("uncached tenant after the root returned: %v", err)
	}

	// Past the grace, a cached tenant needs the root again.
	rt.down.Store(true)
	clock.Advance(2 * time.Hour)
	if _, _, err := ks.Encrypt(ctx, cached, []byte("z"), nil); !errors.Is(err, keystore.ErrUnavailable) {
		t.Fatalf("cached tenant past the grace: got %v, want ErrUnavailable", err)
	}
}

// downStore is a memory store whose reads fail, slowly, while down.
type downStore struct {
	storage.Store
	down atomic.Bool
}

func (s *downStore) Get(ctx context.Context, key string) (storage.Record, error) {
	if s.down.Load() {
		time.Sleep(100 * time.Millisecond)
		return storage.Record{}, fmt.Errorf("test store: %w", storage.ErrUnavailable)
	}
	return s.Store.Get(ctx, key)
}

// An outage is logged once per failed refresh, not once per caller that
// waited on it.
func TestAFailedRefreshIsLoggedOncePerAttempt(t *testing.T) {
	ctx := context.Background()
	lr, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	clock := &testClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	var logs testkit.SyncBuffer
	store := &downStore{Store: memory.New()}
	ks, err := keystore.New(keystore.Config{Storage: store, Root: lr, Now: clock.Now, CacheTTL: time.Minute, UnavailableGrace: time.Hour,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ref := keystore.KeyRef{Tenant: "t", Key: "k"}
	if _, err := ks.CreateTenant(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.CreateKey(ctx, ref, keystore.KeySpec{Purpose: keystore.PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ks.Encrypt(ctx, ref, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	store.down.Store(true)
	clock.Advance(10 * time.Minute)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			if _, _, err := ks.Encrypt(ctx, ref, []byte("y"), nil); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := strings.Count(logs.String(), "refresh failed; serving cached key"); n != 1 {
		t.Fatalf("32 callers sharing one failed refresh logged it %d times, want once:\n%s", n, logs.String())
	}
}

// The grace counts from the last answer of the root: a key reloaded during
// an outage (its storage record read again, under the KEK served from the
// grace) does not start a grace of its own. A hot key was served for
// about twice the grace with no root answer.
func TestAKeyReloadedInAnOutageKeepsItsTenantsGrace(t *testing.T) {
	ctx := context.Background()
	lr, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	rt := &switchableRoot{Root: lr}
	clock := &testClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	ks, err := keystore.New(keystore.Config{Storage: memory.New(), Root: rt, Now: clock.Now, CacheTTL: time.Minute, UnavailableGrace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ref := keystore.KeyRef{Tenant: "t", Key: "k"}
	if _, err := ks.CreateTenant(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.CreateKey(ctx, ref, keystore.KeySpec{Purpose: keystore.PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ks.Encrypt(ctx, ref, []byte("x"), nil); err != nil { // the root's last answer: now
		t.Fatal(err)
	}
	rt.down.Store(true)
	clock.Advance(10 * time.Minute) // the key reloads under the KEK of the grace
	if _, _, err := ks.Encrypt(ctx, ref, []byte("y"), nil); err != nil {
		t.Fatalf("within the grace: %v", err)
	}
	clock.Advance(55 * time.Minute) // 1h05m since the root answered: past TTL + grace
	if _, _, err := ks.Encrypt(ctx, ref, []byte("z"), nil); !errors.Is(err, keystore.ErrUnavailable) {
		t.Fatalf("1h05m after the root's last answer (TTL 1m, grace 1h): %v, want ErrUnavailable", err)
	}
}
