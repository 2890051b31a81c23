package client

// Conversions between the Go types of this package and the custos.v1
// protobuf messages. Every conversion is total: a nil message becomes the
// zero value, a zero time or duration becomes an unset field.

import (
	"math"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// tenantFromProto converts a tenant; ID is derived from the name.
func tenantFromProto(t *custosv1.Tenant) Tenant {
	return Tenant{
		Name:       t.GetName(),
		ID:         strings.TrimPrefix(t.GetName(), "tenants/"),
		State:      TenantState(t.GetState()),
		CreateTime: timeFromProto(t.GetCreateTime()),
		DeleteTime: timeFromProto(t.GetDeleteTime()),
	}
}

// tenantToProto converts a tenant; ID is not sent, it is part of Name.
func tenantToProto(t Tenant) *custosv1.Tenant {
	return &custosv1.Tenant{
		Name:       t.Name,
		State:      custosv1.TenantState(t.State),
		CreateTime: timeToProto(t.CreateTime),
		DeleteTime: timeToProto(t.DeleteTime),
	}
}

// tenantsFromProto converts a page of tenants.
func tenantsFromProto(ts []*custosv1.Tenant) []Tenant {
	out := make([]Tenant, len(ts))
	for i, t := range ts {
		out[i] = tenantFromProto(t)
	}
	return out
}

// keyFromProto converts a key with its versions; no versions is a nil slice.
func keyFromProto(k *custosv1.Key) Key {
	var versions []KeyVersion
	if pv := k.GetVersions(); len(pv) > 0 {
		versions = make([]KeyVersion, len(pv))
		for i, v := range pv {
			versions[i] = keyVersionFromProto(v)
		}
	}
	return Key{
		Name:                 k.GetName(),
		Purpose:              Purpose(k.GetPurpose()),
		PrimaryVersion:       k.GetPrimaryVersion(),
		Versions:             versions,
		RotationPeriod:       durationFromProto(k.GetRotationPeriod()),
		NextRotationTime:     timeFromProto(k.GetNextRotationTime()),
		MinDecryptionVersion: k.GetMinDecryptionVersion(),
		CreateTime:           timeFromProto(k.GetCreateTime()),
		PasswordPolicy:       passwordPolicyFromProto(k.GetPasswordPolicy()),
	}
}

// keyToProto converts a key with its versions.
func keyToProto(k Key) *custosv1.Key {
	var versions []*custosv1.KeyVersion
	if len(k.Versions) > 0 {
		versions = make([]*custosv1.KeyVersion, len(k.Versions))
		for i, v := range k.Versions {
			versions[i] = keyVersionToProto(v)
		}
	}
	return &custosv1.Key{
		Name:                 k.Name,
		Purpose:              custosv1.KeyPurpose(k.Purpose),
		PrimaryVersion:       k.PrimaryVersion,
		Versions:             versions,
		RotationPeriod:       durationToProto(k.RotationPeriod),
		NextRotationTime:     timeToProto(k.NextRotationTime),
		MinDecryptionVersion: k.MinDecryptionVersion,
		CreateTime:           timeToProto(k.CreateTime),
		PasswordPolicy:       passwordPolicyToProto(k.PasswordPolicy),
	}
}

// keysFromProto converts a page of keys.
func keysFromProto(ks []*custosv1.Key) []Key {
	out := make([]Key, len(ks))
	for i, k := range ks {
		out[i] = keyFromProto(k)
	}
	return out
}

// keyVersionFromProto converts one key version.
func keyVersionFromProto(v *custosv1.KeyVersion) KeyVersion {
	return KeyVersion{
		Version:      v.GetVersion(),
		State:        KeyVersionState(v.GetState()),
		CreateTime:   timeFromProto(v.GetCreateTime()),
		DestroyTime:  timeFromProto(v.GetDestroyTime()),
		EncryptCount: v.GetEncryptCount(),
	}
}

// keyVersionToProto converts one key version.
func keyVersionToProto(v KeyVersion) *custosv1.KeyVersion {
	return &custosv1.KeyVersion{
		Version:      v.Version,
		State:        custosv1.KeyVersionState(v.State),
		CreateTime:   timeToProto(v.CreateTime),
		DestroyTime:  timeToProto(v.DestroyTime),
		EncryptCount: v.EncryptCount,
	}
}

// keySpecToProto converts the spec of a key to create: only the fields a
// caller may set are filled.
func keySpecToProto(s KeySpec) *custosv1.Key {
	return &custosv1.Key{
		Purpose:        custosv1.KeyPurpose(s.Purpose),
		RotationPeriod: durationToProto(s.RotationPeriod),
		PasswordPolicy: passwordPolicyToProto(s.PasswordPolicy),
	}
}

// keyUpdateToProto converts an update of the key name: the key carries the
// fields u sets, and the mask names them, in a fixed order. A field set to
// its zero value is sent unset, which the server reads as "off" or
// "defaults".
func keyUpdateToProto(name string, u KeyUpdate) (*custosv1.Key, *fieldmaskpb.FieldMask) {
	k := &custosv1.Key{Name: name}
	mask := &fieldmaskpb.FieldMask{}
	if u.RotationPeriod != nil {
		k.RotationPeriod = durationToProto(*u.RotationPeriod)
		mask.Paths = append(mask.Paths, "rotation_period")
	}
	if u.MinDecryptionVersion != nil {
		k.MinDecryptionVersion = *u.MinDecryptionVersion
		mask.Paths = append(mask.Paths, "min_decryption_version")
	}
	if u.PasswordPolicy != nil {
		k.PasswordPolicy = passwordPolicyToProto(u.PasswordPolicy)
		mask.Paths = append(mask.Paths, "password_policy")
	}
	return k, mask
}

// passwordPolicyFromProto converts a policy; unset is nil.
func passwordPolicyFromProto(p *custosv1.PasswordPolicy) *PasswordPolicy {
	if p == nil {
		return nil
	}
	return &PasswordPolicy{
		Algorithm:          PasswordAlgorithm(p.GetAlgorithm()),
		BcryptCost:         int(p.GetBcryptCost()),
		Argon2MemoryKiB:    p.GetArgon2MemoryKib(),
		Argon2Iterations:   p.GetArgon2Iterations(),
		Argon2Parallelism:  p.GetArgon2Parallelism(),
		LockoutMaxFailures: p.GetLockoutMaxFailures(),
		LockoutWindow:      durationFromProto(p.GetLockoutWindow()),
		LockoutDuration:    durationFromProto(p.GetLockoutDuration()),
	}
}

// passwordPolicyToProto converts a policy; nil is unset. A BcryptCost
// outside int32 is sent as -1, which the server refuses as out of range,
// rather than wrapped around to a cost it might accept.
func passwordPolicyToProto(p *PasswordPolicy) *custosv1.PasswordPolicy {
	if p == nil {
		return nil
	}
	cost := int32(-1)
	if p.BcryptCost >= math.MinInt32 && p.BcryptCost <= math.MaxInt32 {
		cost = int32(p.BcryptCost)
	}
	return &custosv1.PasswordPolicy{
		Algorithm:          custosv1.PasswordAlgorithm(p.Algorithm),
		BcryptCost:         cost,
		Argon2MemoryKib:    p.Argon2MemoryKiB,
		Argon2Iterations:   p.Argon2Iterations,
		Argon2Parallelism:  p.Argon2Parallelism,
		LockoutMaxFailures: p.LockoutMaxFailures,
		LockoutWindow:      durationToProto(p.LockoutWindow),
		LockoutDuration:    durationToProto(p.LockoutDuration),
	}
}

// encryptItemsToProto converts the items of an EncryptBatch request.
func encryptItemsToProto(items []EncryptItem) []*custosv1.EncryptBatchRequest_Item {
	out := make([]*custosv1.EncryptBatchRequest_Item, len(items))
	for i, it := range items {
		out[i] = &custosv1.EncryptBatchRequest_Item{Plaintext: it.Plaintext, AssociatedData: it.AssociatedData}
	}
	return out
}

// decryptItemsToProto converts the items of a DecryptBatch request.
func decryptItemsToProto(items []DecryptItem) []*custosv1.DecryptBatchRequest_Item {
	out := make([]*custosv1.DecryptBatchRequest_Item, len(items))
	for i, it := range items {
		out[i] = &custosv1.DecryptBatchRequest_Item{Ciphertext: it.Ciphertext, AssociatedData: it.AssociatedData}
	}
	return out
}

// rewrapItemsToProto converts the items of a RewrapBatch request.
func rewrapItemsToProto(items []RewrapItem) []*custosv1.RewrapBatchRequest_Item {
	out := make([]*custosv1.RewrapBatchRequest_Item, len(items))
	for i, it := range items {
		out[i] = &custosv1.RewrapBatchRequest_Item{Ciphertext: it.Ciphertext, AssociatedData: it.AssociatedData}
	}
	return out
}

// rewrapResultFromProto converts one batch result; a failed item's Err is
// the *Error made from its status.
func rewrapResultFromProto(r *custosv1.RewrapBatchResponse_Result) RewrapResult {
	if err := itemError(r.GetStatus()); err != nil {
		return RewrapResult{Err: err}
	}
	if len(r.GetCiphertext()) == 0 {
		return RewrapResult{Err: answeredEmpty("ciphertext")}
	}
	return RewrapResult{Ciphertext: r.GetCiphertext(), Version: r.GetKeyVersion()}
}

// blindIndexFromProto converts the entries of a BlindIndex response, in
// the server's order (primary first); none is a nil slice.
func blindIndexFromProto(es []*custosv1.BlindIndexResponse_Entry) []BlindIndexEntry {
	if len(es) == 0 {
		return nil
	}
	out := make([]BlindIndexEntry, len(es))
	for i, e := range es {
		out[i] = BlindIndexEntry{Version: e.GetKeyVersion(), MAC: e.GetMac()}
	}
	return out
}

// encryptResultFromProto converts one batch result; a failed item's Err is
// the *Error made from its status.
func encryptResultFromProto(r *custosv1.EncryptBatchResponse_Result) EncryptResult {
	if err := itemError(r.GetStatus()); err != nil {
		return EncryptResult{Err: err}
	}
	if len(r.GetCiphertext()) == 0 {
		return EncryptResult{Err: answeredEmpty("ciphertext")}
	}
	return EncryptResult{Ciphertext: r.GetCiphertext(), Version: r.GetKeyVersion()}
}

// decryptResultFromProto converts one batch result; a failed item's Err is
// the *Error made from its status.
func decryptResultFromProto(r *custosv1.DecryptBatchResponse_Result) DecryptResult {
	if err := itemError(r.GetStatus()); err != nil {
		return DecryptResult{Err: err}
	}
	return DecryptResult{Plaintext: r.GetPlaintext(), Version: r.GetKeyVersion()}
}

// answeredEmpty is the error of a batch item the service answered OK with
// no ciphertext: a misbehaving server or proxy, never a ciphertext of no
// bytes. (A plaintext is not checked: an envelope an earlier client sealed
// may hold an empty one.)
func answeredEmpty(what string) error {
	return &Error{Code: codes.Internal, Message: "the service answered the item OK without its " + what}
}

// timeFromProto returns the zero time for an unset timestamp, else the
// instant in UTC.
func timeFromProto(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}

// timeToProto returns nil (unset) for the zero time.
func timeToProto(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// durationFromProto returns zero for an unset duration.
func durationFromProto(d *durationpb.Duration) time.Duration {
	if d == nil {
		return 0
	}
	return d.AsDuration()
}

// durationToProto returns nil (unset) for a zero duration.
func durationToProto(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}
