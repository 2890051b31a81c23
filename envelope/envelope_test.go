package envelope_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"testing"

	"github.com/custos-kms/custos/envelope"
)

func key(t testing.TB, seed byte) *envelope.Key {
	t.Helper()
	dk := bytes.Repeat([]byte{seed}, 32)
	k, err := envelope.NewKey(dk, []byte("wrapped-"+string(rune('a'+seed))))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestRoundTripAndRefusals(t *testing.T) {
	k := key(t, 1)
	ct, err := k.Seal([]byte("alice@example.com"), []byte("customer-42/email"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := envelope.Parse(ct)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := e.Open(k, []byte("customer-42/email"))
	if err != nil || string(pt) != "alice@example.com" {
		t.Fatalf("open: %q %v", pt, err)
	}
	if _, err := e.Open(k, []byte("customer-43/email")); !errors.Is(err, envelope.ErrInvalid) {
		t.Fatalf("other associated data: %v", err)
	}
	if _, err := e.Open(key(t, 2), []byte("customer-42/email")); !errors.Is(err, envelope.ErrInvalid) {
		t.Fatalf("another data key: %v", err)
	}
	for i := range ct {
		bad := bytes.Clone(ct)
		bad[i] ^= 0x01
		e, err := envelope.Parse(bad)
		if err != nil {
			continue
		}
		if _, err := e.Open(k, []byte("customer-42/email")); err == nil && i >= 3+len(k.Wrapped()) {
			t.Fatalf("a flipped bit at %d opened", i)
		}
	}
	for n := range len(ct) {
		if e, err := envelope.Parse(ct[:n]); err == nil {
			if _, err := e.Open(k, []byte("customer-42/email")); err == nil {
				t.Fatalf("truncated to %d opened", n)
			}
		}
	}
	// Rewrapped: the bulk stays, the new wrapping is carried.
	re, err := envelope.Rewrapped(ct, []byte("a newer wrapping"))
	if err != nil {
		t.Fatal(err)
	}
	e2, err := envelope.Parse(re)
	if err != nil || string(e2.Wrapped) != "a newer wrapping" {
		t.Fatalf("rewrapped: %v", err)
	}
	if pt, err := e2.Open(k, []byte("customer-42/email")); err != nil || string(pt) != "alice@example.com" {
		t.Fatalf("open rewrapped: %v", err)
	}
}

// A ciphertext crafted to open under two data keys: GCM is not
// key-committing, so the bulk alone could be made to; the commitment is
// what refuses it.
func TestTheCommitmentRefusesASecondDataKey(t *testing.T) {
	k1, k2 := key(t, 1), key(t, 2)
	ct, err := k1.Seal([]byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Splice k2's commitment into k1's envelope (an attacker who knows k2
	// and wants it to be tried): refused before any decryption.
	ct2, err := k2.Seal([]byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	w := len(k1.Wrapped())
	spliced := bytes.Clone(ct)
	copy(spliced[3+w:3+w+32], ct2[3+len(k2.Wrapped()):3+len(k2.Wrapped())+32])
	e, err := envelope.Parse(spliced)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Open(k1, nil); err == nil {
		t.Fatal("an envelope with another key's commitment opened under the first")
	}
	if _, err := e.Open(k2, nil); err == nil {
		t.Fatal("k1's bulk opened under k2")
	}
}

// vectors is testdata/envelope-vectors.json.
type vectors struct {
	Valid []struct {
		Name           string `json:"name"`
		DataKey        string `json:"data_key"`
		Wrapped        string `json:"wrapped"`
		Nonce          string `json:"nonce"`
		Plaintext      string `json:"plaintext"`
		AssociatedData string `json:"associated_data"`
		Envelope       string `json:"envelope"`
	} `json:"valid"`
	Invalid []struct {
		Name           string `json:"name"`
		DataKey        string `json:"data_key"`
		AssociatedData string `json:"associated_data"`
		Envelope       string `json:"envelope"`
	} `json:"invalid"`
}

func h(t *testing.T, s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestVectors(t *testing.T) {
	b, err := os.ReadFile("../testdata/envelope-vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Valid) == 0 || len(v.Invalid) == 0 {
		t.Fatal("no vectors")
	}
	for _, c := range v.Valid {
		k, err := envelope.NewKey(h(t, c.DataKey), h(t, c.Wrapped))
		if err != nil {
			t.Fatal(err)
		}
		if got := k.SealWithNonce(h(t, c.Nonce), h(t, c.Plaintext), h(t, c.AssociatedData)); hex.EncodeToString(got) != c.Envelope {
			t.Errorf("%s: seal gives %x, want %s", c.Name, got, c.Envelope)
		}
		e, err := envelope.Parse(h(t, c.Envelope))
		if err != nil {
			t.Fatalf("%s: %v", c.Name, err)
		}
		if pt, err := e.Open(k, h(t, c.AssociatedData)); err != nil || hex.EncodeToString(pt) != c.Plaintext {
			t.Errorf("%s: open gives %x, %v", c.Name, pt, err)
		}
	}
	for _, c := range v.Invalid {
		e, err := envelope.Parse(h(t, c.Envelope))
		if err != nil {
			continue
		}
		wrapped := e.Wrapped
		k, err := envelope.NewKey(h(t, c.DataKey), wrapped)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.Open(k, h(t, c.AssociatedData)); err == nil {
			t.Errorf("invalid vector %q opened", c.Name)
		}
	}
}

func FuzzParseOpen(f *testing.F) {
	k := key(f, 1)
	// A fixed nonce: the fuzzing workers, each a process of its own, must
	// compute the same ct.
	ct := k.SealWithNonce([]byte("fuzz-nonce12"), []byte("seed"), []byte("ad"))
	f.Add(ct, []byte("ad"))
	f.Add([]byte{0xE5, 0xFF, 0xFF}, []byte{})
	w := 3 + len(k.Wrapped())
	f.Fuzz(func(t *testing.T, b, ad []byte) {
		e, err := envelope.Parse(b)
		if err != nil {
			return
		}
		// The wrapped key is not authenticated locally (the service's
		// unwrap does that): everything after it must be the original.
		if pt, err := e.Open(k, ad); err == nil && (len(b) < w || !bytes.Equal(b[3+len(e.Wrapped):], ct[w:]) || !bytes.Equal(ad, []byte("ad"))) {
			t.Fatalf("a changed envelope opened: %q", pt)
		}
	})
}

func BenchmarkSeal64(b *testing.B) {
	k := key(b, 1)
	pt, ad := make([]byte, 64), []byte("customer-42/email")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Seal(pt, ad); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawGCMSeal64 is the baseline: crypto/cipher AES-256-GCM seal of
// the same field, with a random nonce, into a new buffer.
func BenchmarkRawGCMSeal64(b *testing.B) {
	block, _ := aes.NewCipher(make([]byte, 32))
	g, _ := cipher.NewGCM(block)
	pt, ad := make([]byte, 64), []byte("customer-42/email")
	b.ReportAllocs()
	for b.Loop() {
		out := make([]byte, 12, 12+64+16)
		if _, err := rand.Read(out); err != nil {
			b.Fatal(err)
		}
		_ = g.Seal(out, out[:12], pt, ad)
	}
}
