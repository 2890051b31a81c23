package postgres

import (
	"sort"
	"unicode/utf8"
)

// PostgreSQL text holds only valid UTF-8 without NUL, so that is all a key
// can be here, and all a query parameter can be. List's prefix and after are
// arbitrary strings, though, compared byte-wise: "k/\xc3" is a prefix of
// "k/é" ("k/\xc3\xa9"). So List turns them into a range of valid strings
// that holds exactly the keys it must return, and the query asks for that
// range, which the primary key's index serves directly. Under the "C"
// collation PostgreSQL compares UTF-8 text byte-wise, which for valid UTF-8
// is also code point order, so Go's string comparison agrees with it.

// listRange returns the range [lo, hi) of valid keys that start with
// prefix and sort after after, byte-wise. If hasHi is false the range has no
// upper end; if ok is false no valid key can match.
func listRange(prefix, after string) (lo, hi string, hasHi, ok bool) {
	lo, ok = ceil(prefix)
	if !ok {
		return "", "", false, false
	}
	// The least string greater than after is after+"\x00".
	if a, aok := ceil(after + "\x00"); !aok {
		return "", "", false, false
	} else if a > lo {
		lo = a
	}
	if s, sok := byteSuccessor(prefix); sok {
		// No valid key reaches s if no valid string is >= s: then there is
		// no upper end to ask for.
		hi, hasHi = ceil(s)
	}
	if hasHi && lo >= hi {
		return "", "", false, false
	}
	return lo, hi, hasHi, true
}

// byteSuccessor returns the least string greater than every string that
// starts with p, or false if there is none (p is empty or all 0xff).
func byteSuccessor(p string) (string, bool) {
	// Not strings.TrimRight(p, "\xff"): it reads "\xff" as U+FFFD and trims
	// every invalid byte.
	i := len(p)
	for i > 0 && p[i-1] == 0xff {
		i--
	}
	if i == 0 {
		return "", false
	}
	return p[:i-1] + string([]byte{p[i-1] + 1}), true
}

// ceil returns the least valid key that is >= b, or false if there is none.
func ceil(b string) (string, bool) {
	i := 0
	for i < len(b) {
		r, size := utf8.DecodeRuneInString(b[i:])
		if r == 0 || r == utf8.RuneError && size == 1 {
			break
		}
		i += size
	}
	if i == len(b) {
		return b, true
	}
	// b[:i] is valid; b[i:] starts with NUL or an invalid sequence, which no
	// valid key continues. The least valid key >= b is b[:i] followed by
	// the least rune whose encoding sorts above b[i:], if there is one...
	if r, ok := runeAbove(b[i:]); ok {
		return b[:i] + string(r), true
	}
	// ...or else the least valid key above everything that starts with b[:i].
	return runeSuccessor(b[:i])
}

// Runes are searched by index, which skips the surrogates: they have no
// UTF-8 encoding, and utf8 encodes them as U+FFFD, out of order.
const (
	surrogateMin = 0xd800
	surrogates   = 0xe000 - surrogateMin
	runeCount    = utf8.MaxRune + 1 - surrogates
)

func runeAt(i int) rune {
	if i >= surrogateMin {
		i += surrogates
	}
	return rune(i)
}

// runeAbove returns the least rune other than NUL whose encoding sorts
// after s byte-wise, or false if there is none (s starts with a byte no
// encoding starts with, or at or above U+10FFFF's).
func runeAbove(s string) (rune, bool) {
	// Encodings sort as their runes do, so the predicate is monotonic.
	i := 1 + sort.Search(runeCount-1, func(i int) bool { return string(runeAt(i+1)) > s })
	if i == runeCount {
		return 0, false
	}
	return runeAt(i), true
}

// runeSuccessor returns the least valid key greater than every string that
// starts with v, a valid key or "": v with its last rune below U+10FFFF
// incremented and everything after it dropped. It returns false if there
// is no such rune.
func runeSuccessor(v string) (string, bool) {
	for len(v) > 0 {
		r, size := utf8.DecodeLastRuneInString(v)
		v = v[:len(v)-size]
		if r < utf8.MaxRune {
			r++
			if r == surrogateMin {
				r += surrogates
			}
			return v + string(r), true
		}
	}
	return "", false
}
