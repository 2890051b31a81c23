package keystore

import (
	"context"

	"github.com/custos-kms/custos/envelope"
)

// Envelopes (package envelope) are fields a client encrypted locally with a
// data key from GenerateDataKey (associated data envelope.DataKeyContext):
// the service decrypts them too, so callers in other languages read what Go
// services wrote, and rewraps them by re-wrapping only their data key.

// envelopeDataKeyAAD is the associated data an envelope's data key is
// wrapped with (reserved for data keys; Tink does not keep or change it).
var envelopeDataKeyAAD = dataKeyAAD([]byte(envelope.DataKeyContext))

// openEnvelope unwraps ciphertext's data key under the batch's key and
// opens it; it also returns the data key, which the caller clears. The
// unwrap is one of the batch's decryptions, so an unknown version's reload
// (and an outage it meets) is shared with the batch's other items.
func (b *Batch) openEnvelope(ctx context.Context, ciphertext, aad []byte) (pt []byte, v uint32, env *envelope.Envelope, dk []byte, err error) {
	env, err = envelope.Parse(ciphertext)
	if err != nil {
		return nil, 0, nil, nil, ErrInvalidCiphertext
	}
	if b.e.rec.Purpose != PurposeEncrypt {
		// Only ENCRYPT keys wrap data keys: no envelope is authentic under
		// another key, and decryption's failures are one generic error.
		return nil, 0, nil, nil, ErrInvalidCiphertext
	}
	dk, v, err = b.decrypt(ctx, "decrypt data key", env.Wrapped, envelopeDataKeyAAD)
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

// decryptEnvelope is openEnvelope without the data key.
func (b *Batch) decryptEnvelope(ctx context.Context, ciphertext, aad []byte) ([]byte, uint32, error) {
	pt, v, _, dk, err := b.openEnvelope(ctx, ciphertext, aad)
	clear(dk)
	return pt, v, err
}

// rewrapEnvelope checks the envelope (it must open with aad), then wraps
// its data key again under the batch's primary version: the bulk stays.
// The data key is unwrapped once, to open the envelope, and wrapped again
// from that.
func (b *Batch) rewrapEnvelope(ctx context.Context, ciphertext, aad []byte) ([]byte, uint32, error) {
	pt, v, env, dk, err := b.openEnvelope(ctx, ciphertext, aad)
	if err != nil {
		return nil, 0, err
	}
	clear(pt)
	defer clear(dk)
	e := b.e
	if v >= e.rec.Primary {
		return ciphertext, v, nil // already under the primary (the newest): unchanged, as Rewrap does; never down
	}
	// Every envelope of one data key gets the same new wrapping (within
	// this process's cache), so that clients' data-key caches, keyed by
	// wrapping, keep working after a rewrap of many rows.
	ck := rewrapKey{ref: e.ref, commitment: string(env.Commitment()), from: string(env.Wrapped)}
	r, fresh, _ := b.s.envRewraps.get(ck)
	wrapped, nv := r.wrapped, r.version
	if !fresh || nv != e.rec.Primary {
		if wrapped, nv, err = b.seal("rewrap", dk, envelopeDataKeyAAD); err != nil {
			return nil, 0, err
		}
		b.s.envRewraps.put(ck, rewrapped{wrapped: wrapped, version: nv})
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
