package keystore

import (
	"fmt"
	"strings"
	"time"
)

// IDPattern is the syntax of tenant and key ids.
const IDPattern = `^[a-z0-9][a-z0-9-]{0,62}$`

// ValidID reports whether s is a valid tenant or key id: it matches
// ^[a-z0-9][a-z0-9-]{0,62}$ (checked by hand: names are parsed on every
// call, and a regular expression cost a few percent of a server's CPU).
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// TenantState is a tenant's lifecycle state.
type TenantState int

// Tenant states.
const (
	TenantActive TenantState = iota + 1
	TenantDeleteScheduled
)

// String returns the state's name.
func (s TenantState) String() string {
	switch s {
	case TenantActive:
		return "ACTIVE"
	case TenantDeleteScheduled:
		return "DELETE_SCHEDULED"
	}
	return fmt.Sprintf("TenantState(%d)", int(s))
}

// Purpose says what a key does; it is fixed at creation.
type Purpose int

// Key purposes.
const (
	// PurposeEncrypt is AES-256-GCM randomized encryption (Tink AEAD).
	PurposeEncrypt Purpose = iota + 1
	// PurposeEncryptDeterministic is AES-256-SIV (Tink DAEAD): equal inputs
	// give equal ciphertexts, for equality lookups.
	PurposeEncryptDeterministic
	// PurposeMAC is HMAC-SHA256: MACs and blind indexes.
	PurposeMAC
	// PurposePassword is an HMAC-SHA256 pepper for password hashing.
	PurposePassword
)

// String returns the purpose's name.
func (p Purpose) String() string {
	switch p {
	case PurposeEncrypt:
		return "ENCRYPT"
	case PurposeEncryptDeterministic:
		return "ENCRYPT_DETERMINISTIC"
	case PurposeMAC:
		return "MAC"
	case PurposePassword:
		return "PASSWORD"
	}
	return fmt.Sprintf("Purpose(%d)", int(p))
}

// VersionState is a key version's state. Transitions (docs/lifecycle.md):
// ENABLED ⇄ DISABLED; ENABLED or DISABLED → DESTROY_SCHEDULED (reversible to
// DISABLED until DestroyTime) → DESTROYED (final; material erased).
type VersionState int

// Key version states.
const (
	VersionEnabled VersionState = iota + 1
	VersionDisabled
	VersionDestroyScheduled
	VersionDestroyed
)

// String returns the state's name.
func (s VersionState) String() string {
	switch s {
	case VersionEnabled:
		return "ENABLED"
	case VersionDisabled:
		return "DISABLED"
	case VersionDestroyScheduled:
		return "DESTROY_SCHEDULED"
	case VersionDestroyed:
		return "DESTROYED"
	}
	return fmt.Sprintf("VersionState(%d)", int(s))
}

// Tenant is a tenant's metadata. It holds no key material.
type Tenant struct {
	ID         string
	State      TenantState
	CreateTime time.Time
	// DeleteTime is set while the tenant is scheduled for deletion.
	DeleteTime time.Time
}

// Key is a key's metadata. It holds no key material.
type Key struct {
	Tenant         string
	ID             string
	Purpose        Purpose
	PrimaryVersion uint32
	// Versions in ascending order.
	Versions             []KeyVersion
	RotationPeriod       time.Duration
	NextRotationTime     time.Time
	MinDecryptionVersion uint32
	CreateTime           time.Time
	// PasswordPolicy is set for PASSWORD keys only.
	PasswordPolicy *PasswordPolicy
}

// KeyVersion is one version's metadata.
type KeyVersion struct {
	Version    uint32
	State      VersionState
	CreateTime time.Time
	// DestroyTime is when a DESTROY_SCHEDULED (or DESTROYED) version's
	// material is (or was due to be) erased; zero otherwise.
	DestroyTime time.Time
	// EncryptCount is how many times the version encrypted (Encrypt,
	// GenerateDataKey and Rewrap re-encryptions), as flushed to storage by
	// every replica: it may trail the truth by one flush interval.
	EncryptCount uint64
}

// KeySpec is what CreateKey needs.
type KeySpec struct {
	Purpose Purpose
	// RotationPeriod, when non-zero, is how often the key rotates.
	RotationPeriod time.Duration
	// PasswordPolicy applies to PASSWORD keys (nil takes the defaults) and
	// must be nil for other purposes.
	PasswordPolicy *PasswordPolicy
}

// KeyUpdate is what UpdateKey changes; nil fields stay as they are.
type KeyUpdate struct {
	// RotationPeriod: 0 turns automatic rotation off.
	RotationPeriod *time.Duration
	// MinDecryptionVersion: 0 removes the minimum.
	MinDecryptionVersion *uint32
	// PasswordPolicy: PASSWORD keys only.
	PasswordPolicy *PasswordPolicy
}

// KeyRef names one key of one tenant.
type KeyRef struct {
	Tenant string
	Key    string
}

// String returns the key's resource name, tenants/{tenant}/keys/{key}.
func (r KeyRef) String() string { return "tenants/" + r.Tenant + "/keys/" + r.Key }

// ParseTenantName parses tenants/{tenant}.
func ParseTenantName(name string) (string, error) {
	id, ok := strings.CutPrefix(name, "tenants/")
	if !ok || !ValidID(id) {
		return "", fmt.Errorf("%w: name is not tenants/{tenant}", ErrInvalidArgument)
	}
	return id, nil
}

// ParseKeyName parses tenants/{tenant}/keys/{key}. Its error does not
// repeat the name: a caller that swapped its arguments sent a plaintext
// there, which the log line and the status would then carry.
func ParseKeyName(name string) (KeyRef, error) {
	rest, ok := strings.CutPrefix(name, "tenants/")
	if ok {
		tenant, key, found := strings.Cut(rest, "/keys/")
		if found && ValidID(tenant) && ValidID(key) {
			return KeyRef{Tenant: tenant, Key: key}, nil
		}
	}
	return KeyRef{}, fmt.Errorf("%w: name is not tenants/{tenant}/keys/{key}", ErrInvalidArgument)
}
