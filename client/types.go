package client

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
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
	// PasswordPolicy is how a [PurposePassword] key hashes, with the
	// server's defaults filled in; nil for other purposes.
	PasswordPolicy *PasswordPolicy
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
	// PasswordPolicy sets how a [PurposePassword] key hashes; nil means
	// the server's defaults (bcrypt, cost 12, no lockout). Only PASSWORD
	// keys take one.
	PasswordPolicy *PasswordPolicy
}

// KeyUpdate says which settings of a key [Client.UpdateKey] changes. A nil
// field is left as it is; at least one must be set.
type KeyUpdate struct {
	// RotationPeriod sets how often the key rotates automatically; a
	// pointer to zero turns automatic rotation off.
	RotationPeriod *time.Duration
	// MinDecryptionVersion makes versions below it refuse to decrypt (and
	// to verify MACs, and to appear in blind indexes); a pointer to zero
	// removes the minimum. It may not exceed the primary version.
	MinDecryptionVersion *uint32
	// PasswordPolicy replaces the whole policy of a [PurposePassword] key;
	// its zero fields take the server's defaults. Hashes made under the old
	// policy still verify, and [Client.VerifyPassword] reports that they
	// need a rehash when their cost is below the new one.
	PasswordPolicy *PasswordPolicy
}

// PasswordPolicy is how a [PurposePassword] key hashes passwords: the slow
// hash applied after the HMAC-SHA256 pepper, its cost, and an optional
// brute-force lockout per subject. A zero field means the server's default.
type PasswordPolicy struct {
	// Algorithm is the slow hash; PasswordAlgorithmUnspecified means
	// bcrypt.
	Algorithm PasswordAlgorithm
	// BcryptCost is the bcrypt cost, 10 to 31; zero means 12.
	BcryptCost int
	// Argon2MemoryKiB is argon2id's memory in KiB, at least 8192; zero
	// means 19456 (OWASP's recommendation).
	Argon2MemoryKiB uint32
	// Argon2Iterations is argon2id's number of passes, at most 64; zero
	// means 2.
	Argon2Iterations uint32
	// Argon2Parallelism is argon2id's number of lanes, at most 64; zero
	// means 1.
	Argon2Parallelism uint32
	// LockoutMaxFailures locks a subject after this many failed
	// verifications within LockoutWindow (see [Password.VerifySubject]);
	// zero turns lockout off.
	LockoutMaxFailures uint32
	// LockoutWindow is the window failures are counted in, at least a
	// second; zero means 15 minutes.
	LockoutWindow time.Duration
	// LockoutDuration is how long a locked subject stays locked, at least
	// a second; zero means 15 minutes.
	LockoutDuration time.Duration
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

// RewrapItem is one ciphertext of [Client.RewrapBatch].
type RewrapItem struct {
	// Ciphertext is a ciphertext made by any enabled version of the key.
	Ciphertext []byte
	// AssociatedData is the associated data it was made with; the new
	// ciphertext is bound to the same bytes.
	AssociatedData []byte
}

// RewrapResult is the outcome of one [RewrapItem].
type RewrapResult struct {
	// Ciphertext is the ciphertext under the primary version, when Err is
	// nil: the item's own bytes if the primary had already made it.
	Ciphertext []byte
	// Version is the primary version, when Err is nil.
	Version uint32
	// Err is why this item failed, or nil. It wraps an [*Error]; test it
	// with errors.Is and the sentinels.
	Err error
}

// DataKey is a fresh 256-bit data key from [Client.GenerateDataKey], for
// encrypting data locally (envelope encryption): use Plaintext as an
// AES-256 key, store Wrapped next to the data, and forget Plaintext as soon
// as possible. [Client.DecryptDataKey] turns Wrapped back into Plaintext.
//
// Its String, GoString, Format, LogValue (log/slog) and MarshalJSON
// methods never write Plaintext, so logging a DataKey by mistake, as text or as JSON, does
// not leak it. (fmt cannot call methods on a struct's unexported field: a
// DataKey held in one prints whole with %v. Keep it in a variable, or
// print Wrapped and Version only.)
type DataKey struct {
	// Plaintext is the 32-byte key. Keep it in memory only.
	Plaintext []byte
	// Wrapped is Plaintext encrypted under the key's primary version and
	// bound to the associated data given to GenerateDataKey; it is safe to
	// store.
	Wrapped []byte
	// Version is the key version that wrapped it.
	Version uint32
}

// String describes the data key without its plaintext.
func (k DataKey) String() string {
	return "DataKey{Plaintext: " + k.redacted() + ", Wrapped: " +
		strconv.Itoa(len(k.Wrapped)) + " bytes, Version: " + strconv.FormatUint(uint64(k.Version), 10) + "}"
}

// GoString is String, so %#v does not print the plaintext either.
func (k DataKey) GoString() string { return "client." + k.String() }

// Format writes String for every verb (GoString for %#v): fmt calls
// String only for %v, %s, %q, %x and %X, and would print the plaintext's
// bytes for %d.
func (k DataKey) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		_, _ = io.WriteString(f, k.GoString())
		return
	}
	_, _ = io.WriteString(f, k.String())
}

// LogValue is the data key without its plaintext, for log/slog.
func (k DataKey) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("Plaintext", k.redacted()),
		slog.Int("Wrapped", len(k.Wrapped)),
		slog.Uint64("Version", uint64(k.Version)),
	)
}

// MarshalJSON writes the data key without its plaintext (loggers that
// write JSON, such as zap's Any, zerolog's Interface and slog's JSON
// handler, use it): Plaintext as "[REDACTED n bytes]", Wrapped in base64.
func (k DataKey) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Plaintext string
		Wrapped   []byte
		Version   uint32
	}{k.redacted(), k.Wrapped, k.Version})
}

// UnmarshalJSON reads what MarshalJSON writes: Wrapped and Version, and
// no Plaintext (the JSON holds none; [Client.DecryptDataKey] recovers it).
func (k *DataKey) UnmarshalJSON(b []byte) error {
	var v struct {
		Wrapped []byte
		Version uint32
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*k = DataKey{Wrapped: v.Wrapped, Version: v.Version}
	return nil
}

func (k DataKey) redacted() string {
	return "[REDACTED " + strconv.Itoa(len(k.Plaintext)) + " bytes]"
}

// BlindIndexEntry is the MAC of a value under one key version; see
// [Client.BlindIndex].
type BlindIndexEntry struct {
	// Version is the key version.
	Version uint32
	// MAC is the value's MAC under Version, exactly as [Client.ComputeMAC]
	// returns it under that version: a 5-byte prefix naming the version,
	// then 32 bytes of HMAC-SHA256.
	MAC []byte
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
	// PurposeEncrypt: AES-256-GCM randomized field encryption, and data
	// keys for envelope encryption.
	PurposeEncrypt Purpose = 1
	// PurposeEncryptDeterministic: AES-256-SIV deterministic encryption.
	// The same plaintext and associated data always give the same
	// ciphertext, so a column can be searched for equality; that also tells
	// whoever reads the column which rows hold equal values.
	PurposeEncryptDeterministic Purpose = 2
	// PurposeMAC: HMAC-SHA256, for [Client.ComputeMAC], [Client.VerifyMAC]
	// and [Client.BlindIndex].
	PurposeMAC Purpose = 3
	// PurposePassword: an HMAC-SHA256 pepper for [Client.HashPassword] and
	// [Client.VerifyPassword]; see [PasswordPolicy].
	PurposePassword Purpose = 4
)

// String returns the purpose's API name without prefix, e.g. "ENCRYPT".
func (p Purpose) String() string {
	return enumName(custosv1.KeyPurpose_name, "KEY_PURPOSE_", "Purpose", int32(p))
}

// PasswordAlgorithm is the slow hash of a [PasswordPolicy]. Its values are
// the custos.v1.PasswordAlgorithm numbers.
type PasswordAlgorithm int32

// Password algorithms.
const (
	// PasswordAlgorithmUnspecified is the zero value; a policy with it
	// uses bcrypt.
	PasswordAlgorithmUnspecified PasswordAlgorithm = 0
	// PasswordBcrypt: bcrypt over the pepper's output, so passwords longer
	// than bcrypt's 72-byte limit are not truncated.
	PasswordBcrypt PasswordAlgorithm = 1
	// PasswordArgon2id: argon2id over the pepper's output.
	PasswordArgon2id PasswordAlgorithm = 2
)

// String returns the algorithm's API name without prefix, e.g. "BCRYPT".
func (a PasswordAlgorithm) String() string {
	return enumName(custosv1.PasswordAlgorithm_name, "PASSWORD_ALGORITHM_", "PasswordAlgorithm", int32(a))
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
	return enumName(custosv1.TenantState_name, "TENANT_STATE_", "TenantState", int32(s))
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
	// DestroyTime and refuses to decrypt meanwhile; [Client.RestoreKeyVersion]
	// cancels until then.
	VersionDestroyScheduled KeyVersionState = 3
	// VersionDestroyed: the version's key material is gone.
	VersionDestroyed KeyVersionState = 4
)

// String returns the state's API name without prefix, e.g. "ENABLED".
func (s KeyVersionState) String() string {
	return enumName(custosv1.KeyVersionState_name, "KEY_VERSION_STATE_", "KeyVersionState", int32(s))
}

// enumName is the API name of an enum value without its prefix (e.g.
// "ENCRYPT" for KEY_PURPOSE_ENCRYPT), taken from the generated proto names;
// a value the protos do not know prints as Type(n).
func enumName(names map[int32]string, prefix, typ string, v int32) string {
	if n, ok := names[v]; ok {
		return strings.TrimPrefix(n, prefix)
	}
	return typ + "(" + strconv.Itoa(int(v)) + ")"
}
