package keystore

import (
	"context"
	"sync"

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
	if err != nil {
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
	// Every envelope of one data key gets the same new wrapping (within the
	// cache's reach), so that clients' data-key caches, keyed by wrapping,
	// keep working after a rewrap of many rows.
	ck := rewrapKey{ref: ref, commitment: string(env.Commitment()), from: string(env.Wrapped)}
	wrapped, v, ok := s.envRewraps.get(ck, s.primaryOf(ctx, ref))
	if !ok {
		if wrapped, v, err = s.Rewrap(ctx, ref, env.Wrapped, []byte(envelope.DataKeyContext)); err != nil {
			return nil, 0, err
		}
		s.envRewraps.put(ck, wrapped, v)
	}
	out, err := envelope.Rewrapped(ciphertext, wrapped)
	if err != nil {
		return nil, 0, ErrInvalidCiphertext
	}
	return out, v, nil
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

// envelopeRewraps remembers the new wrapping of recently rewrapped envelope
// data keys (a bounded map, cleared when full): rewrapping a table's rows
// gives every envelope of one data key one new wrapping.
type envelopeRewraps struct {
	mu sync.Mutex
	m  map[rewrapKey]rewrapped
}

const maxEnvelopeRewraps = 4096

func (r *envelopeRewraps) get(k rewrapKey, primary uint32) ([]byte, uint32, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.m[k]
	if !ok || e.version != primary {
		return nil, 0, false
	}
	return e.wrapped, e.version, true
}

func (r *envelopeRewraps) put(k rewrapKey, wrapped []byte, v uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil || len(r.m) >= maxEnvelopeRewraps {
		r.m = make(map[rewrapKey]rewrapped)
	}
	r.m[k] = rewrapped{wrapped: wrapped, version: v}
}

// primaryOf is the key's primary version, 0 if it cannot be read.
func (s *Service) primaryOf(ctx context.Context, ref KeyRef) uint32 {
	e, err := s.m.key(ctx, ref)
	if err != nil {
		return 0
	}
	return e.rec.Primary
}
