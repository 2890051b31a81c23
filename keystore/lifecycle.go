package keystore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tink-crypto/tink-go/v2/keyset"
)

// Waiting periods of DestroyKeyVersion and DeleteTenant.
const (
	// DefaultWaitingPeriod applies when a caller passes 0.
	DefaultWaitingPeriod = 30 * 24 * time.Hour
	// MinWaitingPeriod and MaxWaitingPeriod bound a caller's waiting period.
	MinWaitingPeriod = 24 * time.Hour
	MaxWaitingPeriod = 365 * 24 * time.Hour
)

// errUnchanged tells updateKey's callers that a mutation found nothing to do
// (an idempotent state change, a scheduler check no longer due), so nothing
// is written.
var errUnchanged = errors.New("unchanged")

// waitingPeriod applies the default and checks the bounds.
func waitingPeriod(field string, d time.Duration) (time.Duration, error) {
	if d == 0 {
		return DefaultWaitingPeriod, nil
	}
	if d < MinWaitingPeriod || d > MaxWaitingPeriod {
		return 0, fmt.Errorf("%w: %s must be between 1 and 365 days, got %v", ErrInvalidArgument, field, d)
	}
	return d, nil
}

// UpdateKey changes a key's rotation period, minimum decryption version or
// password policy; nil fields of u stay as they are, and an update with no
// field set returns the key unchanged.
//
//   - RotationPeriod: 0 turns automatic rotation off, otherwise from an
//     hour to 100 years; the next rotation is one period from now.
//   - MinDecryptionVersion: 0 removes the minimum; otherwise at most the
//     primary version, so the primary always decrypts. Ciphertexts of older
//     versions fail with ErrKeyVersionTooOld.
//   - PasswordPolicy: PASSWORD keys only; defaults and bounds as in CreateKey.
//
// Malformed values fail with ErrInvalidArgument naming the field; an unknown
// tenant or key with ErrNotFound; a tenant scheduled for deletion with
// ErrTenantDeleted.
func (s *Service) UpdateKey(ctx context.Context, ref KeyRef, u KeyUpdate) (Key, error) {
	if u.RotationPeriod != nil {
		if err := checkRotationPeriod(*u.RotationPeriod); err != nil {
			return Key{}, err
		}
	}
	var policy *PasswordPolicy
	if u.PasswordPolicy != nil {
		pp, err := s.checkPasswordPolicy(*u.PasswordPolicy)
		if err != nil {
			return Key{}, err
		}
		policy = &pp
	}
	if u.RotationPeriod == nil && u.MinDecryptionVersion == nil && u.PasswordPolicy == nil {
		return s.GetKey(ctx, ref)
	}
	return s.updateKey(ctx, ref, "update key", func(rec *keyRecord, _ *keyset.Handle) (*keyset.Handle, error) {
		if policy != nil && rec.Purpose != PurposePassword {
			return nil, fmt.Errorf("%w: key.password_policy applies to PASSWORD keys only; the key has purpose %v", ErrInvalidArgument, rec.Purpose)
		}
		if m := u.MinDecryptionVersion; m != nil && *m > rec.Primary {
			return nil, fmt.Errorf("%w: key.min_decryption_version %d is above the primary version %d", ErrInvalidArgument, *m, rec.Primary)
		}
		if p := u.RotationPeriod; p != nil {
			rec.RotationPeriod = *p
			rec.NextRotationTime = time.Time{}
			if *p > 0 {
				rec.NextRotationTime = s.now().UTC().Add(*p)
			}
		}
		if m := u.MinDecryptionVersion; m != nil {
			rec.MinDecryptionVersion = *m
		}
		if policy != nil {
			rec.PasswordPolicy = policy
		}
		return nil, nil
	})
}

// EnableKeyVersion makes a DISABLED version decrypt (and verify) again.
// Enabling an ENABLED version changes nothing. A version scheduled for
// destruction must be restored first (ErrWrongState); a destroyed one fails
// with ErrKeyVersionDestroyed; an unknown one with ErrNotFound.
func (s *Service) EnableKeyVersion(ctx context.Context, ref KeyRef, version uint32) (Key, error) {
	return s.changeVersion(ctx, ref, version, "enable key version", func(rec *keyRecord, vr *versionRecord, m *keyset.Manager) error {
		switch vr.State {
		case VersionEnabled:
			return errUnchanged
		case VersionDisabled:
		case VersionDestroyScheduled:
			return fmt.Errorf("%w: version %d is scheduled for destruction; restore it first", ErrWrongState, vr.Version)
		default:
			return fmt.Errorf("%w: version %d", ErrKeyVersionDestroyed, vr.Version)
		}
		if err := m.Enable(vr.Version); err != nil {
			return fmt.Errorf("enable version %d in the keyset: %w", vr.Version, err)
		}
		vr.State = VersionEnabled
		return nil
	})
}

// DisableKeyVersion stops a version from decrypting (ErrKeyVersionDisabled)
// until it is enabled again; disabling a DISABLED version changes nothing.
// The primary cannot be disabled (ErrPrimaryVersion): rotate first. A version
// scheduled for destruction fails with ErrWrongState, a destroyed one with
// ErrKeyVersionDestroyed, an unknown one with ErrNotFound.
func (s *Service) DisableKeyVersion(ctx context.Context, ref KeyRef, version uint32) (Key, error) {
	return s.changeVersion(ctx, ref, version, "disable key version", func(rec *keyRecord, vr *versionRecord, m *keyset.Manager) error {
		switch vr.State {
		case VersionDisabled:
			return errUnchanged
		case VersionEnabled:
		case VersionDestroyScheduled:
			return fmt.Errorf("%w: version %d is scheduled for destruction", ErrWrongState, vr.Version)
		default:
			return fmt.Errorf("%w: version %d", ErrKeyVersionDestroyed, vr.Version)
		}
		if vr.Version == rec.Primary {
			return fmt.Errorf("%w: version %d is the primary", ErrPrimaryVersion, vr.Version)
		}
		if err := m.Disable(vr.Version); err != nil {
			return fmt.Errorf("disable version %d in the keyset: %w", vr.Version, err)
		}
		vr.State = VersionDisabled
		return nil
	})
}

// DestroyKeyVersion schedules an ENABLED or DISABLED version for destruction
// after waiting (0 means DefaultWaitingPeriod; otherwise 1 to 365 days,
// else ErrInvalidArgument). The version stops decrypting at once
// (ErrKeyVersionDestroyed); RestoreKeyVersion cancels until the date, after
// which the scheduler removes its material from the stored keyset. The
// primary cannot be destroyed (ErrPrimaryVersion). A version already
// scheduled fails with ErrWrongState (its date stays), a destroyed one with
// ErrKeyVersionDestroyed, an unknown one with ErrNotFound.
func (s *Service) DestroyKeyVersion(ctx context.Context, ref KeyRef, version uint32, waiting time.Duration) (Key, error) {
	waiting, err := waitingPeriod("waiting_period", waiting)
	if err != nil {
		return Key{}, err
	}
	return s.changeVersion(ctx, ref, version, "destroy key version", func(rec *keyRecord, vr *versionRecord, m *keyset.Manager) error {
		switch vr.State {
		case VersionEnabled, VersionDisabled:
		case VersionDestroyScheduled:
			return fmt.Errorf("%w: version %d is already scheduled for destruction at %s",
				ErrWrongState, vr.Version, vr.DestroyTime.Format(time.RFC3339))
		default:
			return fmt.Errorf("%w: version %d", ErrKeyVersionDestroyed, vr.Version)
		}
		if vr.Version == rec.Primary {
			return fmt.Errorf("%w: version %d is the primary", ErrPrimaryVersion, vr.Version)
		}
		if err := m.Disable(vr.Version); err != nil {
			return fmt.Errorf("disable version %d in the keyset: %w", vr.Version, err)
		}
		vr.State = VersionDestroyScheduled
		vr.DestroyTime = s.now().UTC().Add(waiting)
		return nil
	})
}

// RestoreKeyVersion cancels a scheduled destruction before its date: the
// version becomes DISABLED (enable it to decrypt again). Once the date has
// passed, or the version is destroyed, it fails with ErrKeyVersionDestroyed;
// a version not scheduled for destruction fails with ErrWrongState, an
// unknown one with ErrNotFound.
func (s *Service) RestoreKeyVersion(ctx context.Context, ref KeyRef, version uint32) (Key, error) {
	return s.changeVersion(ctx, ref, version, "restore key version", func(_ *keyRecord, vr *versionRecord, _ *keyset.Manager) error {
		switch vr.State {
		case VersionDestroyScheduled:
		case VersionDestroyed:
			return fmt.Errorf("%w: version %d", ErrKeyVersionDestroyed, vr.Version)
		default:
			return fmt.Errorf("%w: version %d is %v, not scheduled for destruction", ErrWrongState, vr.Version, vr.State)
		}
		if !s.now().Before(vr.DestroyTime) {
			return fmt.Errorf("%w: version %d: its waiting period ended at %s",
				ErrKeyVersionDestroyed, vr.Version, vr.DestroyTime.Format(time.RFC3339))
		}
		// The keyset entry is already disabled; it stays so.
		vr.State = VersionDisabled
		vr.DestroyTime = time.Time{}
		return nil
	})
}

// changeVersion runs apply on one version of a key and on a keyset manager
// holding its keyset, under updateKey's compare-and-swap. apply returns
// errUnchanged when there is nothing to do; the key is then returned as is.
func (s *Service) changeVersion(ctx context.Context, ref KeyRef, version uint32, op string,
	apply func(rec *keyRecord, vr *versionRecord, m *keyset.Manager) error) (Key, error) {
	if version == 0 {
		return Key{}, fmt.Errorf("%w: version must be at least 1", ErrInvalidArgument)
	}
	var same Key
	k, err := s.updateKey(ctx, ref, op, func(rec *keyRecord, h *keyset.Handle) (*keyset.Handle, error) {
		vr, ok := rec.version(version)
		if !ok {
			return nil, fmt.Errorf("%w: no version %d", ErrNotFound, version)
		}
		m := keyset.NewManagerFromHandle(h)
		if err := apply(rec, vr, m); err != nil {
			if errors.Is(err, errUnchanged) {
				same = rec.toKey(ref)
			}
			return nil, err
		}
		nh, err := m.Handle()
		if err != nil {
			return nil, fmt.Errorf("keyset: %w", err)
		}
		return nh, nil
	})
	if errors.Is(err, errUnchanged) {
		return same, nil
	}
	return k, err
}

// destroyVersions destroys every version of rec whose scheduled destruction
// is due: the state becomes DESTROYED and the Tink key is deleted from the
// keyset, so the material is absent from the next stored keyset. It returns
// the versions destroyed.
func destroyVersions(rec *keyRecord, m *keyset.Manager, now time.Time) ([]uint32, error) {
	var out []uint32
	for i := range rec.Versions {
		vr := &rec.Versions[i]
		if vr.State != VersionDestroyScheduled || vr.DestroyTime.After(now) {
			continue
		}
		if vr.Version == rec.Primary {
			// Cannot happen (the primary cannot be scheduled); refuse rather
			// than leave a keyset without its primary.
			return nil, fmt.Errorf("%w: version %d is the primary", ErrPrimaryVersion, vr.Version)
		}
		if err := m.Delete(vr.Version); err != nil && hasKey(m, vr.Version) {
			return nil, fmt.Errorf("delete version %d from the keyset: %w", vr.Version, err)
		}
		vr.State = VersionDestroyed
		out = append(out, vr.Version)
	}
	return out, nil
}

// hasKey reports whether the manager's keyset holds key id.
func hasKey(m *keyset.Manager, id uint32) bool {
	h, err := m.Handle()
	if err != nil {
		return false
	}
	for i := range h.Len() {
		if e, err := h.Entry(i); err == nil && e.KeyID() == id {
			return true
		}
	}
	return false
}
