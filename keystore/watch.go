package keystore

import (
	"context"
	"strings"

	"github.com/custos-kms/custos/keystore/storage"
)

// Watch invalidates cached material whenever any replica sharing the storage
// changes a tenant or key, until ctx is done. It returns at once (nil) when
// the storage cannot notify (a single-process backend). Run it in its own
// goroutine; it stops when ctx is cancelled.
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
		s.invalidate(c.Key)
	}
	return nil
}

// invalidate drops what a change to storage key k may have made stale.
func (s *Service) invalidate(k string) {
	switch {
	case k == "":
		s.life.tenantGen.Add(1)
		s.keks.clear()
		s.keys.clear()
	case strings.HasPrefix(k, tenantPrefix):
		s.invalidateTenant(strings.TrimPrefix(k, tenantPrefix))
	case strings.HasPrefix(k, keyPrefix):
		tenant, key, ok := strings.Cut(strings.TrimPrefix(k, keyPrefix), "/")
		if ok {
			s.keys.remove(KeyRef{Tenant: tenant, Key: key})
		}
	}
}
