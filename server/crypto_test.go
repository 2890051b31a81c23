package server_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/keystore"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server"
)

// tinkPrefix is the 5-byte Tink output prefix naming key version v.
func tinkPrefix(v uint32) []byte {
	p := []byte{0x01, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(p[1:], v)
	return p
}

func TestEncryptDecryptRoundTrip(t *testing.T) {
	t.Parallel()
	ts := start(t, newFiles(t), options{limits: server.Limits{MaxPlaintextBytes: 1024}})
	setup(t, ts, "a")
	c := ts.clients(t, idAdmin)
	ctx := testContext(t)

	tests := []struct {
		name      string
		plaintext []byte
		aad       []byte
	}{
		{"a short field with associated data comes back unchanged", []byte("4111 1111 1111 1111"), []byte("customers/42/card")},
		{"a field without associated data comes back unchanged", []byte("no context"), nil},
		{"a one-byte field comes back unchanged", []byte{0}, []byte("x")},
		{"a binary field full of zero and high bytes comes back unchanged", []byte{0, 0xff, 0, 0x80, 0x01, 0}, []byte{0, 0}},
		{"a field exactly at the server's size limit comes back unchanged", bytes.Repeat([]byte("p"), 1024), []byte("big")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			enc, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: tt.plaintext, AssociatedData: tt.aad})
			if err != nil {
				t.Fatalf("Encrypt: %v", err)
			}
			if enc.GetKeyVersion() != 1 {
				t.Errorf("Encrypt key_version = %d, want 1", enc.GetKeyVersion())
			}
			if !bytes.HasPrefix(enc.GetCiphertext(), tinkPrefix(1)) {
				t.Errorf("ciphertext starts % x, want the prefix of version 1 % x", enc.GetCiphertext()[:5], tinkPrefix(1))
			}
			if len(tt.plaintext) >= 4 && bytes.Contains(enc.GetCiphertext(), tt.plaintext) {
				t.Error("ciphertext contains the plaintext")
			}
			again, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: tt.plaintext, AssociatedData: tt.aad})
			if err != nil {
				t.Fatalf("second Encrypt: %v", err)
			}
			if bytes.Equal(again.GetCiphertext(), enc.GetCiphertext()) {
				t.Error("two encryptions of one field gave the same ciphertext; encryption must be randomized")
			}
			dec, err := c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName("a"), Ciphertext: enc.GetCiphertext(), AssociatedData: tt.aad})
			if err != nil {
				t.Fatalf("Decrypt: %v", err)
			}
			if !bytes.Equal(dec.GetPlaintext(), tt.plaintext) {
				t.Errorf("Decrypt = %q, want %q", dec.GetPlaintext(), tt.plaintext)
			}
			if dec.GetKeyVersion() != 1 {
				t.Errorf("Decrypt key_version = %d, want 1", dec.GetKeyVersion())
			}
		})
	}
}

func TestRotateKeyKeepsOldCiphertextsDecryptable(t *testing.T) {
	t.Parallel()
	ts := start(t, newFiles(t), options{})
	setup(t, ts, "a")
	c := ts.clients(t, idAdmin)
	ctx := testContext(t)
	aad := []byte("orders/7/address")

	// One ciphertext per version: encrypt, rotate, encrypt, rotate, encrypt.
	var cts [][]byte
	for v := uint32(1); v <= 3; v++ {
		if v > 1 {
			rot, err := c.keys.RotateKey(ctx, &custosv1.RotateKeyRequest{Name: keyName("a")})
			if err != nil {
				t.Fatalf("RotateKey: %v", err)
			}
			if got := rot.GetKey().GetPrimaryVersion(); got != v {
				t.Fatalf("RotateKey primary_version = %d, want %d", got, v)
			}
			if got := len(rot.GetKey().GetVersions()); got != int(v) {
				t.Fatalf("RotateKey returned %d versions, want %d", got, v)
			}
		}
		enc, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: fmt.Appendf(nil, "field under v%d", v), AssociatedData: aad})
		if err != nil {
			t.Fatalf("Encrypt: %v", err)
		}
		if enc.GetKeyVersion() != v {
			t.Fatalf("Encrypt after %d rotations: key_version = %d, want %d", v-1, enc.GetKeyVersion(), v)
		}
		if !bytes.HasPrefix(enc.GetCiphertext(), tinkPrefix(v)) {
			t.Fatalf("ciphertext of version %d starts % x", v, enc.GetCiphertext()[:5])
		}
		cts = append(cts, enc.GetCiphertext())
	}

	for i, ct := range cts {
		v := uint32(i + 1)
		t.Run(fmt.Sprintf("a ciphertext of version %d still decrypts and reports version %d", v, v), func(t *testing.T) {
			dec, err := c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName("a"), Ciphertext: ct, AssociatedData: aad})
			if err != nil {
				t.Fatalf("Decrypt: %v", err)
			}
			if want := fmt.Sprintf("field under v%d", v); string(dec.GetPlaintext()) != want {
				t.Errorf("Decrypt = %q, want %q", dec.GetPlaintext(), want)
			}
			if dec.GetKeyVersion() != v {
				t.Errorf("Decrypt key_version = %d, want %d", dec.GetKeyVersion(), v)
			}
		})
	}

	t.Run("GetKey lists every version with the newest as primary", func(t *testing.T) {
		k, err := c.keys.GetKey(ctx, &custosv1.GetKeyRequest{Name: keyName("a")})
		if err != nil {
			t.Fatal(err)
		}
		if k.GetKey().GetPrimaryVersion() != 3 || len(k.GetKey().GetVersions()) != 3 {
			t.Fatalf("GetKey: primary %d, %d versions; want 3, 3", k.GetKey().GetPrimaryVersion(), len(k.GetKey().GetVersions()))
		}
		for i, v := range k.GetKey().GetVersions() {
			if v.GetVersion() != uint32(i+1) || v.GetState() != custosv1.KeyVersionState_KEY_VERSION_STATE_ENABLED {
				t.Errorf("versions[%d] = %d %v, want %d ENABLED", i, v.GetVersion(), v.GetState(), i+1)
			}
		}
	})
}

func TestBatchFailsOnlyTheBadItem(t *testing.T) {
	t.Parallel()
	ts := start(t, newFiles(t), options{})
	setup(t, ts, "a", "b")
	c := ts.clients(t, idAdmin)
	ctx := testContext(t)

	const n = 5
	items := make([]*custosv1.EncryptBatchRequest_Item, n)
	for i := range items {
		items[i] = &custosv1.EncryptBatchRequest_Item{Plaintext: fmt.Appendf(nil, "plaintext %d", i), AssociatedData: fmt.Appendf(nil, "row %d", i)}
	}
	enc, err := c.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: keyName("a"), Items: items})
	if err != nil {
		t.Fatalf("EncryptBatch: %v", err)
	}
	if len(enc.GetResults()) != n {
		t.Fatalf("EncryptBatch returned %d results for %d items", len(enc.GetResults()), n)
	}
	for i, r := range enc.GetResults() {
		if code := codes.Code(r.GetStatus().GetCode()); code != codes.OK {
			t.Fatalf("EncryptBatch item %d: status %v %q", i, code, r.GetStatus().GetMessage())
		}
		if r.GetKeyVersion() != 1 || !bytes.HasPrefix(r.GetCiphertext(), tinkPrefix(1)) {
			t.Fatalf("EncryptBatch item %d: key_version %d, ciphertext % x…", i, r.GetKeyVersion(), r.GetCiphertext()[:5])
		}
	}
	// Each batch ciphertext also decrypts on its own, bound to its own row.
	one, err := c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName("a"), Ciphertext: enc.GetResults()[3].GetCiphertext(), AssociatedData: []byte("row 3")})
	if err != nil || string(one.GetPlaintext()) != "plaintext 3" {
		t.Fatalf("Decrypt of batch item 3 = %q, %v", one.GetPlaintext(), err)
	}
	other, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("b"), Plaintext: []byte("plaintext of b"), AssociatedData: []byte("row 4")})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		bad  int
		// spoil turns item bad into a bad one.
		spoil func(*custosv1.DecryptBatchRequest_Item)
	}{
		{"a tampered ciphertext in the middle fails alone", 2, func(it *custosv1.DecryptBatchRequest_Item) {
			it.Ciphertext = flipBit(it.Ciphertext, len(it.Ciphertext)/2)
		}},
		{"a first item with the wrong associated data fails alone", 0, func(it *custosv1.DecryptBatchRequest_Item) {
			it.AssociatedData = []byte("row 1")
		}},
		{"a last item holding another tenant's ciphertext fails alone", n - 1, func(it *custosv1.DecryptBatchRequest_Item) {
			it.Ciphertext = other.GetCiphertext()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := &custosv1.DecryptBatchRequest{Name: keyName("a")}
			for i, r := range enc.GetResults() {
				it := &custosv1.DecryptBatchRequest_Item{Ciphertext: bytes.Clone(r.GetCiphertext()), AssociatedData: fmt.Appendf(nil, "row %d", i)}
				if i == tt.bad {
					tt.spoil(it)
				}
				req.Items = append(req.Items, it)
			}
			dec, err := c.crypto.DecryptBatch(ctx, req)
			if err != nil {
				t.Fatalf("DecryptBatch failed as a whole: %v", err)
			}
			if len(dec.GetResults()) != n {
				t.Fatalf("DecryptBatch returned %d results for %d items", len(dec.GetResults()), n)
			}
			for i, r := range dec.GetResults() {
				st := status.FromProto(r.GetStatus())
				if i == tt.bad {
					if st.Code() != codes.InvalidArgument {
						t.Errorf("bad item %d: status %v %q, want InvalidArgument", i, st.Code(), st.Message())
					}
					if ei := errorInfo(st); ei.GetReason() != custosv1.ReasonCiphertextNotAuthentic {
						t.Errorf("bad item %d: ErrorInfo %v, want reason %s", i, ei, custosv1.ReasonCiphertextNotAuthentic)
					}
					if len(r.GetPlaintext()) != 0 {
						t.Errorf("bad item %d carries a plaintext", i)
					}
					continue
				}
				if st.Code() != codes.OK {
					t.Errorf("item %d: status %v %q, want OK", i, st.Code(), st.Message())
				}
				if want := fmt.Sprintf("plaintext %d", i); string(r.GetPlaintext()) != want {
					t.Errorf("item %d: plaintext %q, want %q (request order)", i, r.GetPlaintext(), want)
				}
				if r.GetKeyVersion() != 1 {
					t.Errorf("item %d: key_version %d, want 1", i, r.GetKeyVersion())
				}
			}
		})
	}
}

// flipBit returns a copy of b with the low bit of b[i] flipped.
func flipBit(b []byte, i int) []byte {
	out := bytes.Clone(b)
	out[i] ^= 0x01
	return out
}

func TestUnauthenticCiphertextsGetOneGenericError(t *testing.T) {
	t.Parallel()
	ts := start(t, newFiles(t), options{})
	setup(t, ts, "a", "b")
	c := ts.clients(t, idAdmin)
	ctx := testContext(t)
	if _, err := c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/a", KeyId: "k2", Key: &custosv1.Key{Purpose: custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT}}); err != nil {
		t.Fatal(err)
	}

	plaintext, aad := []byte("the secret field"), []byte("customers/1/ssn")
	enc, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: plaintext, AssociatedData: aad})
	if err != nil {
		t.Fatal(err)
	}
	ct := enc.GetCiphertext()
	// Tink AES-GCM: 5-byte prefix, 12-byte nonce, ciphertext, 16-byte tag.
	const prefix, nonce, tag = 5, 12, 16
	if len(ct) != prefix+nonce+len(plaintext)+tag {
		t.Fatalf("ciphertext has %d bytes, want %d", len(ct), prefix+nonce+len(plaintext)+tag)
	}
	withVersion := func(v uint32) []byte {
		out := bytes.Clone(ct)
		binary.BigEndian.PutUint32(out[1:5], v)
		return out
	}

	tests := []struct {
		name       string
		key        string
		ciphertext []byte
		aad        []byte
	}{
		{"a bit flip in the start byte is rejected", keyName("a"), flipBit(ct, 0), aad},
		{"a bit flip turning the key id into version 0 is rejected", keyName("a"), flipBit(ct, 4), aad},
		{"a key id of the next, not yet existing version is rejected", keyName("a"), withVersion(2), aad},
		{"a key id far beyond any version is rejected", keyName("a"), withVersion(1 << 31), aad},
		{"a bit flip in the nonce is rejected", keyName("a"), flipBit(ct, prefix), aad},
		{"a bit flip in the encrypted body is rejected", keyName("a"), flipBit(ct, prefix+nonce+3), aad},
		{"a bit flip in the last tag byte is rejected", keyName("a"), flipBit(ct, len(ct)-1), aad},
		{"a ciphertext truncated to one byte is rejected", keyName("a"), ct[:1], aad},
		{"a ciphertext truncated to its prefix is rejected", keyName("a"), ct[:prefix], aad},
		{"a ciphertext truncated to prefix and nonce is rejected", keyName("a"), ct[:prefix+nonce], aad},
		{"a ciphertext missing its last byte is rejected", keyName("a"), ct[:len(ct)-1], aad},
		{"a ciphertext with a byte appended is rejected", keyName("a"), append(bytes.Clone(ct), 0), aad},
		{"the wrong associated data is rejected", keyName("a"), ct, []byte("customers/2/ssn")},
		{"missing associated data is rejected", keyName("a"), ct, nil},
		{"associated data with one extra byte is rejected", keyName("a"), ct, append(bytes.Clone(aad), 0)},
		{"tenant a's ciphertext sent to tenant b's key is rejected", keyName("b"), ct, aad},
		{"a ciphertext of one key sent to another key of the same tenant is rejected", "tenants/a/keys/k2", ct, aad},
	}
	messages := map[string][]string{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: tt.key, Ciphertext: tt.ciphertext, AssociatedData: tt.aad})
			if err == nil {
				t.Fatalf("Decrypt succeeded with plaintext %q", resp.GetPlaintext())
			}
			st := wantCode(t, err, codes.InvalidArgument)
			ei := errorInfo(st)
			if ei.GetReason() != custosv1.ReasonCiphertextNotAuthentic || ei.GetDomain() != custosv1.ErrorDomain {
				t.Errorf("ErrorInfo = %v, want reason %s in domain %s", ei, custosv1.ReasonCiphertextNotAuthentic, custosv1.ErrorDomain)
			}
			messages[st.Message()] = append(messages[st.Message()], tt.name)
		})
	}
	t.Run("every unauthentic ciphertext gets the same message", func(t *testing.T) {
		if len(messages) != 1 {
			t.Fatalf("got %d distinct messages, want 1 (no oracle): %q", len(messages), messages)
		}
		for msg := range messages {
			if msg != keystore.ErrInvalidCiphertext.Error() {
				t.Errorf("message = %q, want %q", msg, keystore.ErrInvalidCiphertext.Error())
			}
		}
	})

	t.Run("an empty ciphertext is rejected by validation naming the field", func(t *testing.T) {
		_, err := c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName("a"), AssociatedData: aad})
		st := wantCode(t, err, codes.InvalidArgument)
		if !containsField(st.Message(), "ciphertext") {
			t.Errorf("message %q does not name ciphertext", st.Message())
		}
	})
}
