package keystore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/custos-kms/custos/keystore"
)

// A batch's encryptions count towards usage-based rotation exactly as many
// single calls would, once Done adds them; items that fail add nothing.
func TestABatchCountsItsEncryptionsOnce(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	b, err := f.ks.Batch(ctx, ref, "encrypt")
	if err != nil {
		t.Fatal(err)
	}
	var cts [][]byte
	for i := range 7 {
		ct, v, err := b.Encrypt([]byte(fmt.Sprint("item", i)), []byte("aad"))
		if err != nil || v != 1 {
			t.Fatalf("item %d: version %d, %v", i, v, err)
		}
		cts = append(cts, ct)
	}
	if _, _, err := b.Encrypt([]byte("x"), []byte("custos:datakey:")); !errors.Is(err, keystore.ErrInvalidArgument) {
		t.Fatalf("reserved associated data: %v, want ErrInvalidArgument", err)
	}
	if err := f.ks.FlushUsage(ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.getKey(ref).Versions[0].EncryptCount; n != 0 {
		t.Fatalf("counted %d before Done", n)
	}
	b.Done()
	b.Done() // nothing more to add
	if err := f.ks.FlushUsage(ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.getKey(ref).Versions[0].EncryptCount; n != 7 {
		t.Fatalf("encrypt_count %d after a batch of 7, want 7", n)
	}
	for i, ct := range cts { // what the batch made, single calls read
		f.mustDecrypt(f.ks, ref, ct, fmt.Sprint("item", i))
	}
}

// What concerns the key fails the batch as a whole, before any item.
func TestABatchRefusesAKeyThatDoesNotEncrypt(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	mac := f.newKey("acme", "sig", keystore.KeySpec{Purpose: keystore.PurposeMAC})
	if _, err := f.ks.Batch(ctx, mac, "encrypt"); !errors.Is(err, keystore.ErrWrongPurpose) {
		t.Fatalf("MAC key: %v, want ErrWrongPurpose", err)
	}
	if _, err := f.ks.Batch(ctx, keystore.KeyRef{Tenant: "acme", Key: "missing"}, "decrypt"); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("unknown key: %v, want ErrNotFound", err)
	}
}

// A batch rewraps to the primary it began with; a ciphertext made by a
// version another replica created since is left as it is (never rewrapped
// down), and the batch takes the reloaded key for the items after it.
func TestABatchRewrapsUpNeverDown(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	old := f.encrypt(f.ks, ref, "old", 1)
	f.rotate(ref) // primary 2, which f.ks knows

	b, err := f.ks.Batch(ctx, ref, "rewrap")
	if err != nil {
		t.Fatal(err)
	}
	other := f.replica()
	if _, err := other.RotateKey(ctx, ref); err != nil { // primary 3, which b does not know
		t.Fatal(err)
	}
	newer := f.encrypt(other, ref, "newer", 3)

	ct, v, err := b.Rewrap(ctx, old, []byte("aad"))
	if err != nil || v != 2 {
		t.Fatalf("rewrap of version 1: version %d, %v; want 2 (the batch's primary)", v, err)
	}
	f.mustDecrypt(f.ks, ref, ct, "old")
	got, v, err := b.Rewrap(ctx, newer, []byte("aad"))
	if err != nil || v != 3 || string(got) != string(newer) {
		t.Fatalf("rewrap of version 3: version %d, %v, changed %v; want it unchanged", v, err, string(got) != string(newer))
	}
	if _, v, err := b.Rewrap(ctx, old, []byte("aad")); err != nil || v != 3 {
		t.Fatalf("after seeing version 3: version %d, %v; want 3", v, err)
	}
	b.Done()
	for _, ks := range []*keystore.Service{f.ks, other} {
		if err := ks.FlushUsage(ctx); err != nil {
			t.Fatal(err)
		}
	}
	k := f.getKey(ref)
	if k.Versions[1].EncryptCount != 1 || k.Versions[2].EncryptCount != 2 { // 3: one by `other`, one by the batch
		t.Fatalf("counts %+v; want version 2: 1, version 3: 2", k.Versions)
	}
}
