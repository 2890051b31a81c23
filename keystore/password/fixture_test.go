package password_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/password"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/memory"
)

// fixture is a keystore over memory storage and a local root, and password
// hashing over it: what one replica runs.
type fixture struct {
	ks    *keystore.Service
	pw    *password.Service
	store storage.Store
	root  root.Root
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	r, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{store: memory.New(), root: r}
	t.Cleanup(func() { f.store.Close() })
	f.ks = f.openKeystore(t, nil)
	pw, err := password.New(password.Config{Peppers: f.ks, Store: f.store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pw.Close)
	f.pw = pw
	return f
}

func (f *fixture) openKeystore(t testing.TB, now func() time.Time) *keystore.Service {
	t.Helper()
	ks, err := keystore.New(keystore.Config{Storage: f.store, Root: f.root, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// openPasswordService returns another replica (a new keystore, so empty
// caches, over the fixture's storage and root) with cfg's other fields;
// cfg.Now is the keystore's clock too.
func (f *fixture) openPasswordService(t testing.TB, cfg password.Config) *password.Service {
	t.Helper()
	cfg.Peppers, cfg.Store = f.openKeystore(t, cfg.Now), f.store
	pw, err := password.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pw.Close)
	return pw
}

// open returns another replica with the default configuration.
func (f *fixture) open(t testing.TB) *password.Service {
	return f.openPasswordService(t, password.Config{})
}

// key creates a key of purpose p (and its tenant if needed).
func (f *fixture) key(t testing.TB, tenant, key string, p keystore.Purpose) keystore.KeyRef {
	t.Helper()
	ctx := context.Background()
	if _, err := f.ks.CreateTenant(ctx, tenant); err != nil && !errors.Is(err, keystore.ErrAlreadyExists) {
		t.Fatal(err)
	}
	ref := keystore.KeyRef{Tenant: tenant, Key: key}
	if _, err := f.ks.CreateKey(ctx, ref, keystore.KeySpec{Purpose: p}); err != nil {
		t.Fatal(err)
	}
	return ref
}

// testClock is a clock the test moves.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}
