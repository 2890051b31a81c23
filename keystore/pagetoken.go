package keystore

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/custos-kms/custos/keystore/storage"
)

// A page token of ListTenants holds the last tenant the server scanned,
// which may be one the caller may not see: the server seals it before it
// leaves (SealPageToken) and opens it when it comes back (OpenPageToken),
// under a deployment-wide key stored wrapped by the root like a tenant KEK
// (re-wrapped by RewrapPageTokenKey, which `custos root rewrap` runs). The
// key changes only when root rewrap finds it unopenable, so every replica
// may keep it. A caller learns no tenant from
// a sealed token, nor can it make one.

// pageTokenKeyKey is where the wrapped page-token key is stored.
const pageTokenKeyKey = "meta/page-token-key"

// Associated data: of the key's wrapping under the root, and of a token.
const (
	pageTokenKeyAAD = "custos:page-token-key"
	pageTokenAAD    = "custos:page-token"
)

// maxSealedToken bounds a sealed token a caller sends back.
const maxSealedToken = 1024

// SealPageToken seals a page token (empty stays empty).
func (s *Service) SealPageToken(ctx context.Context, tok string) (string, error) {
	if tok == "" {
		return "", nil
	}
	a, err := s.pageTokenAEAD(ctx)
	if err != nil {
		return "", err
	}
	ct, err := a.Encrypt([]byte(tok), []byte(pageTokenAAD))
	if err != nil {
		return "", fmt.Errorf("seal page token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(ct), nil
}

// OpenPageToken opens a token SealPageToken made (empty stays empty);
// anything else is ErrInvalidArgument.
func (s *Service) OpenPageToken(ctx context.Context, tok string) (string, error) {
	if tok == "" {
		return "", nil
	}
	if len(tok) > maxSealedToken {
		return "", errMalformedPageToken
	}
	ct, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return "", errMalformedPageToken
	}
	a, err := s.pageTokenAEAD(ctx)
	if err != nil {
		return "", err
	}
	pt, err := a.Decrypt(ct, []byte(pageTokenAAD))
	if err != nil {
		return "", errMalformedPageToken
	}
	return string(pt), nil
}

// pageTokenAEAD returns the page-token key, unwrapping it on first use, or
// making it if the deployment has none yet: once for all concurrent
// callers, bounded as a load is, each caller waiting only until its own
// deadline (materials.shared).
func (s *Service) pageTokenAEAD(ctx context.Context) (tink.AEAD, error) {
	if a := s.pageToken.Load(); a != nil {
		return *a, nil
	}
	v, err := s.m.shared(ctx, "page-token key", func(ctx context.Context) (any, error) {
		if a := s.pageToken.Load(); a != nil {
			return *a, nil
		}
		return s.loadPageTokenAEAD(ctx)
	})
	if err != nil {
		return nil, err
	}
	return v.(tink.AEAD), nil
}

// loadPageTokenAEAD unwraps the stored page-token key, or makes one.
func (s *Service) loadPageTokenAEAD(ctx context.Context) (tink.AEAD, error) {
	for range 3 {
		rec, err := s.store.Get(ctx, pageTokenKeyKey)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			rec = storage.Record{}
		case err != nil:
			return nil, storageErr("page-token key", err)
		}
		if rec.Version > 0 {
			raw, err := s.root.Unwrap(ctx, rec.Value, []byte(pageTokenKeyAAD))
			if err != nil {
				return nil, rootErr("unwrap the page-token key", err)
			}
			a, err := newKEKAEAD(raw)
			clear(raw)
			if err != nil {
				return nil, err
			}
			s.pageToken.Store(&a)
			return a, nil
		}
		raw, err := s.newKEK()
		if err != nil {
			return nil, fmt.Errorf("page-token key: %w", err)
		}
		wrapped, err := s.root.Wrap(ctx, raw, []byte(pageTokenKeyAAD))
		clear(raw)
		if err != nil {
			return nil, rootErr("wrap the page-token key", err)
		}
		// Another replica may make one at the same time: whichever is
		// stored first is the one, and the loop unwraps it.
		if _, err := s.store.Put(ctx, pageTokenKeyKey, wrapped, rec.Version); err != nil && !errors.Is(err, storage.ErrConflict) {
			return nil, storageErr("page-token key", err)
		}
	}
	return nil, fmt.Errorf("%w: the page-token key kept changing", ErrAborted)
}
