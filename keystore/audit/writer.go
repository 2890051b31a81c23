package audit

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/custos-kms/custos/keystore/storage"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// ErrUnavailable is wrapped by Record's error when an event could be made
// durable neither in the store nor in the spool: the call must fail closed.
var ErrUnavailable = errors.New("audit: event could not be recorded")

// WriterConfig configures a Writer.
type WriterConfig struct {
	// Store receives the events. Required.
	Store storage.Store
	// SpoolPath is the path prefix of the local spool's segment files
	// (SpoolPath.<n>), for events the store cannot take. Empty: no spool,
	// so a store outage fails calls (or drops events with FailOpen).
	SpoolPath string
	// JournalFirst writes every batch to the spool and ships batches to the
	// store in the background, many per store transaction: for a store on
	// the same disk (bbolt), where a spool append and its sync cost much
	// less than a store transaction and are as durable. Needs SpoolPath.
	JournalFirst bool
	// ShipInterval is how often spooled batches are shipped while the store
	// takes them. Default 50ms with JournalFirst, else 1s.
	ShipInterval time.Duration
	// FailOpen acknowledges calls whose event could not be recorded
	// anywhere, counting them in custos_audit_dropped_total and logging
	// each batch at error level. Default false: such calls fail.
	FailOpen bool
	// Export, if set, receives every event once it is durable.
	Export *Exporter
	// CommitDelay is the longest the committer waits for more events
	// while calls that will record one are in flight (see Begin), so that
	// more events share one sync (PostgreSQL's commit_delay). Default
	// 200µs; negative: never wait.
	CommitDelay time.Duration
	// CommitTimeout bounds one store write. Default 5s.
	CommitTimeout time.Duration
	// SyncInterval, if positive, relaxes the spool's durability: a batch
	// is written to the operating system before its calls are answered
	// and synced to disk at this interval, not before. Such an event
	// survives the server process dying (kill -9, OOM, panic), not a power
	// loss or kernel crash within the interval. Zero (the default): every
	// batch is on disk before its calls are answered. Writes to the store
	// itself are the store's commits either way.
	SyncInterval time.Duration
	// Logger. Default slog.Default().
	Logger *slog.Logger
}

// DefaultCommitDelay is WriterConfig.CommitDelay's default.
const DefaultCommitDelay = 200 * time.Microsecond

// maxGroup: the committer stops waiting once a batch has this many events.
const maxGroup = 256

// busyBatch: a batch of this many events means calls keep coming.
const busyBatch = 8

// Writer makes events durable before their calls are answered: Record
// waits while the committer writes every event recorded since its last
// write in one store transaction (group commit). Create one with
// NewWriter; Close flushes and stops it.
type Writer struct {
	cfg    WriterConfig
	id     string // this writer's name in queue keys
	logger *slog.Logger

	// coming counts the calls that have begun (Begin) and not yet recorded
	// their event: the committer waits a little for them.
	coming atomic.Int64

	mu      sync.Mutex
	cur     *batch
	kick    chan struct{}
	stop    chan struct{}
	stopped chan struct{}
	closed  bool

	// counter numbers this writer's queue records, lastBatch is the size
	// of the last batch; only the committer goroutine uses them.
	counter   uint64
	lastBatch int

	shipMu   sync.Mutex // one ShipOnce at a time
	spoolMu  sync.Mutex
	spool    *spool       // nil without a spool
	pending  []spoolEntry // spooled entries not yet shipped, in order
	shipKick chan struct{}
	synced   chan struct{} // closed when syncLoop has stopped (SyncInterval > 0)

	events  *prometheus.CounterVec
	dropped prometheus.Counter
	damaged prometheus.Counter // spool entries lost to damage on disk
	// seenDamaged are the keys of damaged entries ShipOnce has counted: a
	// pass whose write fails leaves them pending, to be met again. Under
	// shipMu.
	seenDamaged map[string]bool
	refused     prometheus.Counter
	spooled     prometheus.Gauge // entries waiting in the spool
	commitDur   prometheus.Histogram
}

type batch struct {
	leaves [][]byte
	events []*custosv1.AuditEvent
	done   chan struct{}
	err    error
	// committed is how many leaves, from the first, were made durable
	// before err: a batch too large for one queue record is written as
	// several, and one that fails part-way has its first leaves in the log.
	committed int
}

// errFor is the outcome of the call whose leaf is the i-th of b, once b is
// done: nil if its leaf was made durable (its event is in the log, so its
// call must be answered as it went), else b's error.
func (b *batch) errFor(i int) error {
	if i < b.committed {
		return nil
	}
	return b.err
}

func newBatch() *batch { return &batch{done: make(chan struct{})} }

// NewWriter starts a writer. With a spool, entries left in it by an
// earlier run are shipped first, in order.
func NewWriter(cfg WriterConfig) (*Writer, error) {
	if cfg.CommitTimeout <= 0 {
		cfg.CommitTimeout = 5 * time.Second
	}
	if cfg.CommitDelay == 0 {
		cfg.CommitDelay = DefaultCommitDelay
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.JournalFirst && cfg.SpoolPath == "" {
		return nil, errors.New("audit: journal-first needs a spool")
	}
	if cfg.ShipInterval <= 0 {
		cfg.ShipInterval = time.Second
		if cfg.JournalFirst {
			cfg.ShipInterval = 50 * time.Millisecond
		}
	}
	var idb [8]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return nil, err
	}
	w := &Writer{
		cfg: cfg, id: hex.EncodeToString(idb[:]), logger: cfg.Logger,
		cur: newBatch(), kick: make(chan struct{}, 1), stop: make(chan struct{}), stopped: make(chan struct{}),
		shipKick: make(chan struct{}, 1),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custos_audit_events_total", Help: "Audit events made durable, by where: store or spool.",
		}, []string{"sink"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "custos_audit_dropped_total", Help: "Audit events lost because neither the store nor the spool took them, with fail-open configured (the calls succeeded).",
		}),
		damaged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "custos_audit_spool_damaged_entries_total", Help: "Spool entries (batches of audit events, of a number the damage hides) lost because they no longer read back as written.",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "custos_audit_failed_closed_total", Help: "Calls failed with UNAVAILABLE because their audit event could not be made durable.",
		}),
		spooled: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "custos_audit_spool_entries", Help: "Batches of audit events in the local spool, waiting for the store.",
		}),
		commitDur: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "custos_audit_commit_seconds", Help: "Time to make one batch of audit events durable.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .05, .25, 1},
		}),
	}
	if cfg.SpoolPath != "" {
		sp, entries, torn, corrupt, err := openSpool(cfg.SpoolPath)
		if err != nil {
			return nil, err
		}
		if torn > 0 {
			w.logger.Warn("audit: cut a torn entry off the spool's end (a crash while writing it, whose calls were not answered; or, with audit.sync_interval, a power loss, whose calls may have been)", "bytes", torn)
		}
		if corrupt > 0 {
			w.logger.Error("AUDIT EVENTS LOST: spool entries no longer read back as written (damaged on disk) and were skipped; the entries after them are kept and shipped", "entries", corrupt, "spool", cfg.SpoolPath)
			w.damaged.Add(float64(corrupt))
		}
		w.spool, w.pending = sp, entries
		w.spooled.Set(float64(len(entries)))
		if cfg.SyncInterval > 0 {
			sp.lazy = true
			w.synced = make(chan struct{})
			go w.syncLoop()
		}
	}
	go w.commitLoop()
	return w, nil
}

// Collectors are the writer's Prometheus metrics.
func (w *Writer) Collectors() []prometheus.Collector {
	return []prometheus.Collector{w.events, w.dropped, w.damaged, w.refused, w.spooled, w.commitDur}
}

// Begin tells the writer that a call has begun whose event Record will
// make durable: the committer waits briefly for the events of calls in
// flight, so they share one sync. Each Begin must be followed by one
// Record.
func (w *Writer) Begin() { w.coming.Add(1) }

// Record makes ev durable, together with the events recorded at the same
// time, and returns once it is (or could not be: an error wrapping
// ErrUnavailable, unless the writer fails open).
func (w *Writer) Record(ev *custosv1.AuditEvent) error {
	for { // one less call coming, never below zero (a Record without Begin)
		n := w.coming.Load()
		if n <= 0 || w.coming.CompareAndSwap(n, n-1) {
			break
		}
	}
	leaf, err := Marshal(ev)
	if err != nil {
		w.logger.Error("audit: an event could not be encoded", "request_id", ev.GetRequestId(), "error", err.Error())
		return w.failed(fmt.Errorf("%w: %w", ErrUnavailable, err), 1)
	}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return w.failed(fmt.Errorf("%w: writer closed", ErrUnavailable), 1)
	}
	b := w.cur
	i := len(b.leaves)
	b.leaves = append(b.leaves, leaf)
	if w.cfg.Export != nil {
		b.events = append(b.events, ev)
	}
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
	<-b.done
	if err := b.errFor(i); err != nil {
		return w.failed(err, 0)
	}
	return nil
}

// failed applies the fail-closed or fail-open rule to one call's error.
func (w *Writer) failed(err error, count int) error {
	if w.cfg.FailOpen {
		w.dropped.Add(float64(count))
		w.logger.Error("AUDIT EVENTS LOST: the event could not be recorded; the call is answered because audit.fail_open is set", "events", count, "error", err.Error())
		return nil
	}
	w.refused.Inc()
	return err
}

// syncLoop syncs a lazy spool every SyncInterval until Close.
func (w *Writer) syncLoop() {
	defer close(w.synced)
	t := time.NewTicker(w.cfg.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
		}
		if err := w.syncSpool(); err != nil {
			return
		}
	}
}

// syncSpool makes a lazy spool's recent entries durable. A failure is
// logged once; from then on every batch fails (see spool.sync).
func (w *Writer) syncSpool() error {
	w.spoolMu.Lock()
	defer w.spoolMu.Unlock()
	if w.spool.syncErr != nil {
		return w.spool.syncErr
	}
	err := w.spool.sync()
	if err != nil {
		w.logSyncLost(err)
	}
	return err
}

// logSyncLost reports, once, that a lazy spool's sync failed.
func (w *Writer) logSyncLost(err error) {
	w.logger.Error("AUDIT EVENTS MAY BE LOST: syncing the audit spool failed; every later batch the spool would take fails closed (or, with audit.fail_open, loses its events) until the server restarts; with bbolt that is every call", "error", err.Error())
}

func (w *Writer) commitLoop() {
	defer close(w.stopped)
	for {
		select {
		case <-w.kick:
		case <-w.stop:
			w.commitCurrent() // what was recorded before Close
			return
		}
		w.gather()
		w.commitCurrent()
	}
}

// gather waits, at most CommitDelay, while the batch is small and more
// events are likely soon: calls in flight are about to record theirs, or
// the last batch was a busy one.
func (w *Writer) gather() {
	if w.cfg.CommitDelay <= 0 || (w.coming.Load() <= 0 && w.lastBatch < busyBatch) {
		return
	}
	t := time.NewTimer(w.cfg.CommitDelay)
	defer t.Stop()
	for {
		w.mu.Lock()
		n := len(w.cur.leaves)
		w.mu.Unlock()
		if n >= maxGroup || (w.coming.Load() <= 0 && w.lastBatch < busyBatch) {
			return
		}
		select {
		case <-w.kick:
		case <-t.C:
			return
		case <-w.stop:
			return
		}
	}
}

func (w *Writer) commitCurrent() {
	w.mu.Lock()
	b := w.cur
	w.cur = newBatch()
	w.mu.Unlock()
	w.lastBatch = len(b.leaves)
	if len(b.leaves) == 0 {
		close(b.done)
		return
	}
	start := time.Now()
	for rest := b.leaves; len(rest) > 0 && b.err == nil; {
		n := batchPrefix(rest)
		if b.err = w.commit(rest[:n]); b.err == nil {
			b.committed += n
		}
		rest = rest[n:]
	}
	w.commitDur.Observe(time.Since(start).Seconds())
	if b.err != nil && w.cfg.FailOpen {
		lost := len(b.leaves) - b.committed
		w.dropped.Add(float64(lost))
		w.logger.Error("AUDIT EVENTS LOST: neither the store nor the spool took them; calls are answered because audit.fail_open is set", "events", lost, "error", b.err.Error())
		b.err = nil
	}
	close(b.done)
	if w.cfg.Export != nil && b.committed > 0 {
		w.cfg.Export.Write(b.events[:b.committed])
	}
}

// maxBatchBytes bounds one queue record's value, well below
// storage.MaxValueLen.
const maxBatchBytes = 4 << 20

// batchPrefix is how many of leaves one queue record takes: at most
// MaxBatchEvents and maxBatchBytes, at least one.
func batchPrefix(leaves [][]byte) int {
	size := 0
	for i, l := range leaves {
		size += len(l) + binary.MaxVarintLen32
		if i > 0 && (i == MaxBatchEvents || size > maxBatchBytes) {
			return i
		}
	}
	return len(leaves)
}

// commit writes one queue record: to the store, or to the spool while the
// spool holds entries not yet shipped (so events keep their order) or when
// the store fails.
func (w *Writer) commit(leaves [][]byte) error {
	w.counter++
	key, value := queueKey(w.id, w.counter), encodeBatch(leaves)
	w.spoolMu.Lock()
	spooling := len(w.pending) > 0 || w.cfg.JournalFirst
	w.spoolMu.Unlock()
	var storeErr error
	if !spooling {
		ctx, cancel := context.WithTimeout(context.Background(), w.cfg.CommitTimeout)
		_, storeErr = w.cfg.Store.Put(ctx, key, value, 0)
		cancel()
		if storeErr == nil {
			w.events.WithLabelValues("store").Add(float64(len(leaves)))
			return nil
		}
		if w.spool == nil || errors.Is(storeErr, storage.ErrInvalid) {
			return fmt.Errorf("%w: store: %w", ErrUnavailable, storeErr)
		}
		w.logger.Warn("audit: the store did not take a batch of events; spooling them locally until it is back", "events", len(leaves), "error", storeErr.Error())
	}
	w.spoolMu.Lock()
	defer w.spoolMu.Unlock()
	synced := w.spool.syncErr == nil
	e, err := w.spool.append(key, value)
	if err != nil {
		if synced && w.spool.syncErr != nil { // this append's own sync failed
			w.logSyncLost(w.spool.syncErr)
		}
		if storeErr != nil {
			return fmt.Errorf("%w: store: %w; spool: %w", ErrUnavailable, storeErr, err)
		}
		return fmt.Errorf("%w: spool: %w", ErrUnavailable, err)
	}
	w.pending = append(w.pending, e)
	w.spooled.Set(float64(len(w.pending)))
	w.events.WithLabelValues("spool").Add(float64(len(leaves)))
	if storeErr != nil {
		select {
		case w.shipKick <- struct{}{}:
		default:
		}
	}
	return nil
}

// Ship sends spooled entries to the store every ShipInterval until ctx is
// done. It returns at once without a spool.
func (w *Writer) Ship(ctx context.Context) {
	if w.spool == nil {
		return
	}
	t := time.NewTicker(w.cfg.ShipInterval)
	defer t.Stop()
	failing := false
	for {
		err := w.ShipOnce(ctx)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			w.logger.Warn("audit: shipping spooled events failed; retrying", "error", err.Error())
			failing = true
		case err == nil && failing:
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.shipKick:
			// The store just failed a write: give it a moment.
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}
}

// shipChunk is the most spooled batches one store transaction ships.
const shipChunk = 64

// ShipOnce ships what the spool holds, in order and exactly once: an entry
// already queued (or already in the tree, by its writer's shipped mark) is
// not sent again. Shipped segments are deleted; when everything is
// shipped the spool is emptied.
func (w *Writer) ShipOnce(ctx context.Context) error {
	if w.spool == nil {
		return nil
	}
	w.shipMu.Lock()
	defer w.shipMu.Unlock()
	w.spoolMu.Lock()
	todo := len(w.pending) // what is pending now; later entries wait for the next pass
	w.spoolMu.Unlock()
	shipped := 0
	marks := map[string]uint64{}
	var shipErr error
	for shipped < todo && shipErr == nil {
		// A chunk at a time: during a long outage the list holds every
		// event since, and each tick fails at its first chunk. Only this
		// function removes entries, under shipMu, so the front is stable.
		w.spoolMu.Lock()
		chunk := slices.Clone(w.pending[shipped:min(shipped+shipChunk, todo)])
		w.spoolMu.Unlock()
		var ops []storage.Op
		for _, e := range chunk {
			writer, n, ok := parseQueueKey(e.key)
			if !ok {
				continue // not a queue key: nothing a writer made; skip it
			}
			mark, seen := marks[writer]
			if !seen {
				if mark, shipErr = w.shippedMark(ctx, writer); shipErr != nil {
					break
				}
				marks[writer] = mark
			}
			if n <= mark {
				continue // already in the tree
			}
			w.spoolMu.Lock()
			value, err := w.spool.read(e)
			w.spoolMu.Unlock()
			if errors.Is(err, errSpoolCorrupt) {
				// It can never be shipped; waiting would stop the spool.
				// Counted and logged once, however many passes meet it.
				if !w.seenDamaged[e.key] {
					if w.seenDamaged == nil {
						w.seenDamaged = map[string]bool{}
					}
					w.seenDamaged[e.key] = true
					w.logger.Error("AUDIT EVENTS LOST: a spool entry changed on disk since it was written", "key", e.key, "error", err.Error())
					w.damaged.Inc()
				}
				continue
			}
			if err != nil {
				return err
			}
			ops = append(ops, storage.Op{Key: e.key, Value: value, Expect: 0})
		}
		if shipErr != nil {
			break
		}
		if len(ops) > 0 {
			if shipErr = w.putAll(ctx, ops); shipErr != nil {
				break
			}
		}
		shipped += len(chunk)
	}
	w.spoolMu.Lock()
	defer w.spoolMu.Unlock()
	w.pending = w.pending[shipped:]
	w.spooled.Set(float64(len(w.pending)))
	var release uint64 // 0: everything
	if len(w.pending) > 0 {
		release = w.pending[0].seg
	}
	wasOn := w.spool.syncErr == nil
	if err := w.spool.release(release); err != nil {
		if wasOn && w.spool.syncErr != nil { // this release switched it off
			w.logger.Error("AUDIT SPOOL OFF: emptying the shipped spool failed and no new segment could be made; every later batch the spool would take fails closed (or, with audit.fail_open, loses its events) until the server restarts; with bbolt that is every call", "error", err.Error())
		}
		return err
	}
	if shipErr != nil {
		return fmt.Errorf("audit: %d spooled batches wait for the store: %w", todo-shipped, shipErr)
	}
	return nil
}

// putAll creates the queue records of ops in one transaction when the
// store can, skipping those that exist already (a batch shipped before a
// crash).
func (w *Writer) putAll(ctx context.Context, ops []storage.Op) error {
	cctx, cancel := context.WithTimeout(ctx, w.cfg.CommitTimeout)
	defer cancel()
	if a, ok := w.cfg.Store.(storage.Applier); ok {
		err := a.Apply(cctx, ops)
		if !errors.Is(err, storage.ErrConflict) {
			return err
		}
	}
	for _, op := range ops {
		if _, err := w.cfg.Store.Put(cctx, op.Key, op.Value, 0); err != nil && !errors.Is(err, storage.ErrConflict) {
			return err
		}
	}
	return nil
}

// shippedMark reads the last counter of writer in the tree, within the
// commit timeout: a store that stopped answering must not hold the shipper.
func (w *Writer) shippedMark(ctx context.Context, writer string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.CommitTimeout)
	defer cancel()
	rec, err := w.cfg.Store.Get(ctx, shippedPrefix+writer)
	if errors.Is(err, storage.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var m shippedMark
	if err := json.Unmarshal(rec.Value, &m); err != nil {
		return 0, fmt.Errorf("audit: shipped mark of %s is unreadable", strings.TrimSpace(writer))
	}
	return m.Counter, nil
}

// Close commits what was recorded and stops the writer; later Records fail
// (or are dropped with FailOpen). The spool keeps what it holds for the
// next start.
func (w *Writer) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	w.mu.Unlock()
	close(w.stop)
	<-w.stopped
	if w.spool == nil {
		return nil
	}
	var syncErr error
	if w.synced != nil {
		<-w.synced
		syncErr = w.syncSpool()
	}
	w.spoolMu.Lock()
	defer w.spoolMu.Unlock()
	return errors.Join(syncErr, w.spool.close())
}

// Spooled reports the batches in the spool not yet shipped and the bytes
// the spool holds.
func (w *Writer) Spooled() (batches int, bytes int64) {
	if w.spool == nil {
		return 0, 0
	}
	w.spoolMu.Lock()
	defer w.spoolMu.Unlock()
	return len(w.pending), w.spool.bytes()
}
