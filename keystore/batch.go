package keystore

import (
	"context"
	"errors"

	"github.com/custos-kms/custos/envelope"
)

// A Batch is one key looked up once for the items of one batch call:
// items pay no cache lookup of their own, and the encryptions the batch
// makes are added to the key's usage count once, by Done. A Batch serves
// one call on one goroutine; it is not safe for concurrent use.
//
// Items are encrypted under the key as it was when the batch began (a
// rotation that lands meanwhile applies to the next call, as it would to a
// call that began a moment earlier); an item of a version newer than the
// batch knows reloads the key, as a single call would.
type Batch struct {
	s *Service
	e *keyEntry
	// maxV is e's newest version, found once: a key rotated hourly for
	// years has tens of thousands of versions to look through.
	maxV      uint32
	encrypted uint64
	// reloadErr is the outage or refusal a reload for an unknown version
	// met: the batch's other items get it too instead of reloading again
	// each.
	reloadErr error
}

// Batch looks up the key of ref for a batch call of op ("encrypt",
// "decrypt", "rewrap") and checks that it encrypts (ENCRYPT or
// ENCRYPT_DETERMINISTIC), so that what concerns the key (unknown, tenant
// deleted, wrong purpose, root or storage unreachable) fails the call as a
// whole and each item's own failure stays in that item. Call Done when the
// batch is over.
func (s *Service) Batch(ctx context.Context, ref KeyRef, op string) (*Batch, error) {
	e, err := s.m.key(ctx, ref)
	if err != nil {
		return nil, err
	}
	if e.rec.Purpose != PurposeEncrypt && e.rec.Purpose != PurposeEncryptDeterministic {
		return nil, wrongPurpose(op, e, PurposeEncrypt, PurposeEncryptDeterministic)
	}
	return &Batch{s: s, e: e, maxV: e.rec.maxVersion()}, nil
}

// Encrypt is Service.Encrypt for one item of the batch.
func (b *Batch) Encrypt(plaintext, aad []byte) ([]byte, uint32, error) {
	if isDataKeyAAD(aad) {
		return nil, 0, errReservedAAD
	}
	return b.seal("encrypt", plaintext, aad)
}

// seal encrypts under the batch's primary version and counts it for Done.
func (b *Batch) seal(op string, plaintext, aad []byte) ([]byte, uint32, error) {
	ct, err := b.s.seal(b.e, op, plaintext, aad)
	if err != nil {
		return nil, 0, err
	}
	b.encrypted++
	return ct, b.e.rec.Primary, nil
}

// Decrypt is Service.Decrypt for one item of the batch.
func (b *Batch) Decrypt(ctx context.Context, ciphertext, aad []byte) ([]byte, uint32, error) {
	if isDataKeyAAD(aad) {
		return nil, 0, ErrInvalidCiphertext
	}
	if envelope.IsEnvelope(ciphertext) {
		return b.decryptEnvelope(ctx, ciphertext, aad)
	}
	return b.decrypt(ctx, "decrypt", ciphertext, aad)
}

// decrypt is decryptWith under the batch's key. A ciphertext of a version
// newer than the batch knows (another replica rotated since it began)
// reloads the key, at most once a second per key as for single calls, and
// the batch keeps what the reload found for its other items.
func (b *Batch) decrypt(ctx context.Context, op string, ciphertext, aad []byte) ([]byte, uint32, error) {
	if v, ok := versionOf(ciphertext); ok && v > b.maxV {
		if b.reloadErr != nil && v <= b.maxV+reloadWindow {
			return nil, 0, b.reloadErr
		}
		e, err := b.s.entryKnowing(ctx, b.e, v)
		if err != nil && !errors.Is(err, ErrInvalidCiphertext) && ctx.Err() == nil {
			// An outage, or a refusal (the tenant or the key gone): the
			// batch's other items of new versions get it too, rather than
			// each a reload (and each refusal a walk of the whole cache).
			b.reloadErr = err
		}
		// A reload goes on serving the batch even when it did not know v
		// (a forged item): it may know versions newer than the batch's.
		if e != nil && e != b.e {
			b.Done() // counted under the primary they were made with
			b.e, b.maxV = e, e.rec.maxVersion()
		}
		if err != nil {
			return nil, 0, err
		}
	}
	return b.s.decryptWith(ctx, b.e, op, ciphertext, aad)
}

// Rewrap is Service.Rewrap for one item of the batch.
func (b *Batch) Rewrap(ctx context.Context, ciphertext, aad []byte) ([]byte, uint32, error) {
	// Associated data reserved for data keys is no field's (Encrypt
	// refuses it), so only a data key can be under it: one GenerateDataKey
	// made with it (the client's envelopes wrap theirs with
	// envelope.DataKeyContext).
	reserved := isDataKeyAAD(aad)
	if envelope.IsEnvelope(ciphertext) {
		if reserved {
			return nil, 0, ErrInvalidCiphertext
		}
		return b.rewrapEnvelope(ctx, ciphertext, aad)
	}
	inner := aad
	var pt []byte
	var v uint32
	err := ErrInvalidCiphertext
	if !reserved {
		pt, v, err = b.decrypt(ctx, "rewrap", ciphertext, aad)
	}
	if errors.Is(err, ErrInvalidCiphertext) && b.e.rec.Purpose == PurposeEncrypt {
		inner = dataKeyAAD(aad)
		pt, v, err = b.decrypt(ctx, "rewrap", ciphertext, inner)
	}
	if err != nil {
		return nil, 0, err
	}
	defer clear(pt)
	if v >= b.e.rec.Primary {
		// Current (the primary is always the newest version): the same
		// bytes, never rewrapped down to an older one.
		return ciphertext, v, nil
	}
	return b.seal("rewrap", pt, inner)
}

// Done adds the batch's encryptions to the key's usage count (the input of
// usage-based rotation). Calling it again adds only what came since.
func (b *Batch) Done() {
	if b.encrypted > 0 {
		b.s.life.add(usageKey{ref: b.e.ref, version: b.e.rec.Primary}, b.encrypted)
		b.encrypted = 0
	}
}
