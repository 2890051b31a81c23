package custosv1

// ErrorDomain is the google.rpc.ErrorInfo domain of Custos errors.
const ErrorDomain = "custos.dev"

// Reasons a Custos server gives in the google.rpc.ErrorInfo detail (domain
// ErrorDomain) of a failed call or batch item, so that failures sharing a gRPC
// code can be told apart without parsing messages. This hand-written file is
// the one definition the server and the Go client share; callers in other
// languages match the same strings, published as the names of the values of
// the ErrorReason enum (errors.proto).
const (
	// ReasonCiphertextNotAuthentic (INVALID_ARGUMENT): tampered or truncated
	// ciphertext, another key's, or the wrong associated data.
	ReasonCiphertextNotAuthentic = "CIPHERTEXT_NOT_AUTHENTIC"
	// ReasonTenantDeleted (FAILED_PRECONDITION): the tenant is scheduled for deletion.
	ReasonTenantDeleted = "TENANT_DELETED"
	// ReasonKeyVersionDisabled (FAILED_PRECONDITION): the version is disabled.
	ReasonKeyVersionDisabled = "KEY_VERSION_DISABLED"
	// ReasonKeyVersionDestroyed (FAILED_PRECONDITION): the version is destroyed
	// or scheduled for destruction.
	ReasonKeyVersionDestroyed = "KEY_VERSION_DESTROYED"
	// ReasonKeyVersionTooOld (FAILED_PRECONDITION): the version is below the
	// key's minimum decryption version.
	ReasonKeyVersionTooOld = "KEY_VERSION_TOO_OLD"
	// ReasonWrongPurpose (FAILED_PRECONDITION): the key's purpose does not
	// allow the operation.
	ReasonWrongPurpose = "WRONG_PURPOSE"
	// ReasonPrimaryVersion (FAILED_PRECONDITION): the primary version cannot
	// be disabled or destroyed.
	ReasonPrimaryVersion = "PRIMARY_VERSION"
	// ReasonWrongState (FAILED_PRECONDITION): the tenant or version is not in
	// a state that allows the operation.
	ReasonWrongState = "WRONG_STATE"
	// ReasonHashQueueFull (RESOURCE_EXHAUSTED): the password-hashing queue is full.
	ReasonHashQueueFull = "HASH_QUEUE_FULL"
	// ReasonSubjectLocked (RESOURCE_EXHAUSTED): too many failed password
	// verifications for the subject.
	ReasonSubjectLocked = "SUBJECT_LOCKED"
	// ReasonRateLimited (RESOURCE_EXHAUSTED): the caller's rate limit is
	// spent; a google.rpc.RetryInfo detail says when to retry, and the
	// ErrorInfo metadata "rule" names the policy rule.
	ReasonRateLimited = "RATE_LIMITED"
	// ReasonAuditUnavailable (UNAVAILABLE): the call's audit event could
	// be made durable neither in the store nor in the local spool, so the
	// call was not acknowledged (the audit trail fails closed).
	ReasonAuditUnavailable = "AUDIT_UNAVAILABLE"
	// ReasonNotFound (NOT_FOUND): the tenant, key or version does not exist.
	ReasonNotFound = "NOT_FOUND"
	// ReasonAlreadyExists (ALREADY_EXISTS): the tenant or key exists.
	ReasonAlreadyExists = "ALREADY_EXISTS"
	// ReasonInvalidArgument (INVALID_ARGUMENT): a malformed or out-of-range
	// field.
	ReasonInvalidArgument = "INVALID_ARGUMENT"
	// ReasonDependencyUnavailable (UNAVAILABLE): a root key provider or the
	// storage is unavailable.
	ReasonDependencyUnavailable = "DEPENDENCY_UNAVAILABLE"
	// ReasonConflict (ABORTED): concurrent changes kept conflicting.
	ReasonConflict = "CONFLICT"
	// ReasonStorageFull (UNAVAILABLE): the storage has no space left (disk
	// full); writes fail until an operator frees space. Retry later.
	ReasonStorageFull = "STORAGE_FULL"
	// ReasonInternal (INTERNAL): an internal error.
	ReasonInternal = "INTERNAL"
)
