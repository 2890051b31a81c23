package keystore

import (
	"context"
	"strings"

	"github.com/custos-kms/custos/keystore/storage"
)

// Watch invalidates cached material whenever any replica sharing the storage
// changes a tenant or key, until ctx is done. It returns at once (nil) when
// the storage cannot notify (bbolt: one process owns the file). Run it in
// its own goroutine; it stops when ctx is cancelled.
func (s *Service) Watch(ctx context.Context) error {
	w, ok := s.store.(storage.Watcher)
	if !ok {
		return nil
	}
	changes, err := w.Watch(ctx)
	if err != nil {
		return storageErr("watch", err)
	}
	for c := range changes {
		s.invalidate(c)
	}
	return nil
}

// invalidate drops what a change may have made stale. A change that names
// the record version it wrote (Version > 0) drops only entries built from
// older versions, so a replica's own writes, echoed back by the storage, do
// not evict what it has just cached.
func (s *Service) invalidate(c storage.Change) {
	switch k := c.Key; {
	case k == "":
		s.life.tenantGen.Add(1)
		s.keks.clear()
		s.keys.clear()
	case strings.HasPrefix(k, tenantPrefix):
		tenant := strings.TrimPrefix(k, tenantPrefix)
		s.life.tenantGen.Add(1)
		if c.Version == 0 {
			// Deleted (shredded), or version unknown: the KEK may be gone.
			s.keks.remove(tenant)
		}
		// A tenant's KEK never changes while its record exists (a root
		// re-wrap wraps the same bytes); its state may, so the keys that
		// were checked against an older record go.
		s.keys.removeWhere(func(r KeyRef, e *keyEntry) bool {
			return r.Tenant == tenant && (c.Version == 0 || e.tenantVer < c.Version)
		})
	case strings.HasPrefix(k, keyPrefix):
		tenant, key, ok := strings.Cut(strings.TrimPrefix(k, keyPrefix), "/")
		if !ok {
			return
		}
		ref := KeyRef{Tenant: tenant, Key: key}
		if c.Version == 0 {
			// Deleted, or version unknown: drop it, and keep a load now in
			// flight from caching what it read before.
			s.life.tenantGen.Add(1)
			s.keys.remove(ref)
			return
		}
		// Record that version c.Version exists: an older entry, or an older
		// record a load is still reading, can no longer be cached.
		s.keys.upsert(ref, &keyEntry{ref: ref, ver: c.Version}, func(old *keyEntry) bool { return old.ver >= c.Version })
	}
}
