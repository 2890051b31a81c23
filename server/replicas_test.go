package server_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/custos"
	"github.com/custos-kms/custos/internal/pgtest"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/local"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// replica is one stateless Custos server on a shared PostgreSQL database:
// its own pool, keystore and cache, watching for other replicas' changes,
// run by the runtime custos serve uses.
type replica struct {
	addr string
	ks   *keystore.Service
	rt   *custos.Runtime
	c    clients
}

func startReplica(tb testing.TB, p *testPKI, url string, rt root.Root) *replica {
	tb.Helper()
	return startReplicaWith(tb, p, url, rt, nil)
}

// startReplicaWith starts a replica whose configuration configure changes.
func startReplicaWith(tb testing.TB, p *testPKI, url string, rt root.Root, configure func(*config.Config)) *replica {
	tb.Helper()
	f := &files{pki: p, policyPath: filepath.Join(tb.TempDir(), "policy.yaml")}
	if err := os.WriteFile(f.policyPath, []byte(testPolicy), 0o600); err != nil {
		tb.Fatal(err)
	}
	f.rootPath = "unused: the root is given"
	f.dbPath = "unused: the storage is postgres"
	cfg := f.config(tb)
	cfg.Storage = config.Storage{Type: "postgres", Postgres: config.PostgresConfig{URL: url}}
	cfg.Audit.Spool = filepath.Join(tb.TempDir(), "audit.spool") // each replica its own, as in production
	if configure != nil {
		configure(cfg)
	}
	if err := cfg.Validate(); err != nil {
		tb.Fatal(err)
	}
	run, err := custos.New(context.Background(), cfg, custos.Options{Logger: discardLogger(), Root: rt})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(runInBackground(tb, run))
	r := &replica{addr: run.Addr().String(), ks: run.Keystore(), rt: run}
	conn := dial(tb, r.addr, p.clientTLS(p.clientCert(tb, "spiffe://custos.test/admin")))
	r.c = clients{keys: custosv1.NewKeyServiceClient(conn), crypto: custosv1.NewCryptoServiceClient(conn)}
	return r
}

func sharedRoot(tb testing.TB) root.Root {
	tb.Helper()
	r, err := local.Create(filepath.Join(tb.TempDir(), "root.key"))
	if err != nil {
		tb.Fatal(err)
	}
	return r
}

func TestThreeReplicasOnOnePostgreSQLSeeEachOthersChanges(t *testing.T) {
	ctx := testContext(t)
	url := pgtest.Start(t).NewDatabase(t)
	p, rt := newPKI(t), sharedRoot(t)
	a, b, c := startReplica(t, p, url, rt), startReplica(t, p, url, rt), startReplica(t, p, url, rt)
	name := "tenants/acme/keys/pii"
	if _, err := a.c.keys.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: "acme"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/acme", KeyId: "pii", Key: &custosv1.Key{Purpose: custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT}}); err != nil {
		t.Fatal(err)
	}
	v1, err := a.c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: name, Plaintext: []byte("v1 secret")})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*replica{b, c} { // warm B's and C's caches with version 1
		if _, err := r.c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: name, Ciphertext: v1.Ciphertext}); err != nil {
			t.Fatal(err)
		}
	}

	// Rotate on A, encrypt on A: B and C decrypt at once.
	if _, err := a.c.keys.RotateKey(ctx, &custosv1.RotateKeyRequest{Name: name}); err != nil {
		t.Fatal(err)
	}
	v2, err := a.c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: name, Plaintext: []byte("v2 secret")})
	if err != nil || v2.KeyVersion != 2 {
		t.Fatalf("encrypt after rotate: %v %v", v2, err)
	}
	for _, r := range []*replica{b, c} {
		got, err := r.c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: name, Ciphertext: v2.Ciphertext})
		if err != nil || string(got.Plaintext) != "v2 secret" {
			t.Fatalf("decrypt of a version rotated on another replica: %v", err)
		}
	}
	// Encrypting on B right after the rotation uses the new primary within 1 s.
	waitFor(t, time.Second, "B encrypts with version 2", func() bool {
		r, err := b.c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: name, Plaintext: []byte("x")})
		return err == nil && r.KeyVersion == 2
	})

	// Disable version 1 on B: A (whose cache holds it enabled) refuses within 1 s.
	start := time.Now()
	if _, err := b.c.keys.DisableKeyVersion(ctx, &custosv1.DisableKeyVersionRequest{Name: name, Version: 1}); err != nil {
		t.Fatal(err)
	}
	delay := waitFor(t, time.Second, "A refuses the disabled version", func() bool {
		_, err := a.c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: name, Ciphertext: v1.Ciphertext})
		return err != nil
	})
	_, err = a.c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: name, Ciphertext: v1.Ciphertext})
	wantCode(t, err, codes.FailedPrecondition)
	t.Logf("propagation: version disabled on B refused by A after %v (call to refusal %v)", delay, time.Since(start))
}

// waitFor polls cond every 2 ms until it holds or limit passes, and returns
// how long it took.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > limit {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Since(start)
}

func TestConcurrentRotationsOnTwoReplicasLoseNoVersion(t *testing.T) {
	ctx := testContext(t)
	url := pgtest.Start(t).NewDatabase(t)
	p, rt := newPKI(t), sharedRoot(t)
	a, b := startReplica(t, p, url, rt), startReplica(t, p, url, rt)
	name := "tenants/acme/keys/pii"
	if _, err := a.c.keys.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: "acme"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/acme", KeyId: "pii", Key: &custosv1.Key{Purpose: custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT}}); err != nil {
		t.Fatal(err)
	}
	type sample struct {
		ct []byte
		pt string
	}
	var mu sync.Mutex
	var samples []sample
	var wg sync.WaitGroup
	for i, r := range []*replica{a, b} {
		wg.Go(func() {
			for j := range 50 {
				if _, err := r.c.keys.RotateKey(ctx, &custosv1.RotateKeyRequest{Name: name}); err != nil {
					t.Errorf("RotateKey: %v", err)
					return
				}
				pt := string(rune('a'+i)) + "-" + string(rune('0'+j%10))
				res, err := r.c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: name, Plaintext: []byte(pt)})
				if err != nil {
					t.Errorf("Encrypt: %v", err)
					return
				}
				mu.Lock()
				samples = append(samples, sample{res.Ciphertext, pt})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	k, err := a.c.keys.GetKey(ctx, &custosv1.GetKeyRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	if len(k.Key.Versions) != 101 || k.Key.PrimaryVersion != 101 {
		t.Fatalf("got %d versions, primary %d; want 101, 101", len(k.Key.Versions), k.Key.PrimaryVersion)
	}
	for i, v := range k.Key.Versions {
		if v.Version != uint32(i+1) || v.State != custosv1.KeyVersionState_KEY_VERSION_STATE_ENABLED {
			t.Fatalf("version %d: %v", i+1, v)
		}
	}
	for _, s := range samples { // every ciphertext decrypts on the other replicas' caches
		for _, r := range []*replica{a, b} {
			got, err := r.c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: name, Ciphertext: s.ct})
			if err != nil || string(got.Plaintext) != s.pt {
				t.Fatalf("decrypt: %v", err)
			}
		}
	}
}

func TestPostgreSQLOutageServesCacheFailsWritesAndRecovers(t *testing.T) {
	ctx := testContext(t)
	pg := pgtest.StartDedicated(t)
	url := pg.NewDatabase(t)
	p, rt := newPKI(t), sharedRoot(t)
	r := startReplica(t, p, url, rt)
	name := "tenants/acme/keys/pii"
	if _, err := r.c.keys.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: "acme"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/acme", KeyId: "pii", Key: &custosv1.Key{Purpose: custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT}}); err != nil {
		t.Fatal(err)
	}
	ct, err := r.c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: name, Plaintext: []byte("before")})
	if err != nil {
		t.Fatal(err)
	}

	pg.Kill(t)
	if serr, _ := r.ks.Dependencies(ctx); serr == nil {
		t.Fatal("Dependencies reports storage up while PostgreSQL is killed")
	}
	// Reads from the cache keep working.
	if _, err := r.c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: name, Plaintext: []byte("during")}); err != nil {
		t.Fatalf("cached encrypt during the outage: %v", err)
	}
	if _, err := r.c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: name, Ciphertext: ct.Ciphertext}); err != nil {
		t.Fatalf("cached decrypt during the outage: %v", err)
	}
	// Writes fail UNAVAILABLE, with the bland message.
	_, err = r.c.keys.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: "newco"})
	if st := wantCode(t, err, codes.Unavailable); st.Message() == "" {
		t.Fatal("empty message")
	}
	_, err = r.c.keys.RotateKey(ctx, &custosv1.RotateKeyRequest{Name: name})
	wantCode(t, err, codes.Unavailable)

	pg.StartAgain(t)
	waitFor(t, 15*time.Second, "writes work again after PostgreSQL restarts", func() bool {
		_, err := r.c.keys.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: "newco"})
		return err == nil
	})
	if _, err := r.c.keys.RotateKey(ctx, &custosv1.RotateKeyRequest{Name: name}); err != nil {
		t.Fatalf("rotate after recovery: %v", err)
	}
}
