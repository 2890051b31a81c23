package vaulttest

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/custos-kms/custos/keystore"
	vaultroot "github.com/custos-kms/custos/keystore/root/vault"
	"github.com/custos-kms/custos/keystore/storage/memory"
)

// TestKeystoreRidesOutASealedVault is issue 3's availability contract with a
// real Vault as root: while Vault is sealed, a tenant whose KEK is cached
// keeps encrypting and decrypting; a tenant that is not cached, or a new one,
// gets ErrUnavailable (gRPC UNAVAILABLE); once Vault is unsealed the same
// keystore serves them with no restart.
func TestKeystoreRidesOutASealedVault(t *testing.T) {
	v := startVault(t)
	rt := newRoot(t, v.config(vaultroot.Auth{Token: v.token(t, "custos")}))
	store := memory.New()
	t.Cleanup(func() { store.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	// Tenants "warm" and "cold" exist; only "warm" is in this replica's cache.
	setup, err := keystore.New(keystore.Config{Storage: store, Root: rt})
	if err != nil {
		t.Fatal(err)
	}
	warm, cold := keystore.KeyRef{Tenant: "warm", Key: "k"}, keystore.KeyRef{Tenant: "cold", Key: "k"}
	for _, ref := range []keystore.KeyRef{warm, cold} {
		if _, err := setup.CreateTenant(ctx, ref.Tenant); err != nil {
			t.Fatal(err)
		}
		if _, err := setup.CreateKey(ctx, ref, keystore.KeySpec{Purpose: keystore.PurposeEncrypt}); err != nil {
			t.Fatal(err)
		}
	}
	ks, err := keystore.New(keystore.Config{Storage: store, Root: rt})
	if err != nil {
		t.Fatal(err)
	}
	ct, _, err := ks.Encrypt(ctx, warm, []byte("before the outage"), nil)
	if err != nil {
		t.Fatal(err)
	}

	v.seal(t)
	if _, _, err := ks.Encrypt(ctx, warm, []byte("during"), nil); err != nil {
		t.Fatalf("cached tenant, Vault sealed: %v", err)
	}
	if pt, _, err := ks.Decrypt(ctx, warm, ct, nil); err != nil || string(pt) != "before the outage" {
		t.Fatalf("cached tenant decrypt, Vault sealed: %q %v", pt, err)
	}
	if _, _, err := ks.Encrypt(ctx, cold, []byte("during"), nil); !errors.Is(err, keystore.ErrUnavailable) {
		t.Fatalf("uncached tenant, Vault sealed: got %v, want ErrUnavailable", err)
	}
	if _, err := ks.CreateTenant(ctx, "newco"); !errors.Is(err, keystore.ErrUnavailable) {
		t.Fatalf("new tenant, Vault sealed: got %v, want ErrUnavailable", err)
	}

	v.unseal(t)
	if _, _, err := ks.Encrypt(ctx, cold, []byte("after"), nil); err != nil {
		t.Fatalf("uncached tenant after unseal, no restart: %v", err)
	}
	if _, err := ks.CreateTenant(ctx, "newco"); err != nil {
		t.Fatalf("new tenant after unseal, no restart: %v", err)
	}
	if s, r := ks.Dependencies(ctx); s != nil || r != nil {
		t.Fatalf("dependencies after unseal: storage %v, root %v", s, r)
	}
}

// TestRootRewrapMovesEveryTenantToTheNewVaultKeyVersion is the root rotation
// procedure of docs/operations.md against a real Vault: rotate the Transit
// key, re-wrap every tenant KEK (as `custos root rewrap` does), retire the old
// version, and every tenant still decrypts from a cold cache.
func TestRootRewrapMovesEveryTenantToTheNewVaultKeyVersion(t *testing.T) {
	v := startVault(t)
	rt := newRoot(t, v.config(vaultroot.Auth{Token: v.token(t, "custos")}))
	store := memory.New()
	t.Cleanup(func() { store.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ks, err := keystore.New(keystore.Config{Storage: store, Root: rt})
	if err != nil {
		t.Fatal(err)
	}
	tenants := []string{"a", "b", "c"}
	cts := map[string][]byte{}
	for _, tn := range tenants {
		ref := keystore.KeyRef{Tenant: tn, Key: "k"}
		if _, err := ks.CreateTenant(ctx, tn); err != nil {
			t.Fatal(err)
		}
		if _, err := ks.CreateKey(ctx, ref, keystore.KeySpec{Purpose: keystore.PurposeEncrypt}); err != nil {
			t.Fatal(err)
		}
		if cts[tn], _, err = ks.Encrypt(ctx, ref, []byte("secret of "+tn), nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.admin.Logical().Write("transit/keys/"+keyName+"/rotate", nil); err != nil {
		t.Fatal(err)
	}
	n, err := ks.RewrapTenantKEKs(ctx, nil)
	if err != nil || n != len(tenants) {
		t.Fatalf("RewrapTenantKEKs = %d, %v", n, err)
	}
	for _, tn := range tenants {
		rec, err := store.Get(ctx, "tenants/"+tn)
		if err != nil {
			t.Fatal(err)
		}
		var stored struct {
			WrappedKEK []byte `json:"wrapped_kek"`
		}
		if err := json.Unmarshal(rec.Value, &stored); err != nil {
			t.Fatal(err)
		}
		if ver, err := vaultroot.KeyVersion(stored.WrappedKEK); err != nil || ver != 2 {
			t.Fatalf("tenant %s KEK under Transit version %d (%v), want 2", tn, ver, err)
		}
	}
	// Retire version 1; a cold keystore must still decrypt everything.
	if _, err := v.admin.Logical().Write("transit/keys/"+keyName+"/config", map[string]any{"min_decryption_version": 2}); err != nil {
		t.Fatal(err)
	}
	cold, err := keystore.New(keystore.Config{Storage: store, Root: rt})
	if err != nil {
		t.Fatal(err)
	}
	for _, tn := range tenants {
		pt, _, err := cold.Decrypt(ctx, keystore.KeyRef{Tenant: tn, Key: "k"}, cts[tn], nil)
		if err != nil || string(pt) != "secret of "+tn {
			t.Fatalf("tenant %s after root rotation: %q %v", tn, pt, err)
		}
	}
}
