package keystore

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error the keystore returns wraps one of these, so the
// server maps them to gRPC codes in one table. Messages never contain
// plaintext, key material or passwords.
var (
	// ErrInvalidArgument: a malformed id, name, page token or oversized field.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrNotFound: no such tenant, key or key version.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: a tenant or key with that id exists.
	ErrAlreadyExists = errors.New("already exists")
	// ErrInvalidCiphertext: the ciphertext is not authentic under this key and
	// associated data. One generic error for every cause (tampered, truncated,
	// another key's, wrong associated data) so callers learn nothing more.
	ErrInvalidCiphertext = errors.New("ciphertext is not authentic for this key and associated data")
	// ErrTenantDeleted: the tenant is scheduled for deletion.
	ErrTenantDeleted = errors.New("tenant is scheduled for deletion")
	// ErrKeyVersionDisabled: the ciphertext's key version is disabled.
	ErrKeyVersionDisabled = errors.New("key version is disabled")
	// ErrKeyVersionDestroyed: the ciphertext's key version is destroyed or
	// scheduled for destruction.
	ErrKeyVersionDestroyed = errors.New("key version destroyed")
	// ErrKeyVersionTooOld: the ciphertext's version is below the key's
	// minimum decryption version.
	ErrKeyVersionTooOld = errors.New("key version is below the minimum decryption version")
	// ErrWrongPurpose: the key's purpose does not allow the operation.
	ErrWrongPurpose = errors.New("wrong key purpose")
	// ErrResourceExhausted: the password hashing queue is full; retry later.
	ErrResourceExhausted = errors.New("password hashing queue is full")
	// ErrSubjectLocked: too many failed password verifications for this
	// subject; it is locked for the key's lockout duration.
	ErrSubjectLocked = errors.New("subject is locked after too many failed password verifications")
	// ErrUnavailable: the root or the storage cannot be reached; retryable.
	ErrUnavailable = errors.New("unavailable")
	// ErrStorageFull: a write failed because the storage has no space left
	// (disk full). It wraps ErrUnavailable: retryable once space is freed.
	ErrStorageFull = fmt.Errorf("%w: the storage is full (no space left)", ErrUnavailable)
	// ErrAborted: a concurrent change won too many times; retry the call.
	ErrAborted = errors.New("aborted by concurrent changes")
	// ErrIntegrity: stored key material failed authentication (for example a
	// wrapped keyset moved between tenants). Never decrypts; needs an operator.
	ErrIntegrity = errors.New("stored key material failed authentication")
)

// Lifecycle errors (key version states, tenant deletion).
var (
	// ErrPrimaryVersion: the primary version cannot be disabled or
	// destroyed; rotate the key first.
	ErrPrimaryVersion = errors.New("the primary version cannot be disabled or destroyed")
	// ErrWrongState: the tenant or key version is not in a state that allows
	// the operation (for example restoring a version that is not scheduled
	// for destruction, or undeleting an active tenant).
	ErrWrongState = errors.New("not in a state that allows the operation")
)
