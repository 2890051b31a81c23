package keystore

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/memory"
)

// downRoot is a root that can be taken down.
type downRoot struct {
	root.Root
	down atomic.Bool
}

func (r *downRoot) Unwrap(ctx context.Context, w, aad []byte) ([]byte, error) {
	if r.down.Load() {
		return nil, fmt.Errorf("test root: %w", root.ErrUnavailable)
	}
	return r.Root.Unwrap(ctx, w, aad)
}

type manualClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *manualClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *manualClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// A watch that begins again (every entry suspect until its records are read
// back) does not renew a key's grace: during a root outage the recheck
// keeps the entry's expiry. With reconnects once per grace, a key was
// served for ever after the root's last answer.
func TestARecheckKeepsTheGrace(t *testing.T) {
	ctx := context.Background()
	lr, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	rt := &downRoot{Root: lr}
	clock := &manualClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s, ref := usedKey(t, Config{Storage: memory.New(), Root: rt, Now: clock.Now, CacheTTL: time.Minute, UnavailableGrace: time.Hour})
	rt.down.Store(true)
	for range 3 { // a watch reconnect and a use every 50 minutes
		clock.advance(50 * time.Minute)
		s.m.apply(storage.Change{})
		_, _, err := s.Encrypt(ctx, ref, []byte("y"), nil)
		if err != nil {
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("past the grace: %v, want ErrUnavailable", err)
			}
			return
		}
	}
	t.Fatal("a key was served 2h30m after the root's last answer (TTL 1m, grace 1h)")
}

// A key rechecked unchanged after a watch reconnect is fresh again: its
// next call reads nothing. Kept stale, it was loaded again on its next
// call, two more reads per key right after the storage came back.
func TestARecheckedKeyIsFreshAgain(t *testing.T) {
	ctx := context.Background()
	lr, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	hs := &hookStore{Store: memory.New()}
	s, ref := usedKey(t, Config{Storage: hs, Root: lr})
	s.m.apply(storage.Change{}) // the watch began again
	// This call rechecks the key.
	if _, _, err := s.Encrypt(ctx, ref, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	before := hs.gets.Load()
	if _, _, err := s.Encrypt(ctx, ref, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if n := hs.gets.Load() - before; n != 0 {
		t.Fatalf("the call after the recheck read the store %d times, want 0", n)
	}
}

// usedKey is a service on cfg with tenant t's ENCRYPT key k, used once
// (so its tenant KEK and the key are cached).
func usedKey(t *testing.T, cfg Config) (*Service, KeyRef) {
	t.Helper()
	ctx := context.Background()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ref := KeyRef{Tenant: "t", Key: "k"}
	if _, err := s.CreateTenant(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateKey(ctx, ref, KeySpec{Purpose: PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Encrypt(ctx, ref, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	return s, ref
}
