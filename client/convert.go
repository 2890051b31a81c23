package client

// Conversions between the Go types of this package and the custos.v1
// protobuf messages. Every conversion is total: a nil message becomes the
// zero value, a zero time or duration becomes an unset field.

import (
	"strings"
	"time"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
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

// encryptResultFromProto converts one batch result; a failed item's Err is
// the *Error made from its status.
func encryptResultFromProto(r *custosv1.EncryptBatchResponse_Result) EncryptResult {
	if err := itemError(r.GetStatus()); err != nil {
		return EncryptResult{Err: err}
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
