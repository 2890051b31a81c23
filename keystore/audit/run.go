package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/transparency-dev/merkle/compact"

	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/lease"
)

// Defaults of RunConfig.
const (
	DefaultCheckpointInterval = 2 * time.Second
	DefaultRetention          = 90 * 24 * time.Hour
	DefaultPruneInterval      = time.Hour
	DefaultLeaseTTL           = 30 * time.Second
	// integrateChunk is the most events one atomic integration writes.
	integrateChunk = 8192
	// maxChunksPerTick bounds the integration work between two checkpoints
	// when the queue does not empty (a backlog after an outage).
	maxChunksPerTick = 64
)

// RunConfig configures Log.Run.
type RunConfig struct {
	// Holder names this replica in the integration lease. Required.
	Holder string
	// CheckpointInterval is how often queued events are integrated and a
	// checkpoint signed. Default DefaultCheckpointInterval.
	CheckpointInterval time.Duration
	// LeaseTTL. Default DefaultLeaseTTL, or three CheckpointIntervals
	// when longer.
	LeaseTTL time.Duration
	// Retention: event bodies older than this are deleted (their hashes
	// stay). Default DefaultRetention; negative keeps them forever.
	Retention time.Duration
	// PruneInterval is how often retention runs. Default DefaultPruneInterval.
	PruneInterval time.Duration
	// BeforeFinal runs before the last integration at shutdown (the
	// writer's last shipping of its spool).
	BeforeFinal func(ctx context.Context)
}

// Run integrates and signs every CheckpointInterval while this replica
// holds the integration lease, and prunes by retention every PruneInterval,
// until ctx is done; then, holding the lease, it integrates what is queued,
// signs a last checkpoint and releases the lease. Call it after the
// writers of this process have flushed their last events, or run Flush.
func (l *Log) Run(ctx context.Context, cfg RunConfig) {
	if cfg.CheckpointInterval <= 0 {
		cfg.CheckpointInterval = DefaultCheckpointInterval
	}
	if cfg.LeaseTTL <= 0 {
		// Three intervals at least: a holder that renews at every tick
		// keeps it through a late one.
		cfg.LeaseTTL = max(DefaultLeaseTTL, 3*cfg.CheckpointInterval)
	}
	if cfg.Retention == 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.PruneInterval <= 0 {
		cfg.PruneInterval = DefaultPruneInterval
	}
	ls := lease.Lease{Store: l.store, Key: leaseKey, Now: l.now}
	t := time.NewTicker(cfg.CheckpointInterval)
	defer t.Stop()
	var lastPrune time.Time
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if cfg.BeforeFinal != nil {
				cfg.BeforeFinal(fctx)
			}
			if held, _, err := ls.Acquire(fctx, cfg.Holder, cfg.LeaseTTL); err == nil && held {
				if err := l.Flush(fctx); err != nil {
					l.logger.Error("audit: final integration failed; the queued events stay for the next holder", "error", err.Error())
				}
				_ = ls.Release(fctx, cfg.Holder)
			}
			return
		case <-t.C:
		}
		// Bounded by the lease's TTL (it is lost by then anyway), as the
		// scheduler's: a storage call gone silent must not stop the
		// trail until TCP gives up.
		actx, cancel := context.WithTimeout(ctx, cfg.LeaseTTL)
		held, _, err := ls.Acquire(actx, cfg.Holder, cfg.LeaseTTL)
		cancel()
		if err != nil || !held {
			if err != nil && ctx.Err() == nil {
				l.logger.Warn("audit: integration lease unavailable", "error", err.Error())
			}
			continue
		}
		if err := l.tick(ctx, maxChunksPerTick, false); err != nil && ctx.Err() == nil {
			l.logger.Warn("audit: integration failed; retrying", "error", err.Error())
		}
		if cfg.Retention > 0 && l.now().Sub(lastPrune) >= cfg.PruneInterval {
			lastPrune = l.now()
			n, err := l.Prune(ctx, l.now().Add(-cfg.Retention))
			switch {
			case err == nil || ctx.Err() != nil:
			case errors.Is(err, ErrRetentionWaiting):
				l.logger.Warn("audit: retention waits", "error", err.Error())
			default:
				l.logger.Warn("audit: retention failed; retrying", "error", err.Error())
			}
			if n > 0 {
				l.logger.Info("audit: retention deleted event bodies", "events", n)
			}
		}
	}
}

// Flush integrates everything queued and signs a checkpoint of it.
// The checkpoint is kept in the history.
func (l *Log) Flush(ctx context.Context) error { return l.tick(ctx, 1<<20, true) }

func (l *Log) tick(ctx context.Context, chunks int, history bool) error {
	for range chunks {
		// Until the queue is empty: a page of batches already in the log
		// integrates nothing, yet real ones may follow.
		_, taken, err := l.integrate(ctx, integrateChunk)
		if err != nil {
			return err
		}
		if taken == 0 {
			break
		}
	}
	_, err := l.sign(ctx, history)
	return err
}

// Prune deletes the bodies of events before cutoff (their tenant views
// keep only bare indexes), oldest index first,
// stopping at the first event at or after cutoff (events are integrated
// roughly in time order; a straggler waits for the next pass). Leaf hashes
// and the tree's nodes stay, so the log still verifies. It also forgets
// checkpoints older than cutoff, except the latest.
// It returns how many bodies it deleted.
//
// Only a body that is there, in index order, and hashes to its leaf is
// deleted: the horizon a checkpoint then signs excuses the missing bodies
// below it, so retention must not excuse a body someone else deleted or
// changed. At such a body Prune stops with ErrRetentionStopped, and
// `custos audit verify` reports it. Each batch's horizon is signed before
// its bodies are deleted, and Prune goes on from the signed horizon, never
// beyond it: a horizon raised in the stored state alone excuses nothing.
func (l *Log) Prune(ctx context.Context, cutoff time.Time) (int, error) {
	total, conflicts := 0, 0
	var waiting error // an event dated in the future holds the rest back
	for {
		st, _, err := l.loadTree(ctx)
		if err != nil {
			return total, err
		}
		signed, err := l.signedPruned(ctx, st)
		if err != nil {
			return total, err
		}
		from := min(st.Pruned, signed) // a batch signed but not yet deleted goes again
		after := ""
		if from > 0 {
			after = leafKey(from - 1)
		}
		recs, err := l.store.List(ctx, leafPrefix, after, 500)
		if err != nil {
			return total, fmt.Errorf("audit: list leaves: %w", err)
		}
		var ops []storage.Op
		deleted := 0
		next, done := from, len(recs) < 500
		var stopped error
		for _, r := range recs {
			i, ok := parseHex16(strings.TrimPrefix(r.Key, leafPrefix))
			if !ok {
				continue // no event's key (audit verify reports it)
			}
			if i >= st.Size {
				done = true
				break
			}
			if i != next {
				stopped = fmt.Errorf("%w: the body of event %d is missing", ErrRetentionStopped, next)
				break
			}
			same, err := l.integrated(ctx, i, r.Value)
			if err != nil {
				return total, err
			}
			if !same {
				stopped = fmt.Errorf("%w: the body of event %d does not match its leaf hash", ErrRetentionStopped, i)
				break
			}
			// A body that is what was integrated but does not decode (no
			// server writes one) has no time; it goes with the old ones
			// rather than stopping retention for good.
			if ev, err := Unmarshal(r.Value); err == nil && !ev.GetTime().AsTime().Before(cutoff) {
				if at := ev.GetTime().AsTime(); at.After(l.now().Add(futureSkew)) {
					// Retention waits for it as for any newer event, and
					// the bodies after it with it: say so, or a clock that
					// ran ahead keeps them past the retention unseen.
					waiting = fmt.Errorf("%w: event %d is dated %s, after now: the clock of the server that recorded it ran ahead; the bodies from it on are kept until then (audit.md)",
						ErrRetentionWaiting, i, at.UTC().Format(time.RFC3339))
				}
				done = true
				break
			}
			// The tenant's view keeps the bare index; its body is gone.
			ops = append(ops, storage.Op{Key: r.Key, Delete: true, Expect: storage.AnyVersion})
			next = i + 1
			deleted++
		}
		if len(ops) > 0 {
			// The horizon first, signed (and kept in the history), then
			// the bodies: a crash between the two leaves bodies that the
			// next pass deletes, never a gap no checkpoint excuses.
			if _, err := l.signHorizon(ctx, true, next); err != nil {
				return total, fmt.Errorf("audit: prune: sign the horizon: %w", err)
			}
			st, ver, err := l.loadTree(ctx)
			if err != nil {
				return total, err
			}
			st.Pruned = max(st.Pruned, next)
			b, _ := json.Marshal(st)
			ops = append(ops, storage.Op{Key: treeKey, Value: b, Expect: ver})
			if err := l.applier.Apply(ctx, ops); errors.Is(err, storage.ErrConflict) && conflicts < 10 {
				conflicts++
				continue // the tree moved on meanwhile: this batch again
			} else if err != nil {
				return total, fmt.Errorf("audit: prune: %w", err)
			}
			total += deleted
		}
		if stopped != nil {
			return total, stopped
		}
		if done || len(ops) == 0 {
			break
		}
	}
	if err := l.pruneSide(ctx, cutoff); err != nil { // old checkpoints go, waiting or not
		return total, err
	}
	return total, waiting
}

// ErrRetentionStopped: retention met an event body it must not delete
// (missing, or not the one integrated) and stopped there.
var ErrRetentionStopped = errors.New("audit: retention stopped; run custos audit verify")

// ErrRetentionWaiting: retention met an event dated in the future (a
// server's clock ahead), which holds back the bodies after it.
var ErrRetentionWaiting = errors.New("audit: retention waits behind an event dated in the future")

// futureSkew is how far after now an event's time may be before retention
// says that it waits for it: more than replicas' clocks drift apart.
const futureSkew = time.Hour

// integrated reports whether leaf is the body event i was integrated
// with (it hashes to the stored leaf hash; a hash not stored is not).
func (l *Log) integrated(ctx context.Context, i uint64, leaf []byte) (bool, error) {
	h, err := l.hash(ctx, compact.NewNodeID(0, i))
	if err != nil {
		return false, fmt.Errorf("audit: prune: %w", err)
	}
	return h != nil && bytes.Equal(h, LeafHash(leaf)), nil
}

// pruneSide forgets checkpoints older than cutoff (the latest always
// stays). Shipped marks stay, however old: a server down longer than the
// retention may still hold batches in its spool that are in the tree, and
// only its mark keeps them from being integrated twice when it ships them
// (one small record per writer, that is per server start).
func (l *Log) pruneSide(ctx context.Context, cutoff time.Time) error {
	var ops []storage.Op
	v, err := l.Verifier(ctx)
	if err != nil {
		return err
	}
	// Old history checkpoints go, but never the newest: each is deleted
	// only once a newer one has been seen.
	var prev *storage.Record
	for after := ""; v != nil && len(ops) < 50_000; {
		cps, err := l.store.List(ctx, cpPrefix, after, 1000)
		if err != nil {
			return fmt.Errorf("audit: list checkpoints: %w", err)
		}
		stop := false
		for i := range cps {
			c := cps[i]
			after = c.Key
			cp, err := ParseCheckpoint(c.Value, v)
			if err != nil || !cp.Time.Before(cutoff) {
				stop = true
				break
			}
			if prev != nil {
				ops = append(ops, storage.Op{Key: prev.Key, Delete: true, Expect: prev.Version})
			}
			prev = &c
		}
		if stop || len(cps) < 1000 {
			break
		}
	}
	if len(ops) == 0 {
		return nil
	}
	if err := l.applier.Apply(ctx, ops); err != nil && !errors.Is(err, storage.ErrConflict) {
		return fmt.Errorf("audit: prune checkpoints: %w", err)
	}
	return nil
}
