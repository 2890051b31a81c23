package keystore

import (
	"encoding/base64"
	"fmt"
	"strings"
)

// Page tokens are opaque to callers: the base64url of "p1:" and the last id of
// the previous page. Anything else is rejected as INVALID_ARGUMENT.
const pageTokenPrefix = "p1:"

func encodePageToken(lastID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(pageTokenPrefix + lastID))
}

func decodePageToken(tok string) (string, error) {
	if tok == "" {
		return "", nil
	}
	if id, ok := decodePrefixed(tok, pageTokenPrefix); ok && ValidID(id) {
		return id, nil
	}
	return "", errMalformedPageToken
}

// decodePrefixed returns what follows prefix in the base64url token tok.
func decodePrefixed(tok, prefix string) (string, bool) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return "", false
	}
	return strings.CutPrefix(string(b), prefix)
}

// ListKeys's page tokens name the tenant they page, so that one made for a
// tenant's keys is refused on another's (where it would skip keys): the
// base64url of "k1:", the tenant, "/" and the last key id of the page.
const keysPageTokenPrefix = "k1:"

func encodeKeysPageToken(tenant, lastID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(keysPageTokenPrefix + tenant + "/" + lastID))
}

func decodeKeysPageToken(tok, tenant string) (string, error) {
	if tok == "" {
		return "", nil
	}
	if rest, ok := decodePrefixed(tok, keysPageTokenPrefix); ok {
		if t, id, ok := strings.Cut(rest, "/"); ok && t == tenant && ValidID(id) {
			return id, nil
		}
	}
	return "", errMalformedPageToken
}

// errMalformedPageToken refuses a page token the server did not make.
var errMalformedPageToken = fmt.Errorf("%w: page_token is malformed", ErrInvalidArgument)

func pageSize(n int) (int, error) {
	switch {
	case n < 0:
		return 0, fmt.Errorf("%w: page_size must not be negative", ErrInvalidArgument)
	case n == 0:
		return DefaultPageSize, nil
	case n > MaxPageSize:
		return MaxPageSize, nil
	}
	return n, nil
}
