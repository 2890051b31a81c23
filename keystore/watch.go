package keystore

import (
	"context"

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
		s.m.apply(c)
	}
	return nil
}
