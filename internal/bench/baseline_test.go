package bench

import (
	"bytes"
	"context"
	"testing"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// The batch baseline does per item what Custos does with the bench's
// items: DecryptBatch opens (not seals) and answers the plaintext;
// RewrapBatch opens and answers a current ciphertext unchanged. Its own
// ciphertext for the bench's one is sealed once and kept.
func TestTheBatchBaselineOpensAsCustosDoes(t *testing.T) {
	ctx := context.Background()
	b, err := newBaseline()
	if err != nil {
		t.Fatal(err)
	}
	pt, aad := []byte("sixty-four bytes of payload, more or less, as the bench sends"), []byte("bench/field")
	enc, err := b.Encrypt(ctx, &custosv1.EncryptRequest{Plaintext: pt, AssociatedData: aad})
	if err != nil {
		t.Fatal(err)
	}
	ct := enc.GetCiphertext()
	items := []*custosv1.DecryptBatchRequest_Item{{Ciphertext: ct, AssociatedData: aad}, {Ciphertext: ct, AssociatedData: aad}}
	dec, err := b.DecryptBatch(ctx, &custosv1.DecryptBatchRequest{Items: items})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range dec.GetResults() {
		if !bytes.Equal(r.GetPlaintext(), pt) {
			t.Fatalf("item %d: plaintext %q", i, r.GetPlaintext())
		}
	}
	kept := b.stand.Load()
	rw, err := b.RewrapBatch(ctx, &custosv1.RewrapBatchRequest{Items: []*custosv1.RewrapBatchRequest_Item{{Ciphertext: ct, AssociatedData: aad}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := rw.GetResults()[0].GetCiphertext(); !bytes.Equal(got, ct) {
		t.Fatalf("rewrap of a current ciphertext changed it: %x", got)
	}
	if b.stand.Load() != kept {
		t.Fatal("the baseline sealed its stand-in again for the same ciphertext")
	}
	// Its stand-in opens only under the item's associated data.
	if _, err := b.open(kept.own, []byte("other")); err == nil {
		t.Fatal("the stand-in opened under other associated data")
	}
}
