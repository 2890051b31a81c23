package audit

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	tlog "github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/sync/singleflight"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/storage"
)

var rangeFactory = &compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}

// treeState is the tree's state record (audit/tree). Only the replica
// holding the integration lease writes it, with compare-and-swap, so two
// integrators racing cannot both extend the tree.
type treeState struct {
	Format int `json:"format"`
	// Size is the number of leaves in the tree.
	Size uint64 `json:"size"`
	// Range is the compact range of [0, Size): the hashes along its right
	// border, enough to extend the tree and compute its root.
	Range [][]byte `json:"range"`
	// Checkpoint is the latest signed checkpoint (a signed note), of
	// CheckpointSize leaves.
	Checkpoint       []byte `json:"checkpoint,omitempty"`
	CheckpointSize   uint64 `json:"checkpoint_size"`
	CheckpointPruned uint64 `json:"checkpoint_pruned"`
	// HistoryTime is when a checkpoint was last kept in the history
	// (audit/c/…), which keeps at most one a minute.
	HistoryTime time.Time `json:"history_time"`
	// Pruned: the bodies of the leaves below this index were deleted by
	// retention; their hashes stay.
	Pruned uint64 `json:"pruned"`
}

const treeFormat = 1

// shippedMark is the last counter of a writer whose batch is in the tree,
// so that a spooled batch shipped twice (a crash between shipping and
// forgetting it) is not integrated twice.
type shippedMark struct {
	Counter uint64    `json:"counter"`
	Time    time.Time `json:"time"`
}

// markState is one writer's shipped mark during an integration: as
// stored (at version) and as it will be.
type markState struct {
	stored, next uint64
	version      uint64
}

// mark reads writer's shipped mark once per integration.
func (l *Log) mark(ctx context.Context, marks map[string]*markState, writer string) (*markState, error) {
	if m, ok := marks[writer]; ok {
		return m, nil
	}
	m := &markState{}
	rec, err := l.store.Get(ctx, shippedPrefix+writer)
	switch {
	case errors.Is(err, storage.ErrNotFound):
	case err != nil:
		return nil, fmt.Errorf("audit: read shipped mark: %w", err)
	default:
		var sm shippedMark
		if err := json.Unmarshal(rec.Value, &sm); err != nil {
			return nil, fmt.Errorf("audit: shipped mark of writer %s is unreadable", writer)
		}
		m.stored, m.next, m.version = sm.Counter, sm.Counter, rec.Version
	}
	marks[writer] = m
	return m, nil
}

// Checkpoint is a signed tree head.
type Checkpoint struct {
	// Note is the signed note: the checkpoint text and its signature.
	Note   []byte
	Origin string
	Size   uint64
	Root   []byte
	Time   time.Time
	// Pruned: the bodies of the events below this index were deleted by
	// retention (the "pruned" extension line), so verifiers check them by
	// hash only.
	Pruned uint64
}

// Config configures a Log.
type Config struct {
	// Store holds the log; it must implement storage.Applier. Required.
	Store storage.Store
	// Root wraps the signing key. Required.
	Root root.Root
	// Origin names the log. Default DefaultOrigin.
	Origin string
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Logger. Default slog.Default().
	Logger *slog.Logger
}

// Log is the audit log in a store: it integrates queued events into the
// tree, signs checkpoints, prunes old bodies and answers queries with
// proofs. Safe for concurrent use.
type Log struct {
	store   storage.Store
	applier storage.Applier
	root    root.Root
	origin  string

	keyMu    sync.Mutex
	signer   note.Signer   // loaded by the first Sign or read (created by a Sign)
	vkey     string        // the verifier key, from the key record
	verifier note.Verifier // vkey's verifier
	// keyLoad shares one unwrap of the signing key among the reads that
	// need its verifier before any has it.
	keyLoad singleflight.Group
	now     func() time.Time
	logger  *slog.Logger

	// lastSigned is the tree this process signed last (guarded by keyMu).
	lastSigned signedTree

	nodesMu sync.Mutex
	strips  map[string][]byte // full strips: they never change
}

// maxCachedStrips bounds the strip cache (8 KiB each).
const maxCachedStrips = 4096

// Open opens the log in cfg.Store. It does not call the root: the signing
// key is unwrapped (or created and wrapped) by the first Sign or read that
// needs it, so a root that is down at start delays checkpoints and audit
// reads, not the server.
func Open(ctx context.Context, cfg Config) (*Log, error) {
	a, ok := cfg.Store.(storage.Applier)
	if !ok {
		return nil, fmt.Errorf("audit: storage %T cannot apply writes atomically", cfg.Store)
	}
	if cfg.Origin == "" {
		cfg.Origin = DefaultOrigin
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Log{store: cfg.Store, applier: a, root: cfg.Root, origin: cfg.Origin, now: cfg.Now, logger: cfg.Logger, strips: make(map[string][]byte)}, nil
}

// signing returns the log's signer, unwrapping or creating the key on
// first use. keyMu is not held across the storage and root calls, which
// may take as long as the root's timeout: Verifier and PublicKey, which
// callers' RPCs reach, would wait on it past their deadlines. (Two loads
// at once agree: loadSigner creates the key by compare-and-swap.)
func (l *Log) signing(ctx context.Context) (note.Signer, error) {
	l.keyMu.Lock()
	signer := l.signer
	l.keyMu.Unlock()
	if signer != nil {
		return signer, nil
	}
	s, vkey, err := loadSigner(ctx, l.store, l.root, l.origin)
	if err != nil {
		return nil, err
	}
	l.install(s, vkey)
	l.keyMu.Lock()
	defer l.keyMu.Unlock()
	return l.signer, nil
}

// Verifier verifies the log's checkpoints (nil, nil when the log has no
// key yet). Its key is the signer's, loaded as signing loads it but never
// created: the verifier key stored next to the wrapped signing key counts
// only once the root has unwrapped the key it is bound to.
func (l *Log) Verifier(ctx context.Context) (note.Verifier, error) {
	l.keyMu.Lock()
	v := l.verifier
	l.keyMu.Unlock()
	if v != nil {
		return v, nil
	}
	// One unwrap for all the callers waiting, outside keyMu (as in
	// signing), bounded like a keystore load and not by the first
	// caller's deadline: each caller waits until its own.
	ch := l.keyLoad.DoChan("signer", func() (any, error) {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rootTimeout)
		defer cancel()
		s, vkey, err := openSigner(lctx, l.store, l.root)
		if err == nil && s != nil {
			l.install(s, vkey)
		}
		return nil, err
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	l.keyMu.Lock()
	defer l.keyMu.Unlock()
	return l.verifier, nil // nil: the log has no key yet
}

// rootTimeout bounds the root calls of the signing key (its first load
// for signing, reads waiting for its verifier, audit verify, custos root
// rewrap), as the keystore bounds its loads.
const rootTimeout = 30 * time.Second

// install makes s the log's signer, unless another load did first.
func (l *Log) install(s note.Signer, vkey string) {
	v, _ := note.NewVerifier(vkey) // checked by signerOf
	l.keyMu.Lock()
	defer l.keyMu.Unlock()
	if l.signer == nil {
		l.signer, l.vkey, l.verifier = s, vkey, v
	}
}

// PublicKey is the verifier key of the log's signing key, in the note
// format; empty before the first checkpoint.
func (l *Log) PublicKey(ctx context.Context) (string, error) {
	v, err := l.Verifier(ctx)
	if err != nil || v == nil {
		return "", err
	}
	l.keyMu.Lock()
	defer l.keyMu.Unlock()
	return l.vkey, nil
}

func (l *Log) loadTree(ctx context.Context) (treeState, uint64, error) {
	rec, err := l.store.Get(ctx, treeKey)
	if errors.Is(err, storage.ErrNotFound) {
		return treeState{Format: treeFormat}, 0, nil
	}
	if err != nil {
		return treeState{}, 0, fmt.Errorf("audit: read tree state: %w", err)
	}
	st, err := parseTree(rec.Value)
	return st, rec.Version, err
}

func parseTree(b []byte) (treeState, error) {
	var st treeState
	if err := json.Unmarshal(b, &st); err != nil || st.Format != treeFormat {
		return treeState{}, errors.New("audit: tree state record is unreadable")
	}
	return st, nil
}

// Integrate moves up to limit queued events (at least one queue record's)
// into the tree in one atomic write, oldest queue records first (by the
// store's record version). It returns how many it integrated: zero when
// the queue is empty, and also when every record it read was dropped
// (already in the log, or malformed). A concurrent integrator makes it
// fail with storage.ErrConflict and integrate nothing.
func (l *Log) Integrate(ctx context.Context, limit int) (int, error) {
	n, _, err := l.integrate(ctx, limit)
	return n, err
}

// integrate is Integrate, also returning how many queue records it took
// off the queue (integrated or dropped): zero only when the queue was
// empty.
func (l *Log) integrate(ctx context.Context, limit int) (events, records int, err error) {
	st, ver, err := l.loadTree(ctx)
	if err != nil {
		return 0, 0, err
	}
	queued, err := l.store.List(ctx, queuePrefix, "", 256)
	if err != nil {
		return 0, 0, fmt.Errorf("audit: list queue: %w", err)
	}
	if len(queued) == 0 {
		return 0, 0, nil
	}
	slices.SortFunc(queued, func(a, b storage.Record) int { return cmp.Compare(a.Version, b.Version) })
	// The next leaf's place is empty in a log whose state is its own. A
	// state deleted or put back behind the stored events (tampering)
	// would make this integration overwrite their bodies and node hashes,
	// destroying the evidence verify reports. The leaf's hash is what is
	// looked for: retention deletes bodies, never hashes.
	if h, err := l.hash(ctx, compact.NewNodeID(0, st.Size)); err != nil {
		return 0, 0, err
	} else if h != nil {
		return 0, 0, fmt.Errorf("audit: the tree state says %d events, but event %d is stored: the state is behind the log (deleted or rolled back); integration stops rather than overwrite it — run custos audit verify, and restore the store from a backup", st.Size, st.Size)
	}
	rng, err := rangeFactory.NewRange(0, st.Size, st.Range)
	if err != nil {
		return 0, 0, fmt.Errorf("audit: tree state: %w", err)
	}
	var ops []storage.Op
	// New node hashes by level: each level's new nodes are contiguous and
	// ascending, so they extend that level's last strip.
	type run struct {
		first  uint64
		hashes []byte
	}
	levels := map[uint]*run{}
	visit := func(id compact.NodeID, hash []byte) {
		r := levels[id.Level]
		if r == nil {
			r = &run{first: id.Index}
			levels[id.Level] = r
		}
		r.hashes = append(r.hashes, hash...)
	}
	views := map[string][]uint64{}
	// The shipped marks are authoritative: a batch whose counter is at or
	// below its writer's mark is in the tree already (a write that timed
	// out and committed late, a spool entry shipped twice) and is dropped.
	marks := map[string]*markState{}
	n, taken := 0, 0
	for _, q := range queued {
		if n > 0 && n >= limit {
			break
		}
		taken++
		ops = append(ops, storage.Op{Key: q.Key, Delete: true, Expect: q.Version})
		writer, counter, ok := parseQueueKey(q.Key)
		if ok {
			m, err := l.mark(ctx, marks, writer)
			if err != nil {
				return 0, 0, err
			}
			if counter <= m.stored {
				l.logger.Warn("audit: dropped a batch already in the log", "key", q.Key)
				continue
			}
			m.next = max(m.next, counter)
		}
		leaves, err := decodeBatch(q.Value)
		if !ok || err != nil {
			// Not something a writer made: it cannot be integrated, and
			// leaving it would stop the log. Drop it, loudly.
			l.logger.Error("audit: dropped a malformed queue record", "key", q.Key)
			continue
		}
		for _, leaf := range leaves {
			i := rng.End()
			if err := rng.Append(LeafHash(leaf), visit); err != nil {
				return 0, 0, fmt.Errorf("audit: extend tree: %w", err)
			}
			ops = append(ops, storage.Op{Key: leafKey(i), Value: leaf, Expect: storage.AnyVersion})
			if t := leafTenant(leaf); validTenant(t) {
				views[t] = append(views[t], i)
			}
			n++
		}
	}
	for level, r := range levels {
		strips, err := l.extendStrips(ctx, level, r.first, r.hashes)
		if err != nil {
			return 0, 0, err
		}
		ops = append(ops, strips...)
	}
	for t, idx := range views {
		ops = append(ops, storage.Op{Key: tenantKey(t, idx[len(idx)-1]), Value: appendIndexes(nil, idx), Expect: storage.AnyVersion})
	}
	now := l.now().UTC()
	for w, m := range marks {
		if m.next <= m.stored {
			continue
		}
		b, _ := json.Marshal(shippedMark{Counter: m.next, Time: now})
		ops = append(ops, storage.Op{Key: shippedPrefix + w, Value: b, Expect: m.version})
	}
	st.Size, st.Range = rng.End(), rng.Hashes()
	b, _ := json.Marshal(st)
	ops = append(ops, storage.Op{Key: treeKey, Value: b, Expect: ver})
	if err := l.applier.Apply(ctx, ops); err != nil {
		return 0, 0, fmt.Errorf("audit: integrate %d events: %w", n, err)
	}
	return n, taken, nil
}

// Sign signs a checkpoint of the tree as it is, unless the latest one
// already covers it, and returns the latest checkpoint. The checkpoint
// history keeps one a minute.
func (l *Log) Sign(ctx context.Context) (*Checkpoint, error) { return l.sign(ctx, false) }

// historyInterval: the checkpoint history keeps at most one checkpoint per
// interval (besides the one signed at shutdown); the latest is always in
// the tree state.
const historyInterval = time.Minute

func (l *Log) sign(ctx context.Context, historyAll bool) (*Checkpoint, error) {
	return l.signHorizon(ctx, historyAll, 0)
}

// signedPruned is the retention horizon of st's latest signed checkpoint
// (0 before the first): the one horizon a signer may sign again. The
// state's own Pruned is not signed as it is: whoever writes to the store
// could raise it over bodies they deleted, and the next checkpoint would
// excuse them.
func (l *Log) signedPruned(ctx context.Context, st treeState) (uint64, error) {
	cp, err := l.checkpointOf(ctx, st)
	if err != nil || cp == nil {
		return 0, err
	}
	return cp.Pruned, nil
}

// signHorizon signs a checkpoint of the stored tree whose retention
// horizon is the last signed one, or raise when Prune (which checked
// every body below it) raises it.
func (l *Log) signHorizon(ctx context.Context, historyAll bool, raise uint64) (*Checkpoint, error) {
	st, ver, err := l.loadTree(ctx)
	if err != nil {
		return nil, err
	}
	// The horizon a signer may sign again is the one its latest
	// checkpoint signed (verified here, once), never the state's own.
	last, err := l.checkpointOf(ctx, st)
	if err != nil {
		return nil, err
	}
	var pruned uint64
	if last != nil {
		pruned = last.Pruned
	}
	pruned = min(max(pruned, raise), st.Size)
	if st.Size == 0 || (last != nil && st.CheckpointSize == st.Size && last.Pruned == pruned) {
		return last, nil
	}
	signer, err := l.signing(ctx)
	if err != nil {
		return nil, err
	}
	rng, err := rangeFactory.NewRange(0, st.Size, st.Range)
	if err != nil {
		return nil, fmt.Errorf("audit: tree state: %w", err)
	}
	rootHash, err := rng.GetRootHash(nil)
	if err != nil {
		return nil, fmt.Errorf("audit: root hash: %w", err)
	}
	if err := l.checkExtends(ctx, st, ver, rootHash); err != nil {
		return nil, err
	}
	text := string(tlog.Checkpoint{Origin: signer.Name(), Size: st.Size, Hash: rootHash}.Marshal()) +
		"time " + l.now().UTC().Format(time.RFC3339Nano) + "\n"
	if pruned > 0 {
		text += "pruned " + strconv.FormatUint(pruned, 10) + "\n"
	}
	signed, err := note.Sign(&note.Note{Text: text}, signer)
	if err != nil {
		return nil, fmt.Errorf("audit: sign checkpoint: %w", err)
	}
	st.Checkpoint, st.CheckpointSize, st.CheckpointPruned = signed, st.Size, pruned
	var ops []storage.Op
	if now := l.now(); historyAll || now.Sub(st.HistoryTime) >= historyInterval {
		st.HistoryTime = now.UTC()
		ops = append(ops, storage.Op{Key: cpKey(st.Size), Value: signed, Expect: storage.AnyVersion})
	}
	b, _ := json.Marshal(st)
	err = l.applier.Apply(ctx, append(ops, storage.Op{Key: treeKey, Value: b, Expect: ver}))
	if err != nil {
		return nil, fmt.Errorf("audit: store checkpoint: %w", err)
	}
	l.keyMu.Lock()
	l.lastSigned = signedTree{size: st.Size, root: rootHash}
	l.keyMu.Unlock()
	return l.checkpointOf(ctx, st)
}

// newestKept returns the last record of the history (the checkpoint of
// the largest size), or nil when it holds none. It bisects the key space,
// sizes being 16 lower-case hex digits, with listings of one record: at
// most about 66 small reads however many checkpoints are kept (one a
// minute, without bound when retention is off), where a scan read them
// all. A key in another form (no server writes one) falls back to the
// scan, which ends at the last key as the bisection does.
func (l *Log) newestKept(ctx context.Context) ([]byte, error) {
	// after lists the first record past key; found reports one.
	after := func(key string) (storage.Record, bool, error) {
		recs, err := l.store.List(ctx, cpPrefix, key, 1)
		if err != nil {
			return storage.Record{}, false, fmt.Errorf("audit: list checkpoints: %w", err)
		}
		if len(recs) == 0 {
			return storage.Record{}, false, nil
		}
		return recs[0], true, nil
	}
	cur, found, err := after("")
	if err != nil || !found {
		return nil, err
	}
	lo, ok := cpSize(cur.Key)
	if !ok {
		return l.scanKept(ctx)
	}
	// Invariant: cur is the record of size lo, and no key sorts after
	// cpKey(hi).
	hi := uint64(math.MaxUint64)
	if _, past, err := after(cpKey(hi)); err != nil {
		return nil, err
	} else if past {
		return l.scanKept(ctx)
	}
	for lo < hi {
		mid := lo + (hi-lo)/2 + 1 // lo < mid <= hi
		r, found, err := after(cpKey(mid - 1))
		if err != nil {
			return nil, err
		}
		if !found {
			hi = mid - 1
			continue
		}
		size, ok := cpSize(r.Key)
		if !ok {
			return l.scanKept(ctx)
		}
		lo, cur = size, r
	}
	return cur.Value, nil
}

// cpSize parses a history key as cpKey writes it.
func cpSize(key string) (uint64, bool) {
	s, ok := strings.CutPrefix(key, cpPrefix)
	if !ok {
		return 0, false
	}
	return parseHex16(s)
}

// scanKept returns the value of the history's last key, reading every
// kept checkpoint.
func (l *Log) scanKept(ctx context.Context) ([]byte, error) {
	var newest []byte
	for after := ""; ; {
		recs, err := l.store.List(ctx, cpPrefix, after, 1000)
		if err != nil {
			return nil, fmt.Errorf("audit: list checkpoints: %w", err)
		}
		for _, r := range recs {
			newest, after = r.Value, r.Key
		}
		if len(recs) < 1000 {
			return newest, nil
		}
	}
}

// signedTree is a tree size and root a checkpoint signed.
type signedTree struct {
	size uint64
	root []byte
}

// checkExtends refuses to sign a tree (st, read at version ver, whose root
// is root) that is not an extension of what was signed before: the
// checkpoint in the stored state, the last one this process signed, and,
// unless the state's checkpoint is that last one, the newest checkpoint
// kept in the history (the state's may have been put back to an older
// one, while this process was not signing). Someone who can write the
// store but not the root could otherwise have a rewritten history signed
// with the genuine key.
func (l *Log) checkExtends(ctx context.Context, st treeState, ver uint64, root []byte) error {
	l.keyMu.Lock()
	v, last := l.verifier, l.lastSigned
	l.keyMu.Unlock()
	var before []signedTree
	add := func(t signedTree) {
		for _, b := range before {
			if b.size == t.size && bytes.Equal(b.root, t.root) {
				return
			}
		}
		before = append(before, t)
	}
	var stateCP *Checkpoint
	if st.Checkpoint != nil {
		cp, err := ParseCheckpoint(st.Checkpoint, v)
		if err != nil {
			return fmt.Errorf("audit: the stored checkpoint does not verify (%w): refusing to sign; run custos audit verify", err)
		}
		stateCP = cp
		add(signedTree{size: cp.Size, root: cp.Root})
	}
	// The history, unless the state's checkpoint is the one this process
	// signed last (the steady state of the lease holder: then what it
	// signed stands for the history, and a tick costs no listing of every
	// kept checkpoint). A log never signed keeps none.
	if stateCP == nil || last.size != stateCP.Size || !bytes.Equal(last.root, stateCP.Root) {
		kept, err := l.newestKept(ctx)
		if err != nil {
			return err
		}
		if kept != nil {
			cp, err := ParseCheckpoint(kept, v)
			if err != nil {
				return fmt.Errorf("audit: the newest kept checkpoint does not verify (%w): refusing to sign; run custos audit verify", err)
			}
			if cp.Size > st.Size {
				// Signed since the state was read (another replica, whose
				// lease this one took while it still ran), or a tree put
				// back: a state that moved on is a race to retry, not a
				// rewritten history.
				if cur, err := l.store.Get(ctx, treeKey); err == nil && cur.Version != ver {
					return fmt.Errorf("audit: the tree state changed while signing: %w", storage.ErrConflict)
				}
			}
			add(signedTree{size: cp.Size, root: cp.Root})
		}
	}
	if last.size > 0 {
		add(last)
	}
	for _, b := range before {
		var err error
		switch {
		case b.size > st.Size:
			err = fmt.Errorf("the stored tree has %d events, a checkpoint of %d was signed", st.Size, b.size)
		case b.size == st.Size:
			if !bytes.Equal(b.root, root) {
				err = fmt.Errorf("the stored tree of %d events is not the one signed", st.Size)
			}
		default:
			var p [][]byte
			if p, err = l.ConsistencyProof(ctx, b.size, st.Size); err == nil {
				err = proof.VerifyConsistency(rfc6962.DefaultHasher, b.size, st.Size, p, b.root, root)
			}
		}
		if err != nil {
			return fmt.Errorf("audit: the stored tree is not an extension of the checkpoint of size %d signed before (%w): refusing to sign; run custos audit verify", b.size, err)
		}
	}
	return nil
}

func (l *Log) checkpointOf(ctx context.Context, st treeState) (*Checkpoint, error) {
	if st.Checkpoint == nil {
		return nil, nil
	}
	v, err := l.Verifier(ctx)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, errors.New("audit: the log has checkpoints but no signing key")
	}
	return ParseCheckpoint(st.Checkpoint, v)
}

// Latest returns the latest signed checkpoint, or nil before the first.
func (l *Log) Latest(ctx context.Context) (*Checkpoint, error) {
	st, _, err := l.loadTree(ctx)
	if err != nil {
		return nil, err
	}
	return l.checkpointOf(ctx, st)
}

// ParseCheckpoint verifies a signed checkpoint with v and parses it.
func ParseCheckpoint(signed []byte, v note.Verifier) (*Checkpoint, error) {
	cp, rest, _, err := tlog.ParseCheckpoint(signed, v.Name(), v)
	if err != nil {
		return nil, fmt.Errorf("audit: checkpoint: %w", err)
	}
	out := &Checkpoint{Note: signed, Origin: cp.Origin, Size: cp.Size, Root: cp.Hash}
	for line := range strings.Lines(string(rest)) {
		line = strings.TrimSuffix(line, "\n")
		if ts, ok := strings.CutPrefix(line, "time "); ok {
			if out.Time, err = time.Parse(time.RFC3339Nano, ts); err != nil {
				return nil, fmt.Errorf("audit: checkpoint time: %w", err)
			}
		}
		if p, ok := strings.CutPrefix(line, "pruned "); ok {
			if out.Pruned, err = strconv.ParseUint(p, 10, 64); err != nil || out.Pruned > out.Size {
				return nil, fmt.Errorf("audit: checkpoint pruned line %q", p)
			}
		}
	}
	return out, nil
}

// extendStrips returns the writes that add hashes (of the nodes first,
// first+1, … of level) to the level's strips, reading the last strip when
// it is partly filled.
func (l *Log) extendStrips(ctx context.Context, level uint, first uint64, hashes []byte) ([]storage.Op, error) {
	var ops []storage.Op
	id := compact.NewNodeID(level, first)
	var cur []byte
	if off := first % stripLen; off > 0 {
		rec, err := l.store.Get(ctx, stripKey(id))
		if err != nil {
			return nil, fmt.Errorf("audit: read tree strip %d/%d: %w", level, first/stripLen, err)
		}
		if uint64(len(rec.Value)) != off*hashLen {
			return nil, fmt.Errorf("audit: tree strip %d/%d holds %d bytes, want %d: the stored tree disagrees with its state", level, first/stripLen, len(rec.Value), off*hashLen)
		}
		cur = rec.Value
	}
	for len(hashes) > 0 {
		room := int(stripLen*hashLen) - len(cur)
		take := min(room, len(hashes))
		cur = append(cur, hashes[:take]...)
		hashes = hashes[take:]
		ops = append(ops, storage.Op{Key: stripKey(id), Value: cur, Expect: storage.AnyVersion})
		id = compact.NewNodeID(level, (id.Index/stripLen+1)*stripLen)
		cur = nil
	}
	return ops, nil
}

// hashLen is the size of a node hash.
const hashLen = 32

// hashes returns the stored hashes of ids, reading each strip once and
// keeping full strips (which never change) in a cache.
func (l *Log) hashes(ctx context.Context, ids []compact.NodeID) ([][]byte, error) {
	out := make([][]byte, len(ids))
	for i, id := range ids {
		h, err := l.hash(ctx, id)
		if err != nil {
			return nil, err
		}
		if h == nil {
			return nil, fmt.Errorf("audit: tree node %d/%d is not stored", id.Level, id.Index)
		}
		out[i] = h
	}
	return out, nil
}

// hash returns the stored hash of id, or nil if it is not stored. A full
// strip (which never changes) is kept in a cache; a partly filled one is
// read again, since integration appends to it.
func (l *Log) hash(ctx context.Context, id compact.NodeID) ([]byte, error) {
	key := stripKey(id)
	off := int(id.Index%stripLen) * hashLen
	l.nodesMu.Lock()
	strip := l.strips[key]
	l.nodesMu.Unlock()
	if len(strip) < off+hashLen {
		rec, err := l.store.Get(ctx, key)
		if errors.Is(err, storage.ErrNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("audit: read tree node %d/%d: %w", id.Level, id.Index, err)
		}
		if strip = rec.Value; len(strip) < off+hashLen {
			return nil, nil
		}
		if len(strip) == stripLen*hashLen {
			l.nodesMu.Lock()
			if len(l.strips) >= maxCachedStrips {
				clear(l.strips)
			}
			l.strips[key] = strip
			l.nodesMu.Unlock()
		}
	}
	return strip[off : off+hashLen], nil
}

// leafTenant reads an event's tenant (field 5) without decoding the rest:
// the last occurrence, as protobuf decoding takes it, so that the tenant
// an event is listed under is the one its readers decode (no server writes
// the field twice; a leaf queued by someone else may).
func leafTenant(leaf []byte) string {
	tenant := ""
	for len(leaf) > 0 {
		num, typ, n := protowire.ConsumeTag(leaf)
		if n < 0 {
			return ""
		}
		leaf = leaf[n:]
		m := protowire.ConsumeFieldValue(num, typ, leaf)
		if m < 0 {
			return ""
		}
		if num == 5 && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(leaf)
			tenant = string(v)
		}
		leaf = leaf[m:]
	}
	return tenant
}

// InclusionProof is the RFC 6962 inclusion proof of leaf index in the tree
// of size leaves.
func (l *Log) InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error) {
	nodes, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	h, err := l.hashes(ctx, nodes.IDs)
	if err != nil {
		return nil, err
	}
	return nodes.Rehash(h, rfc6962.DefaultHasher.HashChildren)
}

// ConsistencyProof is the RFC 6962 consistency proof from the tree of
// size1 leaves to the tree of size2.
func (l *Log) ConsistencyProof(ctx context.Context, size1, size2 uint64) ([][]byte, error) {
	if size1 == 0 || size1 >= size2 {
		return nil, nil
	}
	nodes, err := proof.Consistency(size1, size2)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	h, err := l.hashes(ctx, nodes.IDs)
	if err != nil {
		return nil, err
	}
	return nodes.Rehash(h, rfc6962.DefaultHasher.HashChildren)
}

// validTenant is keystore.ValidID, without importing the keystore.
func validTenant(t string) bool {
	if t == "" || len(t) > 63 {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' && i > 0) {
			return false
		}
	}
	return true
}
