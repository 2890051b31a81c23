// Package lease lets one of several replicas sharing a storage.Store do a
// job at a time: a lease is a record naming its holder and when it expires,
// taken, renewed and released with compare-and-swap. A holder that dies
// blocks the others for at most the lease's TTL.
package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/custos-kms/custos/keystore/storage"
)

// recordFormat is the version of the lease record.
const recordFormat = 1

// record is what storage holds for a lease.
type record struct {
	Format     int       `json:"format"`
	Holder     string    `json:"holder"`
	ExpireTime time.Time `json:"expire_time"`
}

// Lease is one named lease in a store.
type Lease struct {
	// Store holds the lease record.
	Store storage.Store
	// Key is the record's storage key.
	Key string
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

func (l Lease) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

// Acquire takes the lease for holder, or renews it, until now + ttl. It
// reports false while another holder's lease has not expired, or when
// another replica won the compare-and-swap. An unreadable record is taken
// over (and reported as taken over, so the caller can log it).
func (l Lease) Acquire(ctx context.Context, holder string, ttl time.Duration) (held, tookOverUnreadable bool, err error) {
	now := l.now()
	var expect uint64
	r, err := l.Store.Get(ctx, l.Key)
	switch {
	case errors.Is(err, storage.ErrNotFound):
	case err != nil:
		return false, false, fmt.Errorf("read lease %s: %w", l.Key, err)
	default:
		var rec record
		if err := json.Unmarshal(r.Value, &rec); err != nil || rec.Format != recordFormat {
			tookOverUnreadable = true
		} else if rec.Holder != holder && now.Before(rec.ExpireTime) {
			return false, false, nil
		}
		expect = r.Version
	}
	b, err := json.Marshal(record{Format: recordFormat, Holder: holder, ExpireTime: now.Add(ttl).UTC()})
	if err != nil {
		return false, false, err
	}
	if _, err := l.Store.Put(ctx, l.Key, b, expect); err != nil {
		if errors.Is(err, storage.ErrConflict) {
			return false, false, nil
		}
		return false, false, fmt.Errorf("write lease %s: %w", l.Key, err)
	}
	return true, tookOverUnreadable, nil
}

// Release deletes the lease if holder holds it, so another replica can take
// it at once.
func (l Lease) Release(ctx context.Context, holder string) error {
	r, err := l.Store.Get(ctx, l.Key)
	if errors.Is(err, storage.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read lease %s: %w", l.Key, err)
	}
	var rec record
	if err := json.Unmarshal(r.Value, &rec); err != nil || rec.Holder != holder {
		return nil
	}
	err = l.Store.Delete(ctx, l.Key, r.Version)
	if err != nil && !errors.Is(err, storage.ErrNotFound) && !errors.Is(err, storage.ErrConflict) {
		return fmt.Errorf("release lease %s: %w", l.Key, err)
	}
	return nil
}

// Holder returns who holds the lease and until when, if someone does now
// (held is false when there is no record, it is unreadable, or it expired).
func (l Lease) Holder(ctx context.Context) (holder string, until time.Time, held bool, err error) {
	r, err := l.Store.Get(ctx, l.Key)
	if errors.Is(err, storage.ErrNotFound) {
		return "", time.Time{}, false, nil
	}
	if err != nil {
		return "", time.Time{}, false, fmt.Errorf("read lease %s: %w", l.Key, err)
	}
	holder, until, held = HolderOf(r.Value, l.now())
	return holder, until, held, nil
}

// HolderOf reads a lease record's value: who holds it and until when, if
// someone does at now (held is false when it is unreadable or expired).
func HolderOf(value []byte, now time.Time) (holder string, until time.Time, held bool) {
	var rec record
	if err := json.Unmarshal(value, &rec); err != nil || rec.Format != recordFormat || !now.Before(rec.ExpireTime) {
		return "", time.Time{}, false
	}
	return rec.Holder, rec.ExpireTime, true
}
