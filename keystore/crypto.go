package keystore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/custos-kms/custos/envelope"
)

// reloadWindow bounds how far past the newest known version a ciphertext may
// point and still trigger one reload from storage (another replica may have
// rotated). A tampered prefix far beyond it fails without touching storage.
const reloadWindow = 1024

// Encrypt encrypts plaintext under the key's primary version, binding aad.
// ENCRYPT keys are randomized (AES-256-GCM); ENCRYPT_DETERMINISTIC keys give
// equal ciphertexts for equal plaintext and aad (AES-256-SIV). It returns the
// ciphertext and the version that made it.
func (s *Service) Encrypt(ctx context.Context, ref KeyRef, plaintext, aad []byte) ([]byte, uint32, error) {
	if isDataKeyAAD(aad) {
		return nil, 0, errReservedAAD
	}
	e, err := s.m.key(ctx, ref)
	if err != nil {
		return nil, 0, err
	}
	return s.encryptWith(e, "encrypt", plaintext, aad)
}

func (s *Service) encryptWith(e *keyEntry, op string, plaintext, aad []byte) ([]byte, uint32, error) {
	ct, err := s.seal(e, op, plaintext, aad)
	if err != nil {
		return nil, 0, err
	}
	s.life.countEncrypt(e.ref, e.rec.Primary)
	return ct, e.rec.Primary, nil
}

// seal encrypts under e's primary version without counting the use.
func (s *Service) seal(e *keyEntry, op string, plaintext, aad []byte) ([]byte, error) {
	var ct []byte
	var err error
	switch e.rec.Purpose {
	case PurposeEncrypt:
		ct, err = e.prim.aead.Encrypt(plaintext, aad)
	case PurposeEncryptDeterministic:
		ct, err = e.prim.daead.EncryptDeterministically(plaintext, aad)
	default:
		return nil, wrongPurpose(op, e, PurposeEncrypt, PurposeEncryptDeterministic)
	}
	if err != nil {
		return nil, fmt.Errorf("%s with %s: %w", op, e.ref, err)
	}
	return ct, nil
}

// Decrypt decrypts a ciphertext made by any enabled version of the key.
// Every authentication failure is ErrInvalidCiphertext; a disabled, destroyed
// or too-old version is reported as such.
func (s *Service) Decrypt(ctx context.Context, ref KeyRef, ciphertext, aad []byte) ([]byte, uint32, error) {
	if isDataKeyAAD(aad) || envelope.IsEnvelope(ciphertext) {
		// No field is bound to data keys' associated data: not authentic,
		// once the key is known to exist and serve, as in a batch. An
		// envelope is opened as in a batch, too.
		b, err := s.Batch(ctx, ref, "decrypt")
		if err != nil {
			return nil, 0, err
		}
		defer b.Done()
		return b.Decrypt(ctx, ciphertext, aad)
	}
	e, err := s.m.key(ctx, ref)
	if err != nil {
		return nil, 0, err
	}
	return s.decryptWith(ctx, e, "decrypt", ciphertext, aad)
}

func (s *Service) decryptWith(ctx context.Context, e *keyEntry, op string, ciphertext, aad []byte) ([]byte, uint32, error) {
	if e.rec.Purpose != PurposeEncrypt && e.rec.Purpose != PurposeEncryptDeterministic {
		return nil, 0, wrongPurpose(op, e, PurposeEncrypt, PurposeEncryptDeterministic)
	}
	v, ok := versionOf(ciphertext)
	if !ok {
		return nil, 0, ErrInvalidCiphertext
	}
	e, err := s.entryForVersion(ctx, e, v)
	if err != nil {
		return nil, 0, err
	}
	var pt []byte
	if e.rec.Purpose == PurposeEncrypt {
		pt, err = e.prim.aead.Decrypt(ciphertext, aad)
	} else {
		pt, err = e.prim.daead.DecryptDeterministically(ciphertext, aad)
	}
	if err != nil {
		return nil, 0, ErrInvalidCiphertext
	}
	return pt, v, nil
}

// wrongPurpose names the key's purpose and the ones the operation needs.
func wrongPurpose(op string, e *keyEntry, want ...Purpose) error {
	names := make([]string, len(want))
	for i, p := range want {
		names[i] = p.String()
	}
	return fmt.Errorf("%w: %s needs a key of purpose %s; %s has purpose %v",
		ErrWrongPurpose, op, strings.Join(names, " or "), e.ref, e.rec.Purpose)
}

// entryForVersion checks that version v of e may decrypt, reloading the key
// once from storage when v is newer than any version e knows.
func (s *Service) entryForVersion(ctx context.Context, e *keyEntry, v uint32) (*keyEntry, error) {
	e, err := s.entryKnowing(ctx, e, v)
	if err != nil {
		return nil, err
	}
	vr, _ := e.rec.version(v)
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

// entryKnowing returns e if it knows version v, else the key reloaded from
// storage if that knows v (another replica rotated), else
// ErrInvalidCiphertext — with the reloaded entry, when there was a reload,
// so that a caller holding e (a batch) can go on with what storage holds.
func (s *Service) entryKnowing(ctx context.Context, e *keyEntry, v uint32) (*keyEntry, error) {
	if _, ok := e.rec.version(v); ok {
		return e, nil
	}
	if max := e.rec.maxVersion(); v <= max || v > max+reloadWindow {
		return nil, ErrInvalidCiphertext
	}
	// A forged prefix must not turn into a storage read per request, nor
	// evict what serves everyone else: at most one reload per second per
	// key looks for versions it does not know, and the cached entry stays
	// until the reload replaces it.
	now := s.now()
	if stampedWithin(&e.missed, now, time.Second) {
		return nil, ErrInvalidCiphertext
	}
	if stampedWithin(&e.reloadFailed, now, time.Second) {
		return nil, fmt.Errorf("%w: key %s could not be reloaded for version %d within the last second", ErrUnavailable, e.ref, v)
	}
	fresh, err := s.m.loadKey(ctx, e.ref)
	if err != nil {
		// A refusal (the tenant or key gone) voids what is cached, as
		// when the cache's own refresh meets it.
		err = s.m.refused(ctx, e.ref, e, err)
		if errors.Is(err, ErrUnavailable) && ctx.Err() == nil {
			e.reloadFailed.Store(s.now().UnixNano()) // when it failed: a load may take up to its timeout
		}
		return nil, err
	}
	if fresh.rec.Purpose != e.rec.Purpose {
		// The name holds another key since e was cached (its tenant
		// created again, a store restored, unseen here): the caller
		// checked e's purpose, and fresh lacks the primitive it would use.
		return nil, fmt.Errorf("%w: %s is now a key of purpose %v, not %v", ErrWrongPurpose, e.ref, fresh.rec.Purpose, e.rec.Purpose)
	}
	if _, ok := fresh.rec.version(v); !ok {
		// Both: callers still holding e (a batch, a call in flight) are
		// limited too, not only those that get fresh from the cache.
		at := s.now().UnixNano() // after the reload, which may take a while
		fresh.missed.Store(at)
		e.missed.Store(at)
		return fresh, ErrInvalidCiphertext
	}
	return fresh, nil
}

// stampedWithin reports whether the time stamped in at (unix ns, 0: never) is
// less than d before now.
func stampedWithin(at *atomic.Int64, now time.Time, d time.Duration) bool {
	last := at.Load()
	return last != 0 && now.Sub(time.Unix(0, last)) < d
}
