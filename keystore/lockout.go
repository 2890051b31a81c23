package keystore

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/custos-kms/custos/keystore/storage"
)

// Brute-force lockout for VerifyPassword (docs/passwords.md).
//
// One record per (key, subject) lives in storage under
// lockout/{tenant}/{key}/{id}, where id is the hex HMAC-SHA256, under the
// key's primary pepper version, of "custos:lockout:" + subject: every replica
// sees the same state, it survives restarts, and storage never holds the
// subject in the clear. Records change only by compare-and-swap.
//
// A verification is counted when it starts (InFlight) and settled when it
// ends: a failure moves it to Failures, a match deletes the record (the
// count resets), and a verification that cannot finish (queue full, caller
// gone) is uncounted. Counting at the start means that N verifications
// running in parallel cannot slip past a limit of N: a new one is admitted
// only while Failures + InFlight < N.

// lockoutPrefix starts every lockout record's storage key.
const lockoutPrefix = "lockout/"

// lockoutSubjectLabel separates subject ids from other uses of the pepper.
const lockoutSubjectLabel = "custos:lockout:"

// lockoutSettleTimeout bounds the storage write that settles a verification;
// it runs even when the caller's context has ended, so that cancelling a
// request cannot erase its failure.
const lockoutSettleTimeout = 5 * time.Second

// lockoutStoragePrefix is the prefix of all of a tenant's lockout records
// (for crypto-shredding a tenant).
func lockoutStoragePrefix(tenant string) string { return lockoutPrefix + tenant + "/" }

func lockoutStorageKey(ref KeyRef, id string) string {
	return lockoutStoragePrefix(ref.Tenant) + ref.Key + "/" + id
}

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
	ref    KeyRef
	key    string // storage key
	policy PasswordPolicy
}

// newLockout names the subject's lockout record.
func (s *Service) newLockout(e *keyEntry, policy PasswordPolicy, subject string) (*lockout, error) {
	tag, err := macTag(e.prim.mac, []byte(lockoutSubjectLabel+subject))
	if err != nil {
		return nil, err
	}
	id := hex.EncodeToString(tag[tinkPrefixSize:])
	return &lockout{s: s, ref: e.ref, key: lockoutStorageKey(e.ref, id), policy: policy}, nil
}

// admit counts a verification that is about to run, or returns
// ErrSubjectLocked. Storage failures are returned (ErrUnavailable when it is
// unreachable): the caller must not verify without the limit.
func (l *lockout) admit(ctx context.Context) error {
	return l.update(ctx, "read lockout state", func(r *lockoutRecord, now time.Time) (bool, error) {
		if now.Before(r.LockedUntil) {
			return false, fmt.Errorf("verify password with %s: %w", l.ref, ErrSubjectLocked)
		}
		r.LockedUntil = time.Time{}
		if !now.Before(r.WindowStart.Add(l.policy.LockoutWindow)) {
			r.Failures, r.InFlight, r.WindowStart = 0, 0, time.Time{}
		}
		if uint64(r.Failures)+uint64(r.InFlight) >= uint64(l.policy.LockoutMaxFailures) {
			return false, fmt.Errorf("verify password with %s: %w", l.ref, ErrSubjectLocked)
		}
		if r.WindowStart.IsZero() {
			r.WindowStart = now
		}
		r.InFlight++
		return true, nil
	})
}

// finish settles an admitted verification: a match resets the subject's
// counts, a failure counts and may lock the subject. Storage failures are
// logged, not returned: the verification was admitted under the limit, and
// an unsettled one keeps counting until the window ends, so the limit holds.
func (l *lockout) finish(ctx context.Context, match bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lockoutSettleTimeout)
	defer cancel()
	err := l.update(ctx, "settle lockout state", func(r *lockoutRecord, now time.Time) (bool, error) {
		if r.WindowStart.IsZero() {
			// Reset by a match, or locked, meanwhile: nothing to settle.
			return false, nil
		}
		r.InFlight = max(r.InFlight, 1) - 1
		if match {
			*r = lockoutRecord{} // deleted
			return true, nil
		}
		r.Failures++
		if r.Failures >= l.policy.LockoutMaxFailures {
			*r = lockoutRecord{LockedUntil: now.Add(l.policy.LockoutDuration)}
		}
		return true, nil
	})
	if err != nil {
		l.s.logger.Warn("could not settle password lockout state", "key", l.ref.String(), "error", err.Error())
	}
}

// abandon uncounts an admitted verification that did not run to the end.
func (l *lockout) abandon(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lockoutSettleTimeout)
	defer cancel()
	err := l.update(ctx, "settle lockout state", func(r *lockoutRecord, _ time.Time) (bool, error) {
		if r.InFlight == 0 {
			return false, nil
		}
		r.InFlight--
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
	for range maxCASRetries {
		var rec lockoutRecord
		var ver uint64
		got, err := l.s.store.Get(ctx, l.key)
		switch {
		case errors.Is(err, storage.ErrNotFound):
		case err != nil:
			return storageErr(op, err)
		default:
			if err := json.Unmarshal(got.Value, &rec); err != nil || rec.Format != recordFormat {
				return fmt.Errorf("%s: %w: lockout record of %s is not readable", op, ErrIntegrity, l.ref)
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
				continue
			}
		} else {
			rec.Format = recordFormat
			b, merr := json.Marshal(&rec)
			if merr != nil {
				return fmt.Errorf("%s: %w", op, merr)
			}
			_, err = l.s.store.Put(ctx, l.key, b, ver)
		}
		if errors.Is(err, storage.ErrConflict) {
			continue
		}
		if err != nil {
			return storageErr(op, err)
		}
		return nil
	}
	return fmt.Errorf("%s of %s: %w", op, l.ref, ErrAborted)
}
