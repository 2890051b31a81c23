package keystore

import (
	"context"
	"errors"

	"github.com/custos-kms/custos/envelope"
)

// Envelopes (package envelope) are fields a client encrypted locally with a
// data key from GenerateDataKey (associated data envelope.DataKeyContext):
// the service decrypts them too, so callers in other languages read what Go
// services wrote, and rewraps them by re-wrapping only their data key.

// decryptEnvelope unwraps ciphertext's data key under ref and opens it.
func (s *Service) decryptEnvelope(ctx context.Context, ref KeyRef, ciphertext, aad []byte) ([]byte, uint32, *envelope.Envelope, error) {
	env, err := envelope.Parse(ciphertext)
	if err != nil {
		return nil, 0, nil, ErrInvalidCiphertext
	}
	dk, v, err := s.DecryptDataKey(ctx, ref, env.Wrapped, []byte(envelope.DataKeyContext))
	if err != nil {
		return nil, 0, nil, err
	}
	k, err := envelope.NewKey(dk, env.Wrapped)
	clear(dk)
	if err != nil {
		return nil, 0, nil, ErrInvalidCiphertext
	}
	pt, err := env.Open(k, aad)
	if errors.Is(err, envelope.ErrInvalid) || err != nil {
		return nil, 0, nil, ErrInvalidCiphertext
	}
	return pt, v, env, nil
}

// rewrapEnvelope checks the envelope (it must open with aad), then wraps
// its data key again under the primary version: the bulk stays.
func (s *Service) rewrapEnvelope(ctx context.Context, ref KeyRef, ciphertext, aad []byte) ([]byte, uint32, error) {
	pt, _, env, err := s.decryptEnvelope(ctx, ref, ciphertext, aad)
	if err != nil {
		return nil, 0, err
	}
	clear(pt)
	wrapped, v, err := s.Rewrap(ctx, ref, env.Wrapped, []byte(envelope.DataKeyContext))
	if err != nil {
		return nil, 0, err
	}
	out, err := envelope.Rewrapped(ciphertext, wrapped)
	if err != nil {
		return nil, 0, ErrInvalidCiphertext
	}
	return out, v, nil
}
