package audit

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/custos-kms/custos/keystore/storage"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// Query selects a tenant's events. Zero fields select everything.
type Query struct {
	// Tenant whose events to list. Required.
	Tenant string
	// Start and End bound the event time: Start <= time < End.
	Start, End time.Time
	// EndedFrom, when set, drops the events of calls that ended before it
	// (time + duration < EndedFrom): a tenant created again under an id
	// sees none of its predecessor's events, yet the call that created it.
	EndedFrom time.Time
	// Operation, Identity: exact matches.
	Operation, Identity string
	// Result: "OK", "FAILED" (any code but OK) or a code's canonical name.
	Result string
	// From is the first leaf index to consider.
	From uint64
	// Limit is the most events to return. Required.
	Limit int
}

// Record is an event in the tree, with its inclusion proof.
type Record struct {
	Index uint64
	Leaf  []byte
	Event *custosv1.AuditEvent
	Proof [][]byte
}

// maxScanFactor bounds the events one query reads: Limit × this, plus
// maxScanExtra. A page of a selective filter may come back short, with a
// next index to continue from.
const (
	maxScanFactor = 10
	maxScanExtra  = 1000
)

// Events returns q.Tenant's events from q.From on, in log order, that are
// covered by the latest signed checkpoint, each with its inclusion proof
// against that checkpoint (returned too; nil before the first). next is the
// index to continue from, 0 when there is nothing more to read now.
func (l *Log) Events(ctx context.Context, q Query) (out []Record, cp *Checkpoint, next uint64, err error) {
	if !validTenant(q.Tenant) || q.Limit <= 0 {
		return nil, nil, 0, fmt.Errorf("audit: bad query")
	}
	if cp, err = l.Latest(ctx); err != nil || cp == nil {
		return nil, cp, 0, err
	}
	pfx := tenantPrefix + q.Tenant + "/"
	after := ""
	if q.From > 0 {
		// View records are keyed by their last index: the first one that
		// can hold q.From is the first with a key at or after it.
		after = tenantKey(q.Tenant, q.From-1)
	}
	budget := q.Limit*maxScanFactor + maxScanExtra
	for budget > 0 {
		recs, err := l.store.List(ctx, pfx, after, 64)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("audit: list events: %w", err)
		}
		for _, r := range recs {
			after = r.Key
			idx, ok := decodeIndexes(r.Value)
			if !ok {
				continue
			}
			var want []uint64
			for _, i := range idx {
				if i >= q.From && i < cp.Size {
					want = append(want, i)
				}
			}
			// One record lists up to an integration's worth of the
			// tenant's events (thousands): no more bodies are read than
			// the budget has left, and the next page goes on after them.
			cut := len(want) > budget
			if cut {
				want = want[:budget]
			}
			bodies, err := l.bodies(ctx, want)
			if err != nil {
				return nil, nil, 0, err
			}
			for _, i := range want {
				budget--
				b, ok := bodies[i]
				if !ok {
					continue // deleted by retention
				}
				ev, err := Unmarshal(b)
				if err != nil || ev.GetTenant() != q.Tenant || !q.match(ev) {
					continue
				}
				out = append(out, Record{Index: i, Leaf: b, Event: ev})
				if len(out) == q.Limit {
					return l.withProofs(ctx, out, cp, i+1)
				}
			}
			if cut {
				return l.withProofs(ctx, out, cp, want[len(want)-1]+1)
			}
			if len(idx) > 0 && idx[len(idx)-1] >= cp.Size {
				return l.withProofs(ctx, out, cp, 0) // the rest is not signed yet
			}
			if budget <= 0 {
				return l.withProofs(ctx, out, cp, idx[len(idx)-1]+1)
			}
		}
		if len(recs) < 64 {
			break
		}
	}
	return l.withProofs(ctx, out, cp, 0)
}

// bodies reads the leaves at idx (ascending), a run of nearby indexes per
// store call.
func (l *Log) bodies(ctx context.Context, idx []uint64) (map[uint64][]byte, error) {
	return readBodies(ctx, l.store, idx)
}

func readBodies(ctx context.Context, store storage.Store, idx []uint64) (map[uint64][]byte, error) {
	out := make(map[uint64][]byte, len(idx))
	for len(idx) > 0 {
		end := 1
		for end < len(idx) && idx[end]-idx[end-1] <= 16 && idx[end]-idx[0] < 1000 {
			end++
		}
		first, last := idx[0], idx[end-1]
		after := ""
		if first > 0 {
			after = leafKey(first - 1)
		}
		// Until past last: a key that is no event's (no server writes
		// one; audit verify reports it) must not use up the listing and
		// hide an event from the page.
		for limit := int(last - first + 1); after < leafKey(last); {
			recs, err := store.List(ctx, leafPrefix, after, limit)
			if err != nil {
				return nil, fmt.Errorf("audit: read events: %w", err)
			}
			for _, r := range recs {
				if i, ok := parseHex16(strings.TrimPrefix(r.Key, leafPrefix)); ok && i >= first && i <= last {
					out[i] = r.Value
				}
			}
			if len(recs) < limit {
				break
			}
			after = recs[len(recs)-1].Key
		}
		idx = idx[end:]
	}
	return out, nil
}

func (l *Log) withProofs(ctx context.Context, recs []Record, cp *Checkpoint, next uint64) ([]Record, *Checkpoint, uint64, error) {
	for i := range recs {
		p, err := l.InclusionProof(ctx, recs[i].Index, cp.Size)
		if err != nil {
			return nil, nil, 0, err
		}
		recs[i].Proof = p
	}
	return recs, cp, next, nil
}

func (q *Query) match(ev *custosv1.AuditEvent) bool {
	t := ev.GetTime().AsTime()
	switch {
	case !q.Start.IsZero() && t.Before(q.Start),
		!q.End.IsZero() && !t.Before(q.End),
		q.Operation != "" && ev.GetOperation() != q.Operation,
		q.Identity != "" && ev.GetIdentity() != q.Identity,
		!q.EndedFrom.IsZero() && t.Add(ev.GetDuration().AsDuration()).Before(q.EndedFrom):
		return false
	}
	switch q.Result {
	case "":
		return true
	case "FAILED":
		return ev.GetCode() != "OK"
	}
	return ev.GetCode() == q.Result
}

// Leaves returns up to limit events of the log from index from on, in
// index order, as stored (bodies deleted by retention are skipped). It
// reads integrated events only; Flush first to see everything queued.
func (l *Log) Leaves(ctx context.Context, from uint64, limit int) ([]Record, error) {
	after := ""
	if from > 0 {
		after = leafKey(from - 1)
	}
	recs, err := l.store.List(ctx, leafPrefix, after, limit)
	if err != nil {
		return nil, fmt.Errorf("audit: list leaves: %w", err)
	}
	out := make([]Record, 0, len(recs))
	for _, r := range recs {
		i, ok := parseHex16(strings.TrimPrefix(r.Key, leafPrefix))
		if !ok {
			continue
		}
		ev, err := Unmarshal(r.Value)
		if err != nil {
			return nil, fmt.Errorf("audit: event %d: %w", i, err)
		}
		out = append(out, Record{Index: i, Leaf: r.Value, Event: ev})
	}
	return out, nil
}
