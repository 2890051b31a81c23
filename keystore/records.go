package keystore

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Storage keys. Tenant and key ids cannot contain '/', so prefixes are unambiguous.
const (
	tenantPrefix = "tenants/"
	keyPrefix    = "keys/"
)

// leaseStorageKey holds the scheduler lease (package storage/lease).
const leaseStorageKey = "scheduler/lease"

func tenantStorageKey(tenant string) string { return tenantPrefix + tenant }
func keyStoragePrefix(tenant string) string { return keyPrefix + tenant + "/" }
func keyStorageKey(r KeyRef) string         { return keyStoragePrefix(r.Tenant) + r.Key }

// recordFormat is the version of the JSON records below.
const recordFormat = 1

// tenantRecord is what storage holds for a tenant.
type tenantRecord struct {
	Format     int         `json:"format"`
	State      TenantState `json:"state"`
	CreateTime time.Time   `json:"create_time"`
	DeleteTime time.Time   `json:"delete_time,omitzero"`
	// ShredTime is set when the scheduler began crypto-shredding the tenant
	// (past DeleteTime); from then on it can no longer be undeleted.
	ShredTime time.Time `json:"shred_time,omitzero"`
	// WrappedKEK is the tenant KEK wrapped by the root with AAD tenantKEKAAD.
	WrappedKEK []byte `json:"wrapped_kek"`
}

// keyRecord is what storage holds for a key.
type keyRecord struct {
	Format               int             `json:"format"`
	Purpose              Purpose         `json:"purpose"`
	CreateTime           time.Time       `json:"create_time"`
	Primary              uint32          `json:"primary"`
	Versions             []versionRecord `json:"versions"`
	RotationPeriod       time.Duration   `json:"rotation_period,omitzero"`
	NextRotationTime     time.Time       `json:"next_rotation_time,omitzero"`
	MinDecryptionVersion uint32          `json:"min_decryption_version,omitzero"`
	PasswordPolicy       *PasswordPolicy `json:"password_policy,omitempty"`
	// Keyset is the Tink keyset encrypted under the tenant KEK with AAD
	// keysetAAD (a serialized Tink EncryptedKeyset).
	Keyset []byte `json:"keyset"`
	// Binding is what Keyset's associated data binds: keysetBindsName or
	// keysetBindsPurpose.
	Binding int `json:"binding,omitzero"`
}

type versionRecord struct {
	Version      uint32       `json:"version"`
	State        VersionState `json:"state"`
	CreateTime   time.Time    `json:"create_time"`
	DestroyTime  time.Time    `json:"destroy_time,omitzero"`
	EncryptCount uint64       `json:"encrypt_count,omitzero"`
}

// version finds version v. Versions are numbered from 1 in the order they
// were added, so v is at index v-1 in every record this package writes; the
// scan is for any other.
func (r *keyRecord) version(v uint32) (*versionRecord, bool) {
	if i := uint64(v) - 1; i < uint64(len(r.Versions)) && r.Versions[i].Version == v {
		return &r.Versions[i], true
	}
	for i := range r.Versions {
		if r.Versions[i].Version == v {
			return &r.Versions[i], true
		}
	}
	return nil, false
}

func (r *keyRecord) maxVersion() uint32 {
	var m uint32
	for _, v := range r.Versions {
		m = max(m, v.Version)
	}
	return m
}

func encodeRecord(v any) ([]byte, error) { return json.Marshal(v) }

func decodeTenant(b []byte) (*tenantRecord, error) {
	var r tenantRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: decode tenant record: %v", ErrIntegrity, err)
	}
	if r.Format != recordFormat {
		return nil, fmt.Errorf("%w: tenant record format %d not supported", ErrIntegrity, r.Format)
	}
	return &r, nil
}

func decodeKey(b []byte) (*keyRecord, error) {
	var r keyRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: decode key record: %v", ErrIntegrity, err)
	}
	if r.Format != recordFormat {
		return nil, fmt.Errorf("%w: key record format %d not supported", ErrIntegrity, r.Format)
	}
	return &r, nil
}

func (r *tenantRecord) toTenant(id string) Tenant {
	return Tenant{ID: id, State: r.State, CreateTime: r.CreateTime, DeleteTime: r.DeleteTime}
}

func (r *keyRecord) toKey(ref KeyRef) Key {
	k := Key{
		Tenant:               ref.Tenant,
		ID:                   ref.Key,
		Purpose:              r.Purpose,
		PrimaryVersion:       r.Primary,
		RotationPeriod:       r.RotationPeriod,
		NextRotationTime:     r.NextRotationTime,
		MinDecryptionVersion: r.MinDecryptionVersion,
		CreateTime:           r.CreateTime,
		Versions:             make([]KeyVersion, len(r.Versions)),
	}
	if r.PasswordPolicy != nil {
		pp := *r.PasswordPolicy
		k.PasswordPolicy = &pp
	}
	for i, v := range r.Versions {
		k.Versions[i] = KeyVersion(v)
	}
	return k
}

// tenantKEKAAD binds a wrapped KEK to its tenant.
func tenantKEKAAD(tenant string) []byte { return []byte("custos:tenant:" + tenant) }

// What a sealed keyset's associated data binds (keyRecord.Binding).
const (
	// keysetBindsName: the tenant and key (records sealed before the
	// purpose was bound; re-sealed with it at their next keyset change).
	keysetBindsName = 0
	// keysetBindsPurpose: the tenant, the key and its purpose, which
	// never changes: a record relabelled in the store (a PASSWORD key as
	// MAC: the same HMAC keysets) fails authentication.
	keysetBindsPurpose = 1
)

// keysetAAD binds a wrapped keyset to its tenant and key, and with
// rec.Binding keysetBindsPurpose to the key's purpose.
func keysetAAD(r KeyRef, rec *keyRecord) ([]byte, error) {
	name := "custos:key:" + r.Tenant + "/" + r.Key
	switch rec.Binding {
	case keysetBindsName:
		return []byte(name), nil
	case keysetBindsPurpose:
		return []byte(name + "\x00purpose:" + strconv.Itoa(int(rec.Purpose))), nil
	}
	return nil, fmt.Errorf("%w: keyset of %s: unknown binding %d", ErrIntegrity, r, rec.Binding)
}
