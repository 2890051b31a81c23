package keystore

import (
	"context"

	"github.com/custos-kms/custos/envelope"
)

// Envelopes (package envelope) are fields a client encrypted locally with a
// data key from GenerateDataKey (associated data envelope.DataKeyContext):
// the service decrypts them too, so callers in other languages read what Go
// services wrote, and rewraps them by re-wrapping only their data key.

// decryptEnvelope unwraps ciphertext's data key under ref and opens it.
func (s *Service) decryptEnvelope(ctx context.Context, ref KeyRef, ciphertext, aad []byte) ([]byte, uint32, *envelope.Envelope, error) {
	pt, v, env, dk, err := s.openEnvelope(ctx, ref, ciphertext, aad)
	clear(dk)
	return pt, v, env, err
}

// openEnvelope is decryptEnvelope that also returns the unwrapped data key,
// which the caller clears.
func (s *Service) openEnvelope(ctx context.Context, ref KeyRef, ciphertext, aad []byte) (pt []byte, v uint32, env *envelope.Envelope, dk []byte, err error) {
	env, err = envelope.Parse(ciphertext)
	if err != nil {
		return nil, 0, nil, nil, ErrInvalidCiphertext
	}
	dk, v, err = s.DecryptDataKey(ctx, ref, env.Wrapped, []byte(envelope.DataKeyContext))
	if err != nil {
		return nil, 0, nil, nil, err
	}
	k, err := envelope.NewKey(dk, env.Wrapped)
	if err != nil {
		clear(dk)
		return nil, 0, nil, nil, ErrInvalidCiphertext
	}
	if pt, err = env.Open(k, aad); err != nil {
		clear(dk)
		return nil, 0, nil, nil, ErrInvalidCiphertext
	}
	return pt, v, env, dk, nil
}

// rewrapEnvelope checks the envelope (it must open with aad), then wraps
// its data key again under the primary version: the bulk stays. The data
// key is unwrapped once, to open the envelope, and wrapped again from that.
func (s *Service) rewrapEnvelope(ctx context.Context, ref KeyRef, ciphertext, aad []byte) ([]byte, uint32, error) {
	pt, v, env, dk, err := s.openEnvelope(ctx, ref, ciphertext, aad)
	if err != nil {
		return nil, 0, err
	}
	clear(pt)
	defer clear(dk)
	e, err := s.m.key(ctx, ref)
	if err != nil {
		return nil, 0, err
	}
	if v >= e.rec.Primary {
		return ciphertext, v, nil // already under the primary (the newest): unchanged, as Rewrap does; never down
	}
	// Every envelope of one data key gets the same new wrapping (within the
	// cache's reach), so that clients' data-key caches, keyed by wrapping,
	// keep working after a rewrap of many rows.
	ck := rewrapKey{ref: ref, commitment: string(env.Commitment()), from: string(env.Wrapped)}
	r, fresh, _ := s.envRewraps.get(ck)
	wrapped, nv := r.wrapped, r.version
	if !fresh || nv != e.rec.Primary {
		if wrapped, nv, err = s.encryptWith(e, "rewrap", dk, dataKeyAAD([]byte(envelope.DataKeyContext))); err != nil {
			return nil, 0, err
		}
		s.envRewraps.put(ck, rewrapped{wrapped: wrapped, version: nv})
	}
	out, err := envelope.Rewrapped(ciphertext, wrapped)
	if err != nil {
		return nil, 0, ErrInvalidCiphertext
	}
	return out, nv, nil
}

// rewrapKey names an envelope data key's rewrap: the key, the data key (by
// its commitment) and the wrapping it came from.
type rewrapKey struct {
	ref        KeyRef
	commitment string
	from       string
}

type rewrapped struct {
	wrapped []byte
	version uint32
}

// maxEnvelopeRewraps bounds Service.envRewraps, which remembers the new
// wrapping of recently rewrapped envelope data keys (for the cache TTL):
// rewrapping a table's rows gives every envelope of one data key one new
// wrapping.
const maxEnvelopeRewraps = 4096
