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
	l      lease.Lease
	holder string
}

// Announce writes a presence record naming holder (who is writing: a
// server's address, a command), then checks store for an unfinished
// restore (as Unfinished does), withdrawing the record if there is one.
// Renew it while the process writes to the store; Withdraw it at the end.
func Announce(ctx context.Context, store storage.Store, holder string) (*Presence, error) {
	p := &Presence{l: lease.Lease{Store: store, Key: PresencePrefix + rand.Text()}, holder: holder}
	if err := p.Renew(ctx); err != nil {
		return nil, err
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
	return nil
}

// Withdraw deletes the record: a restore need not wait for it to expire.
func (p *Presence) Withdraw(ctx context.Context) error {
	if err := p.l.Release(ctx, p.holder); err != nil {
		return fmt.Errorf("backup: presence record: %w", err)
	}
	return nil
}

// RunPresence renews p every PresenceTTL/3 until ctx ends, logging through
// warn what fails: a renewal (the record may lapse, and a restore then
// start beside this process), and an unfinished restore found on the store
// (one started while the record had lapsed: an error wrapping
// ErrRestoring).
func RunPresence(ctx context.Context, p *Presence, warn func(msg string, err error)) {
	t := time.NewTicker(PresenceTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, PresenceTTL/3)
		err := p.Renew(rctx)
		if err == nil {
			err = Unfinished(rctx, p.l.Store)
		}
		cancel()
		if err != nil && ctx.Err() == nil {
			warn("presence record", err)
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
			holder, until, held, err := lease.Lease{Store: target, Key: r.Key, Now: func() time.Time { return now }}.Holder(ctx)
			if err != nil {
				return fmt.Errorf("backup: read the target store: %w", err)
			}
			if held {
				return fmt.Errorf("%w (%s is writing to it, its presence record %s lasts until %s unless renewed)", ErrServersRunning, holder, r.Key, until.UTC().Format(time.RFC3339))
			}
		}
		if len(recs) < 100 {
			return nil
		}
		after = recs[len(recs)-1].Key
	}
}
