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
	// Latest is that checkpoint's signed note: keep it, and give it to the
	// next Verify, which then also reports a log rolled back behind it.
	Latest []byte
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

// Verify recomputes the whole tree from the store and checks it:
//
//   - every event body hashes to its stored leaf hash, and every stored
//     node hash is the hash of its children;
//   - every leaf up to the tree's size is there, except bodies below the
//     retention horizon a signed checkpoint states;
//   - every checkpoint carries a valid signature by v, and its root is the
//     root of the log's first size events (so each is a prefix of the next);
//   - every tenant's view lists each of its events exactly once and no
//     other event.
//
// Checkpoints kept from earlier (kept: signed notes, say a Report's
// Latest) are checked like the stored ones: their signatures, and that
// each is a prefix of the log. So a log rolled back to an older state,
// which write access to the store alone can do and which the stored
// checkpoints cannot show, is reported as truncated.
//
// It reports each finding with its index. It may run while servers write
// the log: it checks the tree as it was when it started, and what they add
// meanwhile is not a finding.
func Verify(ctx context.Context, store storage.Store, v note.Verifier, kept ...[]byte) (*Report, error) {
	rep := &Report{}
	add := func(f Finding) {
		if len(rep.Findings) < maxFindings {
			rep.Findings = append(rep.Findings, f)
		}
	}
	readState := func() (*treeState, error) {
		rec, err := store.Get(ctx, treeKey)
		if errors.Is(err, storage.ErrNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("audit: read tree state: %w", err)
		}
		st, err := parseTree(rec.Value)
		if err != nil {
			return nil, err
		}
		return &st, nil
	}
	s0, err := readState()
	if err != nil {
		add(Finding{Index: -1, Kind: "state", Detail: err.Error()})
		return rep, nil
	}
	if s0 == nil {
		// No state: an empty log, or one whose state was deleted. Checked
		// as empty, so that the signed checkpoints, kept ones and bodies
		// of a deleted state are reported, not passed over.
		s0 = &treeState{}
	}
	end := s0.Size

	// Checkpoints: the history, and the latest from the state.
	var cps []*Checkpoint
	var later []*Checkpoint // signed after the state was read, or a sign of truncation
	var horizon uint64      // the retention horizon the checkpoints sign
	check := func(key string, signed []byte) {
		cp, err := ParseCheckpoint(signed, v)
		if err != nil {
			add(Finding{Index: -1, Kind: "bad-checkpoint", Detail: fmt.Sprintf("%s: %v", key, err)})
			return
		}
		if want := strings.TrimPrefix(key, cpPrefix); strings.HasPrefix(key, cpPrefix) && want != hex16(cp.Size) {
			add(Finding{Index: -1, Kind: "bad-checkpoint", Detail: fmt.Sprintf("%s holds the checkpoint of size %d", key, cp.Size)})
			return
		}
		if cp.Size > end {
			later = append(later, cp)
			return
		}
		horizon = max(horizon, min(cp.Pruned, cp.Size))
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
	if s0.Checkpoint != nil {
		check(treeKey, s0.Checkpoint)
	}
	for i, signed := range kept {
		key := fmt.Sprintf("kept checkpoint %d", i+1)
		cp, err := ParseCheckpoint(signed, v)
		if err == nil && cp.Size > end {
			// Kept from an earlier run, so never larger than the log then;
			// the log only grows, whatever servers add while this runs.
			add(Finding{Index: -1, Kind: "truncated", Detail: fmt.Sprintf("%s, of size %d, is signed; the log holds %d events: it was rolled back", key, cp.Size, end)})
			continue
		}
		check(key, signed)
	}
	slices.SortFunc(cps, func(a, b *Checkpoint) int { return cmp.Compare(a.Size, b.Size) })
	rep.Checkpoints = len(cps)
	if len(cps) > 0 {
		rep.Size, rep.Latest = cps[len(cps)-1].Size, cps[len(cps)-1].Note
	}

	// Tenant views, as (index, tenant) sorted by index, checked against
	// the leaves as they stream by.
	type listing struct {
		i uint64
		t string
	}
	var listed []listing
	// A tenant's records, in key order, must each start past the one
	// before: ListAuditEvents pages through them so, and an index moved
	// into a later record would be skipped by a page that began after it.
	prevTenant, prevLast := "", uint64(0)
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
			switch {
			case !ok || !ok2 || len(idx) == 0 || idx[len(idx)-1] != lastIdx:
				add(Finding{Index: -1, Kind: "tenant-view", Detail: fmt.Sprintf("record %q is malformed", r.Key)})
				continue
			case tenant == prevTenant && idx[0] <= prevLast:
				add(Finding{Index: int64(idx[0]), Kind: "tenant-view", Detail: fmt.Sprintf("record %q starts at or before the end of the record before it in tenant %s's view", r.Key, tenant)})
			}
			prevTenant, prevLast = tenant, lastIdx
			if lastIdx >= end {
				continue // integrated after the state was read
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
	li := 0

	// Leaves, in index order. Two trees are built: one from the bodies'
	// hashes, whose roots must match the checkpoints, and one from the
	// stored leaf hashes, whose every node must match the stored nodes.
	bodies := newCursor(ctx, store, leafPrefix)
	levels := map[uint]*stripReader{}
	stored := func(id compact.NodeID) ([]byte, error) {
		r := levels[id.Level]
		if r == nil {
			r = &stripReader{ctx: ctx, store: store, level: id.Level}
			levels[id.Level] = r
		}
		return r.at(id.Index)
	}
	byBody := rangeFactory.NewEmptyRange(0)
	byStored := rangeFactory.NewEmptyRange(0)
	var nodeErr error
	badNodes := 0
	checkNode := func(id compact.NodeID, hash []byte) {
		if id.Level == 0 || nodeErr != nil {
			return
		}
		want, err := stored(id)
		if err != nil {
			nodeErr = err
			return
		}
		if !bytes.Equal(want, hash) {
			badNodes++
			add(Finding{Index: -1, Kind: "node", Detail: fmt.Sprintf("tree node %d/%d is not the hash of its children (covers events %d to %d)", id.Level, id.Index, id.Index<<id.Level, (id.Index+1)<<id.Level-1)})
		}
	}
	type mismatch struct {
		i    uint64
		body []byte
	}
	var mismatches []mismatch
	nodeAt := map[string]uint64{} // stored leaf hash → index, for the mismatched ones
	var missing [][2]uint64       // runs of missing bodies [from, to)
	var missingFrom int64 = -1
	flushMissing := func(to uint64) {
		if missingFrom >= 0 {
			missing = append(missing, [2]uint64{uint64(missingFrom), to})
			missingFrom = -1
		}
	}
	var unhashed [][2]uint64 // runs of leaf hashes not stored [from, to)
	var unhashedFrom int64 = -1
	next := 0
	rootsLost := false // a gap was skipped: the roots can no longer be computed
	var strips stripScan
	for i := uint64(0); i < end; i++ {
		if i%stripLen == 0 {
			// A whole strip with nothing stored (no body, no leaf hashes)
			// is skipped to the next thing stored, as one missing run:
			// walking it an index at a time could take for ever (a
			// tampered size). A log never loses its leaf hashes, so only
			// tampering leaves such a gap.
			j, found, err := nextStored(ctx, store, bodies, &strips, i)
			if err != nil {
				return nil, err
			}
			if !found || j >= i+stripLen {
				if missingFrom < 0 {
					missingFrom = int64(i)
				}
				if unhashedFrom < 0 {
					unhashedFrom = int64(i)
				}
				if !rootsLost {
					rootsLost = true
					for ; next < len(cps); next++ {
						add(Finding{Index: -1, Kind: "root-mismatch", Detail: fmt.Sprintf("the checkpoint of size %d (signed %s) covers events that are not stored", cps[next].Size, cps[next].Time.Format("2006-01-02T15:04:05Z07:00"))})
					}
				}
				if !found || j-j%stripLen >= end {
					break
				}
				i = j - j%stripLen - 1
				continue
			}
		}
		body, err := bodies.at(i)
		if err != nil {
			return nil, err
		}
		node, err := stored(compact.NewNodeID(0, i))
		if err != nil {
			return nil, err
		}
		switch {
		case node == nil && unhashedFrom < 0:
			unhashedFrom = int64(i)
		case node != nil && unhashedFrom >= 0:
			unhashed = append(unhashed, [2]uint64{uint64(unhashedFrom), i})
			unhashedFrom = -1
		}
		var h []byte
		switch {
		case body != nil:
			flushMissing(i)
			rep.Events++
			h = LeafHash(body)
			if node != nil && !bytes.Equal(h, node) {
				mismatches = append(mismatches, mismatch{i, h})
				nodeAt[string(node)] = i
			}
			t := leafTenant(body)
			n := 0
			for li < len(listed) && listed[li].i < i {
				li++
			}
			for ; li < len(listed) && listed[li].i == i; li++ {
				if listed[li].t != t {
					add(Finding{Index: int64(i), Kind: "tenant-view", Detail: fmt.Sprintf("listed in tenant %s's view but is not its event", listed[li].t)})
					continue
				}
				n++
			}
			switch {
			case validTenant(t) && n == 0:
				add(Finding{Index: int64(i), Kind: "tenant-view", Detail: fmt.Sprintf("missing from tenant %s's view", t)})
			case n > 1:
				add(Finding{Index: int64(i), Kind: "tenant-view", Detail: fmt.Sprintf("listed %d times in tenant %s's view", n, t)})
			}
		default:
			if missingFrom < 0 {
				missingFrom = int64(i)
			}
			h = node
		}
		if rootsLost {
			continue
		}
		if h == nil {
			h = make([]byte, hashLen) // unknowable: the roots below will not match
		}
		if err := byBody.Append(h, nil); err != nil {
			return nil, err
		}
		sh := node
		if sh == nil {
			sh = h
		}
		if err := byStored.Append(sh, checkNode); err != nil {
			return nil, err
		}
		if nodeErr != nil {
			return nil, nodeErr
		}
		for next < len(cps) && cps[next].Size == i+1 {
			root, _ := byBody.GetRootHash(nil)
			if !bytes.Equal(root, cps[next].Root) {
				add(Finding{Index: -1, Kind: "root-mismatch", Detail: fmt.Sprintf("the checkpoint of size %d (signed %s) does not match the log's first %d events", cps[next].Size, cps[next].Time.Format("2006-01-02T15:04:05Z07:00"), cps[next].Size)})
			}
			next++
		}
	}
	flushMissing(end)
	if unhashedFrom >= 0 {
		unhashed = append(unhashed, [2]uint64{uint64(unhashedFrom), end})
	}
	for _, r := range unhashed {
		// Retention keeps every leaf hash, and proofs need them.
		add(Finding{Index: int64(r[0]), Kind: "node", Detail: fmt.Sprintf("the leaf hashes of events %d to %d are not stored (inclusion proofs that need them fail)", r[0], r[1]-1)})
	}
	for _, m := range mismatches {
		if j, ok := nodeAt[string(m.body)]; ok && j != m.i {
			add(Finding{Index: int64(m.i), Kind: "reordered", Detail: fmt.Sprintf("holds the event that belongs at index %d", j)})
		} else {
			add(Finding{Index: int64(m.i), Kind: "modified", Detail: "the event does not hash to its leaf hash"})
		}
	}

	// Anything stored past the end: integrated since, or inserted.
	var past []uint64
	for {
		k, _, err := bodies.next()
		if err != nil {
			return nil, err
		}
		if k == "" {
			break
		}
		if i, ok := parseHex16(strings.TrimPrefix(k, leafPrefix)); ok {
			past = append(past, i)
		} else {
			bodies.stray(k)
		}
	}

	// What servers did meanwhile: a checkpoint signed since (with a newer
	// retention horizon), leaves integrated since. Read after everything
	// else, so that it covers all that was seen.
	s1, err := readState()
	if err != nil {
		return nil, err
	}
	if s1 != nil && s1.Checkpoint != nil {
		if cp, err := ParseCheckpoint(s1.Checkpoint, v); err == nil {
			horizon = max(horizon, min(cp.Pruned, end))
		}
	}
	for _, i := range past {
		if s1 == nil || i >= s1.Size {
			add(Finding{Index: int64(i), Kind: "inserted", Detail: "an event past the end of the tree"})
		}
	}
	// A key among the events' that names no event: it can take the place
	// of an event in a listing (a page of ListAuditEvents that reads a
	// run of events), so it is an insertion too.
	for _, k := range bodies.strays {
		if len(k) > 80 {
			k = k[:80] + "…"
		}
		add(Finding{Index: -1, Kind: "inserted", Detail: fmt.Sprintf("record %q under the events' keys names no event", k)})
	}
	if n := bodies.nStrays - len(bodies.strays); n > 0 {
		add(Finding{Index: -1, Kind: "inserted", Detail: fmt.Sprintf("%d more records under the events' keys name no event", n)})
	}
	for _, cp := range later {
		if s1 == nil || cp.Size > s1.Size {
			add(Finding{Index: -1, Kind: "truncated", Detail: fmt.Sprintf("a checkpoint of size %d is signed, the log holds %d events", cp.Size, end)})
		}
	}
	for _, r := range missing {
		from, to := max(r[0], horizon), r[1]
		rep.Pruned += min(to, from) - r[0] // deleted by retention, as a checkpoint states
		if from >= to {
			continue
		}
		kind, what := "deleted", fmt.Sprintf("events %d to %d are missing", from, to-1)
		if to == end {
			kind = "truncated"
		}
		if from == to-1 {
			what = "the event is missing"
		}
		add(Finding{Index: int64(from), Kind: kind, Detail: what})
	}
	slices.SortStableFunc(rep.Findings, func(a, b Finding) int { return cmp.Compare(a.Index, b.Index) })
	return rep, nil
}

// nextStored returns the first index, from leaf i on, that has a body or
// lies in a stored strip of leaf hashes (bodies has read those before i);
// found is false when nothing is stored from i on.
func nextStored(ctx context.Context, store storage.Store, bodies *cursor, strips *stripScan, i uint64) (j uint64, found bool, err error) {
	r, err := bodies.peek()
	if err != nil {
		return 0, false, err
	}
	if r != nil {
		if b, ok := parseHex16(strings.TrimPrefix(r.Key, leafPrefix)); ok {
			j, found = max(b, i), true
		} else {
			return i, true, nil // not an index: walk on and let the walk report it
		}
	}
	// The first strip at or after i's, skipping keys that are no strip's
	// (no server writes one; they must not keep the walk going).
	after := ""
	if i > 0 {
		after = stripKey(compact.NewNodeID(0, i-1))
	}
	if strips.exhausted && after >= strips.noneAfter {
		return j, found, nil // an earlier scan found no strip past here
	}
	from := after
	for {
		recs, err := store.List(ctx, levelPrefix(0), after, 64)
		if err != nil {
			return 0, false, fmt.Errorf("audit: list tree strips: %w", err)
		}
		for _, r := range recs {
			n, ok := parseHex16(strings.TrimPrefix(r.Key, levelPrefix(0)))
			if !ok || n > (1<<64-1)/stripLen {
				continue
			}
			if s := max(n*stripLen, i); !found || s < j {
				j = s
			}
			return j, true, nil
		}
		if len(recs) < 64 {
			strips.exhausted, strips.noneAfter = true, from
			return j, found, nil
		}
		after = recs[len(recs)-1].Key
	}
}

// stripScan remembers where nextStored found no strip left, so that keys
// that are no strip's are not listed again at every later step.
type stripScan struct {
	exhausted bool
	noneAfter string
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
	// strays are keys under the prefix that name no index (no server
	// writes one): the first maxStrays, and how many there were.
	strays  []string
	nStrays int
}

// maxStrays bounds the stray keys a cursor keeps to report.
const maxStrays = 100

func (c *cursor) stray(key string) {
	if c.nStrays++; len(c.strays) < maxStrays {
		c.strays = append(c.strays, key)
	}
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
		if !ok {
			c.stray(r.Key)
		}
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

// stripReader reads one level's node hashes from its strips, in order.
type stripReader struct {
	ctx   context.Context
	store storage.Store
	level uint
	n     uint64 // the strip in buf
	buf   []byte
	read  bool
}

// at returns the stored hash of node i of the reader's level, or nil when
// it is not stored. Indexes must not decrease much: strips are read one at
// a time.
func (r *stripReader) at(i uint64) ([]byte, error) {
	id := compact.NewNodeID(r.level, i)
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
