package server

import (
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/custos-kms/custos/keystore"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// Conversions between keystore types and custosv1 messages; protobuf stays here.

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func tenantToProto(t keystore.Tenant) *custosv1.Tenant {
	state := custosv1.TenantState_TENANT_STATE_UNSPECIFIED
	switch t.State {
	case keystore.TenantActive:
		state = custosv1.TenantState_TENANT_STATE_ACTIVE
	case keystore.TenantDeleteScheduled:
		state = custosv1.TenantState_TENANT_STATE_DELETE_SCHEDULED
	}
	return &custosv1.Tenant{
		Name:       "tenants/" + t.ID,
		State:      state,
		CreateTime: timestamp(t.CreateTime),
		DeleteTime: timestamp(t.DeleteTime),
	}
}

func purposeToProto(p keystore.Purpose) custosv1.KeyPurpose {
	switch p {
	case keystore.PurposeEncrypt:
		return custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT
	}
	return custosv1.KeyPurpose_KEY_PURPOSE_UNSPECIFIED
}

func purposeFromProto(p custosv1.KeyPurpose) (keystore.Purpose, bool) {
	switch p {
	case custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT:
		return keystore.PurposeEncrypt, true
	}
	return 0, false
}

func versionStateToProto(s keystore.VersionState) custosv1.KeyVersionState {
	switch s {
	case keystore.VersionEnabled:
		return custosv1.KeyVersionState_KEY_VERSION_STATE_ENABLED
	case keystore.VersionDisabled:
		return custosv1.KeyVersionState_KEY_VERSION_STATE_DISABLED
	case keystore.VersionDestroyScheduled:
		return custosv1.KeyVersionState_KEY_VERSION_STATE_DESTROY_SCHEDULED
	case keystore.VersionDestroyed:
		return custosv1.KeyVersionState_KEY_VERSION_STATE_DESTROYED
	}
	return custosv1.KeyVersionState_KEY_VERSION_STATE_UNSPECIFIED
}

func keyToProto(k keystore.Key) *custosv1.Key {
	out := &custosv1.Key{
		Name:                 keystore.KeyRef{Tenant: k.Tenant, Key: k.ID}.String(),
		Purpose:              purposeToProto(k.Purpose),
		PrimaryVersion:       k.PrimaryVersion,
		NextRotationTime:     timestamp(k.NextRotationTime),
		MinDecryptionVersion: k.MinDecryptionVersion,
		CreateTime:           timestamp(k.CreateTime),
		Versions:             make([]*custosv1.KeyVersion, len(k.Versions)),
	}
	if k.RotationPeriod > 0 {
		out.RotationPeriod = durationpb.New(k.RotationPeriod)
	}
	for i, v := range k.Versions {
		out.Versions[i] = &custosv1.KeyVersion{
			Version:      v.Version,
			State:        versionStateToProto(v.State),
			CreateTime:   timestamp(v.CreateTime),
			DestroyTime:  timestamp(v.DestroyTime),
			EncryptCount: v.EncryptCount,
		}
	}
	return out
}
