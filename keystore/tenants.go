package keystore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/custos-kms/custos/keystore/storage"
)

// CreateTenant creates a tenant with a fresh KEK wrapped by the root.
// It returns ErrAlreadyExists if the id is taken.
func (s *Service) CreateTenant(ctx context.Context, id string) (Tenant, error) {
	if !ValidID(id) {
		return Tenant{}, fmt.Errorf("%w: tenant_id must match %s", ErrInvalidArgument, IDPattern)
	}
	raw, err := s.newKEK()
	if err != nil {
		return Tenant{}, fmt.Errorf("create tenant: generate KEK: %w", err)
	}
	defer clear(raw)
	kek, err := newKEKAEAD(raw)
	if err != nil {
		return Tenant{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, loadTimeout) // as a load's unwrap, whatever the caller's deadline
	wrapped, err := s.root.Wrap(wctx, raw, tenantKEKAAD(id))
	cancel()
	if err != nil {
		return Tenant{}, rootErr("create tenant: wrap KEK", err)
	}
	rec := &tenantRecord{
		Format:     recordFormat,
		State:      TenantActive,
		CreateTime: s.now().UTC(),
		WrappedKEK: wrapped,
	}
	b, err := encodeRecord(rec)
	if err != nil {
		return Tenant{}, err
	}
	if _, err := s.store.Put(ctx, tenantStorageKey(id), b, 0); err != nil {
		if errors.Is(err, storage.ErrConflict) {
			return Tenant{}, fmt.Errorf("tenant %q: %w", id, ErrAlreadyExists)
		}
		return Tenant{}, storageErr("create tenant", err)
	}
	s.m.keks.put(id, &kekEntry{aead: kek, created: rec.CreateTime})
	return rec.toTenant(id), nil
}

// GetTenant returns a tenant, or ErrNotFound.
func (s *Service) GetTenant(ctx context.Context, id string) (Tenant, error) {
	if !ValidID(id) {
		return Tenant{}, fmt.Errorf("%w: tenant id is malformed (want %s)", ErrInvalidArgument, IDPattern)
	}
	rec, _, err := s.readTenant(ctx, id)
	if err != nil {
		return Tenant{}, err
	}
	return rec.toTenant(id), nil
}

// ListTenants returns up to size tenants in id order after the page token,
// and the token of the next page ("" on the last page).
func (s *Service) ListTenants(ctx context.Context, size int, token string) ([]Tenant, string, error) {
	size, err := pageSize(size)
	if err != nil {
		return nil, "", err
	}
	after, err := decodePageToken(token)
	if err != nil {
		return nil, "", err
	}
	if after != "" {
		after = tenantStorageKey(after)
	}
	recs, err := s.store.List(ctx, tenantPrefix, after, size+1)
	if err != nil {
		return nil, "", storageErr("list tenants", err)
	}
	var next string
	if len(recs) > size {
		recs = recs[:size]
		next = encodePageToken(strings.TrimPrefix(recs[size-1].Key, tenantPrefix))
	}
	out := make([]Tenant, 0, len(recs))
	for _, r := range recs {
		id := strings.TrimPrefix(r.Key, tenantPrefix)
		rec, err := decodeTenant(r.Value)
		if err != nil {
			return nil, "", fmt.Errorf("tenant %q: %w", id, err)
		}
		out = append(out, rec.toTenant(id))
	}
	return out, next, nil
}
