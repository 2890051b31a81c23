package keystore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/storage"
)

// RewrapProgress reports each tenant whose KEK RewrapTenantKEKs re-wrapped.
type RewrapProgress func(tenant string)

// RewrapTenantKEKs re-wraps every tenant's KEK under the root key's current
// version (after a Vault Transit or KMS key rotation), while the service keeps
// serving: the KEK itself does not change, so caches stay valid and no keyset
// is touched (RewrapPageTokenKey re-wraps the page-token key; custos root
// rewrap runs both). Each tenant is updated with compare-and-swap;
// interrupted and
// run again, it simply re-wraps every tenant again and finishes without loss.
// It returns how many tenants it re-wrapped.
func (s *Service) RewrapTenantKEKs(ctx context.Context, progress RewrapProgress) (int, error) {
	n := 0
	for r, err := range s.scan(ctx, "rewrap: list tenants", tenantPrefix) {
		if err != nil {
			return n, err
		}
		tenant := strings.TrimPrefix(r.Key, tenantPrefix)
		if err := s.rewrapTenantKEK(ctx, tenant); err != nil {
			return n, err
		}
		n++
		if progress != nil {
			progress(tenant)
		}
	}
	return n, nil
}

// RewrapPageTokenKey re-wraps the page-token key (pagetoken.go), if the
// deployment has one, under the root key's current version. One the root
// no longer opens (wrapped under a version retired before it was
// re-wrapped) is replaced: that voids the page tokens out now, and servers
// running with the old key keep it until they restart. It reports whether
// there was a key, and whether it replaced it.
func (s *Service) RewrapPageTokenKey(ctx context.Context) (found, replaced bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, loadTimeout) // as rewrapTenantKEK
	defer cancel()
	err = retryCAS("rewrap the page-token key", func() error {
		found, replaced = false, false
		rec, err := s.store.Get(ctx, pageTokenKeyKey)
		if errors.Is(err, storage.ErrNotFound) {
			return nil
		}
		found = true
		if err != nil {
			return storageErr("rewrap: read the page-token key", err)
		}
		raw, err := s.root.Unwrap(ctx, rec.Value, []byte(pageTokenKeyAAD))
		if errors.Is(err, root.ErrNotAuthentic) {
			if raw, err = s.newKEK(); err != nil {
				return fmt.Errorf("rewrap: page-token key: %w", err)
			}
			replaced = true
		} else if err != nil {
			return rootErr("rewrap: unwrap the page-token key", err)
		}
		wrapped, err := s.root.Wrap(ctx, raw, []byte(pageTokenKeyAAD))
		clear(raw)
		if err != nil {
			return rootErr("rewrap: wrap the page-token key", err)
		}
		if _, err := s.store.Put(ctx, pageTokenKeyKey, wrapped, rec.Version); err != nil {
			return storageErr("rewrap: store the page-token key", err)
		}
		return nil
	})
	return found, replaced, err
}

func (s *Service) rewrapTenantKEK(ctx context.Context, tenant string) error {
	// Bounded like a load's unwrap: a root that stops answering fails the
	// run (which is simply started again) instead of hanging it.
	ctx, cancel := context.WithTimeout(ctx, loadTimeout)
	defer cancel()
	return retryCAS(fmt.Sprintf("rewrap tenant %q", tenant), func() error {
		rec, ver, err := s.readTenant(ctx, tenant)
		if errors.Is(err, ErrNotFound) {
			return nil // shredded meanwhile
		}
		if err != nil {
			return err
		}
		aad := tenantKEKAAD(tenant)
		raw, err := s.root.Unwrap(ctx, rec.WrappedKEK, aad)
		if err != nil {
			return rootErr(fmt.Sprintf("rewrap: unwrap KEK of tenant %q", tenant), err)
		}
		rec.WrappedKEK, err = s.root.Wrap(ctx, raw, aad)
		clear(raw)
		if err != nil {
			return rootErr(fmt.Sprintf("rewrap: wrap KEK of tenant %q", tenant), err)
		}
		b, err := encodeRecord(rec)
		if err != nil {
			return err
		}
		if _, err := s.store.Put(ctx, tenantStorageKey(tenant), b, ver); err != nil {
			return storageErr("rewrap: store tenant", err)
		}
		return nil
	})
}

// Dependencies reports whether the storage and the root can be reached now;
// each error is nil when that dependency answered. It costs one storage read
// and one root wrap, so call it periodically, never per request.
func (s *Service) Dependencies(ctx context.Context) (storageErr, rootErr error) {
	if _, err := s.store.Get(ctx, storage.ProbeKey); err != nil && !errors.Is(err, storage.ErrNotFound) {
		storageErr = err
	}
	if wh, ok := s.store.(storage.WriteHealth); ok && storageErr == nil {
		if err := wh.WriteHealth(); err != nil {
			// Writes failed for lack of space. Where only a successful
			// write clears that (PostgreSQL), one small write tells
			// whether space came back; bbolt clears once its file system
			// has room again, and a write there would prove nothing.
			if p, ok := s.store.(storage.WriteProber); ok {
				_ = p.ProbeWrite(ctx)
			}
			storageErr = wh.WriteHealth()
		}
	}
	probe := make([]byte, kekSize)
	if _, err := s.root.Wrap(ctx, probe, []byte("custos:probe")); err != nil {
		rootErr = err
	} else if c, ok := s.root.(root.Checker); ok {
		if err := c.Check(ctx); err != nil {
			rootErr = err
			if errors.Is(err, root.ErrAtRisk) { // not a check cut short (its deadline)
				s.logger.Error("ROOT KEY AT RISK: the root works now but would not come back after a restart", "error", err.Error())
			}
		}
	}
	return storageErr, rootErr
}
