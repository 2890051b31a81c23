package keystore_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/custos-kms/custos/envelope"
	"github.com/custos-kms/custos/keystore"
)

func (f *fixture) key(t testing.TB, tenant, key string, p keystore.Purpose) keystore.KeyRef {
	t.Helper()
	ctx := context.Background()
	if _, err := f.ks.CreateTenant(ctx, tenant); err != nil && !errors.Is(err, keystore.ErrAlreadyExists) {
		t.Fatal(err)
	}
	ref := keystore.KeyRef{Tenant: tenant, Key: key}
	if _, err := f.ks.CreateKey(ctx, ref, keystore.KeySpec{Purpose: p}); err != nil {
		t.Fatal(err)
	}
	return ref
}

func TestDeterministicEncryptionIsStableAndBindsAssociatedData(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ref := f.key(t, "acme", "email-idx", keystore.PurposeEncryptDeterministic)
	a, _, err := f.ks.Encrypt(ctx, ref, []byte("alice@example.com"), []byte("users.email"))
	if err != nil {
		t.Fatal(err)
	}
	b, _, _ := f.ks.Encrypt(ctx, ref, []byte("alice@example.com"), []byte("users.email"))
	c, _, _ := f.ks.Encrypt(ctx, ref, []byte("alice@example.com"), []byte("users.backup_email"))
	d, _, _ := f.ks.Encrypt(ctx, ref, []byte("bob@example.com"), []byte("users.email"))
	if !bytes.Equal(a, b) {
		t.Fatal("same plaintext and AAD gave different ciphertexts")
	}
	if bytes.Equal(a, c) || bytes.Equal(a, d) {
		t.Fatal("different AAD or plaintext gave the same ciphertext")
	}
	pt, v, err := f.ks.Decrypt(ctx, ref, a, []byte("users.email"))
	if err != nil || v != 1 || string(pt) != "alice@example.com" {
		t.Fatalf("Decrypt: %q %d %v", pt, v, err)
	}
	if _, _, err := f.ks.Decrypt(ctx, ref, a, []byte("users.backup_email")); !errors.Is(err, keystore.ErrInvalidCiphertext) {
		t.Fatalf("wrong AAD: %v", err)
	}
}

func TestOperationsRefuseTheWrongPurposeNamingBoth(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	enc := f.key(t, "acme", "enc", keystore.PurposeEncrypt)
	mac := f.key(t, "acme", "mac", keystore.PurposeMAC)
	if _, _, err := f.ks.Encrypt(ctx, mac, []byte("x"), nil); !errors.Is(err, keystore.ErrWrongPurpose) ||
		!bytes.Contains([]byte(err.Error()), []byte("MAC")) || !bytes.Contains([]byte(err.Error()), []byte("ENCRYPT")) {
		t.Fatalf("encrypt with a MAC key: %v", err)
	}
	if _, _, err := f.ks.ComputeMAC(ctx, enc, []byte("x")); !errors.Is(err, keystore.ErrWrongPurpose) {
		t.Fatalf("MAC with an ENCRYPT key: %v", err)
	}
	if _, _, _, err := f.ks.GenerateDataKey(ctx, mac, nil, false); !errors.Is(err, keystore.ErrWrongPurpose) {
		t.Fatalf("data key from a MAC key: %v", err)
	}
}

func TestMACVerifiesAcrossRotationAndBlindIndexCoversEnabledVersions(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ref := f.key(t, "acme", "idx", keystore.PurposeMAC)
	m1, v1, err := f.ks.ComputeMAC(ctx, ref, []byte("alice@example.com"))
	if err != nil || v1 != 1 || len(m1) != 37 {
		t.Fatalf("ComputeMAC: len %d v%d %v", len(m1), v1, err)
	}
	if _, err := f.ks.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	m2, v2, _ := f.ks.ComputeMAC(ctx, ref, []byte("alice@example.com"))
	if v2 != 2 || bytes.Equal(m1, m2) {
		t.Fatalf("after rotation: v%d, same MAC %v", v2, bytes.Equal(m1, m2))
	}
	for _, m := range [][]byte{m1, m2} {
		if ok, err := f.ks.VerifyMAC(ctx, ref, []byte("alice@example.com"), m); !ok || err != nil {
			t.Fatalf("VerifyMAC: %v %v", ok, err)
		}
	}
	bad := bytes.Clone(m1)
	bad[len(bad)-1] ^= 1
	for name, m := range map[string][]byte{"flipped": bad, "truncated": m1[:20], "empty": nil} {
		if ok, err := f.ks.VerifyMAC(ctx, ref, []byte("alice@example.com"), m); ok || err != nil {
			t.Fatalf("%s MAC verified: %v %v", name, ok, err)
		}
	}
	if ok, _ := f.ks.VerifyMAC(ctx, ref, []byte("mallory@example.com"), m1); ok {
		t.Fatal("MAC verified for other data")
	}
	entries, err := f.ks.BlindIndex(ctx, ref, []byte("alice@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 || entries[0].Version != 2 || entries[1].Version != 1 ||
		!bytes.Equal(entries[0].MAC, m2) || !bytes.Equal(entries[1].MAC, m1) {
		t.Fatalf("BlindIndex = %+v; want v2=%x, v1=%x", entries, m2, m1)
	}
}

func TestDataKeysAreSeparateFromFields(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ref := f.key(t, "acme", "dek", keystore.PurposeEncrypt)
	pt, wrapped, v, err := f.ks.GenerateDataKey(ctx, ref, []byte("object-7"), false)
	if err != nil || len(pt) != keystore.DataKeySize || v != 1 {
		t.Fatalf("GenerateDataKey: %d bytes v%d %v", len(pt), v, err)
	}
	got, _, err := f.ks.DecryptDataKey(ctx, ref, wrapped, []byte("object-7"))
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("DecryptDataKey: %v", err)
	}
	if _, _, err := f.ks.Decrypt(ctx, ref, wrapped, []byte("object-7")); !errors.Is(err, keystore.ErrInvalidCiphertext) {
		t.Fatalf("a wrapped data key decrypted as a field: %v", err)
	}
	field, _, _ := f.ks.Encrypt(ctx, ref, []byte("field"), []byte("object-7"))
	if _, _, err := f.ks.DecryptDataKey(ctx, ref, field, []byte("object-7")); !errors.Is(err, keystore.ErrInvalidCiphertext) {
		t.Fatalf("a field unwrapped as a data key: %v", err)
	}
	if _, _, err := f.ks.Encrypt(ctx, ref, []byte("forged"), []byte("custos:datakey:object-7")); !errors.Is(err, keystore.ErrInvalidArgument) {
		t.Fatalf("reserved AAD prefix accepted: %v", err)
	}
	p2, w2, _, err := f.ks.GenerateDataKey(ctx, ref, nil, true)
	if err != nil || p2 != nil || len(w2) == 0 {
		t.Fatalf("wrapped only: %v %v", p2, err)
	}
}

func TestRewrapMovesToThePrimaryAndKeepsCurrentOnesUnchanged(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ref := f.key(t, "acme", "pii", keystore.PurposeEncrypt)
	old, _, _ := f.ks.Encrypt(ctx, ref, []byte("alice"), []byte("r1"))
	_, wrapped, _, _ := f.ks.GenerateDataKey(ctx, ref, []byte("o1"), true)
	if _, err := f.ks.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	nw, v, err := f.ks.Rewrap(ctx, ref, old, []byte("r1"))
	if err != nil || v != 2 || bytes.Equal(nw, old) {
		t.Fatalf("Rewrap: v%d %v", v, err)
	}
	if pt, v, err := f.ks.Decrypt(ctx, ref, nw, []byte("r1")); err != nil || v != 2 || string(pt) != "alice" {
		t.Fatalf("decrypt rewrapped: %q v%d %v", pt, v, err)
	}
	again, v, err := f.ks.Rewrap(ctx, ref, nw, []byte("r1"))
	if err != nil || v != 2 || !bytes.Equal(again, nw) {
		t.Fatalf("rewrap of a current ciphertext changed it: %v", err)
	}
	nk, v, err := f.ks.Rewrap(ctx, ref, wrapped, []byte("o1"))
	if err != nil || v != 2 {
		t.Fatalf("rewrap data key: %v", err)
	}
	if _, _, err := f.ks.DecryptDataKey(ctx, ref, nk, []byte("o1")); err != nil {
		t.Fatalf("rewrapped data key: %v", err)
	}
	if _, _, err := f.ks.Rewrap(ctx, ref, old, []byte("r2")); !errors.Is(err, keystore.ErrInvalidCiphertext) {
		t.Fatalf("rewrap with wrong AAD: %v", err)
	}
}

// A data key wrapped with associated data reserved for data keys (the
// client's envelopes wrap theirs with envelope.DataKeyContext) rewraps
// like any other data key; no field can be under such data.
func TestADataKeyUnderReservedAssociatedDataRewraps(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ref := f.key(t, "acme", "dek", keystore.PurposeEncrypt)
	ad := []byte(envelope.DataKeyContext)
	pt, wrapped, _, err := f.ks.GenerateDataKey(ctx, ref, ad, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ks.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	nk, v, err := f.ks.Rewrap(ctx, ref, wrapped, ad)
	if err != nil || v != 2 {
		t.Fatalf("rewrap of a data key under reserved associated data: v%d %v", v, err)
	}
	if got, v, err := f.ks.DecryptDataKey(ctx, ref, nk, ad); err != nil || v != 2 || !bytes.Equal(got, pt) {
		t.Fatalf("the rewrapped data key: v%d %v", v, err)
	}
	if _, _, err := f.ks.Rewrap(ctx, ref, wrapped, []byte("custos:datakey:other")); !errors.Is(err, keystore.ErrInvalidCiphertext) {
		t.Fatalf("rewrap under other reserved associated data: %v, want not authentic", err)
	}
}

// A blind index hashes its data once per version: a call that would hash
// more than MaxBlindIndexBytes (64 KiB of data under a key rotated again and
// again) is refused with a clear error, and the same key still indexes
// short values.
func TestABlindIndexOverTooManyVersionsIsRefused(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ref := f.key(t, "acme", "idx", keystore.PurposeMAC)
	big := make([]byte, 64<<10)
	versions := keystore.MaxBlindIndexBytes / len(big) // the most such data may be hashed under
	for range versions {
		if _, err := f.ks.RotateKey(ctx, ref); err != nil {
			t.Fatal(err)
		}
	}
	_, err := f.ks.BlindIndex(ctx, ref, big)
	if !errors.Is(err, keystore.ErrWrongState) || !strings.Contains(err.Error(), "min_decryption_version") {
		t.Fatalf("a blind index of 64 KiB under %d versions: %v, want ErrWrongState naming the way out", versions+1, err)
	}
	if entries, err := f.ks.BlindIndex(ctx, ref, []byte("alice@example.com")); err != nil || len(entries) != versions+1 {
		t.Fatalf("a short value under the same key: %d entries, %v", len(entries), err)
	}
	if _, err := f.ks.DisableKeyVersion(ctx, ref, 1); err != nil {
		t.Fatal(err)
	}
	entries, err := f.ks.BlindIndex(ctx, ref, big)
	if err != nil || len(entries) != versions {
		t.Fatalf("after disabling one: %d entries, %v", len(entries), err)
	}
}
