package password

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/storage"
)

// Brute-force lockout for Verify (docs/passwords.md).
//
// One record per (key, subject) lives in storage under
// keystore.LockoutStorageKey: the subject is named by its id, an HMAC under
// the key's primary version (keystore.Pepper.SubjectID), so every replica
// sees the same state, it survives restarts, and storage never holds the
// subject in the clear. Records change only by compare-and-swap, and the
// keystore deletes them when it shreds the tenant.
//
// A verification is counted when it starts (InFlight) and settled when it
// ends: a failure moves it to Failures, a match deletes the record (the
// count resets), and a verification that cannot finish (queue full, caller
// gone) is uncounted. Counting at the start means that N verifications
// running in parallel cannot slip past a limit of N: a new one is admitted
// only while Failures + InFlight < N.

// recordFormat is the version of the lockout record.
const recordFormat = 1

// settleTimeout bounds the storage write that settles a verification; it
// runs even when the caller's context has ended, so that cancelling a
// request cannot erase its failure.
const settleTimeout = 5 * time.Second

// lockoutRecord is a subject's lockout state.
type lockoutRecord struct {
	Format int `json:"format"`
	// Failures counts failed verifications since WindowStart.
	Failures uint32 `json:"failures,omitzero"`
	// InFlight counts verifications admitted and not yet settled.
	InFlight uint32 `json:"in_flight,omitzero"`
	// WindowStart is when the first of the counted attempts was admitted;
	// the counts reset once the policy's window has passed since.
	WindowStart time.Time `json:"window_start,omitzero"`
	// LockedUntil, when in the future, refuses every verification.
	LockedUntil time.Time `json:"locked_until,omitzero"`
}

// lockout is one subject's lockout under one key's policy.
type lockout struct {
	s      *Service
	ref    keystore.KeyRef
	key    string // storage key
	policy keystore.PasswordPolicy
}

// newLockout names the subject's lockout record.
func (s *Service) newLockout(pep *keystore.Pepper, policy keystore.PasswordPolicy, subject string) (*lockout, error) {
	id, err := pep.SubjectID(subject)
	if err != nil {
		return nil, err
	}
	return &lockout{s: s, ref: pep.Key(), key: keystore.LockoutStorageKey(pep.Key(), id), policy: policy}, nil
}

// admit counts a verification that is about to run, or returns
// ErrSubjectLocked. Storage failures are returned (ErrUnavailable when it is
// unreachable): the caller must not verify without the limit. It returns
// the start of the window the verification is counted in, which names that
// window to finish and abandon: a verification admitted in a window that
// has since ended never uncounts an attempt of the next one (its failure
// still counts there).
func (l *lockout) admit(ctx context.Context) (window time.Time, err error) {
	err = l.update(ctx, "read lockout state", func(r *lockoutRecord, now time.Time) (bool, error) {
		if now.Before(r.LockedUntil) {
			return false, fmt.Errorf("verify password with %s: %w", l.ref, keystore.ErrSubjectLocked)
		}
		r.LockedUntil = time.Time{}
		if !now.Before(r.WindowStart.Add(l.policy.LockoutWindow)) {
			r.Failures, r.InFlight, r.WindowStart = 0, 0, time.Time{}
		}
		if uint64(r.Failures)+uint64(r.InFlight) >= uint64(l.policy.LockoutMaxFailures) {
			return false, fmt.Errorf("verify password with %s: %w", l.ref, keystore.ErrSubjectLocked)
		}
		if r.WindowStart.IsZero() {
			r.WindowStart = now
		}
		r.InFlight++
		window = r.WindowStart
		return true, nil
	})
	if errors.Is(err, keystore.ErrSubjectLocked) {
		l.s.lockedRefusals.Add(1)
	}
	return window, err
}

// finish settles a verification admitted in window: a match resets the
// subject's counts, a failure counts (in the window now current, or in one
// of its own after a reset) and may lock the subject; it is uncounted from in flight only in the window
// that counted it. Storage failures are logged, not
// returned: the verification was admitted under the limit, and an unsettled
// one keeps counting until the window ends, so the limit holds.
func (l *lockout) finish(ctx context.Context, window time.Time, match bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	locked := false
	err := l.update(ctx, "settle lockout state", func(r *lockoutRecord, now time.Time) (bool, error) {
		locked = false
		if now.Before(r.LockedUntil) {
			return false, nil // locked meanwhile: nothing to settle
		}
		if match {
			*r = lockoutRecord{} // deleted: the right password resets any window
			return true, nil
		}
		switch {
		case r.WindowStart.IsZero():
			// Reset meanwhile (by a match, or deleted with nothing
			// counted): the failure counts in a window of its own, so
			// that guesses in flight across a reset are not forgotten.
			r.WindowStart = now
		case !now.Before(r.WindowStart.Add(l.policy.LockoutWindow)):
			// The window ended and no attempt has opened the next one
			// (which would reset this record, as admit does): the
			// failure opens it, or the reset would forget it.
			r.Failures, r.InFlight, r.WindowStart = 0, 0, now
		case r.WindowStart.Equal(window):
			r.InFlight = max(r.InFlight, 1) - 1
		}
		// A failure counts in the window it ends in, even one admitted in
		// an earlier window (which the new one never counted as in
		// flight): guesses timed to straddle a window's end still count.
		r.Failures++
		if r.Failures >= l.policy.LockoutMaxFailures {
			*r = lockoutRecord{LockedUntil: now.Add(l.policy.LockoutDuration)}
			locked = true
		}
		return true, nil
	})
	if err == nil && locked {
		l.s.lockouts.Add(1)
	}
	if err != nil {
		l.s.logger.Warn("could not settle password lockout state", "key", l.ref.String(), "error", err.Error())
	}
}

// abandon uncounts a verification admitted in window that did not run to
// the end.
func (l *lockout) abandon(ctx context.Context, window time.Time) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	err := l.update(ctx, "settle lockout state", func(r *lockoutRecord, _ time.Time) (bool, error) {
		if r.InFlight == 0 || !r.WindowStart.Equal(window) {
			return false, nil
		}
		r.InFlight--
		if r.InFlight == 0 && r.Failures == 0 {
			// Nothing left to count: deleted, so that verifications
			// refused before hashing (a full queue, a deadline) leave no
			// record per subject behind.
			*r = lockoutRecord{}
		}
		return true, nil
	})
	if err != nil {
		l.s.logger.Warn("could not settle password lockout state", "key", l.ref.String(), "error", err.Error())
	}
}

// update is a compare-and-swap loop over the subject's record. mutate gets
// the record (zero when none is stored) and the time, changes it in place and
// reports whether to write it; a record that ends up zero is deleted.
func (l *lockout) update(ctx context.Context, op string, mutate func(r *lockoutRecord, now time.Time) (bool, error)) error {
	err := storage.RetryOnConflict(keystore.MaxCASRetries, func() error {
		var rec lockoutRecord
		var ver uint64
		got, err := l.s.store.Get(ctx, l.key)
		switch {
		case errors.Is(err, storage.ErrNotFound):
		case err != nil:
			// The store's text names the record's key, an HMAC of the
			// subject: only what went wrong, and whose key.
			return keystore.StorageError(op+" of "+l.ref.String(), storage.Keyless(err))
		default:
			if err := json.Unmarshal(got.Value, &rec); err != nil || rec.Format != recordFormat {
				return fmt.Errorf("%s: %w: lockout record of %s is not readable", op, keystore.ErrIntegrity, l.ref)
			}
			ver = got.Version
		}
		write, err := mutate(&rec, l.s.now().UTC())
		if err != nil || !write {
			return err
		}
		if rec == (lockoutRecord{}) {
			if ver == 0 {
				return nil
			}
			err = l.s.store.Delete(ctx, l.key, ver)
			if errors.Is(err, storage.ErrNotFound) {
				return storage.ErrConflict // gone meanwhile: read again
			}
		} else {
			rec.Format = recordFormat
			b, merr := json.Marshal(&rec)
			if merr != nil {
				return fmt.Errorf("%s: %w", op, merr)
			}
			_, err = l.s.store.Put(ctx, l.key, b, ver)
		}
		if err != nil {
			return keystore.StorageError(op+" of "+l.ref.String(), storage.Keyless(err))
		}
		return nil
	})
	if errors.Is(err, storage.ErrConflict) {
		// Too many writers of one subject's record at once: retry later.
		return fmt.Errorf("%s of %s: %w: too many concurrent verifications of one subject", op, l.ref, keystore.ErrUnavailable)
	}
	return err
}
