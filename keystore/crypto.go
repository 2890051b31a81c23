package keystore

import (
	"context"
	"fmt"
)

// reloadWindow bounds how far past the newest known version a ciphertext may
// point and still trigger one reload from storage (another replica may have
// rotated). A tampered prefix far beyond it fails without touching storage.
const reloadWindow = 1024

// Encrypt encrypts plaintext under the key's primary version, binding aad.
// It returns the ciphertext and the version that made it.
func (s *Service) Encrypt(ctx context.Context, ref KeyRef, plaintext, aad []byte) ([]byte, uint32, error) {
	e, err := s.key(ctx, ref)
	if err != nil {
		return nil, 0, err
	}
	if e.rec.Purpose != PurposeEncrypt {
		return nil, 0, fmt.Errorf("%w: encrypt needs a key of purpose %v, %s is %v", ErrWrongPurpose, PurposeEncrypt, ref, e.rec.Purpose)
	}
	ct, err := e.prim.aead.Encrypt(plaintext, aad)
	if err != nil {
		return nil, 0, fmt.Errorf("encrypt with %s: %w", ref, err)
	}
	return ct, e.rec.Primary, nil
}

// Decrypt decrypts a ciphertext made by any enabled version of the key.
// Every authentication failure is ErrInvalidCiphertext; a disabled, destroyed
// or too-old version is reported as such.
func (s *Service) Decrypt(ctx context.Context, ref KeyRef, ciphertext, aad []byte) ([]byte, uint32, error) {
	e, err := s.key(ctx, ref)
	if err != nil {
		return nil, 0, err
	}
	if e.rec.Purpose != PurposeEncrypt {
		return nil, 0, fmt.Errorf("%w: decrypt needs a key of purpose %v, %s is %v", ErrWrongPurpose, PurposeEncrypt, ref, e.rec.Purpose)
	}
	v, ok := versionOf(ciphertext)
	if !ok {
		return nil, 0, ErrInvalidCiphertext
	}
	if e, err = s.entryForVersion(ctx, e, v); err != nil {
		return nil, 0, err
	}
	pt, err := e.prim.aead.Decrypt(ciphertext, aad)
	if err != nil {
		return nil, 0, ErrInvalidCiphertext
	}
	return pt, v, nil
}

// entryForVersion checks that version v of e may decrypt, reloading the key
// once from storage when v is newer than any version e knows.
func (s *Service) entryForVersion(ctx context.Context, e *keyEntry, v uint32) (*keyEntry, error) {
	vr, ok := e.rec.version(v)
	if !ok {
		if max := e.rec.maxVersion(); v <= max || v > max+reloadWindow {
			return nil, ErrInvalidCiphertext
		}
		s.keys.remove(e.ref)
		fresh, err := s.loadKey(ctx, e.ref)
		if err != nil {
			return nil, err
		}
		if vr, ok = fresh.rec.version(v); !ok {
			return nil, ErrInvalidCiphertext
		}
		e = fresh
	}
	switch vr.State {
	case VersionEnabled:
	case VersionDisabled:
		return nil, fmt.Errorf("%w: %s version %d", ErrKeyVersionDisabled, e.ref, v)
	default:
		return nil, fmt.Errorf("%w: %s version %d", ErrKeyVersionDestroyed, e.ref, v)
	}
	if v < e.rec.MinDecryptionVersion {
		return nil, fmt.Errorf("%w: %s version %d < %d", ErrKeyVersionTooOld, e.ref, v, e.rec.MinDecryptionVersion)
	}
	return e, nil
}
