package keystore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/custos-kms/custos/keystore/storage"
)

// A tombstone records that a tenant was crypto-shredded, so that a restore
// of a backup taken before the shred does not bring the tenant back
// (docs/backup.md). It is kept in the store for good: a few dozen bytes per
// shredded tenant.

// TombstonePrefix starts every tombstone's storage key.
const TombstonePrefix = "tombstones/"

// Tombstone is a shredded tenant's record.
type Tombstone struct {
	// Tenant is the shredded tenant's id.
	Tenant string `json:"tenant"`
	// CreateTime is when the shredded tenant was created: a tenant of the
	// same id created later is another one.
	CreateTime time.Time `json:"create_time"`
	// ShredTime is when shredding began.
	ShredTime time.Time `json:"shred_time"`
}

// Covers reports whether the tombstone is that of a tenant created at
// createTime (the same incarnation, not a later one of the same id).
func (t Tombstone) Covers(createTime time.Time) bool { return !createTime.After(t.CreateTime) }

// ParseTombstone decodes a tombstone record.
func ParseTombstone(value []byte) (Tombstone, error) {
	var t Tombstone
	if err := json.Unmarshal(value, &t); err != nil || !ValidID(t.Tenant) {
		return Tombstone{}, errors.New("keystore: malformed tombstone")
	}
	return t, nil
}

// writeTombstone stores tenant's tombstone (idempotent).
func (s *Service) writeTombstone(ctx context.Context, rec tenantRecord, tenant string) error {
	b, err := json.Marshal(Tombstone{Tenant: tenant, CreateTime: rec.CreateTime.UTC(), ShredTime: rec.ShredTime.UTC()})
	if err != nil {
		return err
	}
	key := TombstonePrefix + tenant
	_, err = s.store.Put(ctx, key, b, 0)
	if errors.Is(err, storage.ErrConflict) {
		// A tombstone of an earlier incarnation, or this one's from a pass
		// that crashed: the newest incarnation's wins. One of a later
		// incarnation stays (a stale shred of an older one, stalled while
		// the id was created and shredded again, must not put the older
		// tombstone back: it would cover less, and a restore would bring
		// the later tenant back).
		old, gerr := s.store.Get(ctx, key)
		if gerr != nil {
			return storageErr("shred tenant: tombstone", gerr)
		}
		if cur, perr := ParseTombstone(old.Value); perr == nil && cur.CreateTime.After(rec.CreateTime) {
			return nil
		}
		_, err = s.store.Put(ctx, key, b, old.Version)
	}
	if err != nil {
		return storageErr("shred tenant: tombstone", err)
	}
	return nil
}

// TenantInfo is what a backup records of a tenant.
type TenantInfo struct {
	State      TenantState
	CreateTime time.Time
	DeleteTime time.Time
}

// ParseTenantRecord reads a tenant record's state and dates (backups
// decide from them which tenants a restore must shred).
func ParseTenantRecord(value []byte) (TenantInfo, error) {
	var rec tenantRecord
	if err := json.Unmarshal(value, &rec); err != nil {
		return TenantInfo{}, fmt.Errorf("keystore: malformed tenant record: %w", err)
	}
	return TenantInfo{State: rec.State, CreateTime: rec.CreateTime, DeleteTime: rec.DeleteTime}, nil
}

// Deletion is a tenant's deletion scheduled for DeleteTime in a store (a
// restore carries it onto the same incarnation's older record).
type Deletion struct {
	Tenant     string
	CreateTime time.Time // the incarnation's
	DeleteTime time.Time
}

// WithDeletion returns a tenant record value with d's deletion scheduled,
// and the storage key and value of the hint the scheduler finds it by. It
// changes nothing (changed false) for a record of another incarnation, or
// one whose own deletion is due no later. Used by restores: a backup taken
// before a deletion was scheduled must not cancel it.
func WithDeletion(value []byte, d Deletion) (out []byte, hintKey string, hint []byte, changed bool, err error) {
	var rec tenantRecord
	if err := json.Unmarshal(value, &rec); err != nil {
		return nil, "", nil, false, fmt.Errorf("keystore: malformed tenant record: %w", err)
	}
	if !rec.CreateTime.Equal(d.CreateTime) || (rec.State == TenantDeleteScheduled && !rec.DeleteTime.After(d.DeleteTime)) {
		return value, "", nil, false, nil
	}
	rec.State, rec.DeleteTime = TenantDeleteScheduled, d.DeleteTime.UTC()
	if out, err = json.Marshal(rec); err != nil {
		return nil, "", nil, false, err
	}
	return out, dueStorageKey(rec.DeleteTime, dueTenantKind, d.Tenant), hintValue, true, nil
}

// TenantOfStorageKey returns the tenant whose record key is, if it is a
// tenant record (tenants/{id}).
func TenantOfStorageKey(key string) (string, bool) {
	t, ok := strings.CutPrefix(key, tenantPrefix)
	return t, ok && ValidID(t)
}

// TenantOwnsStorageKey reports whether key is one of tenant's records:
// its tenant record, its keys, its lockout records.
func TenantOwnsStorageKey(tenant, key string) bool {
	if key == tenantStorageKey(tenant) {
		return true
	}
	for _, p := range tenantScopedPrefixes(tenant) {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

// TenantStoragePrefix starts the storage key of every tenant's own record.
const TenantStoragePrefix = tenantPrefix

// TenantStorageKey is the storage key of tenant's own record (its wrapped
// KEK).
func TenantStorageKey(tenant string) string { return tenantStorageKey(tenant) }

// TenantScopedPrefixes are the key prefixes under which tenant's other
// records lie; each ends in "/", so it lists that tenant's records only.
func TenantScopedPrefixes(tenant string) []string { return tenantScopedPrefixes(tenant) }

// LeaseStorageKey is the scheduler lease's storage key.
const LeaseStorageKey = leaseStorageKey

// TenantCreateTime returns when the latest incarnation of tenant was
// created: the tenant's own record while it exists, else its tombstone
// (the one shredded last). found is false for an id never created (or
// whose tombstone is gone).
func (s *Service) TenantCreateTime(ctx context.Context, tenant string) (created time.Time, found bool, err error) {
	rec, _, err := s.readTenant(ctx, tenant)
	switch {
	case err == nil:
		return rec.CreateTime, true, nil
	case !errors.Is(err, ErrNotFound):
		return time.Time{}, false, err
	}
	r, err := s.store.Get(ctx, TombstonePrefix+tenant)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return time.Time{}, false, nil
	case err != nil:
		return time.Time{}, false, storageErr("read tombstone", err)
	}
	t, err := ParseTombstone(r.Value)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("tenant %q: %w", tenant, err)
	}
	return t.CreateTime, true, nil
}
