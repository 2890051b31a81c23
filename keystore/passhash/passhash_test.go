package passhash_test

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/custos-kms/custos/keystore/passhash"
)

// Known-answer vectors: the pepper is 32 bytes of 0x07; the argon2id salt is
// 16 bytes of 0x09. docs/formats.md quotes them.
const (
	vectorBcrypt   = "$custos-bcrypt$v=3$$2a$04$j0b.QMxbgIag2eyAFVrLNOMneY0WlSOyRTpQYqmv8Ww8MHJtRmGGa"
	vectorArgon2id = "$custos-argon2id$v=12$m=64,t=1,p=1$CQkJCQkJCQkJCQkJCQkJCQ$6WhS0Rt9x7rFDlIiSR4RZANkg0BCAcXTHG6OW0uLF+k"
)

var (
	pepper = bytes.Repeat([]byte{7}, passhash.PepperSize)
	other  = bytes.Repeat([]byte{8}, passhash.PepperSize)
)

func TestKnownAnswerVectorsVerify(t *testing.T) {
	for _, s := range []string{vectorBcrypt, vectorArgon2id} {
		h, err := passhash.Parse(s)
		if err != nil {
			t.Fatalf("Parse(vector): %v", err)
		}
		if ok, err := h.Verify(pepper); !ok || err != nil {
			t.Fatalf("%v: Verify(right pepper) = %v, %v", h, ok, err)
		}
		if ok, err := h.Verify(other); ok || err != nil {
			t.Fatalf("%v: Verify(wrong pepper) = %v, %v", h, ok, err)
		}
		if enc, err := h.Encode(); err != nil || enc != s {
			t.Fatalf("Encode(Parse(vector)) = %q, %v", enc, err)
		}
	}
	// argon2id is deterministic given the salt: reproduce the vector.
	h, err := passhash.NewArgon2id(12, pepper, passhash.Argon2Params{MemoryKiB: 64, Iterations: 1, Parallelism: 1},
		bytes.NewReader(bytes.Repeat([]byte{9}, passhash.Argon2SaltSize)))
	if err != nil {
		t.Fatal(err)
	}
	if enc, _ := h.Encode(); enc != vectorArgon2id {
		t.Fatalf("argon2id vector: got %q", enc)
	}
}

func TestNewHashesRoundTripAndUseFreshSalts(t *testing.T) {
	b1, err := passhash.NewBcrypt(7, pepper, passhash.MinBcryptCost)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := passhash.NewBcrypt(7, pepper, passhash.MinBcryptCost)
	a1, err := passhash.NewArgon2id(7, pepper, passhash.Argon2Params{MemoryKiB: 64, Iterations: 1, Parallelism: 2}, randReader{})
	if err != nil {
		t.Fatal(err)
	}
	if b1.Bcrypt == b2.Bcrypt {
		t.Fatal("two bcrypt hashes of one password are equal: salt not random")
	}
	for _, h := range []passhash.Hash{b1, a1} {
		s, err := h.Encode()
		if err != nil {
			t.Fatal(err)
		}
		got, err := passhash.Parse(s)
		if err != nil || !reflect.DeepEqual(got, h) {
			t.Fatalf("Parse(Encode(h)) = %+v, %v; want %+v", got, err, h)
		}
		if ok, _ := got.Verify(pepper); !ok {
			t.Fatalf("%v does not verify", got)
		}
		if strings.Contains(got.String(), s[len(s)-10:]) {
			t.Fatalf("String() leaks the digest: %s", got)
		}
	}
}

func TestParseRejectsMalformedHashes(t *testing.T) {
	a := vectorArgon2id
	b := vectorBcrypt
	cases := map[string]string{
		"empty":                          "",
		"no leading dollar":              a[1:],
		"unknown algorithm":              strings.Replace(a, "custos-argon2id", "argon2id", 1),
		"algorithm in upper case":        strings.Replace(b, "custos-bcrypt", "CUSTOS-BCRYPT", 1),
		"no pepper version":              "$custos-bcrypt$",
		"pepper version zero":            strings.Replace(b, "v=3$", "v=0$", 1),
		"pepper version with zero pad":   strings.Replace(b, "v=3$", "v=03$", 1),
		"pepper version signed":          strings.Replace(b, "v=3$", "v=+3$", 1),
		"pepper version over 32 bits":    strings.Replace(b, "v=3$", "v=4294967296$", 1),
		"pepper version empty":           strings.Replace(b, "v=3$", "v=$", 1),
		"bcrypt minor version y":         strings.Replace(b, "$2a$", "$2y$", 1),
		"bcrypt cost 3":                  strings.Replace(b, "$2a$04$", "$2a$03$", 1),
		"bcrypt cost 32":                 strings.Replace(b, "$2a$04$", "$2a$32$", 1),
		"bcrypt cost one digit":          strings.Replace(b, "$2a$04$", "$2a$4$", 1),
		"bcrypt truncated":               b[:len(b)-1],
		"bcrypt trailing garbage":        b + "x",
		"bcrypt bad alphabet":            b[:len(b)-1] + "+",
		"bcrypt without its own dollar":  strings.Replace(b, "$$2a", "$2a", 1),
		"argon2 params out of order":     strings.Replace(a, "m=64,t=1,p=1", "t=1,m=64,p=1", 1),
		"argon2 extra param":             strings.Replace(a, "m=64,t=1,p=1", "m=64,t=1,p=1,k=2", 1),
		"argon2 missing param":           strings.Replace(a, "m=64,t=1,p=1", "m=64,t=1", 1),
		"argon2 memory over 4 GiB":       strings.Replace(a, "m=64,", "m=4194305,", 1),
		"argon2 memory below 8 per lane": strings.Replace(a, "m=64,t=1,p=1", "m=15,t=1,p=2", 1),
		"argon2 t zero":                  strings.Replace(a, "t=1,", "t=0,", 1),
		"argon2 t 2^32":                  strings.Replace(a, "t=1,", "t=4294967296,", 1),
		"argon2 t over the max":          strings.Replace(a, "t=1,", "t=65,", 1),
		"argon2 p over the max":          strings.Replace(a, "p=1$", "p=65$", 1),
		"argon2 p 256 (uint8 wrap)":      strings.Replace(a, "p=1$", "p=257$", 1),
		"argon2 leading zero":            strings.Replace(a, "m=64,", "m=064,", 1),
		"argon2 padded salt":             strings.Replace(a, "CQkJCQkJCQkJCQkJCQkJCQ$", "CQkJCQkJCQkJCQkJCQkJCQ==$", 1),
		"argon2 salt stray bits":         strings.Replace(a, "CQkJCQkJCQkJCQkJCQkJCQ$", "CQkJCQkJCQkJCQkJCQkJCR$", 1),
		"argon2 short salt":              strings.Replace(a, "CQkJCQkJCQkJCQkJCQkJCQ$", "CQkJCQkJCQkJCQkJCQkJ$", 1),
		"argon2 url base64":              strings.Replace(a, "F+k", "F-k", 1),
		"argon2 no hash":                 a[:strings.LastIndexByte(a, '$')],
		"argon2 trailing dollar":         a + "$",
		"argon2 trailing garbage":        a + "AAAA",
		"oversized":                      "$custos-bcrypt$v=1$" + strings.Repeat("a", passhash.MaxLen),
		"NUL inside":                     strings.Replace(a, "v=12", "v=1\x002", 1),
	}
	for name, s := range cases {
		t.Run(name, func(t *testing.T) {
			h, err := passhash.Parse(s)
			if !errors.Is(err, passhash.ErrMalformed) {
				t.Fatalf("Parse = %v, %v; want ErrMalformed", h, err)
			}
			if len(s) > 20 && strings.Contains(err.Error(), s[len(s)-20:]) {
				t.Fatalf("error repeats the input: %v", err)
			}
		})
	}
}

func TestEncodeRefusesWhatParseWouldRefuse(t *testing.T) {
	good, _ := passhash.Parse(vectorArgon2id)
	bad := []passhash.Hash{
		{},
		{Algorithm: passhash.Argon2id, PepperVersion: 0, Argon2: good.Argon2, Salt: good.Salt, Key: good.Key},
		{Algorithm: passhash.Argon2id, PepperVersion: 1, Argon2: passhash.Argon2Params{MemoryKiB: 64, Iterations: 1}, Salt: good.Salt, Key: good.Key},
		{Algorithm: passhash.Argon2id, PepperVersion: 1, Argon2: good.Argon2, Salt: good.Salt[:8], Key: good.Key},
		{Algorithm: passhash.Bcrypt, PepperVersion: 1, BcryptCost: 5, Bcrypt: vectorBcrypt[19:]},
	}
	for i, h := range bad {
		if s, err := h.Encode(); !errors.Is(err, passhash.ErrMalformed) {
			t.Errorf("case %d: Encode = %q, %v; want ErrMalformed", i, s, err)
		}
	}
}

func TestArgon2RefusesOutOfRangeParams(t *testing.T) {
	if _, err := passhash.NewArgon2id(1, pepper, passhash.Argon2Params{MemoryKiB: passhash.MaxArgon2MemoryKiB + 1, Iterations: 1, Parallelism: 1}, randReader{}); !errors.Is(err, passhash.ErrMalformed) {
		t.Fatalf("m over the max: %v", err)
	}
	if _, err := passhash.NewBcrypt(1, pepper[:31], 4); err == nil {
		t.Fatal("short pepper accepted")
	}
}

// randReader is a cheap non-constant reader (tests need distinct, not secret, salts).
type randReader struct{}

var counter byte

func (randReader) Read(p []byte) (int, error) {
	for i := range p {
		counter++
		p[i] = counter
	}
	return len(p), nil
}

// A bcrypt hash has one spelling: "$2a$" (what the encoder writes) and
// salt and digest whose last characters carry no bits beyond the bytes
// they encode. bcrypt decodes leniently, so other spellings of one hash
// would verify too.
func TestABcryptHashHasOneSpelling(t *testing.T) {
	if _, err := passhash.Parse(vectorBcrypt); err != nil {
		t.Fatal(err)
	}
	salt := strings.Index(vectorBcrypt, "$2a$04$") + len("$2a$04$")
	for name, s := range map[string]string{
		"$2b$":                    strings.Replace(vectorBcrypt, "$2a$", "$2b$", 1),
		"salt with unused bits":   vectorBcrypt[:salt+21] + "P" + vectorBcrypt[salt+22:],
		"digest with unused bits": vectorBcrypt[:len(vectorBcrypt)-1] + "b",
	} {
		if _, err := passhash.Parse(s); !errors.Is(err, passhash.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}
