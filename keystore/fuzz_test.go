package keystore_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/custos-kms/custos/envelope"
	"github.com/custos-kms/custos/keystore"
)

// FuzzDecrypt feeds arbitrary ciphertexts and associated data to Decrypt of
// a randomized and a deterministic key: it never panics, the only inputs
// that decrypt are the genuine ones, and every other input fails with the
// one generic ErrInvalidCiphertext (no oracle).
func FuzzDecrypt(f *testing.F) {
	fx := newFixture(f)
	ctx := context.Background()
	enc := fx.key(f, "acme", "enc", keystore.PurposeEncrypt)
	det := fx.key(f, "acme", "det", keystore.PurposeEncryptDeterministic)
	if _, err := fx.ks.RotateKey(ctx, enc); err != nil { // two versions to route between
		f.Fatal(err)
	}
	type genuine struct{ ct, aad, pt []byte }
	var known []genuine
	for _, ref := range []keystore.KeyRef{enc, det} {
		for _, aad := range [][]byte{nil, []byte("row-1/email")} {
			pt := []byte("alice@example.com")
			ct, _, err := fx.ks.Encrypt(ctx, ref, pt, aad)
			if err != nil {
				f.Fatal(err)
			}
			known = append(known, genuine{ct, aad, pt})
			f.Add(ct, aad, ref.Key == "det")
		}
	}
	f.Add([]byte{0x01, 0, 0, 0, 1}, []byte(nil), false)
	f.Add([]byte{}, []byte("x"), true)
	// A well-formed envelope, under either key: no data key of theirs
	// opens it.
	ek, err := envelope.NewKey(make([]byte, 32), append([]byte{0x01, 0, 0, 0, 1}, make([]byte, 40)...))
	if err != nil {
		f.Fatal(err)
	}
	env, err := ek.Seal([]byte("x"), nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(env, []byte(nil), false)
	f.Add(env, []byte(nil), true)
	f.Fuzz(func(t *testing.T, ct, aad []byte, deterministic bool) {
		ref := enc
		if deterministic {
			ref = det
		}
		pt, _, err := fx.ks.Decrypt(ctx, ref, ct, aad)
		if err == nil {
			for _, g := range known {
				if bytes.Equal(g.ct, ct) && bytes.Equal(g.aad, aad) && bytes.Equal(g.pt, pt) {
					return
				}
			}
			t.Fatalf("a forged ciphertext decrypted: ct=%x aad=%x", ct, aad)
		}
		if !errors.Is(err, keystore.ErrInvalidCiphertext) || err.Error() != keystore.ErrInvalidCiphertext.Error() {
			t.Fatalf("decrypt failed with %v, want exactly the generic ErrInvalidCiphertext", err)
		}
	})
}

// FuzzVerifyMAC: arbitrary MACs never verify unless genuine, never panic.
func FuzzVerifyMAC(f *testing.F) {
	fx := newFixture(f)
	ctx := context.Background()
	ref := fx.key(f, "acme", "idx", keystore.PurposeMAC)
	m, _, err := fx.ks.ComputeMAC(ctx, ref, []byte("alice"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte("alice"), m)
	f.Add([]byte(""), []byte{0x01, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, data, mac []byte) {
		ok, err := fx.ks.VerifyMAC(ctx, ref, data, mac)
		if err != nil {
			t.Fatalf("VerifyMAC error: %v", err)
		}
		if ok && !(bytes.Equal(data, []byte("alice")) && bytes.Equal(mac, m)) {
			t.Fatalf("forged MAC verified: data=%x mac=%x", data, mac)
		}
	})
}
