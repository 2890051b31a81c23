package server

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/keystore"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server/policy"
)

// keyService implements custosv1.KeyServiceServer. Embedding the Unsafe
// interface makes a new RPC in the proto fail to compile until implemented.
type keyService struct {
	*Server
	custosv1.UnsafeKeyServiceServer
}

var _ custosv1.KeyServiceServer = keyService{}

// The request path (methods.go) has parsed the names and authorized the
// caller before a handler runs; handlers read the result with callOf.

func (s keyService) CreateTenant(ctx context.Context, req *custosv1.CreateTenantRequest) (*custosv1.CreateTenantResponse, error) {
	t, err := s.ks.CreateTenant(ctx, callOf(ctx).tenant)
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.CreateTenantResponse{Tenant: tenantToProto(t)}, nil
}

func (s keyService) GetTenant(ctx context.Context, req *custosv1.GetTenantRequest) (*custosv1.GetTenantResponse, error) {
	id := callOf(ctx).tenant
	t, err := s.ks.GetTenant(ctx, id)
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.GetTenantResponse{Tenant: tenantToProto(t)}, nil
}

// maxListScans bounds how many storage pages one ListTenants call reads while
// skipping tenants the caller may not see.
const maxListScans = 10

func (s keyService) ListTenants(ctx context.Context, req *custosv1.ListTenantsRequest) (*custosv1.ListTenantsResponse, error) {
	c := callOf(ctx)
	id, pol := c.identity, c.policy
	size := int(req.GetPageSize())
	if size <= 0 {
		size = keystore.DefaultPageSize
	}
	resp := &custosv1.ListTenantsResponse{}
	// The token names the last tenant scanned, which the caller may not
	// see: it goes out sealed.
	token, err := s.ks.OpenPageToken(ctx, req.GetPageToken())
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	for range maxListScans {
		page, next, err := s.ks.ListTenants(ctx, size-len(resp.Tenants), token)
		if err != nil {
			return nil, s.toError(ctx, err)
		}
		for _, t := range page {
			if pol.Allowed(id, t.ID, policy.TenantsAdmin) {
				resp.Tenants = append(resp.Tenants, tenantToProto(t))
			}
		}
		token = next
		if next == "" || len(resp.Tenants) >= size {
			break
		}
	}
	if resp.NextPageToken, err = s.ks.SealPageToken(ctx, token); err != nil {
		return nil, s.toError(ctx, err)
	}
	return resp, nil
}

func (s keyService) CreateKey(ctx context.Context, req *custosv1.CreateKeyRequest) (*custosv1.CreateKeyResponse, error) {
	tenant := callOf(ctx).tenant
	purpose, ok := purposeFromProto(req.GetKey().GetPurpose())
	if !ok {
		return nil, status.Errorf(codes.InvalidArgument, "key.purpose: %v is not supported", req.GetKey().GetPurpose())
	}
	pp, err := passwordPolicyFromProto(req.GetKey().GetPasswordPolicy())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	spec := keystore.KeySpec{Purpose: purpose, PasswordPolicy: pp}
	if rp := req.GetKey().GetRotationPeriod(); rp != nil {
		if err := rp.CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "key.rotation_period: %v", err)
		}
		spec.RotationPeriod = rp.AsDuration()
	}
	k, err := s.ks.CreateKey(ctx, keystore.KeyRef{Tenant: tenant, Key: req.GetKeyId()}, spec)
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.CreateKeyResponse{Key: keyToProto(k)}, nil
}

func (s keyService) GetKey(ctx context.Context, req *custosv1.GetKeyRequest) (*custosv1.GetKeyResponse, error) {
	ref := callOf(ctx).key
	k, err := s.ks.GetKey(ctx, ref)
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.GetKeyResponse{Key: keyToProto(k)}, nil
}

func (s keyService) ListKeys(ctx context.Context, req *custosv1.ListKeysRequest) (*custosv1.ListKeysResponse, error) {
	tenant := callOf(ctx).tenant
	keys, next, err := s.ks.ListKeys(ctx, tenant, int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	resp := &custosv1.ListKeysResponse{NextPageToken: next, Keys: make([]*custosv1.Key, len(keys))}
	for i, k := range keys {
		resp.Keys[i] = keyToProto(k)
	}
	return resp, nil
}

func (s keyService) RotateKey(ctx context.Context, req *custosv1.RotateKeyRequest) (*custosv1.RotateKeyResponse, error) {
	ref := callOf(ctx).key
	k, err := s.ks.RotateKey(ctx, ref)
	if err != nil {
		return nil, s.toError(ctx, err)
	}
	return &custosv1.RotateKeyResponse{Key: keyToProto(k)}, nil
}
