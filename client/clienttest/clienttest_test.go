package clienttest_test

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/client/clienttest"
)

func TestRealServerRoundTrip(t *testing.T) {
	srv := clienttest.Start(t)
	c := srv.Client(t)
	ctx := t.Context()
	if _, err := c.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateKey(ctx, client.TenantName("acme"), "pii", client.KeySpec{Purpose: client.PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	name := client.KeyName("acme", "pii")
	ad := client.AssociatedData("customer-42", "email")
	ct, v, err := c.Encrypt(ctx, name, []byte("alice@example.com"), ad)
	if err != nil || v != 1 {
		t.Fatalf("Encrypt: v%d %v", v, err)
	}
	pt, _, err := c.Decrypt(ctx, name, ct, ad)
	if err != nil || string(pt) != "alice@example.com" {
		t.Fatalf("Decrypt: %q %v", pt, err)
	}
	if _, _, err := c.Decrypt(ctx, name, ct, client.AssociatedData("customer-42", "iban")); !errors.Is(err, client.ErrInvalidCiphertext) {
		t.Fatalf("wrong AD: %v", err)
	}
	if _, err := c.GetKey(ctx, client.KeyName("acme", "nope")); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("unknown key: %v", err)
	}
}

func TestAPolicyLimitsWhatAnotherIdentityMayDo(t *testing.T) {
	srv := clienttest.StartWith(t, clienttest.Options{Policy: clienttest.AllowAll + `  - identities: ["spiffe://example.org/billing"]
    tenants: ["acme"]
    permissions: [encrypt]
  - identities: ["reporting"]
    tenants: ["acme"]
    permissions: [decrypt]
`})
	admin := srv.Client(t)
	ctx := t.Context()
	for _, tenant := range []string{"acme", "other"} {
		if _, err := admin.CreateTenant(ctx, tenant); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.CreateKey(ctx, client.TenantName(tenant), "pii", client.KeySpec{Purpose: client.PurposeEncrypt}); err != nil {
			t.Fatal(err)
		}
	}
	name := client.KeyName("acme", "pii")

	billing := srv.ClientAs(t, "spiffe://example.org/billing") // a SPIFFE ID
	ct, _, err := billing.Encrypt(ctx, name, []byte("x"), nil)
	if err != nil {
		t.Fatalf("Encrypt as billing: %v", err)
	}
	if _, _, err := billing.Decrypt(ctx, name, ct, nil); !errors.Is(err, client.ErrPermissionDenied) {
		t.Errorf("Decrypt as billing: %v, want ErrPermissionDenied", err)
	}
	if _, _, err := billing.Encrypt(ctx, client.KeyName("other", "pii"), []byte("x"), nil); !errors.Is(err, client.ErrPermissionDenied) {
		t.Errorf("Encrypt in another tenant as billing: %v, want ErrPermissionDenied", err)
	}

	reporting := srv.ClientAs(t, "reporting") // a common name
	if pt, _, err := reporting.Decrypt(ctx, name, ct, nil); err != nil || string(pt) != "x" {
		t.Errorf("Decrypt as reporting = %q, %v", pt, err)
	}

	stranger := srv.ClientAs(t, "spiffe://example.org/stranger")
	if _, _, err := stranger.Encrypt(ctx, name, []byte("x"), nil); !errors.Is(err, client.ErrPermissionDenied) {
		t.Errorf("Encrypt as an identity the policy does not name: %v, want ErrPermissionDenied", err)
	}
}

func TestNewRunsOutsideATestUntilClosed(t *testing.T) {
	srv, err := clienttest.New(clienttest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(t.Context(), srv.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateTenant(t.Context(), "acme"); err != nil {
		t.Fatalf("CreateTenant: %v", err)
	}
	srv.Close()
	srv.Close() // idempotent
	if _, err := os.Stat(srv.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Close left %s behind: %v", srv.Dir, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if _, err := c.GetTenant(ctx, client.TenantName("acme")); err == nil {
		t.Error("a call after Close succeeded")
	}
}

func TestABadPolicyFailsToStart(t *testing.T) {
	if _, err := clienttest.New(clienttest.Options{Policy: "rules: [{identities: [x], permissions: [fly]}]"}); err == nil {
		t.Error("New with an invalid policy succeeded")
	}
}

// waitFor polls cond every 50ms until it holds or 10s pass.
func waitFor(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, err := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within 10s (last error: %v)", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A clienttest server runs the scheduler and the count flush like a
// deployed Custos: a key with a rotation period rotates by itself, and
// GetKey shows how many times each version encrypted.
func TestTheSchedulerRunsInsideATestServer(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	srv := clienttest.StartWith(t, clienttest.Options{Now: clock})
	c := srv.Client(t)
	ctx := t.Context()
	if _, err := c.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	name := client.KeyName("acme", "pii")
	if _, err := c.CreateKey(ctx, client.TenantName("acme"), "pii", client.KeySpec{Purpose: client.PurposeEncrypt, RotationPeriod: time.Hour}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, _, err := c.Encrypt(ctx, name, []byte("x"), client.AssociatedData("r", "f")); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	now = now.Add(61 * time.Minute)
	mu.Unlock()
	waitFor(t, "a rotation by period", func() (bool, error) {
		k, err := c.GetKey(ctx, name)
		return err == nil && k.PrimaryVersion >= 2, err
	})
	waitFor(t, "the count flush", func() (bool, error) {
		k, err := c.GetKey(ctx, name)
		return err == nil && len(k.Versions) > 0 && k.Versions[0].EncryptCount >= 3, err
	})
	k, err := c.GetKey(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if k.Versions[0].EncryptCount != 3 {
		t.Errorf("version 1 encrypt count = %d, want 3", k.Versions[0].EncryptCount)
	}
}
