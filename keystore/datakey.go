package keystore

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"

	"github.com/custos-kms/custos/envelope"
)

// DataKeySize is the size of a data key from GenerateDataKey: AES-256.
const DataKeySize = 32

// dataKeyAADPrefix separates wrapped data keys from encrypted fields: a data
// key is wrapped with associated data dataKeyAADPrefix+aad, and Encrypt
// refuses associated data with this prefix, so a caller allowed to encrypt
// fields cannot forge something that unwraps as a data key, and a caller
// allowed to unwrap data keys cannot decrypt fields. (To a caller allowed
// both, Decrypt says which kind it returned: a field is not a data key.)
const dataKeyAADPrefix = envelope.DataKeyAADPrefix

// errReservedAAD refuses to encrypt with associated data isDataKeyAAD
// reserves.
var errReservedAAD = fmt.Errorf("%w: associated_data: the prefix %q and the value %q are reserved for data keys", ErrInvalidArgument, dataKeyAADPrefix, envelope.DataKeyContext)

// isDataKeyAAD reports associated data fields may not use
// (envelope.ReservedAssociatedData).
func isDataKeyAAD(aad []byte) bool { return envelope.ReservedAssociatedData(aad) }

func dataKeyAAD(aad []byte) []byte {
	out := make([]byte, 0, len(dataKeyAADPrefix)+len(aad))
	return append(append(out, dataKeyAADPrefix...), aad...)
}

// GenerateDataKey returns a fresh 256-bit data key and the same key wrapped
// under the primary version of an ENCRYPT key, bound to aad. With
// wrappedOnly the plaintext key is not returned (nil).
func (s *Service) GenerateDataKey(ctx context.Context, ref KeyRef, aad []byte, wrappedOnly bool) (plaintext, wrapped []byte, version uint32, err error) {
	e, err := s.m.key(ctx, ref)
	if err != nil {
		return nil, nil, 0, err
	}
	if e.rec.Purpose != PurposeEncrypt {
		return nil, nil, 0, wrongPurpose("generate data key", e, PurposeEncrypt)
	}
	dk := make([]byte, DataKeySize)
	if _, err := io.ReadFull(rand.Reader, dk); err != nil {
		return nil, nil, 0, fmt.Errorf("generate data key: %w", err)
	}
	wrapped, version, err = s.encryptWith(e, "generate data key", dk, dataKeyAAD(aad))
	if err != nil {
		clear(dk)
		return nil, nil, 0, err
	}
	if wrappedOnly {
		clear(dk)
		return nil, wrapped, version, nil
	}
	return dk, wrapped, version, nil
}

// DecryptDataKey unwraps a data key made by GenerateDataKey with the same aad.
// A field ciphertext fails with ErrInvalidCiphertext.
func (s *Service) DecryptDataKey(ctx context.Context, ref KeyRef, wrapped, aad []byte) ([]byte, uint32, error) {
	e, err := s.m.key(ctx, ref)
	if err != nil {
		return nil, 0, err
	}
	if e.rec.Purpose != PurposeEncrypt {
		return nil, 0, wrongPurpose("decrypt data key", e, PurposeEncrypt)
	}
	return s.decryptWith(ctx, e, "decrypt data key", wrapped, dataKeyAAD(aad))
}

// Rewrap decrypts a ciphertext (a field or a wrapped data key) and encrypts
// it again under the primary version with the same associated data, inside
// the service. A ciphertext already made by the primary version is returned
// unchanged (same bytes), so rewrapping is idempotent and cheap to repeat.
func (s *Service) Rewrap(ctx context.Context, ref KeyRef, ciphertext, aad []byte) ([]byte, uint32, error) {
	// Exactly what a batch of one does: the key first (unknown, deleted,
	// wrong purpose), then the item.
	b, err := s.Batch(ctx, ref, "rewrap")
	if err != nil {
		return nil, 0, err
	}
	defer b.Done()
	return b.Rewrap(ctx, ciphertext, aad)
}
