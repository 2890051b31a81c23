package server

import (
	"fmt"
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

// purposes pairs every keystore purpose with its proto enum.
var purposes = []struct {
	ks keystore.Purpose
	pb custosv1.KeyPurpose
}{
	{keystore.PurposeEncrypt, custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT},
	{keystore.PurposeEncryptDeterministic, custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT_DETERMINISTIC},
	{keystore.PurposeMAC, custosv1.KeyPurpose_KEY_PURPOSE_MAC},
	{keystore.PurposePassword, custosv1.KeyPurpose_KEY_PURPOSE_PASSWORD},
}

func purposeToProto(p keystore.Purpose) custosv1.KeyPurpose {
	for _, x := range purposes {
		if x.ks == p {
			return x.pb
		}
	}
	return custosv1.KeyPurpose_KEY_PURPOSE_UNSPECIFIED
}

func purposeFromProto(p custosv1.KeyPurpose) (keystore.Purpose, bool) {
	for _, x := range purposes {
		if x.pb == p {
			return x.ks, true
		}
	}
	return 0, false
}

func durationOrNil(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

func passwordPolicyToProto(p *keystore.PasswordPolicy) *custosv1.PasswordPolicy {
	if p == nil {
		return nil
	}
	alg := custosv1.PasswordAlgorithm_PASSWORD_ALGORITHM_BCRYPT
	if p.Algorithm == keystore.PasswordArgon2id {
		alg = custosv1.PasswordAlgorithm_PASSWORD_ALGORITHM_ARGON2ID
	}
	return &custosv1.PasswordPolicy{
		Algorithm:          alg,
		BcryptCost:         int32(p.BcryptCost),
		Argon2MemoryKib:    p.Argon2MemoryKiB,
		Argon2Iterations:   p.Argon2Iterations,
		Argon2Parallelism:  p.Argon2Parallelism,
		LockoutMaxFailures: p.LockoutMaxFailures,
		LockoutWindow:      durationOrNil(p.LockoutWindow),
		LockoutDuration:    durationOrNil(p.LockoutDuration),
	}
}

// passwordPolicyFromProto converts a policy; the keystore fills defaults and
// checks bounds.
func passwordPolicyFromProto(p *custosv1.PasswordPolicy) (*keystore.PasswordPolicy, error) {
	if p == nil {
		return nil, nil
	}
	out := &keystore.PasswordPolicy{
		BcryptCost:         int(p.GetBcryptCost()),
		Argon2MemoryKiB:    p.GetArgon2MemoryKib(),
		Argon2Iterations:   p.GetArgon2Iterations(),
		Argon2Parallelism:  p.GetArgon2Parallelism(),
		LockoutMaxFailures: p.GetLockoutMaxFailures(),
	}
	switch p.GetAlgorithm() {
	case custosv1.PasswordAlgorithm_PASSWORD_ALGORITHM_UNSPECIFIED, custosv1.PasswordAlgorithm_PASSWORD_ALGORITHM_BCRYPT:
		out.Algorithm = keystore.PasswordBcrypt
	case custosv1.PasswordAlgorithm_PASSWORD_ALGORITHM_ARGON2ID:
		out.Algorithm = keystore.PasswordArgon2id
	default:
		return nil, fmt.Errorf("key.password_policy.algorithm: %v is not supported", p.GetAlgorithm())
	}
	for _, d := range []struct {
		field string
		in    *durationpb.Duration
		out   *time.Duration
	}{{"lockout_window", p.GetLockoutWindow(), &out.LockoutWindow}, {"lockout_duration", p.GetLockoutDuration(), &out.LockoutDuration}} {
		if d.in == nil {
			continue
		}
		if err := d.in.CheckValid(); err != nil || d.in.AsDuration() < 0 {
			return nil, fmt.Errorf("key.password_policy.%s: must be a valid, non-negative duration", d.field)
		}
		*d.out = d.in.AsDuration()
	}
	return out, nil
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
	out.PasswordPolicy = passwordPolicyToProto(k.PasswordPolicy)
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
