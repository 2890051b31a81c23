package backup

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/lease"
)

// PresencePrefix holds one record per process that writes to the store
// outside a restore (a server, custos root rewrap): a lease of its own,
// renewed while it runs. A restore refuses to write beside one that has
// not expired. Each such process writes its record first and checks for a
// restore's marker after; a restore writes its marker first and checks for
// these records after. So of a restore and a server starting together, at
// least one sees the other: the server does not serve a store half
// restored, nor the restore write under a server that serves.
const PresencePrefix = "presence/"

// PresenceTTL is how long a presence record lasts without renewal: how
// long a process killed without withdrawing it keeps a forced restore
// refused. Renew it at least every PresenceTTL/3.
const PresenceTTL = time.Minute

// Presence is one process's presence record.
type Presence struct {
	l        lease.Lease
	holder   string
	recorded bool // the record was written (false: the store was full)
}

// Recorded reports whether the record has been written: Announce on a
// full store checks for a restore all the same, and leaves the record to
// the first renewal that finds space.
func (p *Presence) Recorded() bool { return p.recorded }

// Announce writes a presence record naming holder (who is writing: a
// server's address, a command), then checks store for an unfinished
// restore (as Unfinished does), withdrawing the record if there is one.
// Renew it while the process writes to the store; Withdraw it at the end.
func Announce(ctx context.Context, store storage.Store, holder string) (*Presence, error) {
	p := &Presence{l: lease.Lease{Store: store, Key: PresencePrefix + rand.Text()}, holder: holder}
	switch err := p.Renew(ctx); {
	case errors.Is(err, storage.ErrFull):
		// A full store still serves reads, and takes no restore either.
	case err != nil:
		return nil, err
	default:
		removeExpiredPresence(ctx, store)
	}
	if err := Unfinished(ctx, store); err != nil {
		if werr := p.Withdraw(ctx); werr != nil {
			err = errors.Join(err, werr)
		}
		return nil, err
	}
	return p, nil
}

// Renew extends the record for PresenceTTL.
func (p *Presence) Renew(ctx context.Context) error {
	held, _, err := p.l.Acquire(ctx, p.holder, PresenceTTL)
	if err != nil {
		return fmt.Errorf("backup: presence record: %w", err)
	}
	if !held {
		return fmt.Errorf("backup: presence record %s is held by another process", p.l.Key)
	}
	p.recorded = true
	return nil
}

// Withdraw deletes the record: a restore need not wait for it to expire.
func (p *Presence) Withdraw(ctx context.Context) error {
	if err := p.l.Release(ctx, p.holder); err != nil {
		return fmt.Errorf("backup: presence record: %w", err)
	}
	return nil
}

// RunPresence renews p every interval (PresenceTTL/3 if 0) until ctx
// ends, reporting through warn what fails: a renewal (the record may lapse,
// and a restore then start beside this process), and an unfinished restore
// found on the store (one started while the record had lapsed: an error
// wrapping ErrRestoring).
func RunPresence(ctx context.Context, p *Presence, interval time.Duration, warn func(msg string, err error)) {
	if interval <= 0 {
		interval = PresenceTTL / 3
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		// At once first: the record was written at Announce, and the
		// caller may have taken a while since (a slow start).
		rctx, cancel := context.WithTimeout(ctx, PresenceTTL/3)
		rerr := p.Renew(rctx)
		cancel()
		// Whether or not the renewal went through (a full store still
		// reads; a write that hangs used up only its own deadline): a
		// restore found is what matters most.
		uctx, cancel := context.WithTimeout(ctx, PresenceTTL/3)
		uerr := Unfinished(uctx, p.l.Store)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if uerr != nil {
			warn("could not check the store for a restore", uerr) // or ErrRestoring: one found
		}
		if rerr != nil {
			warn("presence record", rerr)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// presentWriters refuses a target with an unexpired presence record,
// judged at now (the store's clock where it has one).
func presentWriters(ctx context.Context, target storage.Store, now time.Time) error {
	for after := ""; ; {
		recs, err := target.List(ctx, PresencePrefix, after, 100)
		if err != nil {
			return fmt.Errorf("backup: read the target store: %w", err)
		}
		for _, r := range recs {
			if holder, until, held := lease.HolderOf(r.Value, now); held {
				return fmt.Errorf("%w (%s is writing to it, its presence record %s lasts until %s unless renewed)", ErrServersRunning, holder, r.Key, until.UTC().Format(time.RFC3339))
			}
		}
		if len(recs) < 100 {
			return nil
		}
		after = recs[len(recs)-1].Key
	}
}

// removeExpiredPresence deletes the presence records that expired (their
// processes were killed) an hour ago or more, judged by the store's clock
// where it has one (else this process's), with that margin for the
// writers' clocks: one per crash would pile up, and travel in every
// backup. Best effort: a failure leaves them for the next start.
func removeExpiredPresence(ctx context.Context, store storage.Store) {
	now, err := clockOf(ctx, store, time.Now)
	if err != nil {
		return
	}
	old := now.Add(-time.Hour)
	for after := ""; ; {
		recs, err := store.List(ctx, PresencePrefix, after, 100)
		if err != nil {
			return
		}
		for _, r := range recs {
			if _, _, held := lease.HolderOf(r.Value, old); !held {
				_ = store.Delete(ctx, r.Key, r.Version) // a renewal meanwhile is a conflict: it stays
			}
		}
		if len(recs) < 100 {
			return
		}
		after = recs[len(recs)-1].Key
	}
}
