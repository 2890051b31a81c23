package keystore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tink-crypto/tink-go/v2/keyset"

	"github.com/custos-kms/custos/keystore/storage"
)

// CreateKey creates a key with version 1 as its primary. It returns
// ErrNotFound for an unknown tenant and ErrAlreadyExists if the id is taken.
func (s *Service) CreateKey(ctx context.Context, ref KeyRef, spec KeySpec) (Key, error) {
	if !ValidID(ref.Tenant) {
		return Key{}, fmt.Errorf("%w: parent is malformed (not tenants/{tenant})", ErrInvalidArgument)
	}
	if !ValidID(ref.Key) {
		return Key{}, fmt.Errorf("%w: key_id must match %s", ErrInvalidArgument, IDPattern)
	}
	switch spec.Purpose {
	case PurposeEncrypt, PurposeEncryptDeterministic, PurposeMAC, PurposePassword:
	default:
		return Key{}, fmt.Errorf("%w: key.purpose %v is not supported", ErrInvalidArgument, spec.Purpose)
	}
	var policy *PasswordPolicy
	switch {
	case spec.Purpose == PurposePassword:
		pp := PasswordPolicy{}
		if spec.PasswordPolicy != nil {
			pp = *spec.PasswordPolicy
		}
		pp, err := s.checkPasswordPolicy(pp)
		if err != nil {
			return Key{}, err
		}
		policy = &pp
	case spec.PasswordPolicy != nil:
		return Key{}, fmt.Errorf("%w: key.password_policy applies to PASSWORD keys only", ErrInvalidArgument)
	}
	if err := checkRotationPeriod(spec.RotationPeriod); err != nil {
		return Key{}, err
	}
	defer s.m.beginRead(ref)() // from before its read to after its put
	gen := s.m.gens.of(ref.Tenant)
	kek, tver, err := s.m.activeTenant(ctx, ref.Tenant)
	if err != nil {
		return Key{}, err
	}
	h, err := addVersion(nil, spec.Purpose, 1)
	if err != nil {
		return Key{}, err
	}
	now := s.now().UTC()
	rec := &keyRecord{
		Format:         recordFormat,
		Purpose:        spec.Purpose,
		CreateTime:     now,
		Primary:        1,
		Versions:       []versionRecord{{Version: 1, State: VersionEnabled, CreateTime: now}},
		PasswordPolicy: policy,
	}
	if err := sealKeyset(h, kek, ref, rec); err != nil {
		return Key{}, err
	}
	if spec.RotationPeriod > 0 {
		rec.RotationPeriod = spec.RotationPeriod
		rec.NextRotationTime = now.Add(spec.RotationPeriod)
	}
	b, err := encodeRecord(rec)
	if err != nil {
		return Key{}, err
	}
	ver, err := s.store.Put(ctx, keyStorageKey(ref), b, 0)
	if err != nil {
		if errors.Is(err, storage.ErrConflict) {
			return Key{}, fmt.Errorf("key %s: %w", ref, ErrAlreadyExists)
		}
		// The outcome is unknown (an answer lost after COMMIT): the
		// rotation's hint, which does nothing if the key was not made,
		// since a retry is refused (ALREADY_EXISTS) before it writes.
		s.noteKeyDue(ctx, ref, rec)
		return Key{}, storageErr("create key", err)
	}
	s.m.noteVersion(ref, ver)
	s.noteKeyDue(ctx, ref, rec)
	if prim, err := newPrimitives(rec.Purpose, h); err == nil {
		s.m.put(gen, &keyEntry{ref: ref, rec: rec, prim: prim, ver: ver, tenantVer: tver})
	}
	return rec.toKey(ref), nil
}

// MinRotationPeriod and MaxRotationPeriod bound an automatic rotation
// period. The longest is 100 years: the API's durations saturate near 292
// years, so a longer one would be stored as other than asked.
const (
	MinRotationPeriod = time.Hour
	MaxRotationPeriod = 100 * 365 * 24 * time.Hour
)

// checkRotationPeriod accepts 0 (no automatic rotation) or a period from
// MinRotationPeriod to MaxRotationPeriod.
func checkRotationPeriod(d time.Duration) error {
	if d < 0 || (d > 0 && d < MinRotationPeriod) || d > MaxRotationPeriod {
		return fmt.Errorf("%w: key.rotation_period must be zero, or from 1h to 100 years (876000h)", ErrInvalidArgument)
	}
	return nil
}

// GetKey returns a key's metadata, read from storage.
func (s *Service) GetKey(ctx context.Context, ref KeyRef) (Key, error) {
	if !ValidID(ref.Tenant) || !ValidID(ref.Key) {
		return Key{}, fmt.Errorf("%w: key is malformed (not tenants/{tenant}/keys/{key})", ErrInvalidArgument)
	}
	if err := s.checkTenantActive(ctx, ref.Tenant); err != nil {
		return Key{}, err
	}
	rec, _, err := s.readKey(ctx, ref)
	if err != nil {
		return Key{}, err
	}
	return rec.toKey(ref), nil
}

// ListKeys returns up to size keys of a tenant in id order after the page
// token, and the next page's token ("" on the last page).
func (s *Service) ListKeys(ctx context.Context, tenant string, size int, token string) ([]Key, string, error) {
	if !ValidID(tenant) {
		return nil, "", fmt.Errorf("%w: parent is malformed (not tenants/{tenant})", ErrInvalidArgument)
	}
	size, err := pageSize(size)
	if err != nil {
		return nil, "", err
	}
	after, err := decodeKeysPageToken(token, tenant)
	if err != nil {
		return nil, "", err
	}
	if err := s.checkTenantActive(ctx, tenant); err != nil {
		return nil, "", err
	}
	prefix := keyStoragePrefix(tenant)
	if after != "" {
		after = prefix + after
	}
	recs, err := s.store.List(ctx, prefix, after, size+1)
	if err != nil {
		return nil, "", storageErr("list keys", err)
	}
	var next string
	if len(recs) > size {
		recs = recs[:size]
		next = encodeKeysPageToken(tenant, strings.TrimPrefix(recs[size-1].Key, prefix))
	}
	out := make([]Key, 0, len(recs))
	for _, r := range recs {
		ref := KeyRef{Tenant: tenant, Key: strings.TrimPrefix(r.Key, prefix)}
		rec, err := decodeKey(r.Value)
		if err != nil {
			return nil, "", fmt.Errorf("key %s: %w", ref, err)
		}
		out = append(out, rec.toKey(ref))
	}
	return out, next, nil
}

// RotateKey adds a new version and makes it primary. Older versions keep
// decrypting. Concurrent rotations on any number of replicas each add exactly
// one version (compare-and-swap with retry).
func (s *Service) RotateKey(ctx context.Context, ref KeyRef) (Key, error) {
	return s.updateKey(ctx, ref, "rotate key", s.rotate)
}

// rotate adds a new primary version to rec and h and, for keys that rotate
// automatically, moves the next rotation one period from now.
func (s *Service) rotate(rec *keyRecord, h *keyset.Handle) (*keyset.Handle, error) {
	next := rec.maxVersion() + 1
	nh, err := addVersion(h, rec.Purpose, next)
	if err != nil {
		return nil, err
	}
	now := s.now().UTC()
	rec.Versions = append(rec.Versions, versionRecord{Version: next, State: VersionEnabled, CreateTime: now})
	rec.Primary = next
	if rec.RotationPeriod > 0 {
		rec.NextRotationTime = now.Add(rec.RotationPeriod)
	}
	return nh, nil
}

// updateKey runs a read-modify-write of a key's record and keyset with
// compare-and-swap, retrying when another writer got there first. mutate
// changes rec in place and returns the new keyset (or h unchanged, or nil
// for "no keyset change").
func (s *Service) updateKey(ctx context.Context, ref KeyRef, op string, mutate func(rec *keyRecord, h *keyset.Handle) (*keyset.Handle, error)) (Key, error) {
	if !ValidID(ref.Tenant) || !ValidID(ref.Key) {
		return Key{}, fmt.Errorf("%w: key is malformed (not tenants/{tenant}/keys/{key})", ErrInvalidArgument)
	}
	var out Key
	defer s.m.beginRead(ref)() // from before its read to after its put
	err := retryCAS(fmt.Sprintf("%s %s", op, ref), func() error {
		gen := s.m.gens.of(ref.Tenant)
		kek, tver, err := s.m.activeTenant(ctx, ref.Tenant)
		if err != nil {
			return err
		}
		rec, ver, err := s.readKey(ctx, ref)
		if err != nil {
			return err
		}
		wasDue, hadDue := s.keyDue(rec, s.now())
		h, err := openKeyset(kek, ref, rec)
		if err != nil {
			s.logger.Error("stored keyset failed authentication", "key", ref.String())
			return err
		}
		nh, err := mutate(rec, h)
		if err != nil {
			return fmt.Errorf("%s %s: %w", op, ref, err)
		}
		if nh == nil {
			nh = h
		}
		if nh != h {
			if err := sealKeyset(nh, kek, ref, rec); err != nil {
				return err
			}
		}
		b, err := encodeRecord(rec)
		if err != nil {
			return err
		}
		nver, err := s.store.Put(ctx, keyStorageKey(ref), b, ver)
		if err != nil && errors.Is(err, storage.ErrConflict) {
			return storageErr(op, err)
		}
		// Written, or maybe (an answer lost after COMMIT, and a retried
		// DestroyKeyVersion is refused before it writes): the hint of the
		// new due date. The old date's, now of no use, is dropped once the
		// write is known to have landed (one per rotation, or per rotation
		// period set again, piled up until its date, a key's name in it);
		// while the record may still say it, it stays (a hint re-reads the
		// record, so a spare one costs a read).
		name := ref.Tenant + "/" + ref.Key
		due, hasDue := s.keyDue(rec, s.now())
		if hasDue {
			s.noteDue(ctx, due, dueKeyKind, name)
		}
		if err == nil && hadDue && (!hasDue || dueStorageKey(due, dueKeyKind, name) != dueStorageKey(wasDue, dueKeyKind, name)) {
			s.dropDue(ctx, wasDue, dueKeyKind, name)
		}
		if err != nil {
			return storageErr(op, err)
		}
		s.m.noteVersion(ref, nver)
		if prim, err := newPrimitives(rec.Purpose, nh); err == nil {
			s.m.put(gen, &keyEntry{ref: ref, rec: rec, prim: prim, ver: nver, tenantVer: tver})
		}
		out = rec.toKey(ref)
		return nil
	})
	return out, err
}
