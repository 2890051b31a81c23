package keystore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/custos-kms/custos/keystore/storage"
)

// DeleteTenant schedules a tenant for crypto-shredding after waiting (0 means
// DefaultWaitingPeriod; otherwise 1 to 365 days, else ErrInvalidArgument).
// From now on every data-plane call and every key read or write on the
// tenant fails with ErrTenantDeleted — on this replica at once, on others as
// soon as the storage's change notification arrives (or their cache TTL
// runs out, for a storage that cannot notify). GetTenant and ListTenants
// show it as DELETE_SCHEDULED with its DeleteTime, and UndeleteTenant
// cancels until then. After DeleteTime the scheduler deletes the tenant's
// keysets and its wrapped KEK from storage.
//
// It fails with ErrNotFound for an unknown tenant and ErrTenantDeleted if the
// tenant is already scheduled (its date stays).
func (s *Service) DeleteTenant(ctx context.Context, tenant string, waiting time.Duration) (Tenant, error) {
	if !ValidID(tenant) {
		return Tenant{}, fmt.Errorf("%w: tenant id is malformed (want %s)", ErrInvalidArgument, IDPattern)
	}
	waiting, err := waitingPeriod("waiting_period", waiting)
	if err != nil {
		return Tenant{}, err
	}
	return s.updateTenant(ctx, tenant, "delete tenant", func(rec *tenantRecord) error {
		if rec.State != TenantActive {
			return fmt.Errorf("%w: deletion is already scheduled for %s", ErrTenantDeleted, rec.DeleteTime.Format(time.RFC3339))
		}
		rec.State = TenantDeleteScheduled
		rec.DeleteTime = s.now().UTC().Add(waiting)
		return nil
	}, func(rec *tenantRecord) { s.noteTenantDue(ctx, tenant, rec) })
}

// UndeleteTenant cancels a tenant's scheduled deletion before its
// DeleteTime; the tenant and all its keys work again as before. It fails
// with ErrWrongState if the tenant is not scheduled for deletion,
// ErrTenantDeleted once the date has passed (shredding is due or under way),
// and ErrNotFound for an unknown (or already shredded) tenant.
func (s *Service) UndeleteTenant(ctx context.Context, tenant string) (Tenant, error) {
	if !ValidID(tenant) {
		return Tenant{}, fmt.Errorf("%w: tenant id is malformed (want %s)", ErrInvalidArgument, IDPattern)
	}
	t, err := s.updateTenant(ctx, tenant, "undelete tenant", func(rec *tenantRecord) error {
		if rec.State != TenantDeleteScheduled {
			return fmt.Errorf("%w: the tenant is %v, not scheduled for deletion", ErrWrongState, rec.State)
		}
		if !rec.ShredTime.IsZero() || !s.now().Before(rec.DeleteTime) {
			return fmt.Errorf("%w: its waiting period ended at %s; it can no longer be undeleted",
				ErrTenantDeleted, rec.DeleteTime.Format(time.RFC3339))
		}
		rec.State = TenantActive
		rec.DeleteTime = time.Time{}
		return nil
	}, func(*tenantRecord) {
		// Work of its keys that fell due meanwhile was put off: one hint,
		// due now, has the next due pass go through them (however many
		// there are, and whatever becomes of this call's context).
		s.noteDue(ctx, s.now(), dueKeysKind, tenant)
	})
	return t, err
}

// updateTenant is a read-modify-write of a tenant record with
// compare-and-swap, retrying on conflicts. After a write it drops the
// tenant's cached material on this replica.
//
// noteDue writes the due hint of the change made: after the write, and
// also after a write whose outcome is unknown (an error other than a
// conflict: a connection lost after COMMIT), since a change that did land
// would otherwise wait for the next full sweep, and the caller's retry is
// refused before it writes anything. A hint whose change did not land
// does nothing.
func (s *Service) updateTenant(ctx context.Context, tenant, op string, mutate func(rec *tenantRecord) error, noteDue func(rec *tenantRecord)) (Tenant, error) {
	var out Tenant
	err := retryCAS(fmt.Sprintf("%s %q", op, tenant), func() error {
		rec, ver, err := s.readTenant(ctx, tenant)
		if err != nil {
			return err
		}
		if err := mutate(rec); err != nil {
			return fmt.Errorf("%s %q: %w", op, tenant, err)
		}
		b, err := encodeRecord(rec)
		if err != nil {
			return err
		}
		_, err = s.store.Put(ctx, tenantStorageKey(tenant), b, ver)
		if err == nil || !errors.Is(err, storage.ErrConflict) { // written, or maybe
			s.m.invalidateTenant(tenant)
			noteDue(rec)
		}
		if err != nil {
			return storageErr(op, err)
		}
		out = rec.toTenant(tenant)
		return nil
	})
	return out, err
}

// checkTenantActive fails with ErrNotFound for an unknown tenant and
// ErrTenantDeleted for one scheduled for deletion.
func (s *Service) checkTenantActive(ctx context.Context, tenant string) error {
	rec, _, err := s.readTenant(ctx, tenant)
	if err != nil {
		return err
	}
	if rec.State != TenantActive {
		return fmt.Errorf("tenant %q: %w", tenant, ErrTenantDeleted)
	}
	return nil
}

// shredPageSize is how many key records one storage List returns while
// shredding.
const shredPageSize = 256

// tenantScopedPrefixes are the storage prefixes of every record that
// belongs to one tenant besides its tenant record: its keys (wrapped
// keysets) and its password lockout state.
func tenantScopedPrefixes(tenant string) []string {
	return []string{keyStoragePrefix(tenant), LockoutStoragePrefix(tenant)}
}

// shredTenant crypto-shreds a tenant whose deletion date has passed: it
// marks the record (so UndeleteTenant refuses from then on), deletes every
// record under tenantScopedPrefixes, then the tenant record holding the
// wrapped KEK, and drops every cache. It is safe to repeat after a crash at any step:
// the tenant record goes last, so the next pass finds it and finishes.
// It reports whether the tenant was shredded (false: not due any more, or
// shredded by another pass).
func (s *Service) shredTenant(ctx context.Context, tenant string) (bool, error) {
	rec, ver, err := s.readTenant(ctx, tenant)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if rec.State != TenantDeleteScheduled || s.now().Before(rec.DeleteTime) {
		return false, nil
	}
	if rec.ShredTime.IsZero() {
		rec.ShredTime = s.now().UTC()
		b, err := encodeRecord(rec)
		if err != nil {
			return false, err
		}
		ver, err = s.store.Put(ctx, tenantStorageKey(tenant), b, ver)
		if errors.Is(err, storage.ErrConflict) {
			return false, nil // changed meanwhile (undeleted?): the next pass decides again
		}
		if err != nil {
			return false, storageErr("shred tenant: mark", err)
		}
	}
	if err := s.writeTombstone(ctx, *rec, tenant); err != nil {
		return false, err
	}
	s.m.invalidateTenant(tenant)
	// Another shred of this tenant may run at once (a lease that changed
	// hands mid-shred, RunOnce beside the holder). Once it has finished,
	// the id may be created again: each page of records is deleted only
	// while the tenant record this shred marked is still there, so a stale
	// shred stops before it reaches the new tenant's records. (Versions
	// are never reused, so a record listed before the check and created
	// again since is a conflict, not a delete.)
	ours := func(ctx context.Context) (bool, error) {
		cur, _, err := s.readTenant(ctx, tenant)
		if errors.Is(err, ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		return cur.CreateTime.Equal(rec.CreateTime) && !cur.ShredTime.IsZero(), nil
	}
	for _, prefix := range tenantScopedPrefixes(tenant) {
		if err := s.deletePrefix(ctx, prefix, ours); err != nil {
			if errors.Is(err, errShredSuperseded) {
				return false, nil
			}
			return false, fmt.Errorf("shred tenant %q: %w", tenant, err)
		}
	}
	err = s.store.Delete(ctx, tenantStorageKey(tenant), ver)
	if errors.Is(err, storage.ErrConflict) {
		return false, nil // shredded by another pass, the id created again since
	}
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return false, storageErr(fmt.Sprintf("shred tenant %q: delete tenant record", tenant), err)
	}
	s.m.invalidateTenant(tenant)
	s.life.dropTenant(tenant)
	s.logger.Info("tenant crypto-shredded", "tenant", tenant)
	return true, nil
}

// errShredSuperseded: the tenant a shred was deleting is gone, or is
// another tenant of the same id, so its records are not this shred's to
// delete.
var errShredSuperseded = errors.New("the tenant was shredded meanwhile")

// deletePrefix deletes every record whose key starts with prefix, however
// many there are, as long as ours says (after each listing) that they still
// belong to the tenant being shredded (else errShredSuperseded); it gives up
// (ErrAborted) only when concurrent writes keep conflicting with its
// deletes.
func (s *Service) deletePrefix(ctx context.Context, prefix string, ours func(context.Context) (bool, error)) error {
	conflicts := 0
	for {
		recs, err := s.store.List(ctx, prefix, "", shredPageSize)
		if err != nil {
			return storageErr("list "+prefix, storage.Keyless(err)) // a record's key may be quoted
		}
		if len(recs) == 0 {
			return nil
		}
		if ok, err := ours(ctx); err != nil {
			return err
		} else if !ok {
			return errShredSuperseded
		}
		for _, r := range recs {
			err := s.store.Delete(ctx, r.Key, r.Version)
			switch {
			case err == nil, errors.Is(err, storage.ErrNotFound):
			case errors.Is(err, storage.ErrConflict):
				// A late write (a counts flush): the next List sees it.
				if conflicts++; conflicts > maxCASRetries {
					return fmt.Errorf("delete %s: %w", prefix, ErrAborted)
				}
			default:
				// Not the key: under lockout/ it holds a subject's HMAC.
				return storageErr("delete a record under "+prefix, storage.Keyless(err))
			}
		}
	}
}
