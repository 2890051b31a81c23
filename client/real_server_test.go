package client_test

// Tests of the key lifecycle and of the crypto surface beyond Encrypt and
// Decrypt, through the client against the real server (client/clienttest:
// real keystore, memory storage, local root, mTLS), so that what they check
// is the behaviour users get, not a fake's.

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/client/clienttest"
)

// fastPasswords is the cheapest policy the server allows (bcrypt cost 10),
// so password tests stay quick.
var fastPasswords = &client.PasswordPolicy{BcryptCost: 10}

// realTenant starts a real server, creates tenant "acme" and returns a
// client allowed everything.
func realTenant(t *testing.T) *client.Client {
	t.Helper()
	c := clienttest.Start(t).Client(t)
	if _, err := c.CreateTenant(t.Context(), "acme"); err != nil {
		t.Fatalf("CreateTenant: %v", err)
	}
	return c
}

// createKey creates key id in tenant "acme" and returns its name.
func createKey(t *testing.T, c *client.Client, id string, spec client.KeySpec) string {
	t.Helper()
	k, err := c.CreateKey(t.Context(), client.TenantName("acme"), id, spec)
	if err != nil {
		t.Fatalf("CreateKey %s: %v", id, err)
	}
	return k.Name
}

func rotate(t *testing.T, c *client.Client, name string) client.Key {
	t.Helper()
	k, err := c.RotateKey(t.Context(), name)
	if err != nil {
		t.Fatalf("RotateKey: %v", err)
	}
	return k
}

func versionState(t *testing.T, k client.Key, v uint32) client.KeyVersion {
	t.Helper()
	for _, kv := range k.Versions {
		if kv.Version == v {
			return kv
		}
	}
	t.Fatalf("key %s has no version %d: %+v", k.Name, v, k.Versions)
	return client.KeyVersion{}
}

// checkAbout fails unless got is want give or take a minute (the server's
// clock is the real one).
func checkAbout(t *testing.T, what string, got, want time.Time) {
	t.Helper()
	if d := got.Sub(want); d < -time.Minute || d > time.Minute {
		t.Errorf("%s = %v, want about %v", what, got, want)
	}
}

func TestTenantDeletionCanBeUndoneUntilItsDate(t *testing.T) {
	c := realTenant(t)
	ctx := t.Context()
	tenant := client.TenantName("acme")
	name := createKey(t, c, "pii", client.KeySpec{Purpose: client.PurposeEncrypt})
	ad := client.AssociatedData("users", "42", "email")
	ct, _, err := c.Encrypt(ctx, name, []byte("alice@example.com"), ad)
	if err != nil {
		t.Fatal(err)
	}

	got, err := c.DeleteTenant(ctx, tenant, 0)
	if err != nil {
		t.Fatalf("DeleteTenant: %v", err)
	}
	if got.State != client.TenantDeleteScheduled || got.Name != tenant || got.ID != "acme" {
		t.Errorf("DeleteTenant = %+v, want acme DELETE_SCHEDULED", got)
	}
	checkAbout(t, "DeleteTime with the default waiting period", got.DeleteTime, time.Now().Add(30*24*time.Hour))
	if g, err := c.GetTenant(ctx, tenant); err != nil || g.State != client.TenantDeleteScheduled || !g.DeleteTime.Equal(got.DeleteTime) {
		t.Errorf("GetTenant after DeleteTenant = %+v, %v", g, err)
	}

	t.Run("every call on the tenant fails with ErrTenantDeleted", func(t *testing.T) {
		_, _, err := c.Encrypt(ctx, name, []byte("x"), nil)
		checkSentinels(t, err, client.ErrTenantDeleted, client.ErrFailedPrecondition)
		_, _, err = c.Decrypt(ctx, name, ct, ad)
		checkSentinels(t, err, client.ErrTenantDeleted, client.ErrFailedPrecondition)
		_, err = c.DeleteTenant(ctx, tenant, 0)
		checkSentinels(t, err, client.ErrTenantDeleted, client.ErrFailedPrecondition)
	})

	back, err := c.UndeleteTenant(ctx, tenant)
	if err != nil {
		t.Fatalf("UndeleteTenant: %v", err)
	}
	if back.State != client.TenantActive || !back.DeleteTime.IsZero() {
		t.Errorf("UndeleteTenant = %+v, want ACTIVE without a DeleteTime", back)
	}
	if pt, _, err := c.Decrypt(ctx, name, ct, ad); err != nil || string(pt) != "alice@example.com" {
		t.Errorf("Decrypt after UndeleteTenant = %q, %v", pt, err)
	}
	if _, _, err := c.Encrypt(ctx, name, []byte("x"), nil); err != nil {
		t.Errorf("Encrypt after UndeleteTenant: %v", err)
	}

	t.Run("undeleting an active tenant fails", func(t *testing.T) {
		_, err := c.UndeleteTenant(ctx, tenant)
		checkSentinels(t, err, client.ErrWrongState, client.ErrFailedPrecondition)
	})
	t.Run("the waiting period is 1 to 365 days", func(t *testing.T) {
		for _, d := range []time.Duration{time.Hour, 366 * 24 * time.Hour, -24 * time.Hour} {
			_, err := c.DeleteTenant(ctx, tenant, d)
			checkSentinels(t, err, client.ErrInvalidArgument)
		}
		got, err := c.DeleteTenant(ctx, tenant, 7*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		checkAbout(t, "DeleteTime with 7 days", got.DeleteTime, time.Now().Add(7*24*time.Hour))
	})
	t.Run("an unknown tenant is not found", func(t *testing.T) {
		_, err := c.DeleteTenant(ctx, client.TenantName("nobody"), 0)
		checkSentinels(t, err, client.ErrNotFound)
		_, err = c.UndeleteTenant(ctx, client.TenantName("nobody"))
		checkSentinels(t, err, client.ErrNotFound)
	})
}

func TestUpdateKeyChangesOnlyWhatItSets(t *testing.T) {
	c := realTenant(t)
	ctx := t.Context()
	name := createKey(t, c, "pii", client.KeySpec{Purpose: client.PurposeEncrypt})

	day := 24 * time.Hour
	k, err := c.UpdateKey(ctx, name, client.KeyUpdate{RotationPeriod: &day})
	if err != nil {
		t.Fatalf("UpdateKey rotation period: %v", err)
	}
	if k.RotationPeriod != day {
		t.Errorf("RotationPeriod = %v, want 24h", k.RotationPeriod)
	}
	checkAbout(t, "NextRotationTime", k.NextRotationTime, time.Now().Add(day))

	old, _, err := c.Encrypt(ctx, name, []byte("old"), nil)
	if err != nil {
		t.Fatal(err)
	}
	rotate(t, c, name)
	two := uint32(2)
	k, err = c.UpdateKey(ctx, name, client.KeyUpdate{MinDecryptionVersion: &two})
	if err != nil {
		t.Fatalf("UpdateKey min decryption version: %v", err)
	}
	if k.MinDecryptionVersion != 2 || k.RotationPeriod != day {
		t.Errorf("after setting the minimum only: min %d, rotation %v; want 2 and 24h (unchanged)", k.MinDecryptionVersion, k.RotationPeriod)
	}
	_, _, err = c.Decrypt(ctx, name, old, nil)
	checkSentinels(t, err, client.ErrKeyVersionTooOld, client.ErrFailedPrecondition)

	zero, off := uint32(0), time.Duration(0)
	k, err = c.UpdateKey(ctx, name, client.KeyUpdate{MinDecryptionVersion: &zero, RotationPeriod: &off})
	if err != nil {
		t.Fatalf("UpdateKey back to defaults: %v", err)
	}
	if k.MinDecryptionVersion != 0 || k.RotationPeriod != 0 || !k.NextRotationTime.IsZero() {
		t.Errorf("after resetting: %+v, want no minimum and no rotation", k)
	}
	if pt, _, err := c.Decrypt(ctx, name, old, nil); err != nil || string(pt) != "old" {
		t.Errorf("Decrypt after removing the minimum = %q, %v", pt, err)
	}

	t.Run("invalid updates are refused", func(t *testing.T) {
		three, minute := uint32(3), time.Minute
		for _, u := range []client.KeyUpdate{
			{},                             // nothing to change
			{MinDecryptionVersion: &three}, // above the primary
			{RotationPeriod: &minute},      // below an hour
			{PasswordPolicy: &client.PasswordPolicy{}}, // not a PASSWORD key
		} {
			_, err := c.UpdateKey(ctx, name, u)
			checkSentinels(t, err, client.ErrInvalidArgument)
		}
	})
}

func TestVersionStates(t *testing.T) {
	c := realTenant(t)
	ctx := t.Context()
	name := createKey(t, c, "pii", client.KeySpec{Purpose: client.PurposeEncrypt})
	ad := client.AssociatedData("row", "1")
	v1ct, _, err := c.Encrypt(ctx, name, []byte("v1 data"), ad)
	if err != nil {
		t.Fatal(err)
	}
	rotate(t, c, name)
	decryptsV1 := func(t *testing.T) {
		t.Helper()
		if pt, v, err := c.Decrypt(ctx, name, v1ct, ad); err != nil || string(pt) != "v1 data" || v != 1 {
			t.Errorf("Decrypt of the version 1 ciphertext = %q, v%d, %v", pt, v, err)
		}
	}

	k, err := c.DisableKeyVersion(ctx, name, 1)
	if err != nil {
		t.Fatalf("DisableKeyVersion: %v", err)
	}
	if s := versionState(t, k, 1).State; s != client.VersionDisabled {
		t.Errorf("version 1 is %v after DisableKeyVersion", s)
	}
	_, _, err = c.Decrypt(ctx, name, v1ct, ad)
	checkSentinels(t, err, client.ErrKeyVersionDisabled, client.ErrFailedPrecondition)

	k, err = c.EnableKeyVersion(ctx, name, 1)
	if err != nil {
		t.Fatalf("EnableKeyVersion: %v", err)
	}
	if s := versionState(t, k, 1).State; s != client.VersionEnabled {
		t.Errorf("version 1 is %v after EnableKeyVersion", s)
	}
	decryptsV1(t)

	k, err = c.DestroyKeyVersion(ctx, name, 1, 0)
	if err != nil {
		t.Fatalf("DestroyKeyVersion: %v", err)
	}
	kv := versionState(t, k, 1)
	if kv.State != client.VersionDestroyScheduled {
		t.Errorf("version 1 is %v after DestroyKeyVersion", kv.State)
	}
	checkAbout(t, "DestroyTime with the default waiting period", kv.DestroyTime, time.Now().Add(30*24*time.Hour))
	_, _, err = c.Decrypt(ctx, name, v1ct, ad)
	checkSentinels(t, err, client.ErrKeyVersionDestroyed, client.ErrFailedPrecondition)

	t.Run("a version scheduled for destruction must be restored before it is enabled", func(t *testing.T) {
		_, err := c.EnableKeyVersion(ctx, name, 1)
		checkSentinels(t, err, client.ErrWrongState, client.ErrFailedPrecondition)
	})

	k, err = c.RestoreKeyVersion(ctx, name, 1)
	if err != nil {
		t.Fatalf("RestoreKeyVersion: %v", err)
	}
	if kv := versionState(t, k, 1); kv.State != client.VersionDisabled || !kv.DestroyTime.IsZero() {
		t.Errorf("version 1 after RestoreKeyVersion = %+v, want DISABLED without a DestroyTime", kv)
	}
	_, _, err = c.Decrypt(ctx, name, v1ct, ad)
	checkSentinels(t, err, client.ErrKeyVersionDisabled, client.ErrFailedPrecondition)
	if _, err := c.EnableKeyVersion(ctx, name, 1); err != nil {
		t.Fatalf("EnableKeyVersion after RestoreKeyVersion: %v", err)
	}
	decryptsV1(t)

	t.Run("the waiting period is 1 to 365 days", func(t *testing.T) {
		_, err := c.DestroyKeyVersion(ctx, name, 1, time.Hour)
		checkSentinels(t, err, client.ErrInvalidArgument)
		k, err := c.DestroyKeyVersion(ctx, name, 1, 2*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		checkAbout(t, "DestroyTime with 2 days", versionState(t, k, 1).DestroyTime, time.Now().Add(2*24*time.Hour))
		if _, err := c.RestoreKeyVersion(ctx, name, 1); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("the primary can be neither disabled nor destroyed", func(t *testing.T) {
		_, err := c.DisableKeyVersion(ctx, name, 2)
		checkSentinels(t, err, client.ErrPrimaryVersion, client.ErrFailedPrecondition)
		_, err = c.DestroyKeyVersion(ctx, name, 2, 0)
		checkSentinels(t, err, client.ErrPrimaryVersion, client.ErrFailedPrecondition)
	})
	t.Run("restoring a version not scheduled for destruction fails", func(t *testing.T) {
		_, err := c.RestoreKeyVersion(ctx, name, 2)
		checkSentinels(t, err, client.ErrWrongState, client.ErrFailedPrecondition)
	})
	t.Run("an unknown version is not found", func(t *testing.T) {
		for _, call := range []func() error{
			func() error { _, err := c.EnableKeyVersion(ctx, name, 9); return err },
			func() error { _, err := c.DisableKeyVersion(ctx, name, 9); return err },
			func() error { _, err := c.DestroyKeyVersion(ctx, name, 9, 0); return err },
			func() error { _, err := c.RestoreKeyVersion(ctx, name, 9); return err },
		} {
			checkSentinels(t, call(), client.ErrNotFound)
		}
	})
}

func TestRewrap(t *testing.T) {
	c := realTenant(t)
	ctx := t.Context()
	name := createKey(t, c, "pii", client.KeySpec{Purpose: client.PurposeEncrypt})
	ad := client.AssociatedData("users", "42", "email")
	v1ct, _, err := c.Encrypt(ctx, name, []byte("alice@example.com"), ad)
	if err != nil {
		t.Fatal(err)
	}
	rotate(t, c, name)

	newCt, v, err := c.Rewrap(ctx, name, v1ct, ad)
	if err != nil {
		t.Fatalf("Rewrap: %v", err)
	}
	if v != 2 {
		t.Errorf("Rewrap of a version 1 ciphertext gave version %d, want the primary, 2", v)
	}
	if pt, dv, err := c.Decrypt(ctx, name, newCt, ad); err != nil || string(pt) != "alice@example.com" || dv != 2 {
		t.Errorf("Decrypt of the rewrapped ciphertext = %q, v%d, %v", pt, dv, err)
	}
	again, v, err := c.Rewrap(ctx, name, newCt, ad)
	if err != nil || v != 2 || !bytes.Equal(again, newCt) {
		t.Errorf("Rewrap of a current ciphertext = %x, v%d, %v; want the same bytes", again, v, err)
	}
	_, _, err = c.Rewrap(ctx, name, v1ct, client.AssociatedData("users", "43", "email"))
	checkSentinels(t, err, client.ErrInvalidCiphertext, client.ErrInvalidArgument)

	t.Run("a batch rewraps each item on its own", func(t *testing.T) {
		res, err := c.RewrapBatch(ctx, name, []client.RewrapItem{
			{Ciphertext: v1ct, AssociatedData: ad},
			{Ciphertext: newCt, AssociatedData: ad},
			{Ciphertext: []byte("garbage, not a ciphertext"), AssociatedData: ad},
			{Ciphertext: v1ct, AssociatedData: client.AssociatedData("moved")},
		})
		if err != nil {
			t.Fatalf("RewrapBatch: %v", err)
		}
		if len(res) != 4 {
			t.Fatalf("RewrapBatch returned %d results for 4 items", len(res))
		}
		if res[0].Err != nil || res[0].Version != 2 {
			t.Errorf("item 0 = %+v, want version 2", res[0])
		} else if pt, _, err := c.Decrypt(ctx, name, res[0].Ciphertext, ad); err != nil || string(pt) != "alice@example.com" {
			t.Errorf("item 0 decrypts to %q, %v", pt, err)
		}
		if res[1].Err != nil || res[1].Version != 2 || !bytes.Equal(res[1].Ciphertext, newCt) {
			t.Errorf("item 1 = %+v, want the same bytes back", res[1])
		}
		checkSentinels(t, res[2].Err, client.ErrInvalidCiphertext, client.ErrInvalidArgument)
		checkSentinels(t, res[3].Err, client.ErrInvalidCiphertext, client.ErrInvalidArgument)
		if res[2].Ciphertext != nil || res[3].Ciphertext != nil {
			t.Error("failed items carry a ciphertext")
		}
	})
	t.Run("a disabled version is refused, item by item", func(t *testing.T) {
		if _, err := c.DisableKeyVersion(ctx, name, 1); err != nil {
			t.Fatal(err)
		}
		defer c.EnableKeyVersion(ctx, name, 1)
		_, _, err := c.Rewrap(ctx, name, v1ct, ad)
		checkSentinels(t, err, client.ErrKeyVersionDisabled, client.ErrFailedPrecondition)
		res, err := c.RewrapBatch(ctx, name, []client.RewrapItem{{Ciphertext: v1ct, AssociatedData: ad}, {Ciphertext: newCt, AssociatedData: ad}})
		if err != nil {
			t.Fatal(err)
		}
		checkSentinels(t, res[0].Err, client.ErrKeyVersionDisabled, client.ErrFailedPrecondition)
		if res[1].Err != nil {
			t.Errorf("item 1: %v", res[1].Err)
		}
	})
	t.Run("a whole-call failure returns no results", func(t *testing.T) {
		res, err := c.RewrapBatch(ctx, client.KeyName("acme", "missing"), []client.RewrapItem{{Ciphertext: v1ct}})
		checkSentinels(t, err, client.ErrNotFound)
		if res != nil {
			t.Errorf("results = %v, want nil", res)
		}
	})
}

func TestDeterministicEncryption(t *testing.T) {
	c := realTenant(t)
	ctx := t.Context()
	name := createKey(t, c, "emails", client.KeySpec{Purpose: client.PurposeEncryptDeterministic})
	ad := client.AssociatedData("users", "email")
	encrypt := func(pt string, ad []byte) []byte {
		t.Helper()
		ct, v, err := c.Encrypt(ctx, name, []byte(pt), ad)
		if err != nil || v != 1 {
			t.Fatalf("Encrypt: v%d %v", v, err)
		}
		return ct
	}

	a, b := encrypt("alice@example.com", ad), encrypt("alice@example.com", ad)
	if !bytes.Equal(a, b) {
		t.Error("the same plaintext and associated data gave two ciphertexts")
	}
	if bytes.Equal(a, encrypt("bob@example.com", ad)) {
		t.Error("two plaintexts gave the same ciphertext")
	}
	if bytes.Equal(a, encrypt("alice@example.com", client.AssociatedData("admins", "email"))) {
		t.Error("two associated data gave the same ciphertext")
	}
	if pt, _, err := c.Decrypt(ctx, name, a, ad); err != nil || string(pt) != "alice@example.com" {
		t.Errorf("Decrypt = %q, %v", pt, err)
	}
	_, _, err := c.Decrypt(ctx, name, a, client.AssociatedData("admins", "email"))
	checkSentinels(t, err, client.ErrInvalidCiphertext, client.ErrInvalidArgument)

	// After a rotation, rewrapping gives exactly what encrypting anew gives.
	rotate(t, c, name)
	rewrapped, v, err := c.Rewrap(ctx, name, a, ad)
	if err != nil || v != 2 {
		t.Fatalf("Rewrap: v%d %v", v, err)
	}
	fresh, _, err := c.Encrypt(ctx, name, []byte("alice@example.com"), ad)
	if err != nil || !bytes.Equal(rewrapped, fresh) {
		t.Errorf("Rewrap and Encrypt under version 2 differ (%v)", err)
	}

	_, err = c.GenerateDataKey(ctx, name, nil)
	checkSentinels(t, err, client.ErrWrongPurpose, client.ErrFailedPrecondition)
}

func TestMACVerifiesAcrossRotation(t *testing.T) {
	c := realTenant(t)
	ctx := t.Context()
	name := createKey(t, c, "tokens", client.KeySpec{Purpose: client.PurposeMAC})
	data := []byte("session 1234")

	mac1, v, err := c.ComputeMAC(ctx, name, data)
	if err != nil || v != 1 || len(mac1) != 5+32 {
		t.Fatalf("ComputeMAC = %x, v%d, %v; want 37 bytes of version 1", mac1, v, err)
	}
	if again, _, _ := c.ComputeMAC(ctx, name, data); !bytes.Equal(again, mac1) {
		t.Error("ComputeMAC is not deterministic")
	}
	verify := func(data, mac []byte) bool {
		t.Helper()
		ok, err := c.VerifyMAC(ctx, name, data, mac)
		if err != nil {
			t.Fatalf("VerifyMAC: %v", err)
		}
		return ok
	}
	if !verify(data, mac1) {
		t.Error("a MAC does not verify")
	}
	if verify([]byte("session 1235"), mac1) {
		t.Error("a MAC verifies other data")
	}
	flipped := bytes.Clone(mac1)
	flipped[len(flipped)-1] ^= 1
	if verify(data, flipped) || verify(data, mac1[:10]) {
		t.Error("a tampered or truncated MAC verifies")
	}
	// An empty MAC (a NULL column) and an oversized one are false, as the
	// doc says of malformed bytes, not an error; the key is still checked.
	if verify(data, nil) || verify(data, make([]byte, 2000)) {
		t.Error("an empty or oversized MAC verifies")
	}
	if _, err := c.VerifyMAC(ctx, name+"-missing", data, nil); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("VerifyMAC of an empty MAC with an unknown key: %v, want ErrNotFound", err)
	}

	rotate(t, c, name)
	mac2, v, err := c.ComputeMAC(ctx, name, data)
	if err != nil || v != 2 || bytes.Equal(mac2, mac1) {
		t.Fatalf("ComputeMAC after rotation = v%d %v (same as before: %v)", v, err, bytes.Equal(mac2, mac1))
	}
	if !verify(data, mac1) || !verify(data, mac2) {
		t.Error("after a rotation, MACs of both versions must verify")
	}
	if _, err := c.DisableKeyVersion(ctx, name, 1); err != nil {
		t.Fatal(err)
	}
	if verify(data, mac1) {
		t.Error("a MAC of a disabled version verifies")
	}

	_, _, err = c.Encrypt(ctx, name, data, nil)
	checkSentinels(t, err, client.ErrWrongPurpose, client.ErrFailedPrecondition)
	enc := createKey(t, c, "pii", client.KeySpec{Purpose: client.PurposeEncrypt})
	_, _, err = c.ComputeMAC(ctx, enc, data)
	checkSentinels(t, err, client.ErrWrongPurpose, client.ErrFailedPrecondition)
}

func TestBlindIndexHasOneEntryPerEnabledVersionPrimaryFirst(t *testing.T) {
	c := realTenant(t)
	ctx := t.Context()
	name := createKey(t, c, "email-idx", client.KeySpec{Purpose: client.PurposeMAC})
	email := []byte("alice@example.com")

	entries, err := c.BlindIndex(ctx, name, email)
	if err != nil {
		t.Fatalf("BlindIndex: %v", err)
	}
	mac1, _, err := c.ComputeMAC(ctx, name, email)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Version != 1 || !bytes.Equal(entries[0].MAC, mac1) {
		t.Fatalf("BlindIndex before rotation = %+v, want one entry of version 1 equal to ComputeMAC", entries)
	}

	rotate(t, c, name)
	mac2, _, err := c.ComputeMAC(ctx, name, email)
	if err != nil {
		t.Fatal(err)
	}
	entries, err = c.BlindIndex(ctx, name, email)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 || entries[0].Version != 2 || entries[1].Version != 1 {
		t.Fatalf("BlindIndex after rotation = %+v, want versions 2 (primary) then 1", entries)
	}
	if !bytes.Equal(entries[0].MAC, mac2) || !bytes.Equal(entries[1].MAC, mac1) {
		t.Error("the entries are not the MACs ComputeMAC gives under their versions, so old rows would not be found")
	}
	for _, e := range entries {
		if ok, err := c.VerifyMAC(ctx, name, email, e.MAC); err != nil || !ok {
			t.Errorf("entry of version %d does not verify: %v", e.Version, err)
		}
	}

	if _, err := c.DisableKeyVersion(ctx, name, 1); err != nil {
		t.Fatal(err)
	}
	entries, err = c.BlindIndex(ctx, name, email)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Version != 2 || !bytes.Equal(entries[0].MAC, mac2) {
		t.Errorf("BlindIndex with version 1 disabled = %+v, want only version 2", entries)
	}
}

// dataKeyPolicy lets the test client do everything, and two more
// identities only unwrap data keys or only decrypt fields.
const dataKeyPolicy = clienttest.AllowAll + `  - identities: ["spiffe://custos.dev/keys-only"]
    tenants: ["acme"]
    permissions: [datakey]
  - identities: ["spiffe://custos.dev/fields-only"]
    tenants: ["acme"]
    permissions: [decrypt]
`

func TestDataKeys(t *testing.T) {
	srv := clienttest.StartWith(t, clienttest.Options{Policy: dataKeyPolicy})
	c := srv.Client(t)
	ctx := t.Context()
	if _, err := c.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	name := createKey(t, c, "files", client.KeySpec{Purpose: client.PurposeEncrypt})
	ad := client.AssociatedData("files", "report.pdf")

	dk, err := c.GenerateDataKey(ctx, name, ad)
	if err != nil {
		t.Fatalf("GenerateDataKey: %v", err)
	}
	if len(dk.Plaintext) != client.DataKeySize || len(dk.Wrapped) == 0 || dk.Version != 1 {
		t.Fatalf("GenerateDataKey = %v, want a 32-byte key wrapped by version 1", dk)
	}
	if bytes.Contains(dk.Wrapped, dk.Plaintext) {
		t.Error("the wrapped key contains the plaintext key")
	}
	if pt, err := c.DecryptDataKey(ctx, name, dk.Wrapped, ad); err != nil || !bytes.Equal(pt, dk.Plaintext) {
		t.Errorf("DecryptDataKey = %x, %v; want the generated key", pt, err)
	}
	_, err = c.DecryptDataKey(ctx, name, dk.Wrapped, client.AssociatedData("files", "other.pdf"))
	checkSentinels(t, err, client.ErrInvalidCiphertext, client.ErrInvalidArgument)

	wrapped, v, err := c.GenerateWrappedDataKey(ctx, name, ad)
	if err != nil || v != 1 || len(wrapped) == 0 {
		t.Fatalf("GenerateWrappedDataKey = %x, v%d, %v", wrapped, v, err)
	}
	if pt, err := c.DecryptDataKey(ctx, name, wrapped, ad); err != nil || len(pt) != client.DataKeySize || bytes.Equal(pt, dk.Plaintext) {
		t.Errorf("DecryptDataKey of a wrapped-only key = %d bytes, %v; want a new 32-byte key", len(pt), err)
	}

	field, _, err := c.Encrypt(ctx, name, []byte("a field, not a key"), ad)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("a field ciphertext is not a data key", func(t *testing.T) {
		// The test client holds decrypt too, so the server decrypts the
		// field; the client refuses anything but 32 bytes.
		_, err := c.DecryptDataKey(ctx, name, field, ad)
		checkSentinels(t, err, client.ErrInvalidCiphertext, client.ErrInvalidArgument)
		// A caller with only the datakey permission is refused by the server.
		keysOnly := srv.ClientAs(t, "spiffe://custos.dev/keys-only")
		_, err = keysOnly.DecryptDataKey(ctx, name, field, ad)
		checkSentinels(t, err, client.ErrInvalidCiphertext, client.ErrInvalidArgument)
		if pt, err := keysOnly.DecryptDataKey(ctx, name, dk.Wrapped, ad); err != nil || !bytes.Equal(pt, dk.Plaintext) {
			t.Errorf("DecryptDataKey with only the datakey permission = %x, %v", pt, err)
		}
	})
	t.Run("a 32-byte field is not a data key", func(t *testing.T) {
		// A caller allowed to encrypt fields makes one of 32 bytes it
		// chose, under the associated data of a wrapped key; a reader
		// holding both decrypt and datakey must not take it for a key.
		chosen := bytes.Repeat([]byte{0x42}, client.DataKeySize)
		forged, _, err := c.Encrypt(ctx, name, chosen, ad)
		if err != nil {
			t.Fatal(err)
		}
		pt, err := c.DecryptDataKey(ctx, name, forged, ad)
		if err == nil {
			t.Fatalf("DecryptDataKey took a field of 32 chosen bytes for a data key: %x", pt)
		}
		checkSentinels(t, err, client.ErrInvalidCiphertext, client.ErrInvalidArgument)
		if pt, _, err := c.Decrypt(ctx, name, forged, ad); err != nil || !bytes.Equal(pt, chosen) {
			t.Errorf("Decrypt of that field = %x, %v; want the field", pt, err)
		}
	})
	t.Run("a data key is not a field", func(t *testing.T) {
		// A wrapped key put where a field belongs (under that field's
		// associated data) must not be shown as the field's value.
		pt, _, err := c.Decrypt(ctx, name, dk.Wrapped, ad)
		if err == nil {
			t.Fatalf("Decrypt returned a data key as a field: %x", pt)
		}
		checkSentinels(t, err, client.ErrInvalidCiphertext, client.ErrInvalidArgument)
	})
	t.Run("a key that makes no data keys is the wrong purpose", func(t *testing.T) {
		// As GenerateDataKey answers on it, for a caller holding only
		// datakey as for one holding everything.
		mac := createKey(t, c, "tags", client.KeySpec{Purpose: client.PurposeMAC})
		keysOnly := srv.ClientAs(t, "spiffe://custos.dev/keys-only")
		_, err := keysOnly.GenerateDataKey(ctx, mac, ad)
		checkSentinels(t, err, client.ErrWrongPurpose, client.ErrFailedPrecondition)
		_, err = keysOnly.DecryptDataKey(ctx, mac, dk.Wrapped, ad)
		checkSentinels(t, err, client.ErrWrongPurpose, client.ErrFailedPrecondition)
	})
	t.Run("unwrapping needs the datakey permission", func(t *testing.T) {
		fieldsOnly := srv.ClientAs(t, "spiffe://custos.dev/fields-only")
		_, err := fieldsOnly.DecryptDataKey(ctx, name, dk.Wrapped, ad)
		checkSentinels(t, err, client.ErrInvalidCiphertext, client.ErrInvalidArgument)
		if pt, _, err := fieldsOnly.Decrypt(ctx, name, field, ad); err != nil || string(pt) != "a field, not a key" {
			t.Errorf("Decrypt of a field with only the decrypt permission = %q, %v", pt, err)
		}
	})
	t.Run("a rewrapped data key unwraps to the same key", func(t *testing.T) {
		rotate(t, c, name)
		rewrapped, v, err := c.Rewrap(ctx, name, dk.Wrapped, ad)
		if err != nil || v != 2 {
			t.Fatalf("Rewrap of a data key = v%d, %v", v, err)
		}
		if pt, err := c.DecryptDataKey(ctx, name, rewrapped, ad); err != nil || !bytes.Equal(pt, dk.Plaintext) {
			t.Errorf("DecryptDataKey after Rewrap = %x, %v", pt, err)
		}
		dk2, err := c.GenerateDataKey(ctx, name, nil)
		if err != nil || dk2.Version != 2 {
			t.Errorf("GenerateDataKey after rotation = %v, %v; want version 2", dk2, err)
		}
	})
	t.Run("only ENCRYPT keys make data keys", func(t *testing.T) {
		mac := createKey(t, c, "tokens", client.KeySpec{Purpose: client.PurposeMAC})
		_, err := c.GenerateDataKey(ctx, mac, nil)
		checkSentinels(t, err, client.ErrWrongPurpose, client.ErrFailedPrecondition)
		_, _, err = c.GenerateWrappedDataKey(ctx, mac, nil)
		checkSentinels(t, err, client.ErrWrongPurpose, client.ErrFailedPrecondition)
	})
}

func TestPasswords(t *testing.T) {
	c := realTenant(t)
	ctx := t.Context()
	k, err := c.CreateKey(ctx, client.TenantName("acme"), "logins", client.KeySpec{Purpose: client.PurposePassword, PasswordPolicy: fastPasswords})
	if err != nil {
		t.Fatal(err)
	}
	if p := k.PasswordPolicy; p == nil || p.Algorithm != client.PasswordBcrypt || p.BcryptCost != 10 {
		t.Errorf("CreateKey returned the policy %+v, want bcrypt cost 10", p)
	}
	pw := c.Password(k.Name)
	if pw.Name() != k.Name {
		t.Errorf("Password(%q).Name() = %q", k.Name, pw.Name())
	}
	verify := func(password []byte, hash string) (match, rehash bool) {
		t.Helper()
		match, rehash, err := pw.Verify(ctx, password, hash)
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		return match, rehash
	}

	secret := []byte("correct horse battery staple")
	hash, err := pw.Hash(ctx, secret)
	if err != nil {
		t.Fatalf("Hash: %v", err)
	}
	if !strings.HasPrefix(hash, "$custos-bcrypt$") || strings.Contains(hash, string(secret)) {
		t.Errorf("Hash = %q, want a $custos-bcrypt$ string without the password", hash)
	}
	if m, r := verify(secret, hash); !m || r {
		t.Errorf("Verify(right password) = %v, %v; want a match without rehash", m, r)
	}
	if m, r := verify([]byte("correct horse battery stapler"), hash); m || r {
		t.Errorf("Verify(wrong password) = %v, %v; want false, false", m, r)
	}
	if other, err := pw.Hash(ctx, secret); err != nil || other == hash {
		t.Errorf("two hashes of one password are equal (no salt?): %v", err)
	}

	t.Run("passwords longer than 72 bytes are not truncated", func(t *testing.T) {
		long := bytes.Repeat([]byte("x"), 100)
		h, err := pw.Hash(ctx, long)
		if err != nil {
			t.Fatal(err)
		}
		other := bytes.Clone(long)
		other[90] = 'y'
		if m, _ := verify(other, h); m {
			t.Error("passwords that differ after byte 72 match")
		}
	})
	t.Run("a rotated pepper asks for a rehash", func(t *testing.T) {
		rotate(t, c, k.Name)
		if m, r := verify(secret, hash); !m || !r {
			t.Errorf("Verify after RotateKey = %v, %v; want a match that needs a rehash", m, r)
		}
		if m, r := verify([]byte("wrong"), hash); m || r {
			t.Errorf("Verify(wrong password) after RotateKey = %v, %v; needsRehash must not be true without a match", m, r)
		}
		rehashed, err := pw.Hash(ctx, secret)
		if err != nil {
			t.Fatal(err)
		}
		if m, r := verify(secret, rehashed); !m || r {
			t.Errorf("Verify of the new hash = %v, %v; want a match without rehash", m, r)
		}
		hash = rehashed
	})
	t.Run("a raised cost asks for a rehash", func(t *testing.T) {
		if _, err := c.UpdateKey(ctx, k.Name, client.KeyUpdate{PasswordPolicy: &client.PasswordPolicy{BcryptCost: 11}}); err != nil {
			t.Fatal(err)
		}
		if m, r := verify(secret, hash); !m || !r {
			t.Errorf("Verify after raising the cost = %v, %v; want a match that needs a rehash", m, r)
		}
	})
	t.Run("a hash of another key does not match", func(t *testing.T) {
		other := createKey(t, c, "other-logins", client.KeySpec{Purpose: client.PurposePassword, PasswordPolicy: fastPasswords})
		h, err := c.HashPassword(ctx, other, secret)
		if err != nil {
			t.Fatal(err)
		}
		// Version 1 of "logins" exists, so the hash is checked, and fails.
		if m, r, err := c.VerifyPassword(ctx, k.Name, secret, h, ""); err != nil || m || r {
			t.Errorf("VerifyPassword with another key's hash = %v, %v, %v; want false, false, nil", m, r, err)
		}
	})
	t.Run("a malformed hash is an invalid argument", func(t *testing.T) {
		_, _, err := pw.Verify(ctx, secret, "$2a$10$not-a-custos-hash")
		checkSentinels(t, err, client.ErrInvalidArgument)
	})
	t.Run("argon2id", func(t *testing.T) {
		name := createKey(t, c, "argon", client.KeySpec{Purpose: client.PurposePassword, PasswordPolicy: &client.PasswordPolicy{
			Algorithm: client.PasswordArgon2id, Argon2MemoryKiB: 8192, Argon2Iterations: 1,
		}})
		argon := c.Password(name)
		h, err := argon.Hash(ctx, secret)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(h, "argon2id") {
			t.Errorf("argon2id hash = %q", h)
		}
		if m, r, err := argon.Verify(ctx, secret, h); err != nil || !m || r {
			t.Errorf("Verify = %v, %v, %v", m, r, err)
		}
	})
	t.Run("only PASSWORD keys hash", func(t *testing.T) {
		enc := createKey(t, c, "pii", client.KeySpec{Purpose: client.PurposeEncrypt})
		_, err := c.HashPassword(ctx, enc, secret)
		checkSentinels(t, err, client.ErrWrongPurpose, client.ErrFailedPrecondition)
	})
}

func TestPasswordLockout(t *testing.T) {
	c := realTenant(t)
	ctx := t.Context()
	name := createKey(t, c, "logins", client.KeySpec{Purpose: client.PurposePassword, PasswordPolicy: &client.PasswordPolicy{
		BcryptCost: 10, LockoutMaxFailures: 2, LockoutWindow: time.Hour, LockoutDuration: time.Hour,
	}})
	pw := c.Password(name)
	secret := []byte("hunter2 hunter2")
	hash, err := pw.Hash(ctx, secret)
	if err != nil {
		t.Fatal(err)
	}
	attempt := func(subject string, password []byte) (bool, error) {
		m, _, err := pw.VerifySubject(ctx, password, hash, subject)
		return m, err
	}

	// A success before the limit resets the count.
	for i, try := range []struct {
		password []byte
		want     bool
	}{{[]byte("wrong"), false}, {secret, true}, {[]byte("wrong"), false}, {secret, true}} {
		if m, err := attempt("alice", try.password); err != nil || m != try.want {
			t.Fatalf("attempt %d for alice = %v, %v; want %v", i, m, err, try.want)
		}
	}

	// Two failures in a row lock the subject, even for the right password.
	for i := range 2 {
		if m, err := attempt("bob", []byte("wrong")); err != nil || m {
			t.Fatalf("failure %d for bob = %v, %v", i, m, err)
		}
	}
	_, err = attempt("bob", secret)
	checkSentinels(t, err, client.ErrSubjectLocked, client.ErrResourceExhausted)

	// Other subjects, and checks without a subject, are not locked.
	if m, err := attempt("carol", secret); err != nil || !m {
		t.Errorf("carol = %v, %v; want a match", m, err)
	}
	if m, _, err := pw.Verify(ctx, secret, hash); err != nil || !m {
		t.Errorf("Verify without a subject = %v, %v; want a match", m, err)
	}
}
