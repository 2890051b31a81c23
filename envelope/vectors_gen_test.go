package envelope_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"

	"github.com/custos-kms/custos/envelope"
)

// TestWriteVectors writes testdata/envelope-vectors.json when
// CUSTOS_WRITE_VECTORS=1. They were generated once and are checked in;
// TestVectors holds the code to them.
func TestWriteVectors(t *testing.T) {
	if os.Getenv("CUSTOS_WRITE_VECTORS") != "1" {
		t.Skip("set CUSTOS_WRITE_VECTORS=1 to write testdata/envelope-vectors.json")
	}
	type valid struct {
		Name           string `json:"name"`
		DataKey        string `json:"data_key"`
		Wrapped        string `json:"wrapped"`
		Nonce          string `json:"nonce"`
		Plaintext      string `json:"plaintext"`
		AssociatedData string `json:"associated_data"`
		Envelope       string `json:"envelope"`
	}
	type invalid struct {
		Name           string `json:"name"`
		DataKey        string `json:"data_key"`
		AssociatedData string `json:"associated_data"`
		Envelope       string `json:"envelope"`
	}
	x := hex.EncodeToString
	dk := make([]byte, 32)
	for i := range dk {
		dk[i] = byte(i)
	}
	dk2 := bytes.Repeat([]byte{0x42}, 32)
	// A wrapped key as the service makes them: Tink's 0x01 prefix, a 4-byte
	// key id, the AES-GCM wrapping. Its bytes do not matter locally.
	wrapped := append([]byte{0x01, 0x12, 0x34, 0x56, 0x78}, bytes.Repeat([]byte{0xAB}, 60)...)
	nonce := []byte("nonce-012345")
	var out struct {
		Comment string    `json:"comment"`
		Valid   []valid   `json:"valid"`
		Invalid []invalid `json:"invalid"`
	}
	out.Comment = "Custos envelope format 1 (docs/formats.md). Hex throughout. Valid: seal(data_key, wrapped, nonce, plaintext, associated_data) == envelope and open gives plaintext. Invalid: open with data_key (the key the envelope's wrapped key names) fails."
	k, _ := envelope.NewKey(dk, wrapped)
	add := func(name string, k *envelope.Key, pt, ad []byte) []byte {
		nonce := append([]byte("nonce-"), byte('a'+len(out.Valid)), '1', '2', '3', '4', '5')
		env := k.SealWithNonce(nonce, pt, ad)
		out.Valid = append(out.Valid, valid{name, x(dk), x(k.Wrapped()), x(nonce), x(pt), x(ad), x(env)})
		return env
	}
	add("empty plaintext, no associated data", k, nil, nil)
	env := add("a 64-byte field with associated data", k, bytes.Repeat([]byte("f"), 64), []byte("customer-42/email"))
	add("a longer field", k, bytes.Repeat([]byte("0123456789"), 30), []byte("order-7/notes"))
	bad := func(name string, e []byte, key []byte, ad []byte) {
		out.Invalid = append(out.Invalid, invalid{name, x(key), x(ad), x(e)})
	}
	ad := []byte("customer-42/email")
	bad("wrong associated data", env, dk, []byte("customer-43/email"))
	flip := bytes.Clone(env)
	flip[len(flip)-1] ^= 1
	bad("a bit flipped in the tag", flip, dk, ad)
	flip = bytes.Clone(env)
	flip[3+len(wrapped)+32+12] ^= 1
	bad("a bit flipped in the ciphertext", flip, dk, ad)
	bad("truncated", env[:len(env)-5], dk, ad)
	unk := bytes.Clone(env)
	unk[0] = 0xE6
	bad("unknown format byte", unk, dk, ad)
	big := bytes.Clone(env)
	big[1], big[2] = 0xFF, 0xFF
	bad("oversized wrapped-key length", big, dk, ad)
	bad("the right envelope opened with another data key (commitment mismatch)", env, dk2, ad)
	commit := bytes.Clone(env)
	commit[3+len(wrapped)] ^= 1
	bad("a bit flipped in the commitment, the body authentic under the data key (only the commitment check refuses it)", commit, dk, ad)
	k2, _ := envelope.NewKey(dk2, wrapped)
	other := k2.SealWithNonce(nonce, bytes.Repeat([]byte("f"), 64), ad)
	splice := bytes.Clone(env)
	copy(splice[3+len(wrapped):], other[3+len(wrapped):])
	bad("another data key's commitment and bulk spliced under this wrapped key", splice, dk, ad)
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("../testdata/envelope-vectors.json", append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
}
