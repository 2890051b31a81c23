package keystore

import (
	"context"
	"errors"
	"fmt"

	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/custos-kms/custos/internal/workpool"
	"github.com/custos-kms/custos/keystore/passhash"
)

// Bounds on VerifyPassword and HashPassword inputs. A hash string is at most
// passhash.MaxLen bytes.
const (
	MaxPasswordSize = 4096
	MaxSubjectSize  = 1024
)

// verifyHeadroom bounds how much more work than the key's policy VerifyPassword
// will spend on one hash: bcrypt at most 2 cost steps above the policy, and
// argon2id at most this factor above each of m, t and p. The base is the
// policy or the default, whichever is higher, so lowering a policy a little
// keeps older hashes verifiable while a hostile hash string cannot ask for
// gigabytes of memory or days of CPU.
const (
	verifyHeadroomBcrypt = 2
	verifyHeadroomArgon2 = 4
)

// HashPassword hashes password for the caller to store: HMAC-SHA256 under the
// primary version of a PASSWORD key (the pepper), then the key policy's slow
// hash, bcrypt or argon2id. It returns one self-describing string naming the
// algorithm, its cost and the pepper version (docs/formats.md, "Password
// hashes"). The slow hash runs in the Service's hashing pool; when its queue
// is full HashPassword returns ErrResourceExhausted at once. A key of another
// purpose gives ErrWrongPurpose; an empty or oversized password
// ErrInvalidArgument.
func (s *Service) HashPassword(ctx context.Context, ref KeyRef, password []byte) (string, error) {
	const op = "hash password"
	if err := checkPasswordInput(password, ""); err != nil {
		return "", err
	}
	e, err := s.passwordKey(ctx, ref, op)
	if err != nil {
		return "", err
	}
	policy, err := passwordPolicyOf(e)
	if err != nil {
		return "", err
	}
	v := e.rec.Primary
	pep, err := pepperOf(e, v, password)
	if err != nil {
		return "", err
	}
	defer clear(pep)
	tag := pep[tinkPrefixSize:]
	var h passhash.Hash
	var herr error
	err = s.runHashing(ctx, op, func() {
		switch policy.Algorithm {
		case PasswordArgon2id:
			h, herr = passhash.NewArgon2id(v, tag, passhash.Argon2Params{
				MemoryKiB:   policy.Argon2MemoryKiB,
				Iterations:  policy.Argon2Iterations,
				Parallelism: uint8(policy.Argon2Parallelism),
			}, s.rand)
		default:
			h, herr = passhash.NewBcrypt(v, tag, policy.BcryptCost)
		}
	})
	if err != nil {
		return "", err
	}
	if herr != nil {
		return "", fmt.Errorf("%s with %s: %w", op, ref, herr)
	}
	out, err := h.Encode()
	if err != nil {
		return "", fmt.Errorf("%s with %s: %w", op, ref, err)
	}
	return out, nil
}

// VerifyPassword reports whether password matches hash, a string HashPassword
// made with the same key, and whether the caller should replace the stored
// hash by HashPassword's output for this password (needsRehash, set only on a
// match): when the hash's pepper version is no longer the key's primary, its
// algorithm is not the policy's, or its cost parameters are below the policy.
// The comparison is constant time. A hash made with another key or tenant does
// not match; that is not an error.
//
// Errors: a malformed hash, or one whose cost exceeds what the key verifies
// (its policy, or the default if higher, plus 2 bcrypt cost steps or 4× each
// argon2id parameter), is ErrInvalidArgument naming hash, as is a hash naming
// a pepper version the key never had. A disabled, destroyed or too-old pepper
// version gives the errors Decrypt gives (ErrKeyVersionDisabled,
// ErrKeyVersionDestroyed, ErrKeyVersionTooOld). A full hashing queue gives
// ErrResourceExhausted.
//
// When the key's policy enables lockout and subject is not empty, a locked
// subject gets ErrSubjectLocked without any hashing, every failed
// verification counts toward the lock, and a match resets the count. The
// state lives in storage, shared by every replica (docs/passwords.md); when
// it cannot be read or updated before hashing, VerifyPassword fails
// (ErrUnavailable) rather than verify without the limit.
func (s *Service) VerifyPassword(ctx context.Context, ref KeyRef, password []byte, hash, subject string) (match, needsRehash bool, err error) {
	const op = "verify password"
	if err := checkPasswordInput(password, subject); err != nil {
		return false, false, err
	}
	e, err := s.passwordKey(ctx, ref, op)
	if err != nil {
		return false, false, err
	}
	h, err := passhash.Parse(hash)
	if err != nil {
		return false, false, fmt.Errorf("%w: hash: %w", ErrInvalidArgument, err)
	}
	v := h.PepperVersion
	e, err = s.entryForVersion(ctx, e, v)
	if errors.Is(err, ErrInvalidCiphertext) {
		return false, false, fmt.Errorf("%w: hash names an unknown pepper version of %s", ErrInvalidArgument, ref)
	}
	if err != nil {
		return false, false, err
	}
	policy, err := passwordPolicyOf(e)
	if err != nil {
		return false, false, err
	}
	if err := checkVerifyCost(h, policy); err != nil {
		return false, false, err
	}

	var lock *lockout
	if policy.LockoutMaxFailures > 0 && subject != "" {
		if lock, err = s.newLockout(e, policy, subject); err != nil {
			return false, false, err
		}
		if err := lock.admit(ctx); err != nil {
			return false, false, err
		}
	}
	match, err = s.verifyPeppered(ctx, op, e, h, password)
	if err != nil {
		if lock != nil {
			lock.abandon(ctx)
		}
		return false, false, err
	}
	if lock != nil {
		lock.finish(ctx, match)
	}
	if !match {
		return false, false, nil
	}
	return true, rehashNeeded(h, e.rec.Primary, policy), nil
}

// verifyPeppered peppers password with the version h names and checks it
// against h on the hashing pool.
func (s *Service) verifyPeppered(ctx context.Context, op string, e *keyEntry, h passhash.Hash, password []byte) (bool, error) {
	pep, err := pepperOf(e, h.PepperVersion, password)
	if err != nil {
		return false, err
	}
	defer clear(pep)
	var ok bool
	var verr error
	if err := s.runHashing(ctx, op, func() { ok, verr = h.Verify(pep[tinkPrefixSize:]) }); err != nil {
		return false, err
	}
	if verr != nil {
		return false, fmt.Errorf("%w: hash: %w", ErrInvalidArgument, verr)
	}
	return ok, nil
}

// rehashNeeded reports whether a matching hash should be replaced: an old
// pepper version, another algorithm, or cost parameters below the policy.
func rehashNeeded(h passhash.Hash, primary uint32, p PasswordPolicy) bool {
	if h.PepperVersion != primary {
		return true
	}
	switch h.Algorithm {
	case passhash.Bcrypt:
		return p.Algorithm != PasswordBcrypt || h.BcryptCost < p.BcryptCost
	case passhash.Argon2id:
		return p.Algorithm != PasswordArgon2id ||
			h.Argon2.MemoryKiB < p.Argon2MemoryKiB ||
			h.Argon2.Iterations < p.Argon2Iterations ||
			uint32(h.Argon2.Parallelism) < p.Argon2Parallelism
	}
	return true
}

// checkVerifyCost refuses a hash that would cost more to verify than the
// key's policy allows with headroom (see verifyHeadroomBcrypt).
func checkVerifyCost(h passhash.Hash, p PasswordPolicy) error {
	switch h.Algorithm {
	case passhash.Bcrypt:
		base := DefaultBcryptCost
		if p.Algorithm == PasswordBcrypt {
			base = max(base, p.BcryptCost)
		}
		if h.BcryptCost > base+verifyHeadroomBcrypt {
			return fmt.Errorf("%w: hash: bcrypt cost %d is above the %d this key verifies", ErrInvalidArgument, h.BcryptCost, base+verifyHeadroomBcrypt)
		}
	case passhash.Argon2id:
		m, t, par := uint64(DefaultArgon2MemoryKiB), uint64(DefaultArgon2Iterations), uint64(DefaultArgon2Parallelism)
		if p.Algorithm == PasswordArgon2id {
			m, t, par = max(m, uint64(p.Argon2MemoryKiB)), max(t, uint64(p.Argon2Iterations)), max(par, uint64(p.Argon2Parallelism))
		}
		if uint64(h.Argon2.MemoryKiB) > verifyHeadroomArgon2*m ||
			uint64(h.Argon2.Iterations) > verifyHeadroomArgon2*t ||
			uint64(h.Argon2.Parallelism) > verifyHeadroomArgon2*par {
			return fmt.Errorf("%w: hash: argon2id parameters are above the m=%d,t=%d,p=%d this key verifies",
				ErrInvalidArgument, verifyHeadroomArgon2*m, verifyHeadroomArgon2*t, verifyHeadroomArgon2*par)
		}
	}
	return nil
}

// checkPasswordInput bounds the caller's password and subject.
func checkPasswordInput(password []byte, subject string) error {
	switch {
	case len(password) == 0:
		return fmt.Errorf("%w: password must not be empty", ErrInvalidArgument)
	case len(password) > MaxPasswordSize:
		return fmt.Errorf("%w: password is longer than %d bytes", ErrInvalidArgument, MaxPasswordSize)
	case len(subject) > MaxSubjectSize:
		return fmt.Errorf("%w: subject is longer than %d bytes", ErrInvalidArgument, MaxSubjectSize)
	}
	return nil
}

// passwordKey returns the key's cached entry if it is a PASSWORD key.
func (s *Service) passwordKey(ctx context.Context, ref KeyRef, op string) (*keyEntry, error) {
	e, err := s.m.key(ctx, ref)
	if err != nil {
		return nil, err
	}
	if e.rec.Purpose != PurposePassword {
		return nil, wrongPurpose(op, e, PurposePassword)
	}
	return e, nil
}

// passwordPolicyOf returns the key's policy with defaults filled in.
func passwordPolicyOf(e *keyEntry) (PasswordPolicy, error) {
	var p PasswordPolicy
	if e.rec.PasswordPolicy != nil {
		p = *e.rec.PasswordPolicy
	}
	p, err := normalizePasswordPolicy(p)
	if err != nil {
		return PasswordPolicy{}, fmt.Errorf("%w: stored password policy of %s: %v", ErrIntegrity, e.ref, err)
	}
	return p, nil
}

// pepperOf returns the HMAC-SHA256 of data under version v of a PASSWORD key,
// as Tink writes it: the 5-byte prefix, then the 32-byte tag. The caller
// reads the tag at [tinkPrefixSize:] and clears the whole slice.
func pepperOf(e *keyEntry, v uint32, data []byte) ([]byte, error) {
	m, ok := e.prim.macs[v]
	if !ok {
		return nil, fmt.Errorf("%w: %s version %d has no enabled pepper", ErrIntegrity, e.ref, v)
	}
	return macTag(m, data)
}

// macTag computes a Tink HMAC-SHA256 and checks its size.
func macTag(m tink.MAC, data []byte) ([]byte, error) {
	out, err := m.ComputeMAC(data)
	if err != nil {
		return nil, fmt.Errorf("pepper: %w", err)
	}
	if len(out) != tinkPrefixSize+passhash.PepperSize {
		clear(out)
		return nil, fmt.Errorf("%w: pepper has %d bytes", ErrIntegrity, len(out))
	}
	return out, nil
}

// runHashing runs f on the hashing pool, mapping the pool's refusals to keystore
// errors.
func (s *Service) runHashing(ctx context.Context, op string, f func()) error {
	err := s.hashes.Do(ctx, f)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, workpool.ErrFull):
		return fmt.Errorf("%s: %w", op, ErrResourceExhausted)
	case errors.Is(err, workpool.ErrClosed):
		return fmt.Errorf("%s: %w: hashing pool is closed", op, ErrUnavailable)
	}
	return fmt.Errorf("%s: %w", op, err)
}
