package keystore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/custos-kms/custos/keystore/storage"
)

// The due-time index. Whenever a record gets a date on which the scheduler
// must act — a key's next rotation, a version's destruction, a primary past
// its usage threshold, a tenant's deletion — a hint record is written under
// due/<unix seconds, zero-padded>/<k|t|u>/<name>. Keys sort by time in every
// backend (bbolt's B+tree, PostgreSQL's primary key), so the lease holder
// finds the work that is due with one range read from the start of due/,
// stopping at the first hint still in the future: its idle cost does not
// grow with the number of tenants.
//
// Hints are only hints. Writing one is not atomic with the record it
// describes, so each is checked against the record when it comes due (a
// stale hint does nothing), and a full sweep of every tenant and key — on
// the lease holder's first pass and then every SchedulerConfig.SweepInterval
// (default a day) — does any work a lost hint would have missed and writes
// the hints of every future date again.

// duePrefix starts every hint's storage key.
const duePrefix = "due/"

// hintValue is a hint's (ignored) value.
var hintValue = []byte(`{"format":1}`)

const (
	dueKeyKind    = "k"
	dueTenantKind = "t"
	// dueKeysKind: every key of a tenant (after an undeletion, the work
	// of its keys that fell due meanwhile).
	dueKeysKind = "u"
)

// dueStorageKey names the hint for name (tenant, or tenant/key) at t,
// rounded up to the second so that a hint never comes due early.
func dueStorageKey(t time.Time, kind, name string) string {
	sec := t.Unix()
	if t.Nanosecond() > 0 {
		sec++
	}
	return fmt.Sprintf("%s%012d/%s/%s", duePrefix, max(sec, 0), kind, name)
}

// parseDueKey reads a hint's storage key.
func parseDueKey(k string) (t time.Time, kind, name string, ok bool) {
	rest, ok := strings.CutPrefix(k, duePrefix)
	if !ok {
		return time.Time{}, "", "", false
	}
	secS, rest, ok := strings.Cut(rest, "/")
	if !ok {
		return time.Time{}, "", "", false
	}
	sec, err := strconv.ParseInt(secS, 10, 64)
	if err != nil {
		return time.Time{}, "", "", false
	}
	kind, name, ok = strings.Cut(rest, "/")
	return time.Unix(sec, 0), kind, name, ok && (kind == dueKeyKind || kind == dueTenantKind || kind == dueKeysKind)
}

// noteTimeout bounds a hint's write. It runs even when the caller's context
// has ended: the record it describes is already written.
const noteTimeout = 5 * time.Second

// noteDue writes the hint that something of name falls due at t. A hint
// already there is fine; a failure is logged and returned, for a caller
// that cannot leave it there, and the hint is kept to be written again by
// the next count flush (writeUnwrittenHints).
func (s *Service) noteDue(ctx context.Context, t time.Time, kind, name string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), noteTimeout)
	defer cancel()
	key := dueStorageKey(t, kind, name)
	_, err := s.store.Put(ctx, key, hintValue, 0)
	if err != nil && !errors.Is(err, storage.ErrConflict) {
		l := s.life
		l.unwrittenMu.Lock()
		kept := len(l.unwritten) < maxUnwrittenHints
		if kept {
			if l.unwritten == nil {
				l.unwritten = map[string]struct{}{}
			}
			l.unwritten[key] = struct{}{}
		}
		l.unwrittenMu.Unlock()
		if kept {
			s.logger.Warn("scheduler: could not record a due date; retrying with the next count flush", "name", name, "error", err.Error())
		} else {
			s.logger.Warn("scheduler: could not record a due date; the next full sweep will", "name", name, "error", err.Error())
		}
		return err
	}
	return nil
}

// writeUnwrittenHints writes the due hints whose writes failed before. A
// hint now written (or found there) is done; the first that fails again
// ends the pass (the storage is still out), to be retried next time.
func (s *Service) writeUnwrittenHints(ctx context.Context) error {
	l := s.life
	l.unwrittenMu.Lock()
	keys := slices.Collect(maps.Keys(l.unwritten))
	l.unwrittenMu.Unlock()
	slices.Sort(keys) // oldest due first
	for _, key := range keys {
		if _, err := s.store.Put(ctx, key, hintValue, 0); err != nil && !errors.Is(err, storage.ErrConflict) {
			return storageErr("scheduler: write a due hint again", err)
		}
		l.unwrittenMu.Lock()
		delete(l.unwritten, key)
		l.unwrittenMu.Unlock()
	}
	return nil
}

// keyDue is the earliest date on which the scheduler must act on rec: its
// next rotation, a version's destruction, or now if its primary reached the
// usage threshold.
func (s *Service) keyDue(rec *keyRecord, now time.Time) (time.Time, bool) {
	var due time.Time
	earlier := func(t time.Time) {
		if due.IsZero() || t.Before(due) {
			due = t
		}
	}
	if rec.RotationPeriod > 0 && !rec.NextRotationTime.IsZero() {
		earlier(rec.NextRotationTime)
	}
	for _, vr := range rec.Versions {
		if vr.State == VersionDestroyScheduled {
			earlier(vr.DestroyTime)
		}
	}
	if rec.Purpose == PurposeEncrypt {
		if vr, ok := rec.version(rec.Primary); ok && vr.EncryptCount >= s.life.threshold {
			earlier(now)
		}
	}
	return due, !due.IsZero()
}

// dropDue deletes the hint of name at t, if there is one: best effort (a
// hint left does nothing when it comes due but read the record).
func (s *Service) dropDue(ctx context.Context, t time.Time, kind, name string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), noteTimeout)
	defer cancel()
	key := dueStorageKey(t, kind, name)
	if rec, err := s.store.Get(ctx, key); err == nil {
		_ = s.store.Delete(ctx, key, rec.Version)
	}
}

// noteKeyDue writes the hint of rec's next due date, if it has one.
func (s *Service) noteKeyDue(ctx context.Context, ref KeyRef, rec *keyRecord) {
	if t, ok := s.keyDue(rec, s.now()); ok {
		s.noteDue(ctx, t, dueKeyKind, ref.Tenant+"/"+ref.Key)
	}
}

// noteTenantDue writes the hint of a tenant's deletion date, if it has one.
func (s *Service) noteTenantDue(ctx context.Context, tenant string, rec *tenantRecord) {
	if rec.State == TenantDeleteScheduled {
		s.noteDue(ctx, rec.DeleteTime, dueTenantKind, tenant)
	}
}

// duePass does the work whose hints have come due, oldest first, and stops
// at the first hint still in the future, or when renew (if not nil), called
// between hints, reports the lease lost. Each hint is deleted before its
// work runs (the work writes the hints of later dates) and written again
// if the work fails, so the next pass retries it.
func (s *Service) duePass(ctx context.Context, renew func() bool) error {
	now := s.now()
	var errs []error
	for r, err := range s.scan(ctx, "scheduler: list due work", duePrefix) {
		if err != nil {
			return err
		}
		if renew != nil && !renew() {
			return joinCapped(append([]error{errLeaseLost}, errs...))
		}
		t, kind, name, ok := parseDueKey(r.Key)
		if ok && t.After(now) {
			break
		}
		if err := s.store.Delete(ctx, r.Key, r.Version); err != nil && !errors.Is(err, storage.ErrNotFound) && !errors.Is(err, storage.ErrConflict) {
			// The delete may have committed all the same (a connection
			// lost after the commit): the work runs, re-checking its
			// condition, rather than wait for the next full sweep.
			errs = append(errs, storageErr("scheduler: delete a due hint", err))
		}
		if !ok {
			continue // not a hint this version writes
		}
		var werr error
		switch kind {
		case dueTenantKind:
			werr = s.dueTenant(ctx, name)
		case dueKeyKind:
			tenant, key, _ := strings.Cut(name, "/")
			werr = s.dueKeyWork(ctx, KeyRef{Tenant: tenant, Key: key})
		case dueKeysKind:
			werr = s.dueKeysOf(ctx, name, renew)
		}
		if werr != nil {
			errs = append(errs, werr)
			s.noteDue(ctx, t, kind, name)
		}
	}
	return joinCapped(errs)
}

// dueTenant shreds a tenant whose deletion date has passed; a hint that no
// longer holds does nothing (or is written again for a later date).
func (s *Service) dueTenant(ctx context.Context, tenant string) error {
	rec, _, err := s.readTenant(ctx, tenant)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if rec.State != TenantDeleteScheduled {
		return nil
	}
	if rec.DeleteTime.After(s.now()) {
		s.noteTenantDue(ctx, tenant, rec)
		return nil
	}
	done, err := s.shredTenant(ctx, tenant)
	if err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	if done {
		s.autoShreds.Add(1)
	} else {
		// The record changed under the shred (an undeletion, a root
		// rewrap): if it is still to be shredded, its hint goes back so
		// that the next pass does it, not the next full sweep.
		rec, _, err := s.readTenant(ctx, tenant)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("scheduler: %w", err) // the pass writes the hint back
		}
		if err == nil {
			s.noteTenantDue(ctx, tenant, rec)
		}
	}
	return nil
}

// dueKeysOf goes through every key of an active tenant once (an
// undeletion's hint): it maintains those with work due and writes the
// hints of later dates. A key that fails gets a hint of its own, so
// failures are logged, not returned: the tenant's hint is not written
// again to scan every key once more. A lost lease, or a list that fails,
// is returned, and the next pass starts over.
func (s *Service) dueKeysOf(ctx context.Context, tenant string, renew func() bool) error {
	rec, _, err := s.readTenant(ctx, tenant)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if rec.State != TenantActive {
		return nil // deleted again: the undeletion's work waits for the next one
	}
	err = s.keysPass(ctx, tenant, renew)
	if errors.Is(err, errLeaseLost) || errors.Is(err, errScanCut) {
		return err
	}
	if err != nil {
		s.logger.Warn("scheduler: some keys of an undeleted tenant failed; each is retried by its own hint", "tenant", tenant, "error", err.Error())
	}
	return nil
}

// dueKeyWork maintains a key whose hint came due, after checking the
// record: its work may have been done already, or its date moved.
func (s *Service) dueKeyWork(ctx context.Context, ref KeyRef) error {
	rec, _, err := s.readKey(ctx, ref)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	now := s.now()
	if _, due := s.rotationDue(rec, now); !due && !destroyDue(rec, now) {
		s.noteKeyDue(ctx, ref, rec)
		return nil
	}
	err = s.maintainKey(ctx, ref)
	if errors.Is(err, ErrTenantDeleted) || errors.Is(err, ErrNotFound) {
		// Shredded, or scheduled for deletion: the tenant's own hint shreds
		// it, and an undeletion writes the hints of its keys again.
		return nil
	}
	return err
}
