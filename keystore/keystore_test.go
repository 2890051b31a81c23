package keystore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/memory"
)

// countingRoot counts Unwrap calls on a real local root.
type countingRoot struct {
	root.Root
	unwraps atomic.Int64
}

func (c *countingRoot) Unwrap(ctx context.Context, w, aad []byte) ([]byte, error) {
	c.unwraps.Add(1)
	return c.Root.Unwrap(ctx, w, aad)
}

type fixture struct {
	ks    *keystore.Service
	store storage.Store
	root  *countingRoot
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	r, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{store: memory.New(), root: &countingRoot{Root: r}}
	f.ks = f.open(t)
	return f
}

// open returns a new Service (empty caches) over the fixture's storage and root.
func (f *fixture) open(t testing.TB) *keystore.Service {
	t.Helper()
	ks, err := keystore.New(keystore.Config{Storage: f.store, Root: f.root})
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func (f *fixture) tenantKey(t *testing.T, tenant, key string) keystore.KeyRef {
	t.Helper()
	ctx := context.Background()
	if _, err := f.ks.CreateTenant(ctx, tenant); err != nil && !errors.Is(err, keystore.ErrAlreadyExists) {
		t.Fatal(err)
	}
	ref := keystore.KeyRef{Tenant: tenant, Key: key}
	if _, err := f.ks.CreateKey(ctx, ref, keystore.KeySpec{Purpose: keystore.PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	return ref
}

func TestEncryptDecryptRoundTripAcrossRotation(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ref := f.tenantKey(t, "acme", "pii")
	ct1, v1, err := f.ks.Encrypt(ctx, ref, []byte("alice@example.com"), []byte("row-1/email"))
	if err != nil || v1 != 1 {
		t.Fatalf("Encrypt: v=%d err=%v", v1, err)
	}
	k, err := f.ks.RotateKey(ctx, ref)
	if err != nil || k.PrimaryVersion != 2 || len(k.Versions) != 2 {
		t.Fatalf("RotateKey: %+v %v", k, err)
	}
	ct2, v2, err := f.ks.Encrypt(ctx, ref, []byte("bob@example.com"), nil)
	if err != nil || v2 != 2 {
		t.Fatalf("Encrypt after rotate: v=%d err=%v", v2, err)
	}
	// A fresh service (cold cache) decrypts both versions.
	ks2 := f.open(t)
	for _, c := range []struct {
		ct, aad, want []byte
		v             uint32
	}{{ct1, []byte("row-1/email"), []byte("alice@example.com"), 1}, {ct2, nil, []byte("bob@example.com"), 2}} {
		pt, v, err := ks2.Decrypt(ctx, ref, c.ct, c.aad)
		if err != nil || v != c.v || !bytes.Equal(pt, c.want) {
			t.Fatalf("Decrypt v%d: %q %d %v", c.v, pt, v, err)
		}
	}
}

func TestDecryptFailuresAreOneGenericError(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	a := f.tenantKey(t, "tenant-a", "k")
	b := f.tenantKey(t, "tenant-b", "k")
	ct, _, err := f.ks.Encrypt(ctx, a, []byte("secret"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(ct)
	flipped[len(flipped)-1] ^= 1
	prefixFlip := bytes.Clone(ct)
	prefixFlip[1] ^= 0x80
	cases := map[string]struct {
		ref keystore.KeyRef
		ct  []byte
		aad []byte
	}{
		"bit flip in the tag":        {a, flipped, []byte("aad")},
		"bit flip in the prefix":     {a, prefixFlip, []byte("aad")},
		"truncated":                  {a, ct[:len(ct)-3], []byte("aad")},
		"only the prefix":            {a, ct[:5], []byte("aad")},
		"empty":                      {a, nil, []byte("aad")},
		"wrong associated data":      {a, ct, []byte("other")},
		"missing associated data":    {a, ct, nil},
		"tenant A's ciphertext at B": {b, ct, []byte("aad")},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, _, err := f.ks.Decrypt(ctx, c.ref, c.ct, c.aad)
			if !errors.Is(err, keystore.ErrInvalidCiphertext) || err.Error() != keystore.ErrInvalidCiphertext.Error() {
				t.Fatalf("got %v, want exactly ErrInvalidCiphertext", err)
			}
		})
	}
}

func TestKeysetCopiedToAnotherTenantNeverDecrypts(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	a := f.tenantKey(t, "tenant-a", "pii")
	b := f.tenantKey(t, "tenant-b", "pii")
	ct, _, err := f.ks.Encrypt(ctx, a, []byte("secret"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Copy tenant A's stored key row over tenant B's.
	ra, err := f.store.Get(ctx, "keys/tenant-a/pii")
	if err != nil {
		t.Fatal(err)
	}
	rb, err := f.store.Get(ctx, "keys/tenant-b/pii")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Put(ctx, "keys/tenant-b/pii", ra.Value, rb.Version); err != nil {
		t.Fatal(err)
	}
	ks := f.open(t) // cold cache: must read the swapped row
	if _, _, err := ks.Decrypt(ctx, b, ct, nil); !errors.Is(err, keystore.ErrIntegrity) {
		t.Fatalf("decrypt with swapped keyset: got %v, want ErrIntegrity", err)
	}
	if _, _, err := ks.Encrypt(ctx, b, []byte("x"), nil); !errors.Is(err, keystore.ErrIntegrity) {
		t.Fatalf("encrypt with swapped keyset: got %v, want ErrIntegrity", err)
	}
	// The same for a tenant KEK row moved between tenants.
	ta, _ := f.store.Get(ctx, "tenants/tenant-a")
	tb, _ := f.store.Get(ctx, "tenants/tenant-b")
	if _, err := f.store.Put(ctx, "tenants/tenant-b", ta.Value, tb.Version); err != nil {
		t.Fatal(err)
	}
	ks = f.open(t)
	if _, _, err := ks.Encrypt(ctx, b, []byte("x"), nil); !errors.Is(err, keystore.ErrIntegrity) {
		t.Fatalf("encrypt with swapped KEK: got %v, want ErrIntegrity", err)
	}
}

func TestRootIsCalledOncePerTenantWhileCacheIsWarm(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	refs := []keystore.KeyRef{f.tenantKey(t, "t1", "a"), f.tenantKey(t, "t1", "b"), f.tenantKey(t, "t2", "a")}
	ks := f.open(t)
	f.root.unwraps.Store(0)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range 50 {
				ref := refs[i%len(refs)]
				ct, _, err := ks.Encrypt(ctx, ref, []byte("x"), nil)
				if err != nil {
					t.Error(err)
					return
				}
				if _, _, err := ks.Decrypt(ctx, ref, ct, nil); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if got := f.root.unwraps.Load(); got != 2 {
		t.Fatalf("root Unwrap called %d times for 2 tenants, want 2", got)
	}
}

func TestCacheExpiresAfterTTL(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ref := f.tenantKey(t, "acme", "pii")
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	ks, err := keystore.New(keystore.Config{Storage: f.store, Root: f.root, CacheTTL: time.Minute, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	f.root.unwraps.Store(0)
	for range 3 {
		if _, _, err := ks.Encrypt(ctx, ref, []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	if _, _, err := ks.Encrypt(ctx, ref, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if got := f.root.unwraps.Load(); got != 2 {
		t.Fatalf("unwraps = %d, want 1 before and 1 after expiry", got)
	}
}

func TestConcurrentRotationsLoseNoVersion(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ref := f.tenantKey(t, "acme", "pii")
	replicas := []*keystore.Service{f.open(t), f.open(t)}
	var wg sync.WaitGroup
	for _, ks := range replicas {
		wg.Go(func() {
			for range 20 {
				if _, err := ks.RotateKey(ctx, ref); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	k, err := f.ks.GetKey(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if len(k.Versions) != 41 || k.PrimaryVersion != 41 {
		t.Fatalf("got %d versions, primary %d; want 41, 41", len(k.Versions), k.PrimaryVersion)
	}
	for i, v := range k.Versions {
		if v.Version != uint32(i+1) {
			t.Fatalf("versions not contiguous at %d: %d", i, v.Version)
		}
	}
}

func TestDecryptReloadsOnceForAVersionRotatedElsewhere(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ref := f.tenantKey(t, "acme", "pii")
	a, b := f.open(t), f.open(t)
	if _, _, err := b.Encrypt(ctx, ref, []byte("warm"), nil); err != nil { // b caches version 1
		t.Fatal(err)
	}
	if _, err := a.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	ct, v, err := a.Encrypt(ctx, ref, []byte("new"), nil)
	if err != nil || v != 2 {
		t.Fatalf("encrypt on a: %d %v", v, err)
	}
	pt, v, err := b.Decrypt(ctx, ref, ct, nil)
	if err != nil || v != 2 || string(pt) != "new" {
		t.Fatalf("decrypt on b: %q %d %v", pt, v, err)
	}
}

func TestTenantsAndKeysAndPaging(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, id := range []string{"c", "a", "e", "b", "d"} {
		if _, err := f.ks.CreateTenant(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.ks.CreateTenant(ctx, "a"); !errors.Is(err, keystore.ErrAlreadyExists) {
		t.Fatalf("duplicate tenant: %v", err)
	}
	var got []string
	tok := ""
	for {
		ts, next, err := f.ks.ListTenants(ctx, 2, tok)
		if err != nil {
			t.Fatal(err)
		}
		for _, tn := range ts {
			got = append(got, tn.ID)
		}
		if next == "" {
			break
		}
		tok = next
	}
	if want := "abcde"; joinIDs(got) != want {
		t.Fatalf("paged tenants %v, want %s", got, want)
	}
	if _, _, err := f.ks.ListTenants(ctx, 2, "garbage!"); !errors.Is(err, keystore.ErrInvalidArgument) {
		t.Fatalf("bad page token: %v", err)
	}
	if _, err := f.ks.CreateKey(ctx, keystore.KeyRef{Tenant: "nope", Key: "k"}, keystore.KeySpec{Purpose: keystore.PurposeEncrypt}); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("key in unknown tenant: %v", err)
	}
	if _, _, err := f.ks.ListKeys(ctx, "nope", 0, ""); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("keys of unknown tenant: %v", err)
	}
	if _, err := f.ks.GetKey(ctx, keystore.KeyRef{Tenant: "a", Key: "missing"}); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("unknown key: %v", err)
	}
}

func joinIDs(ids []string) string {
	var b bytes.Buffer
	for _, id := range ids {
		b.WriteString(id)
	}
	return b.String()
}

func TestParseNames(t *testing.T) {
	good := map[string]keystore.KeyRef{
		"tenants/acme/keys/pii":   {Tenant: "acme", Key: "pii"},
		"tenants/a-1/keys/0-only": {Tenant: "a-1", Key: "0-only"},
	}
	for name, want := range good {
		got, err := keystore.ParseKeyName(name)
		if err != nil || got != want || got.String() != name {
			t.Errorf("ParseKeyName(%q) = %v, %v", name, got, err)
		}
	}
	for _, name := range []string{"", "tenants/acme", "tenants//keys/k", "tenants/ACME/keys/k", "tenants/a/keys/k/x", "tenants/-a/keys/k", "tenant/a/keys/k"} {
		if _, err := keystore.ParseKeyName(name); !errors.Is(err, keystore.ErrInvalidArgument) {
			t.Errorf("ParseKeyName(%q): %v, want ErrInvalidArgument", name, err)
		}
	}
}

// ValidID is hand-written for speed; it must agree with the documented
// pattern on every input.
func FuzzValidIDMatchesThePattern(f *testing.F) {
	pattern := regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	for _, s := range []string{"", "a", "-a", "a-", "acme", "A", "a_b", strings.Repeat("a", 63), strings.Repeat("a", 64), "a\n", "é", "0-0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := keystore.ValidID(s), pattern.MatchString(s); got != want {
			t.Fatalf("ValidID(%q) = %v, the pattern says %v", s, got, want)
		}
	})
}

// A key's purpose is bound to its keyset: a PASSWORD key relabelled MAC in
// the store (the same HMAC keysets) would answer ComputeMAC with its pepper
// tag, an oracle for the pepper with no lockout and no hashing cost. It
// fails authentication instead; so does a downgrade to the old binding.
func TestAKeysPurposeRelabelledInTheStoreNeverServes(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ref := keystore.KeyRef{Tenant: "tenant-a", Key: "pw"}
	if _, err := f.ks.CreateTenant(ctx, ref.Tenant); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ks.CreateKey(ctx, ref, keystore.KeySpec{Purpose: keystore.PurposePassword}); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(map[string]any){
		"relabelled MAC":              func(m map[string]any) { m["purpose"] = float64(keystore.PurposeMAC) },
		"relabelled MAC, old binding": func(m map[string]any) { m["purpose"] = float64(keystore.PurposeMAC); delete(m, "binding") },
	} {
		t.Run(name, func(t *testing.T) {
			r, err := f.store.Get(ctx, "keys/tenant-a/pw")
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]any
			if err := json.Unmarshal(r.Value, &m); err != nil {
				t.Fatal(err)
			}
			orig := r.Value
			change(m)
			b, _ := json.Marshal(m)
			ver, err := f.store.Put(ctx, "keys/tenant-a/pw", b, r.Version)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if _, err := f.store.Put(ctx, "keys/tenant-a/pw", orig, ver); err != nil {
					t.Fatal(err)
				}
			}()
			ks := f.open(t) // cold cache: must read the changed row
			if _, _, err := ks.ComputeMAC(ctx, ref, []byte("password")); !errors.Is(err, keystore.ErrIntegrity) {
				t.Fatalf("MAC with a relabelled PASSWORD key: %v, want ErrIntegrity", err)
			}
		})
	}
}

// gateRoot holds every Wrap until release is closed, telling entered when
// the first one starts.
type gateRoot struct {
	root.Root
	entered, release chan struct{}
	once             sync.Once
}

func (g *gateRoot) Wrap(ctx context.Context, pt, aad []byte) ([]byte, error) {
	g.once.Do(func() { close(g.entered) })
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.Root.Wrap(ctx, pt, aad)
}

// A caller waiting for another to make the page-token key waits only as
// long as its own deadline allows.
func TestPageTokensWaitForTheKeyOnlyUntilTheCallersDeadline(t *testing.T) {
	f := newFixture(t)
	g := &gateRoot{Root: f.root, entered: make(chan struct{}), release: make(chan struct{})}
	ks, err := keystore.New(keystore.Config{Storage: f.store, Root: g})
	if err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	go func() { _, err := ks.SealPageToken(context.Background(), "tenants/a"); first <- err }()
	select {
	case <-g.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("making the page-token key never asked the root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { _, err := ks.SealPageToken(ctx, "tenants/b"); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("the waiting caller: %v, want its deadline", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("a caller with a 100 ms deadline waited for another's root call")
	}
	close(g.release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
}
