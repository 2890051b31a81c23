package clienttest_test

import (
	"errors"
	"testing"

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
