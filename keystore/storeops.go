package keystore

import (
	"context"
	"errors"
	"fmt"
	"iter"

	"github.com/custos-kms/custos/keystore/storage"
)

// The keystore's few ways of using storage: typed reads of its records, a
// bounded compare-and-swap retry, and a paged scan of a prefix.

// MaxCASRetries bounds read-modify-write loops under contention.
const MaxCASRetries = 64

const maxCASRetries = MaxCASRetries

// scanPageSize is how many records one storage List returns during a scan.
const scanPageSize = 256

// records is typed access to the keystore's records in storage.
type records struct {
	store storage.Store
}

// storageErr maps a storage failure to a keystore error, with context.
func storageErr(op string, err error) error {
	switch {
	case errors.Is(err, storage.ErrFull):
		return fmt.Errorf("%s: %w: storage: %v", op, ErrStorageFull, err)
	case errors.Is(err, storage.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w: storage: %v", op, ErrUnavailable, err)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s: storage: %w", op, err)
}

// retryCAS runs attempt, a read-modify-write ending in a compare-and-swap,
// again while it fails with storage.ErrConflict (another writer got there
// first), at most maxCASRetries times; then it gives up with ErrAborted
// naming op. Any other result of attempt is returned as it is.
func retryCAS(op string, attempt func() error) error {
	err := storage.RetryOnConflict(maxCASRetries, attempt)
	if errors.Is(err, storage.ErrConflict) {
		return fmt.Errorf("%s: %w", op, ErrAborted)
	}
	return err
}

// StorageError maps a storage failure to the keystore's errors
// (ErrUnavailable when the storage cannot be reached), naming op, for
// packages that keep their own records beside the keystore's.
func StorageError(op string, err error) error { return storageErr(op, err) }

// scan yields every record whose key starts with prefix, in key order, a
// page at a time; a failed List is yielded once (as a keystore error naming
// op) and ends the scan.
func (s records) scan(ctx context.Context, op, prefix string) iter.Seq2[storage.Record, error] {
	return s.scanAfter(ctx, op, prefix, "")
}

// scanAfter is scan from the first storage key after after ("": from the
// start of prefix).
func (s records) scanAfter(ctx context.Context, op, prefix, after string) iter.Seq2[storage.Record, error] {
	return func(yield func(storage.Record, error) bool) {
		after := after
		for {
			recs, err := s.store.List(ctx, prefix, after, scanPageSize)
			if err != nil {
				yield(storage.Record{}, storageErr(op, err))
				return
			}
			for _, r := range recs {
				if !yield(r, nil) {
					return
				}
			}
			if len(recs) < scanPageSize {
				return
			}
			after = recs[len(recs)-1].Key
		}
	}
}

// errTenantNotFound is ErrNotFound for a tenant's record (not a key's):
// the tenant is gone, shredded or never made.
var errTenantNotFound = fmt.Errorf("%w", ErrNotFound)

// readTenant reads a tenant's record and its storage version.
func (s records) readTenant(ctx context.Context, tenant string) (*tenantRecord, uint64, error) {
	r, err := s.store.Get(ctx, tenantStorageKey(tenant))
	if errors.Is(err, storage.ErrNotFound) {
		return nil, 0, fmt.Errorf("tenant %q: %w", tenant, errTenantNotFound)
	}
	if err != nil {
		return nil, 0, storageErr("read tenant", err)
	}
	rec, err := decodeTenant(r.Value)
	if err != nil {
		return nil, 0, fmt.Errorf("tenant %q: %w", tenant, err)
	}
	return rec, r.Version, nil
}

// readKey reads a key's record and storage version.
func (s records) readKey(ctx context.Context, ref KeyRef) (*keyRecord, uint64, error) {
	r, err := s.store.Get(ctx, keyStorageKey(ref))
	if errors.Is(err, storage.ErrNotFound) {
		return nil, 0, fmt.Errorf("key %s: %w", ref, ErrNotFound)
	}
	if err != nil {
		return nil, 0, storageErr("read key", err)
	}
	rec, err := decodeKey(r.Value)
	if err != nil {
		return nil, 0, fmt.Errorf("key %s: %w", ref, err)
	}
	return rec, r.Version, nil
}
