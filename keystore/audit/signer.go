package audit

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"

	"golang.org/x/mod/sumdb/note"

	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/storage"
)

// DefaultOrigin names the log (the checkpoint's first line and the signing
// key's name) unless configured.
const DefaultOrigin = "custos-audit"

// signingKeyRecord is what the store holds for the log's signing key: the
// note signer key wrapped under the root, and its verifier key in the clear.
// The wrap binds the verifier key, so neither can be swapped alone.
type signingKeyRecord struct {
	Format   int    `json:"format"`
	Verifier string `json:"verifier"`
	Wrapped  []byte `json:"wrapped"`
}

const signingKeyFormat = 1

// neverSigned fails unless the log has no signed checkpoint: only such a
// log gets a new signing key. A new key for a log that was signed (its key
// record deleted) would sign whatever the store holds, and verify as
// genuine.
func neverSigned(ctx context.Context, store storage.Store) error {
	signed := false
	rec, err := store.Get(ctx, treeKey)
	switch {
	case err == nil:
		st, perr := parseTree(rec.Value)
		signed = perr != nil || st.Checkpoint != nil
	case !errors.Is(err, storage.ErrNotFound):
		return fmt.Errorf("audit: read tree state: %w", err)
	}
	if !signed {
		cps, err := store.List(ctx, cpPrefix, "", 1)
		if err != nil {
			return fmt.Errorf("audit: list checkpoints: %w", err)
		}
		signed = len(cps) > 0
	}
	if signed {
		return errors.New("audit: the signing key record is missing but the log has signed checkpoints: refusing to make a new key; restore the record (audit/signing-key) from a backup")
	}
	return nil
}

func signingKeyAAD(verifier string) []byte {
	return []byte("custos audit signing key v1\x00" + verifier)
}

// loadSigner returns the log's signer, creating the key on first use (the
// first replica to store it wins; the others use its key).
func loadSigner(ctx context.Context, store storage.Store, r root.Root, origin string) (note.Signer, string, error) {
	// Bounded like the keystore's loads: the lease holder's first
	// signing and audit verify wait no longer on a root that stops
	// answering.
	ctx, cancel := context.WithTimeout(ctx, rootTimeout)
	defer cancel()
	for range 3 {
		s, vkey, err := openSigner(ctx, store, r)
		if err != nil || s != nil {
			return s, vkey, err
		}
		if err := neverSigned(ctx, store); err != nil {
			return nil, "", err
		}
		skey, vkey, err := note.GenerateKey(rand.Reader, origin)
		if err != nil {
			return nil, "", fmt.Errorf("audit: generate signing key: %w", err)
		}
		wrapped, err := r.Wrap(ctx, []byte(skey), signingKeyAAD(vkey))
		if err != nil {
			return nil, "", fmt.Errorf("audit: wrap signing key under the root: %w", err)
		}
		b, _ := json.Marshal(signingKeyRecord{Format: signingKeyFormat, Verifier: vkey, Wrapped: wrapped})
		if _, err := store.Put(ctx, signingKeyKey, b, 0); errors.Is(err, storage.ErrConflict) {
			continue // another replica made one first
		} else if err != nil {
			return nil, "", fmt.Errorf("audit: store signing key: %w", err)
		}
		return signerOf(skey, vkey)
	}
	return nil, "", errors.New("audit: signing key kept changing while being read")
}

// signerOf checks that skey and vkey are a pair and returns the signer.
func signerOf(skey, vkey string) (note.Signer, string, error) {
	s, err := note.NewSigner(skey)
	if err != nil {
		return nil, "", fmt.Errorf("audit: signing key: %w", err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, "", fmt.Errorf("audit: verifier key: %w", err)
	}
	if v.Name() != s.Name() || v.KeyHash() != s.KeyHash() {
		return nil, "", errors.New("audit: the signing key and its verifier key do not match")
	}
	return s, vkey, nil
}

// RewrapSigningKey wraps the log's signing key again under the current
// root version (part of custos root rewrap), and reports whether there was
// one: it does nothing when the log has no key yet.
func RewrapSigningKey(ctx context.Context, store storage.Store, r root.Root) (bool, error) {
	// Bounded like the keystore's re-wraps: a root that stops answering
	// fails the run instead of hanging it.
	ctx, cancel := context.WithTimeout(ctx, rootTimeout)
	defer cancel()
	sk, skey, version, err := unwrapSigningKey(ctx, store, r)
	if err != nil || version == 0 {
		return false, err
	}
	defer clear(skey)
	if sk.Wrapped, err = r.Wrap(ctx, skey, signingKeyAAD(sk.Verifier)); err != nil {
		return true, fmt.Errorf("audit: wrap signing key: %w", err)
	}
	b, _ := json.Marshal(sk)
	if _, err := store.Put(ctx, signingKeyKey, b, version); err != nil {
		return true, fmt.Errorf("audit: store rewrapped signing key: %w", err)
	}
	return true, nil
}

// openSigner unwraps the log's signing key under the root and returns it
// with its verifier key; nil when there is no key yet. The verifier key
// stored in the clear is trusted only once the unwrap, whose associated
// data binds it, has succeeded: write access to the store alone must not
// get callers to pin a key of its choosing.
func openSigner(ctx context.Context, store storage.Store, r root.Root) (note.Signer, string, error) {
	sk, skey, version, err := unwrapSigningKey(ctx, store, r)
	if err != nil || version == 0 {
		return nil, "", err
	}
	defer clear(skey)
	return signerOf(string(skey), sk.Verifier)
}

// unwrapSigningKey reads the signing key record and unwraps its key under
// the root; version 0 when there is no key yet. The caller clears skey.
func unwrapSigningKey(ctx context.Context, store storage.Store, r root.Root) (sk signingKeyRecord, skey []byte, version uint64, err error) {
	rec, err := store.Get(ctx, signingKeyKey)
	if errors.Is(err, storage.ErrNotFound) {
		return sk, nil, 0, nil
	}
	if err != nil {
		return sk, nil, 0, fmt.Errorf("audit: read signing key: %w", err)
	}
	if err := json.Unmarshal(rec.Value, &sk); err != nil || sk.Format != signingKeyFormat {
		return sk, nil, 0, fmt.Errorf("audit: signing key record is unreadable")
	}
	if skey, err = r.Unwrap(ctx, sk.Wrapped, signingKeyAAD(sk.Verifier)); err != nil {
		return sk, nil, 0, fmt.Errorf("audit: unwrap signing key: %w", err)
	}
	return sk, skey, rec.Version, nil
}
