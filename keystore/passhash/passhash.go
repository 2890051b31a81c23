// Package passhash is Custos's password hash string: its grammar, its bounded
// parser, and the slow hashes (bcrypt, argon2id) applied to a password that
// has already been peppered. It knows nothing of keys or tenants; the keystore
// computes the pepper and checks the key's policy.
//
// Two forms exist (docs/formats.md, "Password hashes", has the grammar):
//
//	$custos-bcrypt$v=<pepper version>$<bcrypt hash: $2a$<cost>$<53 chars>>
//	$custos-argon2id$v=<pepper version>$m=<KiB>,t=<iterations>,p=<lanes>$<salt>$<hash>
//
// The algorithm identifier is the format version: a future change to either
// form gets a new identifier, and these two stay readable.
package passhash

import (
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// ErrMalformed is wrapped by every error Parse returns. Its messages say which
// part is wrong but never repeat the input.
var ErrMalformed = errors.New("malformed password hash")

// Bounds every parsed hash must respect, so a hostile hash string cannot make
// a verifier allocate or compute without limit. They match the bounds of a
// PASSWORD key's policy (keystore.MaxBcryptCost and friends).
const (
	// MaxLen bounds the whole hash string. Custos's own hashes are at most
	// about 140 bytes.
	MaxLen = 512

	MinBcryptCost = bcrypt.MinCost // 4
	MaxBcryptCost = bcrypt.MaxCost // 31

	MaxArgon2MemoryKiB   = 4 << 20 // 4 GiB
	MaxArgon2Iterations  = 64
	MaxArgon2Parallelism = 64

	// PepperSize is the size of the peppered password every function here
	// takes: an HMAC-SHA256 tag.
	PepperSize = 32
	// Argon2SaltSize and Argon2KeySize are the sizes of argon2id's random
	// salt and output.
	Argon2SaltSize = 16
	Argon2KeySize  = 32
)

// Algorithm is a hash string's slow hash.
type Algorithm int

// Algorithms.
const (
	Bcrypt Algorithm = iota + 1
	Argon2id
)

// Identifiers of the two forms, as they appear between the first two '$'.
const (
	bcryptID   = "custos-bcrypt"
	argon2idID = "custos-argon2id"
)

// String returns the algorithm's identifier in hash strings.
func (a Algorithm) String() string {
	switch a {
	case Bcrypt:
		return bcryptID
	case Argon2id:
		return argon2idID
	}
	return fmt.Sprintf("Algorithm(%d)", int(a))
}

// Argon2Params are argon2id's cost parameters.
type Argon2Params struct {
	MemoryKiB   uint32
	Iterations  uint32
	Parallelism uint8
}

// Hash is a parsed password hash. Use Parse to read one and Encode to write
// one; String redacts the salt and digest.
type Hash struct {
	Algorithm Algorithm
	// PepperVersion is the PASSWORD key version whose HMAC peppered the
	// password.
	PepperVersion uint32

	// BcryptCost and Bcrypt (the bcrypt hash, "$2a$<cost>$…") are set for
	// Bcrypt.
	BcryptCost int
	Bcrypt     string

	// Argon2, Salt and Key (the argon2id output) are set for Argon2id.
	Argon2 Argon2Params
	Salt   []byte
	Key    []byte
}

// String describes h without its salt or digest, so a Hash that reaches a
// log line leaks nothing an attacker could crack offline.
func (h Hash) String() string {
	switch h.Algorithm {
	case Bcrypt:
		return fmt.Sprintf("%s v=%d cost=%d", h.Algorithm, h.PepperVersion, h.BcryptCost)
	case Argon2id:
		return fmt.Sprintf("%s v=%d m=%d,t=%d,p=%d", h.Algorithm, h.PepperVersion,
			h.Argon2.MemoryKiB, h.Argon2.Iterations, h.Argon2.Parallelism)
	}
	return h.Algorithm.String()
}

var b64 = base64.RawStdEncoding.Strict()

// Encode returns h's hash string. It fails (wrapping ErrMalformed) when h is
// not something Parse would accept, so an Encode result always parses back to
// an equal Hash.
func (h Hash) Encode() (string, error) {
	if err := h.validate(); err != nil {
		return "", err
	}
	return h.encode(), nil
}

func (h Hash) encode() string {
	var b strings.Builder
	b.Grow(160)
	b.WriteString("$")
	b.WriteString(h.Algorithm.String())
	b.WriteString("$v=")
	b.WriteString(strconv.FormatUint(uint64(h.PepperVersion), 10))
	b.WriteString("$")
	switch h.Algorithm {
	case Bcrypt:
		b.WriteString(h.Bcrypt)
	case Argon2id:
		fmt.Fprintf(&b, "m=%d,t=%d,p=%d$", h.Argon2.MemoryKiB, h.Argon2.Iterations, h.Argon2.Parallelism)
		b.WriteString(b64.EncodeToString(h.Salt))
		b.WriteString("$")
		b.WriteString(b64.EncodeToString(h.Key))
	}
	return b.String()
}

// validate checks the bounds Parse enforces.
func (h Hash) validate() error {
	if h.PepperVersion == 0 {
		return malformed("pepper version must be at least 1")
	}
	switch h.Algorithm {
	case Bcrypt:
		cost, err := parseBcrypt(h.Bcrypt)
		if err != nil {
			return err
		}
		if cost != h.BcryptCost {
			return malformed("bcrypt cost does not match the bcrypt hash")
		}
		if h.Argon2 != (Argon2Params{}) || h.Salt != nil || h.Key != nil {
			return malformed("bcrypt hash with argon2id fields")
		}
	case Argon2id:
		if err := checkArgon2(h.Argon2); err != nil {
			return err
		}
		if len(h.Salt) != Argon2SaltSize || len(h.Key) != Argon2KeySize {
			return malformed(fmt.Sprintf("argon2id salt and hash must be %d and %d bytes", Argon2SaltSize, Argon2KeySize))
		}
		if h.BcryptCost != 0 || h.Bcrypt != "" {
			return malformed("argon2id hash with bcrypt fields")
		}
	default:
		return malformed("unknown algorithm")
	}
	return nil
}

func malformed(why string) error { return fmt.Errorf("%w: %s", ErrMalformed, why) }

// Parse reads a hash string. It accepts exactly the strings Encode writes: no
// missing or extra fields, no trailing bytes, no leading zeros or signs in
// numbers, no padding or stray bits in base64, nothing longer than MaxLen,
// and no cost parameter outside the bounds above. Every error wraps
// ErrMalformed and never repeats the input.
func Parse(s string) (Hash, error) {
	if len(s) > MaxLen {
		return Hash{}, malformed(fmt.Sprintf("longer than %d bytes", MaxLen))
	}
	rest, ok := strings.CutPrefix(s, "$")
	if !ok {
		return Hash{}, malformed("does not start with '$'")
	}
	id, rest, ok := strings.Cut(rest, "$")
	if !ok {
		return Hash{}, malformed("no algorithm")
	}
	var h Hash
	switch id {
	case bcryptID:
		h.Algorithm = Bcrypt
	case argon2idID:
		h.Algorithm = Argon2id
	default:
		return Hash{}, malformed("unknown algorithm")
	}
	field, rest, ok := strings.Cut(rest, "$")
	if !ok {
		return Hash{}, malformed("no pepper version")
	}
	v, ok := strings.CutPrefix(field, "v=")
	if !ok {
		return Hash{}, malformed("no pepper version")
	}
	pv, err := parseUint32(v, 1, 1<<32-1)
	if err != nil {
		return Hash{}, malformed("pepper version: " + err.Error())
	}
	h.PepperVersion = pv
	switch h.Algorithm {
	case Bcrypt:
		// The rest is the bcrypt hash, which starts with its own '$'.
		h.Bcrypt = rest
		if h.BcryptCost, err = parseBcrypt(h.Bcrypt); err != nil {
			return Hash{}, err
		}
	case Argon2id:
		params, rest, ok := strings.Cut(rest, "$")
		if !ok {
			return Hash{}, malformed("no argon2id parameters")
		}
		if h.Argon2, err = parseArgon2Params(params); err != nil {
			return Hash{}, err
		}
		salt, key, ok := strings.Cut(rest, "$")
		if !ok {
			return Hash{}, malformed("no argon2id hash")
		}
		if h.Salt, err = decodeB64(salt, Argon2SaltSize); err != nil {
			return Hash{}, malformed("argon2id salt: " + err.Error())
		}
		if h.Key, err = decodeB64(key, Argon2KeySize); err != nil {
			return Hash{}, malformed("argon2id hash: " + err.Error())
		}
	}
	return h, nil
}

// parseUint32 parses a canonical decimal number (no sign, no leading zeros)
// within [lo, hi].
func parseUint32(s string, lo, hi uint64) (uint32, error) {
	if s == "" || len(s) > 10 {
		return 0, errors.New("not a number")
	}
	if s[0] == '0' && len(s) > 1 {
		return 0, errors.New("leading zero")
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, errors.New("not a number")
		}
		n = n*10 + uint64(c-'0')
	}
	if n < lo || n > hi {
		return 0, fmt.Errorf("must be %d to %d", lo, hi)
	}
	return uint32(n), nil
}

// bcrypt's own base64 alphabet.
const bcryptAlphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// parseBcrypt checks a bcrypt hash, "$2a$" (what Go's bcrypt, and so the
// encoder, writes), a two-digit cost, '$', then 22 characters of salt and
// 31 of digest, and returns its cost.
func parseBcrypt(s string) (int, error) {
	const size = 4 + 3 + 22 + 31
	if len(s) != size {
		return 0, malformed(fmt.Sprintf("bcrypt hash must be %d bytes", size))
	}
	if !strings.HasPrefix(s, "$2a$") || s[6] != '$' {
		return 0, malformed("bcrypt hash is not $2a$")
	}
	if s[4] < '0' || s[4] > '9' || s[5] < '0' || s[5] > '9' {
		return 0, malformed("bcrypt cost is not two digits")
	}
	cost := int(s[4]-'0')*10 + int(s[5]-'0')
	if cost < MinBcryptCost || cost > MaxBcryptCost {
		return 0, malformed(fmt.Sprintf("bcrypt cost must be %d to %d", MinBcryptCost, MaxBcryptCost))
	}
	for i := 7; i < len(s); i++ {
		if strings.IndexByte(bcryptAlphabet, s[i]) < 0 {
			return 0, malformed("bcrypt salt or digest has a character outside bcrypt's base64")
		}
	}
	// One spelling per hash: the last character of the salt (16 bytes in
	// 22 characters) and of the digest (23 bytes in 31) carries unused low
	// bits, which must be zero; bcrypt itself decodes leniently.
	if strings.IndexByte(bcryptAlphabet, s[7+21])&0x0f != 0 || strings.IndexByte(bcryptAlphabet, s[len(s)-1])&0x03 != 0 {
		return 0, malformed("bcrypt salt or digest is not in its canonical encoding")
	}
	return cost, nil
}

// parseArgon2Params parses "m=<KiB>,t=<iterations>,p=<lanes>" in that order.
func parseArgon2Params(s string) (Argon2Params, error) {
	var p Argon2Params
	fields := strings.Split(s, ",")
	if len(fields) != 3 {
		return p, malformed("argon2id parameters must be m=…,t=…,p=…")
	}
	var vals [3]uint32
	for i, name := range []string{"m=", "t=", "p="} {
		num, ok := strings.CutPrefix(fields[i], name)
		if !ok {
			return p, malformed("argon2id parameters must be m=…,t=…,p=…")
		}
		n, err := parseUint32(num, 1, 1<<32-1)
		if err != nil {
			return p, malformed("argon2id " + name[:1] + ": " + err.Error())
		}
		vals[i] = n
	}
	if vals[2] > MaxArgon2Parallelism {
		return p, malformed(fmt.Sprintf("argon2id p must be 1 to %d", MaxArgon2Parallelism))
	}
	p = Argon2Params{MemoryKiB: vals[0], Iterations: vals[1], Parallelism: uint8(vals[2])}
	return p, checkArgon2(p)
}

// checkArgon2 checks argon2id's bounds: at least 8 KiB of memory per lane (the
// algorithm's own floor), and nothing above the Max constants.
func checkArgon2(p Argon2Params) error {
	switch {
	case p.Parallelism < 1 || p.Parallelism > MaxArgon2Parallelism:
		return malformed(fmt.Sprintf("argon2id p must be 1 to %d", MaxArgon2Parallelism))
	case p.Iterations < 1 || p.Iterations > MaxArgon2Iterations:
		return malformed(fmt.Sprintf("argon2id t must be 1 to %d", MaxArgon2Iterations))
	case p.MemoryKiB < 8*uint32(p.Parallelism) || p.MemoryKiB > MaxArgon2MemoryKiB:
		return malformed(fmt.Sprintf("argon2id m must be 8×p to %d", MaxArgon2MemoryKiB))
	}
	return nil
}

// decodeB64 decodes unpadded standard base64 of exactly n bytes, refusing
// non-zero trailing bits so each value has one encoding.
func decodeB64(s string, n int) ([]byte, error) {
	if len(s) != b64.EncodedLen(n) {
		return nil, fmt.Errorf("must be %d bytes in unpadded base64", n)
	}
	b, err := b64.DecodeString(s)
	if err != nil || len(b) != n {
		return nil, errors.New("not canonical unpadded base64")
	}
	return b, nil
}

// NewBcrypt hashes a peppered password with bcrypt at cost. bcrypt sees the
// unpadded base64 of the 32-byte pepper (43 characters), well under its
// 72-byte limit, so no password is ever truncated.
func NewBcrypt(pepperVersion uint32, peppered []byte, cost int) (Hash, error) {
	if len(peppered) != PepperSize {
		return Hash{}, fmt.Errorf("passhash: peppered password has %d bytes, want %d", len(peppered), PepperSize)
	}
	in := bcryptInput(peppered)
	defer clear(in)
	out, err := bcrypt.GenerateFromPassword(in, cost)
	if err != nil {
		return Hash{}, fmt.Errorf("passhash: bcrypt: %w", err)
	}
	h := Hash{Algorithm: Bcrypt, PepperVersion: pepperVersion, BcryptCost: cost, Bcrypt: string(out)}
	if err := h.validate(); err != nil {
		return Hash{}, err
	}
	return h, nil
}

// NewArgon2id hashes a peppered password with argon2id under p, with a fresh
// random salt read from rand.
func NewArgon2id(pepperVersion uint32, peppered []byte, p Argon2Params, rand io.Reader) (Hash, error) {
	if len(peppered) != PepperSize {
		return Hash{}, fmt.Errorf("passhash: peppered password has %d bytes, want %d", len(peppered), PepperSize)
	}
	if err := checkArgon2(p); err != nil {
		return Hash{}, err
	}
	salt := make([]byte, Argon2SaltSize)
	if _, err := io.ReadFull(rand, salt); err != nil {
		return Hash{}, fmt.Errorf("passhash: salt: %w", err)
	}
	h := Hash{Algorithm: Argon2id, PepperVersion: pepperVersion, Argon2: p, Salt: salt}
	h.Key = argon2.IDKey(peppered, salt, p.Iterations, p.MemoryKiB, p.Parallelism, Argon2KeySize)
	if err := h.validate(); err != nil {
		return Hash{}, err
	}
	return h, nil
}

// Verify reports whether peppered (the password peppered with the version h
// names) matches h. The comparison is constant time. h must come from Parse
// or New…; Verify does all of the work h's parameters ask for, so callers
// bound those first.
func (h Hash) Verify(peppered []byte) (bool, error) {
	if len(peppered) != PepperSize {
		return false, fmt.Errorf("passhash: peppered password has %d bytes, want %d", len(peppered), PepperSize)
	}
	if err := h.validate(); err != nil {
		return false, err
	}
	switch h.Algorithm {
	case Bcrypt:
		in := bcryptInput(peppered)
		defer clear(in)
		err := bcrypt.CompareHashAndPassword([]byte(h.Bcrypt), in)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, bcrypt.ErrMismatchedHashAndPassword):
			return false, nil
		}
		return false, malformed("bcrypt refused the hash")
	case Argon2id:
		got := argon2.IDKey(peppered, h.Salt, h.Argon2.Iterations, h.Argon2.MemoryKiB, h.Argon2.Parallelism, uint32(len(h.Key)))
		defer clear(got)
		return subtle.ConstantTimeCompare(got, h.Key) == 1, nil
	}
	return false, malformed("unknown algorithm")
}

// bcryptInput is what bcrypt hashes: the pepper in unpadded standard base64.
// The caller clears it.
func bcryptInput(peppered []byte) []byte {
	out := make([]byte, base64.RawStdEncoding.EncodedLen(len(peppered)))
	base64.RawStdEncoding.Encode(out, peppered)
	return out
}
