package keystore_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/storage"
)

func TestTenantScheduledForDeletionIsRefusedUntilUndeleted(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	other := f.newKey("other", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	ct := f.encrypt(f.ks, ref, "alice", 1) // the cache is warm
	otherCT := f.encrypt(f.ks, other, "carol", 1)

	tn, err := f.ks.DeleteTenant(ctx, "acme", 0)
	if err != nil || tn.State != keystore.TenantDeleteScheduled || !tn.DeleteTime.Equal(f.clock.Now().Add(30*24*time.Hour)) {
		t.Fatalf("DeleteTenant: %+v %v; want DELETE_SCHEDULED in 30 days", tn, err)
	}
	if got, err := f.ks.GetTenant(ctx, "acme"); err != nil || got.State != keystore.TenantDeleteScheduled || !got.DeleteTime.Equal(tn.DeleteTime) {
		t.Fatalf("GetTenant: %+v %v", got, err)
	}
	refused := map[string]func(ks *keystore.Service) error{
		"Encrypt":         func(ks *keystore.Service) error { _, _, err := ks.Encrypt(ctx, ref, []byte("x"), nil); return err },
		"Decrypt":         func(ks *keystore.Service) error { _, _, err := ks.Decrypt(ctx, ref, ct, []byte("aad")); return err },
		"GenerateDataKey": func(ks *keystore.Service) error { _, _, _, err := ks.GenerateDataKey(ctx, ref, nil, false); return err },
		"Rewrap":          func(ks *keystore.Service) error { _, _, err := ks.Rewrap(ctx, ref, ct, []byte("aad")); return err },
		"GetKey":          func(ks *keystore.Service) error { _, err := ks.GetKey(ctx, ref); return err },
		"ListKeys":        func(ks *keystore.Service) error { _, _, err := ks.ListKeys(ctx, "acme", 0, ""); return err },
		"RotateKey":       func(ks *keystore.Service) error { _, err := ks.RotateKey(ctx, ref); return err },
		"CreateKey": func(ks *keystore.Service) error {
			_, err := ks.CreateKey(ctx, keystore.KeyRef{Tenant: "acme", Key: "new"}, keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
			return err
		},
		"DisableKeyVersion":  func(ks *keystore.Service) error { _, err := ks.DisableKeyVersion(ctx, ref, 1); return err },
		"DeleteTenant again": func(ks *keystore.Service) error { _, err := ks.DeleteTenant(ctx, "acme", 0); return err },
	}
	for name, call := range refused {
		for replica, ks := range map[string]*keystore.Service{"warm": f.ks, "cold": f.replica()} {
			if err := call(ks); !errors.Is(err, keystore.ErrTenantDeleted) {
				t.Errorf("%s on a %s replica: %v, want ErrTenantDeleted", name, replica, err)
			}
		}
	}
	f.mustDecrypt(f.ks, other, otherCT, "carol")

	f.clock.Advance(29 * 24 * time.Hour)
	if err := f.ks.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	tn, err = f.ks.UndeleteTenant(ctx, "acme")
	if err != nil || tn.State != keystore.TenantActive || !tn.DeleteTime.IsZero() {
		t.Fatalf("UndeleteTenant: %+v %v", tn, err)
	}
	f.mustDecrypt(f.ks, ref, ct, "alice")
	f.mustDecrypt(f.replica(), ref, ct, "alice")
	f.encrypt(f.ks, ref, "bob", 1)
	if _, err := f.ks.UndeleteTenant(ctx, "acme"); !errors.Is(err, keystore.ErrWrongState) {
		t.Fatalf("undelete of an active tenant: %v, want ErrWrongState", err)
	}
	if _, err := f.ks.DeleteTenant(ctx, "nope", 0); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("delete of an unknown tenant: %v", err)
	}
}

func TestOtherReplicasStopServingADeletedTenantWhenNotified(t *testing.T) {
	store := newNotifyingStore()
	f := newLCFixture(t)
	f.store = store
	f.ks = f.replica()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	b := f.replica()
	ct := f.encrypt(b, ref, "alice", 1) // b's cache is warm
	done := make(chan error, 1)
	go func() { done <- b.Watch(ctx) }()
	waitFor(t, "b to watch", func() bool { return store.watchers() == 1 })

	if _, err := f.ks.DeleteTenant(ctx, "acme", 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to refuse the deleted tenant", func() bool {
		_, _, err := b.Decrypt(ctx, ref, ct, []byte("aad"))
		return errors.Is(err, keystore.ErrTenantDeleted)
	})
	if _, err := f.ks.UndeleteTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	f.mustDecrypt(b, ref, ct, "alice")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not return within 10s of its context ending")
	}
}

func TestShreddedTenantIsGoneFromStorageAndNeverDecryptsAgain(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	pii := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	mac := f.newKey("acme", "idx", keystore.KeySpec{Purpose: keystore.PurposeMAC})
	other := f.newKey("acme-2", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt}) // shares the prefix "acme"
	ct1 := f.encrypt(f.ks, pii, "alice", 1)
	if _, err := f.ks.RotateKey(ctx, pii); err != nil {
		t.Fatal(err)
	}
	ct2 := f.encrypt(f.ks, pii, "bob", 2)
	otherCT := f.encrypt(f.ks, other, "carol", 1)
	if _, _, err := f.ks.ComputeMAC(ctx, mac, []byte("x")); err != nil {
		t.Fatal(err)
	}
	// A password lockout record of the tenant (written as the lockout code does).
	if _, err := f.store.Put(ctx, "lockout/acme/pw/0011", []byte(`{}`), 0); err != nil {
		t.Fatal(err)
	}

	if _, err := f.ks.DeleteTenant(ctx, "acme", 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(24 * time.Hour)
	if _, err := f.ks.UndeleteTenant(ctx, "acme"); !errors.Is(err, keystore.ErrTenantDeleted) {
		t.Fatalf("undelete after the date: %v, want ErrTenantDeleted", err)
	}
	if err := f.ks.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, shreds := f.ks.SchedulerStats(); shreds != 1 {
		t.Fatalf("scheduler stats: %d shreds, want 1", shreds)
	}

	// Inspect the storage directly: no tenant record (wrapped KEK), no keysets.
	if _, err := f.store.Get(ctx, "tenants/acme"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("tenant record after shredding: %v", err)
	}
	for _, prefix := range []string{"keys/acme/", "lockout/acme/"} {
		recs, err := f.store.List(ctx, prefix, "", 10)
		if err != nil || len(recs) != 0 {
			t.Fatalf("records under %s after shredding: %d %v", prefix, len(recs), err)
		}
	}
	if _, err := f.ks.GetTenant(ctx, "acme"); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("GetTenant after shredding: %v", err)
	}
	for _, ks := range []*keystore.Service{f.ks, f.replica()} {
		f.decryptFails(ks, pii, ct1, keystore.ErrNotFound)
		f.decryptFails(ks, pii, ct2, keystore.ErrNotFound)
		f.mustDecrypt(ks, other, otherCT, "carol")
	}
	if _, err := f.ks.UndeleteTenant(ctx, "acme"); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("undelete after shredding: %v", err)
	}

	// The same ids created again get a new KEK and new keys: the old
	// ciphertexts stay undecryptable.
	again := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	if _, err := f.ks.RotateKey(ctx, again); err != nil {
		t.Fatal(err)
	}
	for _, ks := range []*keystore.Service{f.ks, f.replica()} {
		for _, ct := range [][]byte{ct1, ct2} {
			if pt, _, err := ks.Decrypt(ctx, again, ct, []byte("aad")); err == nil {
				t.Fatalf("an old ciphertext decrypted after the tenant was re-created: %q", pt)
			} else if !errors.Is(err, keystore.ErrInvalidCiphertext) {
				t.Fatalf("old ciphertext after re-creation: %v, want ErrInvalidCiphertext", err)
			}
		}
	}
	if k := f.getKey(again); k.PrimaryVersion != 2 || k.Versions[0].EncryptCount != 0 {
		t.Fatalf("re-created key inherited state: %+v", k)
	}
}

// waitFor polls cond for up to five seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// failingTenantDeletes fails deletes of tenant records while down is set,
// like a crash between shredding the keys and the tenant record.
type failingTenantDeletes struct {
	storage.Store
	mu   sync.Mutex
	down bool
}

func (s *failingTenantDeletes) Delete(ctx context.Context, key string, expect uint64) error {
	s.mu.Lock()
	down := s.down && strings.HasPrefix(key, "tenants/")
	s.mu.Unlock()
	if down {
		return storage.ErrUnavailable
	}
	return s.Store.Delete(ctx, key, expect)
}

func TestInterruptedShreddingCannotBeUndoneAndFinishesOnTheNextPass(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	ct := f.encrypt(f.ks, ref, "alice", 1)
	flaky := &failingTenantDeletes{Store: f.store, down: true}
	f.store = flaky
	ks := f.replica()
	if _, err := ks.DeleteTenant(ctx, "acme", 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(25 * time.Hour)
	if err := ks.RunOnce(ctx); !errors.Is(err, keystore.ErrUnavailable) {
		t.Fatalf("interrupted pass: %v, want ErrUnavailable", err)
	}
	if recs, _ := f.store.List(ctx, "keys/acme/", "", 10); len(recs) != 0 {
		t.Fatalf("%d keysets left after the interrupted pass", len(recs))
	}
	if _, err := ks.UndeleteTenant(ctx, "acme"); !errors.Is(err, keystore.ErrTenantDeleted) {
		t.Fatalf("undelete of a half-shredded tenant: %v", err)
	}
	f.decryptFails(ks, ref, ct, keystore.ErrTenantDeleted)

	flaky.mu.Lock()
	flaky.down = false
	flaky.mu.Unlock()
	if err := ks.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Get(ctx, "tenants/acme"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("tenant record after the next pass: %v", err)
	}
	f.decryptFails(ks, ref, ct, keystore.ErrNotFound)
}

// A change made before a replica's watch began (the replica already
// answering, its cache warm) is not missed: the watch drops what was
// cached before it.
func TestAWatchDropsWhatWasCachedBeforeItBegan(t *testing.T) {
	store := newNotifyingStore()
	f := newLCFixture(t)
	f.store = store
	f.ks = f.replica()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	b := f.replica()
	f.encrypt(b, ref, "alice", 1) // b's cache is warm
	// Deleted with no one listening yet: written to the store underneath,
	// as a change another replica commits before b's LISTEN is up.
	f.store = store.Store
	if _, err := f.replica().DeleteTenant(ctx, "acme", 0); err != nil {
		t.Fatal(err)
	}
	go func() { _ = b.Watch(ctx) }()
	waitFor(t, "b to watch", func() bool { return store.watchers() == 1 })
	waitFor(t, "b to refuse the tenant deleted before its watch began", func() bool {
		_, _, err := b.Encrypt(ctx, ref, []byte("x"), nil)
		return errors.Is(err, keystore.ErrTenantDeleted)
	})
}
