package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/storage/bbolt"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

func TestDecryptAfterRestart(t *testing.T) {
	t.Parallel()
	f := newFiles(t)
	first := start(t, f, options{})
	setup(t, first, "a")
	ctx := testContext(t)
	c := first.clients(t, idAdmin)
	aad := []byte("users/9/email")
	v1, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte("before rotation"), AssociatedData: aad})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.keys.RotateKey(ctx, &custosv1.RotateKeyRequest{Name: keyName("a")}); err != nil {
		t.Fatal(err)
	}
	v2, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte("after rotation"), AssociatedData: aad})
	if err != nil {
		t.Fatal(err)
	}
	first.stop()

	// A new server: new keystore, empty cache, same bbolt file and root key.
	second := start(t, f, options{})
	c = second.clients(t, idAdmin)
	tests := []struct {
		name    string
		ct      []byte
		want    string
		version uint32
	}{
		{"a ciphertext of version 1 made before the restart decrypts", v1.GetCiphertext(), "before rotation", 1},
		{"a ciphertext of version 2 made before the restart decrypts", v2.GetCiphertext(), "after rotation", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dec, err := c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName("a"), Ciphertext: tt.ct, AssociatedData: aad})
			if err != nil {
				t.Fatalf("Decrypt: %v", err)
			}
			if string(dec.GetPlaintext()) != tt.want || dec.GetKeyVersion() != tt.version {
				t.Errorf("Decrypt = %q version %d, want %q version %d", dec.GetPlaintext(), dec.GetKeyVersion(), tt.want, tt.version)
			}
		})
	}
	t.Run("new ciphertexts use the primary version set before the restart", func(t *testing.T) {
		enc, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte("p")})
		if err != nil {
			t.Fatal(err)
		}
		if enc.GetKeyVersion() != 2 {
			t.Errorf("key_version = %d, want 2", enc.GetKeyVersion())
		}
	})
}

// copyRecord copies the stored record under from over the one under to,
// with compare-and-swap on to's version, in the bbolt file at path.
func copyRecord(t *testing.T, path, from, to string) {
	t.Helper()
	ctx := testContext(t)
	store, err := bbolt.Open(path, bbolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	src, err := store.Get(ctx, from)
	if err != nil {
		t.Fatalf("get %s: %v", from, err)
	}
	dst, err := store.Get(ctx, to)
	if err != nil {
		t.Fatalf("get %s: %v", to, err)
	}
	if bytes.Equal(src.Value, dst.Value) {
		t.Fatalf("%s and %s already hold the same record", from, to)
	}
	if _, err := store.Put(ctx, to, src.Value, dst.Version); err != nil {
		t.Fatalf("put %s: %v", to, err)
	}
}

func TestKeysetCopiedToAnotherTenantNeverDecrypts(t *testing.T) {
	t.Parallel()
	f := newFiles(t)
	first := start(t, f, options{})
	setup(t, first, "a", "b")
	ctx := testContext(t)
	c := first.clients(t, idAdmin)
	aad := []byte("invoices/3/iban")
	ctA, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte("tenant a's secret"), AssociatedData: aad})
	if err != nil {
		t.Fatal(err)
	}
	ctB, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("b"), Plaintext: []byte("tenant b's secret"), AssociatedData: aad})
	if err != nil {
		t.Fatal(err)
	}
	first.stop()

	// An attacker with write access to the storage moves a's wrapped keyset
	// (and its versions' metadata) onto b's key.
	copyRecord(t, f.dbPath, "keys/a/k", "keys/b/k")

	logs := &syncBuffer{}
	second := start(t, f, options{logger: slog.New(slog.NewJSONHandler(logs, nil))})
	c = second.clients(t, idAdmin)

	tests := []struct {
		name string
		call func(context.Context) error
	}{
		{"Encrypt under tenant b's key fails", func(ctx context.Context) error {
			_, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("b"), Plaintext: []byte("p"), AssociatedData: aad})
			return err
		}},
		{"Decrypt of tenant a's ciphertext under tenant b's key fails", func(ctx context.Context) error {
			_, err := c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName("b"), Ciphertext: ctA.GetCiphertext(), AssociatedData: aad})
			return err
		}},
		{"Decrypt of tenant b's own old ciphertext fails", func(ctx context.Context) error {
			_, err := c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName("b"), Ciphertext: ctB.GetCiphertext(), AssociatedData: aad})
			return err
		}},
		{"EncryptBatch under tenant b's key fails as a whole", func(ctx context.Context) error {
			_, err := c.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: keyName("b"), Items: encryptItems(2, 4)})
			return err
		}},
		{"DecryptBatch of tenant a's ciphertext under tenant b's key fails as a whole", func(ctx context.Context) error {
			_, err := c.crypto.DecryptBatch(ctx, &custosv1.DecryptBatchRequest{Name: keyName("b"), Items: []*custosv1.DecryptBatchRequest_Item{{Ciphertext: ctA.GetCiphertext(), AssociatedData: aad}}})
			return err
		}},
		{"RotateKey of tenant b's key fails", func(ctx context.Context) error {
			_, err := c.keys.RotateKey(ctx, &custosv1.RotateKeyRequest{Name: keyName("b")})
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name+" with a bland INTERNAL error", func(t *testing.T) {
			st := wantCode(t, tt.call(ctx), codes.Internal)
			if st.Message() != "internal error" {
				t.Errorf("message = %q, want the bland %q", st.Message(), "internal error")
			}
		})
	}

	t.Run("the failure is logged with its detail for the operator", func(t *testing.T) {
		if !bytes.Contains(logs.Bytes(), []byte(keystore.ErrIntegrity.Error())) {
			t.Errorf("logs do not mention %q:\n%s", keystore.ErrIntegrity, logs.Bytes())
		}
	})
	t.Run("tenant a's own key is untouched and still decrypts", func(t *testing.T) {
		dec, err := c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName("a"), Ciphertext: ctA.GetCiphertext(), AssociatedData: aad})
		if err != nil || string(dec.GetPlaintext()) != "tenant a's secret" {
			t.Fatalf("Decrypt = %q, %v", dec.GetPlaintext(), err)
		}
	})
}

func TestRootIsCalledOncePerTenantWhileCacheIsWarm(t *testing.T) {
	t.Parallel()
	f := newFiles(t)
	first := start(t, f, options{})
	setup(t, first, "a", "b")
	first.stop()

	// A fresh server, so both tenants' KEKs must come from the root.
	counting := &countingRoot{Root: f.root}
	ts := start(t, f, options{root: counting})
	ctx := testContext(t)
	c := ts.clients(t, idAdmin)

	const workers, rounds = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			tenant := []string{"a", "b"}[w%2]
			for i := range rounds {
				pt := fmt.Appendf(nil, "worker %d round %d", w, i)
				enc, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName(tenant), Plaintext: pt})
				if err != nil {
					errs <- fmt.Errorf("Encrypt: %w", err)
					return
				}
				dec, err := c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName(tenant), Ciphertext: enc.GetCiphertext()})
				if err != nil {
					errs <- fmt.Errorf("Decrypt: %w", err)
					return
				}
				if !bytes.Equal(dec.GetPlaintext(), pt) {
					errs <- fmt.Errorf("Decrypt = %q, want %q", dec.GetPlaintext(), pt)
					return
				}
				if i%5 == 0 {
					_, err := c.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: keyName(tenant), Items: encryptItems(3, 8)})
					if err != nil {
						errs <- fmt.Errorf("EncryptBatch: %w", err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	wraps, unwraps := counting.counts()
	if unwraps != 2 {
		t.Errorf("the root unwrapped %d times for %d calls on 2 tenants, want exactly 2 (once per tenant)", unwraps, workers*rounds*2)
	}
	if wraps != 0 {
		t.Errorf("the root wrapped %d times, want 0: no tenant was created", wraps)
	}
}

// setCreateTime rewrites the create_time of the tenant record under key in
// the bbolt file at path, as a tenant shredded and created again under the
// same id would have it.
func setCreateTime(t *testing.T, path, key string, when time.Time) {
	t.Helper()
	ctx := testContext(t)
	store, err := bbolt.Open(path, bbolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	r, err := store.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	var rec map[string]any
	if err := json.Unmarshal(r.Value, &rec); err != nil {
		t.Fatal(err)
	}
	rec["create_time"] = when.UTC().Format(time.RFC3339Nano)
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Put(ctx, key, b, r.Version); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

// A tenant id shredded and created again names another tenant: the new
// one's auditors see none of the events of the earlier one (its callers,
// its keys), only those from the new tenant's creation on.
func TestATenantCreatedAgainSeesNoneOfItsPredecessorsEvents(t *testing.T) {
	t.Parallel()
	f := newFiles(t)
	ts := start(t, f, options{policy: auditPolicy})
	setup(t, ts, "a")
	ctx := testContext(t)
	encrypt := func(ts *testServer) string {
		var header, trailer metadata.MD
		if _, err := ts.clients(t, idAdmin).crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte("x")}, grpc.Header(&header), grpc.Trailer(&trailer)); err != nil {
			t.Fatal(err)
		}
		return requestID(header, trailer)
	}
	before := encrypt(ts)
	events(t, ts)
	ts.stop()
	created := time.Now()
	setCreateTime(t, f.dbPath, "tenants/a", created)
	ts = start(t, f, options{policy: auditPolicy})
	after := encrypt(ts)
	events(t, ts)
	resp, err := custosv1.NewAuditServiceClient(ts.conn(t, idAuditorA)).ListAuditEvents(ctx, &custosv1.ListAuditEventsRequest{Parent: "tenants/a"})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range resp.GetRecords() {
		ev := r.GetEvent()
		seen[ev.GetRequestId()] = true
		if end := ev.GetTime().AsTime().Add(ev.GetDuration().AsDuration()); end.Before(created) {
			t.Errorf("event %s (%s) ended at %s, before the tenant was created at %s", ev.GetRequestId(), ev.GetOperation(), end, created)
		}
	}
	if seen[before] {
		t.Fatal("the re-created tenant's auditor sees its predecessor's Encrypt")
	}
	if !seen[after] {
		t.Fatal("the re-created tenant's auditor does not see its own Encrypt")
	}

	// The second incarnation shredded too (its record gone, its tombstone
	// written): its events are still the only ones listed.
	ts.stop()
	shredInPlace(t, f.dbPath, "a", created)
	ts = start(t, f, options{policy: auditPolicy})
	resp, err = custosv1.NewAuditServiceClient(ts.conn(t, idAuditorA)).ListAuditEvents(ctx, &custosv1.ListAuditEventsRequest{Parent: "tenants/a"})
	if err != nil {
		t.Fatal(err)
	}
	seen = map[string]bool{}
	for _, r := range resp.GetRecords() {
		seen[r.GetEvent().GetRequestId()] = true
	}
	if seen[before] || !seen[after] {
		t.Fatalf("after the second shred: the first incarnation's Encrypt listed %v, the second's %v; want false, true", seen[before], seen[after])
	}
}

// shredInPlace deletes tenant's record and writes the tombstone a shred of
// the incarnation created at created leaves, in the bbolt file at path.
func shredInPlace(t *testing.T, path, tenant string, created time.Time) {
	t.Helper()
	ctx := testContext(t)
	store, err := bbolt.Open(path, bbolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	r, err := store.Get(ctx, "tenants/"+tenant)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Delete(ctx, "tenants/"+tenant, r.Version); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(keystore.Tombstone{Tenant: tenant, CreateTime: created.UTC(), ShredTime: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Put(ctx, keystore.TombstonePrefix+tenant, b, 0); err != nil {
		t.Fatal(err)
	}
}
