package client

import (
	"strconv"
	"time"
)

// TenantName returns the resource name of a tenant: "tenants/{tenant}".
func TenantName(tenant string) string { return "tenants/" + tenant }

// KeyName returns the resource name of a tenant's key:
// "tenants/{tenant}/keys/{key}".
func KeyName(tenant, key string) string { return "tenants/" + tenant + "/keys/" + key }

// Tenant owns keys; its keys are wrapped by its own key-encryption key.
type Tenant struct {
	// Name is the resource name, "tenants/{tenant}".
	Name string
	// ID is the tenant's id, the last segment of Name.
	ID string
	// State is the lifecycle state.
	State TenantState
	// CreateTime is when the tenant was created.
	CreateTime time.Time
	// DeleteTime is when a tenant scheduled for deletion will be
	// crypto-shredded; zero unless State is TenantDeleteScheduled.
	DeleteTime time.Time
}

// Key is a named, versioned key of one purpose.
type Key struct {
	// Name is the resource name, "tenants/{tenant}/keys/{key}".
	Name string
	// Purpose says what the key does; it is fixed at creation.
	Purpose Purpose
	// PrimaryVersion is the version new ciphertexts use.
	PrimaryVersion uint32
	// Versions holds every version, in ascending order.
	Versions []KeyVersion
	// RotationPeriod is how often the key rotates automatically; zero
	// means never.
	RotationPeriod time.Duration
	// NextRotationTime is when the key next rotates automatically; zero
	// without a rotation period.
	NextRotationTime time.Time
	// MinDecryptionVersion: versions below it refuse to decrypt; zero means
	// no minimum.
	MinDecryptionVersion uint32
	// CreateTime is when the key was created.
	CreateTime time.Time
}

// KeyVersion is one version of a key. It never holds key material.
type KeyVersion struct {
	// Version is the version number: 1, 2, 3…
	Version uint32
	// State is the version's state.
	State KeyVersionState
	// CreateTime is when the version was created.
	CreateTime time.Time
	// DestroyTime is when a version scheduled for destruction will be
	// destroyed, or was; zero otherwise.
	DestroyTime time.Time
	// EncryptCount is how many times the version encrypted (approximate
	// across server replicas).
	EncryptCount uint64
}

// KeySpec describes a key to create.
type KeySpec struct {
	// Purpose is required.
	Purpose Purpose
	// RotationPeriod makes the key rotate automatically; zero means never.
	RotationPeriod time.Duration
}

// ListOptions selects a page of a list call.
type ListOptions struct {
	// PageSize is the most items to return; zero means the server's
	// default (100). The server allows at most 1000.
	PageSize int
	// PageToken is the next-page token of the previous call, or empty for
	// the first page.
	PageToken string
}

// EncryptItem is one field of [Client.EncryptBatch].
type EncryptItem struct {
	// Plaintext is the field to encrypt: 1 byte to 1 MiB.
	Plaintext []byte
	// AssociatedData is bound to this item's ciphertext; see
	// [Client.Encrypt].
	AssociatedData []byte
}

// EncryptResult is the outcome of one [EncryptItem].
type EncryptResult struct {
	// Ciphertext is the encrypted field, when Err is nil.
	Ciphertext []byte
	// Version is the key version that encrypted, when Err is nil.
	Version uint32
	// Err is why this item failed, or nil. It wraps an [*Error]; test it
	// with errors.Is and the sentinels.
	Err error
}

// DecryptItem is one field of [Client.DecryptBatch].
type DecryptItem struct {
	// Ciphertext is a ciphertext from Encrypt or EncryptBatch.
	Ciphertext []byte
	// AssociatedData is the associated data it was encrypted with.
	AssociatedData []byte
}

// DecryptResult is the outcome of one [DecryptItem].
type DecryptResult struct {
	// Plaintext is the decrypted field, when Err is nil.
	Plaintext []byte
	// Version is the key version that had encrypted it, when Err is nil.
	Version uint32
	// Err is why this item failed, or nil. It wraps an [*Error]; test it
	// with errors.Is and the sentinels.
	Err error
}

// Purpose says what a key does. Its values are the custos.v1.KeyPurpose
// numbers, so a purpose added to the API after this client was built is
// kept as is and prints as "Purpose(n)".
type Purpose int32

// Key purposes.
const (
	// PurposeUnspecified is the zero value; no key has it.
	PurposeUnspecified Purpose = 0
	// PurposeEncrypt: AES-256-GCM randomized field encryption.
	PurposeEncrypt Purpose = 1
)

// String returns the purpose's API name without prefix, e.g. "ENCRYPT".
func (p Purpose) String() string {
	switch p {
	case PurposeUnspecified:
		return "UNSPECIFIED"
	case PurposeEncrypt:
		return "ENCRYPT"
	}
	return "Purpose(" + strconv.Itoa(int(p)) + ")"
}

// TenantState is the lifecycle state of a tenant. Its values are the
// custos.v1.TenantState numbers.
type TenantState int32

// Tenant states.
const (
	// TenantStateUnspecified is the zero value; no tenant has it.
	TenantStateUnspecified TenantState = 0
	// TenantActive: the tenant is usable.
	TenantActive TenantState = 1
	// TenantDeleteScheduled: the tenant will be crypto-shredded at its
	// DeleteTime; every operation on it fails with [ErrTenantDeleted] until
	// it is undeleted.
	TenantDeleteScheduled TenantState = 2
)

// String returns the state's API name without prefix, e.g. "ACTIVE".
func (s TenantState) String() string {
	switch s {
	case TenantStateUnspecified:
		return "UNSPECIFIED"
	case TenantActive:
		return "ACTIVE"
	case TenantDeleteScheduled:
		return "DELETE_SCHEDULED"
	}
	return "TenantState(" + strconv.Itoa(int(s)) + ")"
}

// KeyVersionState is the state of one key version. Its values are the
// custos.v1.KeyVersionState numbers.
type KeyVersionState int32

// Key version states.
const (
	// VersionStateUnspecified is the zero value; no version has it.
	VersionStateUnspecified KeyVersionState = 0
	// VersionEnabled: the version encrypts (if primary) and decrypts.
	VersionEnabled KeyVersionState = 1
	// VersionDisabled: the version refuses to decrypt; reversible.
	VersionDisabled KeyVersionState = 2
	// VersionDestroyScheduled: the version will be destroyed at its
	// DestroyTime; reversible until then.
	VersionDestroyScheduled KeyVersionState = 3
	// VersionDestroyed: the version's key material is gone.
	VersionDestroyed KeyVersionState = 4
)

// String returns the state's API name without prefix, e.g. "ENABLED".
func (s KeyVersionState) String() string {
	switch s {
	case VersionStateUnspecified:
		return "UNSPECIFIED"
	case VersionEnabled:
		return "ENABLED"
	case VersionDisabled:
		return "DISABLED"
	case VersionDestroyScheduled:
		return "DESTROY_SCHEDULED"
	case VersionDestroyed:
		return "DESTROYED"
	}
	return "KeyVersionState(" + strconv.Itoa(int(s)) + ")"
}
