package passhash_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/custos-kms/custos/keystore/passhash"
)

// FuzzParse checks that Parse never panics, that every error wraps
// ErrMalformed, and that whatever it accepts encodes back to exactly the same
// string (one encoding per hash) and parses to an equal Hash. Cheap accepted
// hashes are also verified, which must not panic or fail for argon2id.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		vectorBcrypt,
		vectorArgon2id,
		"$custos-bcrypt$v=4294967295$$2a$31$" + vectorBcrypt[len(vectorBcrypt)-53:],
		"$custos-argon2id$v=1$m=4194304,t=64,p=64$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"$custos-argon2id$v=1$m=16,t=1,p=2$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		"$custos-argon2id$v=01$m=64,t=1,p=1$$",
		"$custos-bcrypt$v=1$",
		"$$$",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := passhash.Parse(s)
		if err != nil {
			if !errors.Is(err, passhash.ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		enc, err := h.Encode()
		if err != nil {
			t.Fatalf("Encode of a parsed hash: %v", err)
		}
		if enc != s {
			t.Fatalf("non-canonical input accepted:\n in  %q\n out %q", s, enc)
		}
		again, err := passhash.Parse(enc)
		if err != nil || !reflect.DeepEqual(again, h) {
			t.Fatalf("Parse(Encode(h)) = %+v, %v; want %+v", again, err, h)
		}
		cheap := (h.Algorithm == passhash.Bcrypt && h.BcryptCost <= 5) ||
			(h.Algorithm == passhash.Argon2id && h.Argon2.MemoryKiB <= 256 && h.Argon2.Iterations <= 2)
		if cheap {
			_, err := h.Verify(pepper)
			if h.Algorithm == passhash.Argon2id && err != nil {
				t.Fatalf("Verify(argon2id): %v", err)
			}
		}
	})
}

// FuzzEncode builds hashes from arbitrary fields: Encode either refuses them
// (ErrMalformed) or writes a string that parses back to the same Hash.
func FuzzEncode(f *testing.F) {
	f.Add(uint32(1), uint32(64), uint32(1), uint8(1), []byte("0123456789abcdef"), []byte("0123456789abcdef0123456789abcdef"))
	f.Add(uint32(0), uint32(7), uint32(0), uint8(0), []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, v, m, it uint32, p uint8, salt, key []byte) {
		h := passhash.Hash{Algorithm: passhash.Argon2id, PepperVersion: v,
			Argon2: passhash.Argon2Params{MemoryKiB: m, Iterations: it, Parallelism: p}, Salt: salt, Key: key}
		s, err := h.Encode()
		if err != nil {
			if !errors.Is(err, passhash.ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		got, err := passhash.Parse(s)
		if err != nil || !reflect.DeepEqual(got, h) {
			t.Fatalf("Parse(Encode(h)) = %+v, %v; want %+v", got, err, h)
		}
	})
}
