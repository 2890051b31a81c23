package postgres

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestListRangeMatchesBytewisePrefixAndAfter checks listRange against the
// definition List must meet, on keys and arguments built from the bytes and
// runes at the edges of UTF-8's ranges.
func TestListRangeMatchesBytewisePrefixAndAfter(t *testing.T) {
	runes := []rune{1, 'a', 'b', 0x7f, 0x80, 0xbf, 0xff, 0x7ff, 0x800, 0xd7ff, 0xe000, 0xfffd, 0xffff, 0x10000, utf8.MaxRune}
	bytes := []byte{0, 1, 'a', 'b', 0x7f, 0x80, 0xbf, 0xc2, 0xc3, 0xdf, 0xe0, 0xed, 0xee, 0xef, 0xf0, 0xf4, 0xf5, 0xff}
	rng := rand.New(rand.NewPCG(1, 2))

	var keys []string
	for range 3000 {
		var b strings.Builder
		for range 1 + rng.IntN(3) {
			b.WriteRune(runes[rng.IntN(len(runes))])
		}
		keys = append(keys, b.String())
	}
	arg := func() string {
		var b []byte
		for range rng.IntN(4) {
			if rng.IntN(2) == 0 {
				b = append(b, bytes[rng.IntN(len(bytes))])
			} else {
				b = utf8.AppendRune(b, runes[rng.IntN(len(runes))])
			}
		}
		if rng.IntN(3) == 0 && len(keys) > 0 { // a real key, or a piece of one
			k := keys[rng.IntN(len(keys))]
			return k[:rng.IntN(len(k)+1)] + string(b)
		}
		return string(b)
	}

	for range 20000 {
		prefix, after := arg(), arg()
		lo, hi, hasHi, ok := listRange(prefix, after)
		if ok && (!validKey(lo) || hasHi && !validKey(hi)) {
			t.Fatalf("listRange(%q, %q) = [%q, %q): not valid keys", prefix, after, lo, hi)
		}
		for _, k := range keys {
			want := strings.HasPrefix(k, prefix) && k > after
			got := ok && k >= lo && (!hasHi || k < hi)
			if got != want {
				t.Fatalf("listRange(%q, %q) = [%q, %q) hasHi %v ok %v: key %q in range = %v, want %v",
					prefix, after, lo, hi, hasHi, ok, k, got, want)
			}
		}
	}
}

func TestCeil(t *testing.T) {
	for _, c := range []struct {
		in, want string
		ok       bool
	}{
		{"", "", true},
		{"abc", "abc", true},
		{"k/é", "k/é", true},
		{"k/\xc3", "k/\u00c0", true},    // first byte of a 2-byte rune
		{"k/\xc3\xa9\xff", "k/ê", true}, // nothing continues "k/é" upward past 0xff
		{"a\x00b", "a\x01", true},
		{"\x80", "\u0080", true}, // a lone continuation byte: the first 2-byte rune
		{"\xed\xa0\x80", "\ue000", true},
		{"\xf4\x90", "", false},
		{"\xff", "", false},
		{"a\xff", "b", true},
		{"\U0010ffff\xff", "", false},
	} {
		got, ok := ceil(c.in)
		if got != c.want || ok != c.ok {
			t.Errorf("ceil(%q) = %q, %v; want %q, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

// validKey reports whether PostgreSQL can store key as text (the empty
// string too: a range's bound, not a key).
func validKey(key string) bool {
	return utf8.ValidString(key) && strings.IndexByte(key, 0) < 0
}
