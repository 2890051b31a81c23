package audit

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/transparency-dev/merkle/compact"
	"golang.org/x/mod/sumdb/note"

	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/storage"
)

// Finding is one thing Verify found wrong.
type Finding struct {
	// Index is the leaf index concerned, or -1.
	Index int64
	// Kind: modified, deleted, reordered, inserted, truncated,
	// bad-checkpoint, root-mismatch, tenant-view, missing-node, state.
	Kind   string
	Detail string
}

func (f Finding) String() string {
	if f.Index >= 0 {
		return fmt.Sprintf("event %d: %s: %s", f.Index, f.Kind, f.Detail)
	}
	return fmt.Sprintf("%s: %s", f.Kind, f.Detail)
}

// Report is what Verify checked and found.
type Report struct {
	// Size is the size of the latest valid checkpoint.
	Size uint64
	// Events is how many event bodies were hashed; Pruned how many leaves
	// below the retention horizon were checked by hash only.
	Events, Pruned uint64
	// Checkpoints is how many signed checkpoints were checked.
	Checkpoints int
	Findings    []Finding
}

// maxFindings bounds a report; a wholesale rewrite stops being itemized.
const maxFindings = 1000

// VerifierOf returns the verifier of the log's signing key as the store
// holds it, checked by unwrapping the key under the root (so a verifier
// key swapped in the store is refused).
func VerifierOf(ctx context.Context, store storage.Store, r root.Root) (note.Verifier, error) {
	if _, err := store.Get(ctx, signingKeyKey); errors.Is(err, storage.ErrNotFound) {
		return nil, errors.New("audit: the store has no audit log signing key yet")
	}
	_, vkey, err := loadSigner(ctx, store, r, "")
	if err != nil {
		return nil, err
	}
	return note.NewVerifier(vkey)
}

// Verify recomputes the whole tree from the store: every event body must
// hash to its stored leaf hash, every leaf up to the latest checkpoint must
// be there (bodies below the retention horizon by hash), every checkpoint
// must carry a valid signature by v and its root must be the root of the
// first size leaves (so each is consistent with the one before), and every
// tenant's view must hold exactly the log's events. It reports each
// finding with its index.
func Verify(ctx context.Context, store storage.Store, v note.Verifier) (*Report, error) {
	rep := &Report{}
	add := func(f Finding) {
		if len(rep.Findings) < maxFindings {
			rep.Findings = append(rep.Findings, f)
		}
	}
	rec, err := store.Get(ctx, treeKey)
	if errors.Is(err, storage.ErrNotFound) {
		return rep, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit: read tree state: %w", err)
	}
	st, err := parseTree(rec.Value)
	if err != nil {
		add(Finding{Index: -1, Kind: "state", Detail: err.Error()})
		return rep, nil
	}

	// Checkpoints: the history, and the latest from the state.
	var cps []*Checkpoint
	check := func(key string, signed []byte) {
		cp, err := ParseCheckpoint(signed, v)
		if err != nil {
			add(Finding{Index: -1, Kind: "bad-checkpoint", Detail: fmt.Sprintf("%s: %v", key, err)})
			return
		}
		if want := strings.TrimPrefix(key, cpPrefix); key != treeKey && want != hex16(cp.Size) {
			add(Finding{Index: -1, Kind: "bad-checkpoint", Detail: fmt.Sprintf("%s holds the checkpoint of size %d", key, cp.Size)})
			return
		}
		cps = append(cps, cp)
	}
	for after := ""; ; {
		recs, err := store.List(ctx, cpPrefix, after, 1000)
		if err != nil {
			return nil, fmt.Errorf("audit: list checkpoints: %w", err)
		}
		for _, r := range recs {
			check(r.Key, r.Value)
			after = r.Key
		}
		if len(recs) < 1000 {
			break
		}
	}
	if st.Checkpoint != nil {
		check(treeKey, st.Checkpoint)
	}
	slices.SortFunc(cps, func(a, b *Checkpoint) int { return int(min(max(int64(a.Size)-int64(b.Size), -1), 1)) })
	rep.Checkpoints = len(cps)
	var end uint64 = st.Size
	if len(cps) > 0 {
		rep.Size = cps[len(cps)-1].Size
		end = max(end, rep.Size)
	}
	if st.Size < rep.Size {
		add(Finding{Index: -1, Kind: "truncated", Detail: fmt.Sprintf("the tree state holds %d leaves, the latest checkpoint %d", st.Size, rep.Size)})
	}

	// Tenant views, as (index, tenant) sorted by index, checked against
	// the leaves as they stream by.
	type listing struct {
		i uint64
		t string
	}
	var listed []listing
	for after := ""; ; {
		recs, err := store.List(ctx, tenantPrefix, after, 1000)
		if err != nil {
			return nil, fmt.Errorf("audit: list tenant views: %w", err)
		}
		for _, r := range recs {
			after = r.Key
			tenant, last, _ := strings.Cut(strings.TrimPrefix(r.Key, tenantPrefix), "/")
			idx, ok := decodeIndexes(r.Value)
			lastIdx, ok2 := parseHex16(last)
			if !ok || !ok2 || len(idx) == 0 || idx[len(idx)-1] != lastIdx || lastIdx >= end {
				add(Finding{Index: -1, Kind: "tenant-view", Detail: fmt.Sprintf("record %q is malformed", r.Key)})
				continue
			}
			for _, i := range idx {
				listed = append(listed, listing{i, tenant})
			}
		}
		if len(recs) < 1000 {
			break
		}
	}
	slices.SortFunc(listed, func(a, b listing) int { return cmp.Compare(a.i, b.i) })
	listedOK := map[string]uint64{}
	li := 0

	// Leaves, in index order: bodies and level-0 node hashes side by side.
	bodies := newCursor(ctx, store, leafPrefix)
	hashes := &stripReader{ctx: ctx, store: store}
	counts := map[string]uint64{} // each tenant's events above the retention horizon
	rng := rangeFactory.NewEmptyRange(0)
	type mismatch struct {
		i          uint64
		body, node []byte
	}
	var mismatches []mismatch
	var missingFrom int64 = -1
	flushMissing := func(to uint64) {
		if missingFrom >= 0 {
			kind, what := "deleted", fmt.Sprintf("events %d to %d are missing", missingFrom, to-1)
			if to == end {
				kind = "truncated"
			}
			if uint64(missingFrom) == to-1 {
				what = "the event is missing"
			}
			add(Finding{Index: missingFrom, Kind: kind, Detail: what})
			missingFrom = -1
		}
	}
	next := 0
	for i := uint64(0); i < end; i++ {
		body, err := bodies.at(i)
		if err != nil {
			return nil, err
		}
		node, err := hashes.at(i)
		if err != nil {
			return nil, err
		}
		var h []byte
		switch {
		case body != nil:
			flushMissing(i)
			rep.Events++
			h = LeafHash(body)
			t := leafTenant(body)
			if validTenant(t) {
				counts[t]++
			}
			for li < len(listed) && listed[li].i < i {
				li++
			}
			for ; li < len(listed) && listed[li].i == i; li++ {
				if listed[li].t != t {
					add(Finding{Index: int64(i), Kind: "tenant-view", Detail: fmt.Sprintf("listed in tenant %s's view but is not its event", listed[li].t)})
				} else {
					listedOK[t]++
				}
			}
			if node != nil && !bytes.Equal(h, node) {
				mismatches = append(mismatches, mismatch{i, h, node})
			}
		case i < st.Pruned && node != nil:
			flushMissing(i)
			rep.Pruned++
			h = node
		default:
			if missingFrom < 0 {
				missingFrom = int64(i)
			}
			h = node
			if h == nil {
				h = make([]byte, 32) // unknowable: the roots below will not match
			}
		}
		if err := rng.Append(h, nil); err != nil {
			return nil, err
		}
		for next < len(cps) && cps[next].Size == i+1 {
			root, _ := rng.GetRootHash(nil)
			if !bytes.Equal(root, cps[next].Root) {
				add(Finding{Index: -1, Kind: "root-mismatch", Detail: fmt.Sprintf("the checkpoint of size %d (signed %s) does not match the log's first %d events", cps[next].Size, cps[next].Time.Format("2006-01-02T15:04:05Z07:00"), cps[next].Size)})
			}
			next++
		}
	}
	flushMissing(end)
	for i := range mismatches {
		m := mismatches[i]
		swapped := false
		for _, o := range mismatches {
			if o.i != m.i && bytes.Equal(m.body, o.node) {
				add(Finding{Index: int64(m.i), Kind: "reordered", Detail: fmt.Sprintf("holds the event that belongs at index %d", o.i)})
				swapped = true
				break
			}
		}
		if !swapped {
			add(Finding{Index: int64(m.i), Kind: "modified", Detail: "the event does not hash to its leaf hash"})
		}
	}
	// Anything stored past the end was never in a checkpoint.
	for {
		k, _, err := bodies.next()
		if err != nil {
			return nil, err
		}
		if k == "" {
			break
		}
		i, _ := parseHex16(strings.TrimPrefix(k, leafPrefix))
		add(Finding{Index: int64(i), Kind: "inserted", Detail: "an event past the end of the tree"})
	}

	for t, n := range counts {
		if listedOK[t] != n {
			add(Finding{Index: -1, Kind: "tenant-view", Detail: fmt.Sprintf("tenant %s's view lists %d of its %d events", t, listedOK[t], n)})
		}
	}
	slices.SortStableFunc(rep.Findings, func(a, b Finding) int { return int(min(max(a.Index-b.Index, -1), 1)) })
	return rep, nil
}

// cursor reads the records under a prefix whose key ends in a 16-digit
// index, in order, a page at a time.
type cursor struct {
	ctx    context.Context
	store  storage.Store
	prefix string
	buf    []storage.Record
	after  string
	done   bool
}

func newCursor(ctx context.Context, s storage.Store, prefix string) *cursor {
	return &cursor{ctx: ctx, store: s, prefix: prefix}
}

func (c *cursor) peek() (*storage.Record, error) {
	if len(c.buf) == 0 && !c.done {
		recs, err := c.store.List(c.ctx, c.prefix, c.after, 1000)
		if err != nil {
			return nil, fmt.Errorf("audit: list %s: %w", c.prefix, err)
		}
		c.buf, c.done = recs, len(recs) < 1000
		if len(recs) > 0 {
			c.after = recs[len(recs)-1].Key
		}
	}
	if len(c.buf) == 0 {
		return nil, nil
	}
	return &c.buf[0], nil
}

// at returns the value stored for index i (nil if none), skipping records
// before it.
func (c *cursor) at(i uint64) ([]byte, error) {
	for {
		r, err := c.peek()
		if err != nil || r == nil {
			return nil, err
		}
		j, ok := parseHex16(strings.TrimPrefix(r.Key, c.prefix))
		if !ok || j < i {
			c.buf = c.buf[1:]
			continue
		}
		if j > i {
			return nil, nil
		}
		c.buf = c.buf[1:]
		return r.Value, nil
	}
}

// next returns the next record's key and value, or "" at the end.
func (c *cursor) next() (string, []byte, error) {
	r, err := c.peek()
	if err != nil || r == nil {
		return "", nil, err
	}
	c.buf = c.buf[1:]
	return r.Key, r.Value, nil
}

// stripReader reads level-0 hashes (leaf hashes) from the strips in order.
type stripReader struct {
	ctx   context.Context
	store storage.Store
	n     uint64 // the strip in buf
	buf   []byte
	read  bool
}

// at returns the leaf hash of index i, or nil when it is not stored.
func (r *stripReader) at(i uint64) ([]byte, error) {
	id := compact.NewNodeID(0, i)
	if !r.read || r.n != i/stripLen {
		r.n, r.read, r.buf = i/stripLen, true, nil
		rec, err := r.store.Get(r.ctx, stripKey(id))
		switch {
		case errors.Is(err, storage.ErrNotFound):
		case err != nil:
			return nil, fmt.Errorf("audit: read tree strip: %w", err)
		default:
			r.buf = rec.Value
		}
	}
	off := int(i%stripLen) * hashLen
	if len(r.buf) < off+hashLen {
		return nil, nil
	}
	return r.buf[off : off+hashLen], nil
}
