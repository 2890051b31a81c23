package server

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/custos-kms/custos/keystore"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// waitingPeriod converts an optional waiting period (validated 1–365 days by
// protovalidate); unset is 0, which the keystore turns into its default.
func waitingPeriod(d *durationpb.Duration) time.Duration {
	if d == nil {
		return 0
	}
	return d.AsDuration()
}

func (s keyService) DeleteTenant(ctx context.Context, req *custosv1.DeleteTenantRequest) (*custosv1.DeleteTenantResponse, error) {
	id := callOf(ctx).tenant
	t, err := s.ks.DeleteTenant(ctx, id, waitingPeriod(req.GetWaitingPeriod()))
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.DeleteTenantResponse{Tenant: tenantToProto(t)}, nil
}

func (s keyService) UndeleteTenant(ctx context.Context, req *custosv1.UndeleteTenantRequest) (*custosv1.UndeleteTenantResponse, error) {
	id := callOf(ctx).tenant
	t, err := s.ks.UndeleteTenant(ctx, id)
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.UndeleteTenantResponse{Tenant: tenantToProto(t)}, nil
}

// UpdateKey applies the fields named in update_mask: rotation_period,
// min_decryption_version, password_policy.
func (s keyService) UpdateKey(ctx context.Context, req *custosv1.UpdateKeyRequest) (*custosv1.UpdateKeyResponse, error) {
	ref := callOf(ctx).key
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 {
		return nil, status.Error(codes.InvalidArgument, "update_mask: name at least one of rotation_period, min_decryption_version, password_policy")
	}
	var u keystore.KeyUpdate
	for _, p := range paths {
		switch p {
		case "rotation_period":
			d := time.Duration(0)
			if rp := req.GetKey().GetRotationPeriod(); rp != nil {
				if err := rp.CheckValid(); err != nil {
					return nil, status.Errorf(codes.InvalidArgument, "key.rotation_period: %v", err)
				}
				d = rp.AsDuration()
			}
			u.RotationPeriod = &d
		case "min_decryption_version":
			v := req.GetKey().GetMinDecryptionVersion()
			u.MinDecryptionVersion = &v
		case "password_policy":
			pp, err := passwordPolicyFromProto(req.GetKey().GetPasswordPolicy())
			if err != nil {
				return nil, status.Error(codes.InvalidArgument, err.Error())
			}
			if pp == nil {
				pp = &keystore.PasswordPolicy{}
			}
			u.PasswordPolicy = pp
		default:
			return nil, status.Errorf(codes.InvalidArgument, "update_mask: path %q is not updatable (rotation_period, min_decryption_version, password_policy)", truncate(p))
		}
	}
	k, err := s.ks.UpdateKey(ctx, ref, u)
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.UpdateKeyResponse{Key: keyToProto(k)}, nil
}

func (s keyService) EnableKeyVersion(ctx context.Context, req *custosv1.EnableKeyVersionRequest) (*custosv1.EnableKeyVersionResponse, error) {
	ref := callOf(ctx).key
	k, err := s.ks.EnableKeyVersion(ctx, ref, req.GetVersion())
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.EnableKeyVersionResponse{Key: keyToProto(k)}, nil
}

func (s keyService) DisableKeyVersion(ctx context.Context, req *custosv1.DisableKeyVersionRequest) (*custosv1.DisableKeyVersionResponse, error) {
	ref := callOf(ctx).key
	k, err := s.ks.DisableKeyVersion(ctx, ref, req.GetVersion())
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.DisableKeyVersionResponse{Key: keyToProto(k)}, nil
}

func (s keyService) DestroyKeyVersion(ctx context.Context, req *custosv1.DestroyKeyVersionRequest) (*custosv1.DestroyKeyVersionResponse, error) {
	ref := callOf(ctx).key
	k, err := s.ks.DestroyKeyVersion(ctx, ref, req.GetVersion(), waitingPeriod(req.GetWaitingPeriod()))
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.DestroyKeyVersionResponse{Key: keyToProto(k)}, nil
}

func (s keyService) RestoreKeyVersion(ctx context.Context, req *custosv1.RestoreKeyVersionRequest) (*custosv1.RestoreKeyVersionResponse, error) {
	ref := callOf(ctx).key
	k, err := s.ks.RestoreKeyVersion(ctx, ref, req.GetVersion())
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.RestoreKeyVersionResponse{Key: keyToProto(k)}, nil
}
