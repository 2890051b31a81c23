package keystore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/aead/subtle"
	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/insecuresecretdataaccess"
	"github.com/tink-crypto/tink-go/v2/keyset"

	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/memory"
)

// lcFixture is a keystore over memory storage and a local root with an
// injected clock; replica opens more Services (empty caches) over the same
// storage, root and clock, like replicas of one deployment.
type lcFixture struct {
	t     *testing.T
	store storage.Store
	root  root.Root
	clock *testClock
	cfg   keystore.Config
	ks    *keystore.Service
}

func newLCFixture(t *testing.T, mod ...func(*keystore.Config)) *lcFixture {
	t.Helper()
	r, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	f := &lcFixture{t: t, store: memory.New(), root: r, clock: &testClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}}
	f.cfg = keystore.Config{Root: r, Now: f.clock.Now}
	for _, m := range mod {
		m(&f.cfg)
	}
	f.ks = f.replica()
	return f
}

func (f *lcFixture) replica() *keystore.Service {
	f.t.Helper()
	cfg := f.cfg
	cfg.Storage = f.store
	ks, err := keystore.New(cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	return ks
}

// newKey creates the tenant (if needed) and a key.
func (f *lcFixture) newKey(tenant, key string, spec keystore.KeySpec) keystore.KeyRef {
	f.t.Helper()
	ctx := context.Background()
	if _, err := f.ks.CreateTenant(ctx, tenant); err != nil && !errors.Is(err, keystore.ErrAlreadyExists) {
		f.t.Fatal(err)
	}
	ref := keystore.KeyRef{Tenant: tenant, Key: key}
	if _, err := f.ks.CreateKey(ctx, ref, spec); err != nil {
		f.t.Fatal(err)
	}
	return ref
}

func (f *lcFixture) rotate(ref keystore.KeyRef) {
	f.t.Helper()
	if _, err := f.ks.RotateKey(context.Background(), ref); err != nil {
		f.t.Fatal(err)
	}
}

func (f *lcFixture) encrypt(ks *keystore.Service, ref keystore.KeyRef, pt string, wantVersion uint32) []byte {
	f.t.Helper()
	ct, v, err := ks.Encrypt(context.Background(), ref, []byte(pt), []byte("aad"))
	if err != nil || v != wantVersion {
		f.t.Fatalf("Encrypt: version %d, %v; want version %d", v, err, wantVersion)
	}
	return ct
}

func (f *lcFixture) mustDecrypt(ks *keystore.Service, ref keystore.KeyRef, ct []byte, want string) {
	f.t.Helper()
	pt, _, err := ks.Decrypt(context.Background(), ref, ct, []byte("aad"))
	if err != nil || string(pt) != want {
		f.t.Fatalf("Decrypt: %q, %v; want %q", pt, err, want)
	}
}

func (f *lcFixture) decryptFails(ks *keystore.Service, ref keystore.KeyRef, ct []byte, want error) {
	f.t.Helper()
	if _, _, err := ks.Decrypt(context.Background(), ref, ct, []byte("aad")); !errors.Is(err, want) {
		f.t.Fatalf("Decrypt: got %v, want %v", err, want)
	}
}

func (f *lcFixture) getKey(ref keystore.KeyRef) keystore.Key {
	f.t.Helper()
	k, err := f.ks.GetKey(context.Background(), ref)
	if err != nil {
		f.t.Fatal(err)
	}
	return k
}

func versionState(k keystore.Key, v uint32) keystore.VersionState {
	for _, kv := range k.Versions {
		if kv.Version == v {
			return kv.State
		}
	}
	return 0
}

// storedKeyset reads a key's keyset straight from storage and decrypts it
// the way the keystore does: the tenant KEK unwrapped by the root, then the
// keyset under the KEK. It bypasses every cache.
func (f *lcFixture) storedKeyset(ref keystore.KeyRef) *keyset.Handle {
	f.t.Helper()
	ctx := context.Background()
	tr, err := f.store.Get(ctx, "tenants/"+ref.Tenant)
	if err != nil {
		f.t.Fatal(err)
	}
	var tenant struct {
		WrappedKEK []byte `json:"wrapped_kek"`
	}
	if err := json.Unmarshal(tr.Value, &tenant); err != nil {
		f.t.Fatal(err)
	}
	raw, err := f.root.Unwrap(ctx, tenant.WrappedKEK, []byte("custos:tenant:"+ref.Tenant))
	if err != nil {
		f.t.Fatal(err)
	}
	kek, err := subtle.NewAESGCM(raw)
	if err != nil {
		f.t.Fatal(err)
	}
	kr, err := f.store.Get(ctx, "keys/"+ref.Tenant+"/"+ref.Key)
	if err != nil {
		f.t.Fatal(err)
	}
	var key struct {
		Keyset  []byte `json:"keyset"`
		Purpose int    `json:"purpose"`
		Binding int    `json:"binding"`
	}
	if err := json.Unmarshal(kr.Value, &key); err != nil {
		f.t.Fatal(err)
	}
	// The associated data docs/formats.md gives for binding 1: the name
	// and the purpose.
	if key.Binding != 1 {
		f.t.Fatalf("the stored keyset's binding is %d, want 1", key.Binding)
	}
	aad := fmt.Sprintf("custos:key:%s/%s\x00purpose:%d", ref.Tenant, ref.Key, key.Purpose)
	h, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(key.Keyset)), kek, []byte(aad))
	if err != nil {
		f.t.Fatal(err)
	}
	return h
}

// keysetStatuses maps each Tink key id of h to its status.
func keysetStatuses(t *testing.T, h *keyset.Handle) map[uint32]keyset.KeyStatus {
	t.Helper()
	out := make(map[uint32]keyset.KeyStatus)
	for i := range h.Len() {
		e, err := h.Entry(i)
		if err != nil {
			t.Fatal(err)
		}
		out[e.KeyID()] = e.KeyStatus()
	}
	return out
}

// aesGCMKeyBytes returns the raw AES key of Tink key id in h.
func aesGCMKeyBytes(t *testing.T, h *keyset.Handle, id uint32) []byte {
	t.Helper()
	for i := range h.Len() {
		e, err := h.Entry(i)
		if err != nil {
			t.Fatal(err)
		}
		if e.KeyID() == id {
			return e.Key().(*aesgcm.Key).KeyBytes().Data(insecuresecretdataaccess.Token{})
		}
	}
	t.Fatalf("keyset has no key %d", id)
	return nil
}

func TestDisabledVersionRefusesDecryptUntilEnabledAgain(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	ct1 := f.encrypt(f.ks, ref, "alice", 1)
	if _, err := f.ks.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	ct2 := f.encrypt(f.ks, ref, "bob", 2)

	k, err := f.ks.DisableKeyVersion(ctx, ref, 1)
	if err != nil || versionState(k, 1) != keystore.VersionDisabled || versionState(k, 2) != keystore.VersionEnabled {
		t.Fatalf("DisableKeyVersion: %+v %v", k.Versions, err)
	}
	cold := f.replica()
	for _, ks := range []*keystore.Service{f.ks, cold} {
		f.decryptFails(ks, ref, ct1, keystore.ErrKeyVersionDisabled)
		f.mustDecrypt(ks, ref, ct2, "bob")
	}
	if got := keysetStatuses(t, f.storedKeyset(ref)); got[1] != keyset.Disabled || got[2] != keyset.Enabled {
		t.Fatalf("stored keyset statuses %v; want 1 disabled, 2 enabled", got)
	}
	if _, err := f.ks.DisableKeyVersion(ctx, ref, 1); err != nil {
		t.Fatalf("disabling a disabled version again: %v", err)
	}

	k, err = f.ks.EnableKeyVersion(ctx, ref, 1)
	if err != nil || versionState(k, 1) != keystore.VersionEnabled {
		t.Fatalf("EnableKeyVersion: %+v %v", k.Versions, err)
	}
	for _, ks := range []*keystore.Service{f.ks, f.replica()} {
		f.mustDecrypt(ks, ref, ct1, "alice")
	}
	if got := keysetStatuses(t, f.storedKeyset(ref)); got[1] != keyset.Enabled {
		t.Fatalf("stored keyset statuses %v after enable", got)
	}
	if _, err := f.ks.EnableKeyVersion(ctx, ref, 1); err != nil {
		t.Fatalf("enabling an enabled version again: %v", err)
	}
}

func TestPrimaryVersionCannotBeDisabledOrDestroyedAndUnknownVersionsAreNotFound(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	if _, err := f.ks.DisableKeyVersion(ctx, ref, 1); !errors.Is(err, keystore.ErrPrimaryVersion) {
		t.Fatalf("disable primary: %v", err)
	}
	if _, err := f.ks.DestroyKeyVersion(ctx, ref, 1, 0); !errors.Is(err, keystore.ErrPrimaryVersion) {
		t.Fatalf("destroy primary: %v", err)
	}
	for name, call := range map[string]func(uint32) error{
		"enable":  func(v uint32) error { _, err := f.ks.EnableKeyVersion(ctx, ref, v); return err },
		"disable": func(v uint32) error { _, err := f.ks.DisableKeyVersion(ctx, ref, v); return err },
		"destroy": func(v uint32) error { _, err := f.ks.DestroyKeyVersion(ctx, ref, v, 0); return err },
		"restore": func(v uint32) error { _, err := f.ks.RestoreKeyVersion(ctx, ref, v); return err },
	} {
		if err := call(7); !errors.Is(err, keystore.ErrNotFound) {
			t.Errorf("%s unknown version: %v, want ErrNotFound", name, err)
		}
		if err := call(0); !errors.Is(err, keystore.ErrInvalidArgument) {
			t.Errorf("%s version 0: %v, want ErrInvalidArgument", name, err)
		}
	}
	if _, err := f.ks.DisableKeyVersion(ctx, keystore.KeyRef{Tenant: "acme", Key: "nope"}, 1); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("unknown key: %v", err)
	}
	if _, err := f.ks.RestoreKeyVersion(ctx, ref, 1); !errors.Is(err, keystore.ErrWrongState) {
		t.Fatalf("restore of an enabled version: %v, want ErrWrongState", err)
	}
}

func TestDestroyScheduledVersionIsRefusedAndCanBeRestoredBeforeItsDate(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	ct1 := f.encrypt(f.ks, ref, "alice", 1)
	if _, err := f.ks.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	k, err := f.ks.DestroyKeyVersion(ctx, ref, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	v1 := k.Versions[0]
	if v1.State != keystore.VersionDestroyScheduled || !v1.DestroyTime.Equal(f.clock.Now().Add(30*24*time.Hour)) {
		t.Fatalf("after DestroyKeyVersion: %+v; want DESTROY_SCHEDULED in 30 days", v1)
	}
	for _, ks := range []*keystore.Service{f.ks, f.replica()} {
		f.decryptFails(ks, ref, ct1, keystore.ErrKeyVersionDestroyed)
	}
	if got := keysetStatuses(t, f.storedKeyset(ref)); got[1] != keyset.Disabled {
		t.Fatalf("stored keyset statuses %v; want version 1 disabled while scheduled", got)
	}
	if _, err := f.ks.EnableKeyVersion(ctx, ref, 1); !errors.Is(err, keystore.ErrWrongState) {
		t.Fatalf("enable while scheduled: %v, want ErrWrongState", err)
	}
	if _, err := f.ks.DestroyKeyVersion(ctx, ref, 1, 0); !errors.Is(err, keystore.ErrWrongState) {
		t.Fatalf("destroy again: %v, want ErrWrongState", err)
	}

	f.clock.Advance(29 * 24 * time.Hour)
	if err := f.ks.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	k, err = f.ks.RestoreKeyVersion(ctx, ref, 1)
	if err != nil || k.Versions[0].State != keystore.VersionDisabled || !k.Versions[0].DestroyTime.IsZero() {
		t.Fatalf("RestoreKeyVersion: %+v %v; want DISABLED without a destroy time", k.Versions[0], err)
	}
	f.decryptFails(f.ks, ref, ct1, keystore.ErrKeyVersionDisabled)
	if _, err := f.ks.EnableKeyVersion(ctx, ref, 1); err != nil {
		t.Fatal(err)
	}
	f.mustDecrypt(f.ks, ref, ct1, "alice")
	f.mustDecrypt(f.replica(), ref, ct1, "alice")
}

func TestDestroyedVersionIsErasedFromTheStoredKeysetAndNeverDecryptsAgain(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	ct1 := f.encrypt(f.ks, ref, "alice", 1)
	if _, err := f.ks.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	ct2 := f.encrypt(f.ks, ref, "bob", 2)
	material := aesGCMKeyBytes(t, f.storedKeyset(ref), 1)
	if _, err := f.ks.DestroyKeyVersion(ctx, ref, 1, 24*time.Hour); err != nil {
		t.Fatal(err)
	}

	f.clock.Advance(23 * time.Hour)
	if err := f.ks.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if s := versionState(f.getKey(ref), 1); s != keystore.VersionDestroyScheduled {
		t.Fatalf("before the date: %v", s)
	}
	f.clock.Advance(time.Hour)
	if _, err := f.ks.RestoreKeyVersion(ctx, ref, 1); !errors.Is(err, keystore.ErrKeyVersionDestroyed) {
		t.Fatalf("restore after the date, before the scheduler ran: %v, want ErrKeyVersionDestroyed", err)
	}
	warm := f.replica()
	f.mustDecrypt(warm, ref, ct2, "bob")
	if err := f.ks.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	k := f.getKey(ref)
	if versionState(k, 1) != keystore.VersionDestroyed || versionState(k, 2) != keystore.VersionEnabled || k.PrimaryVersion != 2 {
		t.Fatalf("after the scheduler: %+v", k)
	}

	h := f.storedKeyset(ref)
	if got := keysetStatuses(t, h); len(got) != 1 || got[2] != keyset.Enabled {
		t.Fatalf("stored keyset holds %v; want only version 2", got)
	}
	var clear bytes.Buffer
	if err := insecurecleartextkeyset.Write(h, keyset.NewBinaryWriter(&clear)); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(clear.Bytes(), material) {
		t.Fatal("version 1's key material is still in the stored keyset")
	}

	for _, ks := range []*keystore.Service{f.ks, warm, f.replica()} {
		f.decryptFails(ks, ref, ct1, keystore.ErrKeyVersionDestroyed)
		f.mustDecrypt(ks, ref, ct2, "bob")
	}
	if _, err := f.ks.RestoreKeyVersion(ctx, ref, 1); !errors.Is(err, keystore.ErrKeyVersionDestroyed) {
		t.Fatalf("restore after destruction: %v", err)
	}
	if _, err := f.ks.EnableKeyVersion(ctx, ref, 1); !errors.Is(err, keystore.ErrKeyVersionDestroyed) {
		t.Fatalf("enable after destruction: %v", err)
	}
	// The key lives on: rotation numbers past the destroyed version.
	if k, err := f.ks.RotateKey(ctx, ref); err != nil || k.PrimaryVersion != 3 {
		t.Fatalf("rotate after destruction: %+v %v", k, err)
	}
	f.mustDecrypt(f.replica(), ref, ct2, "bob")
}

func TestMinDecryptionVersionRefusesOlderVersions(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	ct1 := f.encrypt(f.ks, ref, "v1", 1)
	f.rotate(ref)
	ct2 := f.encrypt(f.ks, ref, "v2", 2)
	f.rotate(ref)

	two := uint32(2)
	k, err := f.ks.UpdateKey(ctx, ref, keystore.KeyUpdate{MinDecryptionVersion: &two})
	if err != nil || k.MinDecryptionVersion != 2 {
		t.Fatalf("UpdateKey: %+v %v", k, err)
	}
	for _, ks := range []*keystore.Service{f.ks, f.replica()} {
		f.decryptFails(ks, ref, ct1, keystore.ErrKeyVersionTooOld)
		f.mustDecrypt(ks, ref, ct2, "v2")
	}
	four := uint32(4)
	if _, err := f.ks.UpdateKey(ctx, ref, keystore.KeyUpdate{MinDecryptionVersion: &four}); !errors.Is(err, keystore.ErrInvalidArgument) ||
		!strings.Contains(err.Error(), "min_decryption_version") {
		t.Fatalf("minimum above the primary: %v", err)
	}
	zero := uint32(0)
	if _, err := f.ks.UpdateKey(ctx, ref, keystore.KeyUpdate{MinDecryptionVersion: &zero}); err != nil {
		t.Fatal(err)
	}
	f.mustDecrypt(f.ks, ref, ct1, "v1")
}

func TestUpdateKeyValidatesEachField(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	enc := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	pw := f.newKey("acme", "pw", keystore.KeySpec{Purpose: keystore.PurposePassword})
	dur := func(d time.Duration) *time.Duration { return &d }
	bad := []struct {
		name  string
		ref   keystore.KeyRef
		u     keystore.KeyUpdate
		field string
	}{
		{"a rotation period under an hour", enc, keystore.KeyUpdate{RotationPeriod: dur(30 * time.Minute)}, "rotation_period"},
		{"a negative rotation period", enc, keystore.KeyUpdate{RotationPeriod: dur(-time.Hour)}, "rotation_period"},
		// The API's durations saturate near 292 years: such a period was
		// stored as other than asked.
		{"a rotation period past 100 years", enc, keystore.KeyUpdate{RotationPeriod: dur(time.Duration(math.MaxInt64))}, "rotation_period"},
		{"a password policy on an ENCRYPT key", enc, keystore.KeyUpdate{PasswordPolicy: &keystore.PasswordPolicy{}}, "password_policy"},
		{"a bcrypt cost below the floor", pw, keystore.KeyUpdate{PasswordPolicy: &keystore.PasswordPolicy{BcryptCost: 4}}, "bcrypt_cost"},
		{"a bcrypt cost above the deployment's limit", pw, keystore.KeyUpdate{PasswordPolicy: &keystore.PasswordPolicy{BcryptCost: 31}}, "passwords.max_bcrypt_cost"},
		{"argon2id memory above the deployment's limit", pw, keystore.KeyUpdate{PasswordPolicy: &keystore.PasswordPolicy{Algorithm: keystore.PasswordArgon2id, Argon2MemoryKiB: 4 << 20}}, "passwords.max_argon2_memory_kib"},
		{"argon2id passes above the deployment's limit", pw, keystore.KeyUpdate{PasswordPolicy: &keystore.PasswordPolicy{Algorithm: keystore.PasswordArgon2id, Argon2Iterations: 64}}, "passwords.max_argon2_iterations"},
		{"argon2id lanes above the deployment's limit", pw, keystore.KeyUpdate{PasswordPolicy: &keystore.PasswordPolicy{Algorithm: keystore.PasswordArgon2id, Argon2Parallelism: 64}}, "passwords.max_argon2_parallelism"},
	}
	for _, c := range bad {
		t.Run("refuses "+c.name, func(t *testing.T) {
			_, err := f.ks.UpdateKey(ctx, c.ref, c.u)
			if !errors.Is(err, keystore.ErrInvalidArgument) || !strings.Contains(err.Error(), c.field) {
				t.Fatalf("got %v; want ErrInvalidArgument naming %s", err, c.field)
			}
		})
	}

	t.Run("sets and clears the rotation period", func(t *testing.T) {
		k, err := f.ks.UpdateKey(ctx, enc, keystore.KeyUpdate{RotationPeriod: dur(24 * time.Hour)})
		if err != nil || k.RotationPeriod != 24*time.Hour || !k.NextRotationTime.Equal(f.clock.Now().Add(24*time.Hour)) {
			t.Fatalf("set: %+v %v", k, err)
		}
		k, err = f.ks.UpdateKey(ctx, enc, keystore.KeyUpdate{RotationPeriod: dur(0)})
		if err != nil || k.RotationPeriod != 0 || !k.NextRotationTime.IsZero() {
			t.Fatalf("clear: %+v %v", k, err)
		}
	})
	t.Run("changes a PASSWORD key's policy", func(t *testing.T) {
		k, err := f.ks.UpdateKey(ctx, pw, keystore.KeyUpdate{PasswordPolicy: &keystore.PasswordPolicy{BcryptCost: 13}})
		if err != nil || k.PasswordPolicy == nil || k.PasswordPolicy.BcryptCost != 13 || k.PasswordPolicy.Algorithm != keystore.PasswordBcrypt {
			t.Fatalf("%+v %v", k.PasswordPolicy, err)
		}
	})
	t.Run("an empty update changes nothing", func(t *testing.T) {
		before := f.getKey(enc)
		k, err := f.ks.UpdateKey(ctx, enc, keystore.KeyUpdate{})
		if err != nil || k.PrimaryVersion != before.PrimaryVersion || k.RotationPeriod != before.RotationPeriod {
			t.Fatalf("%+v %v", k, err)
		}
	})
	t.Run("an unknown key is not found", func(t *testing.T) {
		if _, err := f.ks.UpdateKey(ctx, keystore.KeyRef{Tenant: "acme", Key: "nope"}, keystore.KeyUpdate{RotationPeriod: dur(0)}); !errors.Is(err, keystore.ErrNotFound) {
			t.Fatal(err)
		}
	})
}

func TestWaitingPeriodsAreOneTo365Days(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	f.rotate(ref)
	for _, d := range []time.Duration{time.Hour, 23 * time.Hour, 366 * 24 * time.Hour, -24 * time.Hour} {
		if _, err := f.ks.DestroyKeyVersion(ctx, ref, 1, d); !errors.Is(err, keystore.ErrInvalidArgument) {
			t.Errorf("DestroyKeyVersion waiting %v: %v", d, err)
		}
		if _, err := f.ks.DeleteTenant(ctx, "acme", d); !errors.Is(err, keystore.ErrInvalidArgument) {
			t.Errorf("DeleteTenant waiting %v: %v", d, err)
		}
	}
	k, err := f.ks.DestroyKeyVersion(ctx, ref, 1, 365*24*time.Hour)
	if err != nil || !k.Versions[0].DestroyTime.Equal(f.clock.Now().Add(365*24*time.Hour)) {
		t.Fatalf("365 days: %+v %v", k.Versions[0], err)
	}
}

// notifyingStore is a memory store that tells watchers about every write,
// as PostgreSQL's LISTEN/NOTIFY does across replicas.
type notifyingStore struct {
	*memory.Store
	mu   sync.Mutex
	subs map[chan storage.Change]struct{}
}

var _ storage.Watcher = (*notifyingStore)(nil)

func newNotifyingStore() *notifyingStore {
	return &notifyingStore{Store: memory.New(), subs: make(map[chan storage.Change]struct{})}
}

func (s *notifyingStore) Put(ctx context.Context, key string, v []byte, expect uint64) (uint64, error) {
	ver, err := s.Store.Put(ctx, key, v, expect)
	if err == nil {
		s.notify(key)
	}
	return ver, err
}

func (s *notifyingStore) Delete(ctx context.Context, key string, expect uint64) error {
	err := s.Store.Delete(ctx, key, expect)
	if err == nil {
		s.notify(key)
	}
	return err
}

func (s *notifyingStore) notify(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.subs {
		select {
		case ch <- storage.Change{Key: key}:
		default: // a slow reader would get Key "" in a real backend; tests read fast
		}
	}
}

func (s *notifyingStore) Watch(ctx context.Context) (<-chan storage.Change, error) {
	ch := make(chan storage.Change, 1024)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	go func() {
		<-ctx.Done()
		s.mu.Lock()
		delete(s.subs, ch)
		close(ch)
		s.mu.Unlock()
	}()
	return ch, nil
}

func (s *notifyingStore) watchers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.subs)
}

// The hashing pool is shared by every tenant: no tenant's policy may ask
// for more than the deployment allows, at creation, on update, or (a key
// set before the limits were lowered) when it hashes.
func TestPasswordPoliciesStayWithinTheDeploymentsLimits(t *testing.T) {
	ctx := context.Background()
	f := newLCFixture(t, func(c *keystore.Config) { c.PasswordLimits = keystore.PasswordLimits{BcryptCost: 20} })
	high := keystore.KeySpec{Purpose: keystore.PurposePassword, PasswordPolicy: &keystore.PasswordPolicy{BcryptCost: 18}}
	ref := f.newKey("acme", "pw", high) // allowed under a limit of 20
	if _, err := f.ks.CreateKey(ctx, keystore.KeyRef{Tenant: "acme", Key: "pw2"}, keystore.KeySpec{Purpose: keystore.PurposePassword, PasswordPolicy: &keystore.PasswordPolicy{BcryptCost: 21}}); !errors.Is(err, keystore.ErrInvalidArgument) || !strings.Contains(err.Error(), "passwords.max_bcrypt_cost") {
		t.Fatalf("a key created above the limit: %v, want ErrInvalidArgument naming the limit", err)
	}
	// The limit lowered to the default (16): the key keeps its policy, and
	// new hashes follow it capped at the limit.
	f.cfg.PasswordLimits = keystore.PasswordLimits{}
	low := f.replica()
	pep, err := low.Pepper(ctx, ref, 0)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := pep.Policy()
	if err != nil || pol.BcryptCost != 18 || pep.Limits().Cap(pol).BcryptCost != 16 {
		t.Fatalf("a key above the lowered limit: policy cost %d, capped %d, %v; want 18 and 16", pol.BcryptCost, pep.Limits().Cap(pol).BcryptCost, err)
	}
	for _, l := range []keystore.PasswordLimits{{BcryptCost: 32}, {BcryptCost: 11}, {Argon2MemoryKiB: 8192}, {Argon2Iterations: 1}} {
		if _, err := keystore.New(keystore.Config{Storage: f.store, Root: f.root, PasswordLimits: l}); err == nil {
			t.Fatalf("limits %+v, beyond a format's maximum or below the default policy, were taken", l)
		}
	}
}
