package keystore

import (
	"context"
	"encoding/hex"
	"fmt"

	"github.com/tink-crypto/tink-go/v2/tink"
)

// PepperSize is the size of a pepper tag: an HMAC-SHA256.
const PepperSize = 32

// lockoutSubjectLabel prefixes the subjects whose ids a PASSWORD key
// computes. The pepper is the same HMAC of the password with no label, so
// the id of subject S equals the pepper of the password
// "custos:lockout:S": someone holding both the lockout records and the
// hashes learns the pepper of a user only if that is their password. The
// pepper takes no label of its own because that would change every stored
// hash (formats.md).
const lockoutSubjectLabel = "custos:lockout:"

// Pepper is one version of a PASSWORD key as password hashing
// (keystore/password) uses it: it computes peppers and subject ids under
// the key and never hands out the key itself.
type Pepper struct {
	e      *keyEntry
	v      uint32
	limits PasswordLimits
}

// Pepper returns version v of a PASSWORD key, or its primary version when v
// is 0. A key of another purpose gives ErrWrongPurpose. For a version other
// than the primary the errors are those Decrypt gives for a ciphertext of
// that version: ErrKeyVersionDisabled, ErrKeyVersionDestroyed,
// ErrKeyVersionTooOld, and ErrInvalidCiphertext for a version the key never
// had.
func (s *Service) Pepper(ctx context.Context, ref KeyRef, v uint32) (*Pepper, error) {
	e, err := s.m.key(ctx, ref)
	if err != nil {
		return nil, err
	}
	if e.rec.Purpose != PurposePassword {
		return nil, wrongPurpose("password hashing", e, PurposePassword)
	}
	if v == 0 {
		return &Pepper{e: e, v: e.rec.Primary, limits: s.pwLimits}, nil
	}
	if e, err = s.entryForVersion(ctx, e, v); err != nil {
		return nil, err
	}
	return &Pepper{e: e, v: v, limits: s.pwLimits}, nil
}

// Key names the key.
func (p *Pepper) Key() KeyRef { return p.e.ref }

// Version is the version that peppers.
func (p *Pepper) Version() uint32 { return p.v }

// Primary is the key's primary version: hashes of other versions should be
// replaced.
func (p *Pepper) Primary() uint32 { return p.e.rec.Primary }

// Policy is the key's password policy with the defaults filled in; a stored
// policy out of bounds is ErrIntegrity. It may be above Limits (set before
// they were lowered): new hashes follow Limits().Cap(policy).
func (p *Pepper) Policy() (PasswordPolicy, error) {
	var pol PasswordPolicy
	if p.e.rec.PasswordPolicy != nil {
		pol = *p.e.rec.PasswordPolicy
	}
	pol, err := normalizePasswordPolicy(pol)
	if err != nil {
		return PasswordPolicy{}, fmt.Errorf("%w: stored password policy of %s: %v", ErrIntegrity, p.e.ref, err)
	}
	return pol, nil
}

// Limits are the deployment's caps on password hashing: new hashes are made
// at the key's policy capped by them, and verification takes no hash above
// them beyond what the key's own policy allows.
func (p *Pepper) Limits() PasswordLimits { return p.limits }

// Tag returns the pepper of data: its HMAC-SHA256 under this version, a
// new PepperSize-byte slice the caller clears after use.
func (p *Pepper) Tag(data []byte) ([]byte, error) {
	m, ok := p.e.prim.macs[p.v]
	if !ok {
		return nil, fmt.Errorf("%w: %s version %d has no enabled pepper", ErrIntegrity, p.e.ref, p.v)
	}
	return macTag(m, data)
}

// SubjectID names a lockout subject without revealing it: the hex
// HMAC-SHA256, under the key's primary version, of a label and subject.
// Every replica computes the same id.
func (p *Pepper) SubjectID(subject string) (string, error) {
	tag, err := macTag(p.e.prim.mac, []byte(lockoutSubjectLabel+subject))
	if err != nil {
		return "", err
	}
	defer clear(tag)
	return hex.EncodeToString(tag), nil
}

// macTag computes a Tink HMAC-SHA256 and returns the tag without Tink's
// prefix.
func macTag(m tink.MAC, data []byte) ([]byte, error) {
	out, err := m.ComputeMAC(data)
	if err != nil {
		return nil, fmt.Errorf("pepper: %w", err)
	}
	defer clear(out)
	if len(out) != tinkPrefixSize+PepperSize {
		return nil, fmt.Errorf("%w: pepper has %d bytes", ErrIntegrity, len(out))
	}
	return append([]byte(nil), out[tinkPrefixSize:]...), nil
}

// LockoutStoragePrefix is where the password lockout records of a tenant's
// keys live (keystore/password); shredding the tenant deletes them.
func LockoutStoragePrefix(tenant string) string { return lockoutPrefix + tenant + "/" }

// LockoutStorageKey is the storage key of one subject's lockout record.
func LockoutStorageKey(ref KeyRef, subjectID string) string {
	return LockoutStoragePrefix(ref.Tenant) + ref.Key + "/" + subjectID
}

// lockoutPrefix starts every lockout record's storage key.
const lockoutPrefix = "lockout/"
