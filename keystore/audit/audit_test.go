package audit_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/custos-kms/custos/keystore/audit"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/root/roottest"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/bbolt"
	"github.com/custos-kms/custos/keystore/storage/memory"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

type fixture struct {
	store storage.Store
	root  *local.Root
	log   *audit.Log
	w     *audit.Writer
}

func newFixture(t *testing.T, store storage.Store, spool string) *fixture {
	t.Helper()
	r, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.Open(context.Background(), audit.Config{Store: store, Root: r})
	if err != nil {
		t.Fatal(err)
	}
	w, err := audit.NewWriter(audit.WriterConfig{Store: store, SpoolPath: spool})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return &fixture{store: store, root: r, log: l, w: w}
}

func event(tenant string, n int) *custosv1.AuditEvent {
	return &custosv1.AuditEvent{
		Time: timestamppb.New(time.Date(2026, 11, 27, 12, 0, n, 0, time.UTC)), RequestId: fmt.Sprintf("req-%s-%d", tenant, n),
		Identity: "spiffe://test/" + tenant, Tenant: tenant, Key: "k", KeyVersions: []uint32{1}, Operation: "encrypt",
		Method: "/custos.v1.CryptoService/Encrypt", Code: "OK",
	}
}

// record writes n events for each tenant concurrently, integrates and signs.
func (f *fixture) record(t *testing.T, n int, tenants ...string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n*len(tenants))
	for _, tn := range tenants {
		for i := range n {
			wg.Go(func() { errs <- f.w.Record(event(tn, i)) })
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Record: %v", err)
		}
	}
	if err := f.log.Flush(context.Background()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
}

func verify(t *testing.T, f *fixture) *audit.Report {
	t.Helper()
	v, err := audit.VerifierOf(context.Background(), f.store, f.root)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(context.Background(), f.store, v)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestEventsCarryProofsThatVerifyAgainstTheSignedCheckpoint(t *testing.T) {
	f := newFixture(t, memory.New(), "")
	f.record(t, 40, "a", "b")
	recs, cp, next, err := f.log.Events(context.Background(), audit.Query{Tenant: "a", Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 40 || next != 0 || cp == nil || cp.Size != 80 {
		t.Fatalf("got %d events, next %d, checkpoint %+v; want 40 of a tree of 80, no next page", len(recs), next, cp)
	}
	v, err := f.log.Verifier(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := audit.ParseCheckpoint(cp.Note, v); err != nil {
		t.Fatalf("checkpoint signature: %v", err)
	}
	for _, r := range recs {
		if r.Event.GetTenant() != "a" {
			t.Fatalf("tenant a's view holds an event of %q", r.Event.GetTenant())
		}
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, r.Index, cp.Size, audit.LeafHash(r.Leaf), r.Proof, cp.Root); err != nil {
			t.Fatalf("event %d: inclusion proof: %v", r.Index, err)
		}
	}
	// Paging and filters.
	page, _, next, err := f.log.Events(context.Background(), audit.Query{Tenant: "b", Limit: 15})
	if err != nil || len(page) != 15 || next != page[14].Index+1 {
		t.Fatalf("first page: %d events, next %d, err %v", len(page), next, err)
	}
	rest, _, next2, err := f.log.Events(context.Background(), audit.Query{Tenant: "b", Limit: 100, From: next})
	if err != nil || len(rest) != 25 || next2 != 0 {
		t.Fatalf("second page: %d events, next %d, err %v", len(rest), next2, err)
	}
	some, _, _, err := f.log.Events(context.Background(), audit.Query{Tenant: "b", Limit: 100, Start: time.Date(2026, 11, 27, 12, 0, 10, 0, time.UTC), End: time.Date(2026, 11, 27, 12, 0, 20, 0, time.UTC)})
	if err != nil || len(some) != 10 {
		t.Fatalf("time range: %d events, err %v; want 10", len(some), err)
	}
	none, _, _, err := f.log.Events(context.Background(), audit.Query{Tenant: "b", Limit: 100, Result: "FAILED"})
	if err != nil || len(none) != 0 {
		t.Fatalf("result FAILED: %d events, err %v; want none", len(none), err)
	}
	// Consistency from an early size to the latest.
	p, err := f.log.ConsistencyProof(context.Background(), 10, cp.Size)
	if err != nil {
		t.Fatal(err)
	}
	if len(p) == 0 {
		t.Fatal("empty consistency proof")
	}
	if rep := verify(t, f); len(rep.Findings) != 0 || rep.Events != 80 {
		t.Fatalf("untouched log: %d events, findings %v", rep.Events, rep.Findings)
	}
}

func TestVerifyReportsEachTampering(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name   string
		tamper func(t *testing.T, s storage.Store)
		want   string // a finding must contain this
	}{
		{"a byte of an event changed", func(t *testing.T, s storage.Store) {
			r := get(t, s, "audit/l/0000000000000007")
			r.Value[len(r.Value)-1] ^= 1
			put(t, s, r)
		}, "event 7: modified"},
		{"an event deleted", func(t *testing.T, s storage.Store) {
			del(t, s, "audit/l/0000000000000003")
		}, "event 3: deleted"},
		{"two events swapped", func(t *testing.T, s storage.Store) {
			a, b := get(t, s, "audit/l/0000000000000002"), get(t, s, "audit/l/0000000000000005")
			a.Value, b.Value = b.Value, a.Value
			put(t, s, a)
			put(t, s, b)
		}, "event 2: reordered: holds the event that belongs at index 5"},
		{"the tail truncated", func(t *testing.T, s storage.Store) {
			for i := 15; i < 20; i++ {
				del(t, s, fmt.Sprintf("audit/l/%016x", i))
			}
		}, "event 15: truncated: events 15 to 19 are missing"},
		{"a checkpoint signature replaced", func(t *testing.T, s storage.Store) {
			r := get(t, s, "audit/c/0000000000000014")
			i := bytes.LastIndex(r.Value, []byte(" "))
			r.Value = append(r.Value[:i+1], []byte("AAAA"+strings.Repeat("B", 84)+"\n")...)
			put(t, s, r)
		}, "bad-checkpoint: audit/c/0000000000000014"},
		{"an event inserted past the end", func(t *testing.T, s storage.Store) {
			r := get(t, s, "audit/l/0000000000000001")
			r.Key, r.Version = "audit/l/0000000000000063", 0
			put(t, s, r)
		}, "event 99: inserted"},
		{"an event hash rewritten with its body", func(t *testing.T, s storage.Store) {
			r := get(t, s, "audit/l/0000000000000004")
			r.Value[len(r.Value)-1] ^= 1
			put(t, s, r)
			n := get(t, s, "audit/n/00/0000000000000000") // the strip of leaf hashes 0–255
			copy(n.Value[4*32:], audit.LeafHash(r.Value))
			put(t, s, n)
		}, "root-mismatch: the checkpoint of size 20"},
		{"an event hidden from its tenant's view", func(t *testing.T, s storage.Store) {
			recs, err := s.List(ctx, "audit/t/b/", "", 1)
			if err != nil || len(recs) != 1 {
				t.Fatal(recs, err)
			}
			// Drop the view's first index: the view is a list of uvarint
			// deltas, and the first is at most a byte here.
			recs[0].Value = append([]byte{recs[0].Value[0] + recs[0].Value[1]}, recs[0].Value[2:]...)
			put(t, s, recs[0])
		}, "tenant-view: missing from tenant b's view"},
		{"bodies deleted and the retention horizon raised in the state", func(t *testing.T, s storage.Store) {
			r := get(t, s, "audit/tree")
			var st map[string]any
			if err := json.Unmarshal(r.Value, &st); err != nil {
				t.Fatal(err)
			}
			st["pruned"] = 20
			r.Value, _ = json.Marshal(st)
			put(t, s, r)
			del(t, s, "audit/l/0000000000000011")
		}, "event 17: deleted"},
		{"an interior node changed", func(t *testing.T, s storage.Store) {
			n := get(t, s, "audit/n/01/0000000000000000")
			n.Value[3*32] ^= 1 // node 1/3: events 6 and 7
			put(t, s, n)
		}, "tree node 1/3 is not the hash of its children (covers events 6 to 7)"},
		{"the leaf hashes deleted", func(t *testing.T, s storage.Store) {
			del(t, s, "audit/n/00/0000000000000000")
		}, "event 0: node: the leaf hashes of events 0 to 19 are not stored"},
		{"the leaf hashes truncated", func(t *testing.T, s storage.Store) {
			n := get(t, s, "audit/n/00/0000000000000000")
			n.Value = n.Value[:12*32]
			put(t, s, n)
		}, "event 12: node: the leaf hashes of events 12 to 19 are not stored"},
		{"another tenant's event in a view", func(t *testing.T, s storage.Store) {
			recs, err := s.List(ctx, "audit/t/a/", "", 1)
			if err != nil || len(recs) != 1 {
				t.Fatal(recs, err)
			}
			b, _ := s.List(ctx, "audit/t/b/", "", 1)
			r := storage.Record{Key: "audit/t/a/" + strings.TrimPrefix(b[0].Key, "audit/t/b/"), Value: b[0].Value}
			put(t, s, r)
		}, "but is not its event"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, memory.New(), "")
			f.record(t, 10, "a", "b")
			if rep := verify(t, f); len(rep.Findings) != 0 {
				t.Fatalf("before tampering: %v", rep.Findings)
			}
			c.tamper(t, f.store)
			rep := verify(t, f)
			var got []string
			for _, fd := range rep.Findings {
				got = append(got, fd.String())
				if strings.Contains(fd.String(), c.want) {
					return
				}
			}
			t.Fatalf("findings %q do not report %q", got, c.want)
		})
	}
}

func get(t *testing.T, s storage.Store, key string) storage.Record {
	t.Helper()
	r, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func put(t *testing.T, s storage.Store, r storage.Record) {
	t.Helper()
	if _, err := s.Put(context.Background(), r.Key, r.Value, r.Version); err != nil {
		t.Fatal(err)
	}
}

func del(t *testing.T, s storage.Store, key string) {
	t.Helper()
	r := get(t, s, key)
	if err := s.Delete(context.Background(), key, r.Version); err != nil {
		t.Fatal(err)
	}
}

// flaky is a store whose writes fail while down is set (a fake of an
// outage; the real PostgreSQL outage is tested in server/).
type flaky struct {
	storage.Store
	mu   sync.Mutex
	down bool
}

func (f *flaky) set(down bool) { f.mu.Lock(); f.down = down; f.mu.Unlock() }
func (f *flaky) err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return storage.ErrUnavailable
	}
	return nil
}
func (f *flaky) Put(ctx context.Context, k string, v []byte, e uint64) (uint64, error) {
	if err := f.err(); err != nil {
		return 0, err
	}
	return f.Store.Put(ctx, k, v, e)
}
func (f *flaky) Apply(ctx context.Context, ops []storage.Op) error {
	if err := f.err(); err != nil {
		return err
	}
	return f.Store.(storage.Applier).Apply(ctx, ops)
}

func TestSpooledEventsReachTheLogInOrderExactlyOnce(t *testing.T) {
	ctx := context.Background()
	st := &flaky{Store: memory.New()}
	spool := filepath.Join(t.TempDir(), "audit.spool")
	f := newFixture(t, st, spool)
	f.record(t, 3, "a")
	st.set(true)
	for i := range 5 {
		if err := f.w.Record(event("a", 100+i)); err != nil {
			t.Fatalf("Record during the outage (spool): %v", err)
		}
	}
	st.set(false)
	// Stored again, but the spool still has entries: new events queue
	// behind them, so order holds.
	if err := f.w.Record(event("a", 200)); err != nil {
		t.Fatal(err)
	}
	if err := f.w.ShipOnce(ctx); err != nil {
		t.Fatalf("ShipOnce: %v", err)
	}
	// Shipping again (as after a crash before the spool was emptied) adds
	// nothing.
	if err := f.w.ShipOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.log.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	recs, _, _, err := f.log.Events(ctx, audit.Query{Tenant: "a", Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range recs {
		ids = append(ids, r.Event.GetRequestId())
	}
	want := "req-a-100 req-a-101 req-a-102 req-a-103 req-a-104 req-a-200"
	if got := strings.Join(ids[3:], " "); len(ids) != 9 || got != want {
		t.Fatalf("events after the first three: %q (%d in all); want %q", got, len(ids), want)
	}
	if n, b := f.w.Spooled(); n != 0 || b != 0 {
		t.Fatalf("spool after shipping: %d batches, %d bytes; want empty", n, b)
	}
	if rep := verify(t, f); len(rep.Findings) != 0 {
		t.Fatal(rep.Findings)
	}
}

func TestShippingTwiceAfterIntegrationAddsNothing(t *testing.T) {
	for _, retention := range []bool{false, true} {
		t.Run(fmt.Sprintf("a retention pass between: %v", retention), func(t *testing.T) { shipTwice(t, retention) })
	}
}

// shipTwice ships a spooled batch, integrates it, then ships it again (a
// crash after shipping, before the spool was emptied), with or without a
// retention pass between whose cutoff is past every mark (a server down
// longer than audit.retention).
func shipTwice(t *testing.T, retention bool) {
	ctx := context.Background()
	st := &flaky{Store: memory.New()}
	spool := filepath.Join(t.TempDir(), "audit.spool")
	f := newFixture(t, st, spool)
	st.set(true)
	if err := f.w.Record(event("a", 1)); err != nil {
		t.Fatal(err)
	}
	st.set(false)
	// A copy of the spool as it was before shipping: a crash after the
	// entry was shipped and integrated but before the spool was emptied.
	saved, err := os.ReadFile(spool + ".0000000000000001")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.w.ShipOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.log.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	f.w.Close()
	if retention {
		if _, err := f.log.Prune(ctx, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(spool+".0000000000000001", saved, 0o600); err != nil {
		t.Fatal(err)
	}
	w2, err := audit.NewWriter(audit.WriterConfig{Store: st, SpoolPath: spool})
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	if err := w2.ShipOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.log.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if cp, err := f.log.Latest(ctx); err != nil || cp.Size != 1 {
		t.Fatalf("log size %v, %v; want 1 (the re-shipped batch is not integrated twice)", cp, err)
	}
}

func TestNoDurableSinkFailsClosedOrOpen(t *testing.T) {
	st := &flaky{Store: memory.New()}
	bad := filepath.Join(t.TempDir(), "no-such-dir", "spool")
	if _, err := audit.NewWriter(audit.WriterConfig{Store: st, SpoolPath: bad}); err == nil {
		t.Fatal("a writer with an unwritable spool path started")
	}
	closed, err := audit.NewWriter(audit.WriterConfig{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	defer closed.Close()
	open, err := audit.NewWriter(audit.WriterConfig{Store: st, FailOpen: true})
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	st.set(true)
	if err := closed.Record(event("a", 1)); !errors.Is(err, audit.ErrUnavailable) {
		t.Fatalf("fail-closed Record with the store down and no spool: %v, want ErrUnavailable", err)
	}
	if err := open.Record(event("a", 1)); err != nil {
		t.Fatalf("fail-open Record: %v, want nil", err)
	}
}

func TestTornSpoolTailIsCutOff(t *testing.T) {
	st := &flaky{Store: memory.New()}
	spool := filepath.Join(t.TempDir(), "audit.spool")
	f := newFixture(t, st, spool)
	st.set(true)
	for i := range 2 {
		if err := f.w.Record(event("a", i)); err != nil {
			t.Fatal(err)
		}
	}
	f.w.Close()
	fh, err := os.OpenFile(spool+".0000000000000001", os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.Write([]byte{0, 0, 1, 0, 9, 9, 9}) // half an entry
	fh.Close()
	st.set(false)
	w, err := audit.NewWriter(audit.WriterConfig{Store: st, SpoolPath: spool})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.ShipOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := f.log.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if cp, _ := f.log.Latest(context.Background()); cp == nil || cp.Size != 2 {
		t.Fatalf("checkpoint %+v; want the 2 whole entries", cp)
	}
}

func TestRetentionKeepsTheLogVerifiable(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, memory.New(), "")
	// In time order, as a log integrates them.
	for i := range 30 {
		for _, tn := range []string{"a", "shredded"} {
			if err := f.w.Record(event(tn, i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := f.log.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Events of second 0..14 are older than the cutoff.
	n, err := f.log.Prune(ctx, time.Date(2026, 11, 27, 12, 0, 15, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	// The horizon is signed before the bodies go: the log verifies clean
	// at once, and a checkpoint signed later keeps the horizon.
	if rep := verify(t, f); len(rep.Findings) != 0 {
		t.Fatalf("right after retention: findings %v", rep.Findings)
	}
	if cp, err := f.log.Latest(ctx); err != nil || cp.Pruned != uint64(n) {
		t.Fatalf("the latest checkpoint: %+v, %v; want the horizon %d signed", cp, err, n)
	}
	if err := f.w.Record(event("a", 99)); err != nil {
		t.Fatal(err)
	}
	if err := f.log.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if cp, err := f.log.Latest(ctx); err != nil || cp.Pruned != uint64(n) {
		t.Fatalf("a checkpoint signed after retention: %+v, %v; want the horizon %d kept", cp, err, n)
	}
	if n == 0 {
		t.Fatal("nothing pruned")
	}
	recs, _, _, err := f.log.Events(ctx, audit.Query{Tenant: "shredded", Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 15 {
		t.Fatalf("%d events of the shredded tenant listed after retention, want the 15 newer ones", len(recs))
	}
	for _, r := range recs {
		if r.Event.GetTime().AsTime().Before(time.Date(2026, 11, 27, 12, 0, 15, 0, time.UTC)) {
			t.Fatalf("event %d older than the cutoff is still listed", r.Index)
		}
	}
	rep := verify(t, f)
	if len(rep.Findings) != 0 || rep.Pruned != uint64(n) {
		t.Fatalf("after retention: pruned %d checked by hash (deleted %d), findings %v", rep.Pruned, n, rep.Findings)
	}
}

// Retention deletes only bodies that are there, in order, and match their
// leaf hashes: it must not sign away a body someone else deleted or changed.
func TestRetentionNeverExcusesATamperedBody(t *testing.T) {
	ctx := context.Background()
	old := event("a", 0)
	old.Time = timestamppb.New(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC))
	forged, err := audit.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	cutoff := time.Date(2026, 11, 27, 11, 0, 0, 0, time.UTC) // before every real event
	cases := map[string]func(t *testing.T, s storage.Store){
		"bodies deleted below one dated long ago": func(t *testing.T, s storage.Store) {
			for i := range 5 {
				del(t, s, fmt.Sprintf("audit/l/%016x", i))
			}
			r := get(t, s, "audit/l/0000000000000005")
			r.Value = forged
			put(t, s, r)
		},
		"bodies deleted below one replaced by bytes that do not decode": func(t *testing.T, s storage.Store) {
			for i := range 5 {
				del(t, s, fmt.Sprintf("audit/l/%016x", i))
			}
			r := get(t, s, "audit/l/0000000000000005")
			r.Value = []byte{0xff}
			put(t, s, r)
		},
		"the first body redated": func(t *testing.T, s storage.Store) {
			r := get(t, s, "audit/l/0000000000000000")
			r.Value = forged
			put(t, s, r)
		},
	}
	for name, tamper := range cases {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, memory.New(), "")
			for i := range 10 {
				if err := f.w.Record(event("a", i)); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.log.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			tamper(t, f.store)
			n, err := f.log.Prune(ctx, cutoff)
			if n != 0 || !errors.Is(err, audit.ErrRetentionStopped) {
				t.Fatalf("Prune deleted %d bodies, error %v; want none and ErrRetentionStopped", n, err)
			}
			if _, err := f.log.Sign(ctx); err != nil {
				t.Fatal(err)
			}
			rep := verify(t, f)
			if rep.Pruned != 0 || len(rep.Findings) == 0 {
				t.Fatalf("after retention met a tampered log: pruned %d, findings %v; want the tampering reported", rep.Pruned, rep.Findings)
			}
		})
	}
}

// A log rolled back to an older state (write access to the store alone
// can do it) shows nothing in the stored checkpoints; a checkpoint kept
// from an earlier verify reports it.
func TestAKeptCheckpointCatchesALogRolledBack(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, memory.New(), "")
	f.record(t, 10, "a")
	before := memory.New() // the store as it was at 10 events
	if err := f.store.(storage.Snapshotter).Snapshot(ctx, func(r storage.Record) error {
		_, err := before.Put(ctx, r.Key, r.Value, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	f.record(t, 10, "a")
	rep := verify(t, f)
	if len(rep.Findings) != 0 || rep.Size != 20 || len(rep.Latest) == 0 {
		t.Fatalf("the log of 20 events: size %d, findings %v, latest %q", rep.Size, rep.Findings, rep.Latest)
	}
	v, err := audit.VerifierOf(ctx, f.store, f.root)
	if err != nil {
		t.Fatal(err)
	}
	// Rolled back: clean on its own, truncated against the kept checkpoint.
	if old, err := audit.Verify(ctx, before, v); err != nil || len(old.Findings) != 0 {
		t.Fatalf("the rolled-back log on its own: %v, %v; want it clean (why a checkpoint must be kept)", old, err)
	}
	old, err := audit.Verify(ctx, before, v, rep.Latest)
	if err != nil {
		t.Fatal(err)
	}
	if len(old.Findings) == 0 || !strings.Contains(old.Findings[0].String(), "truncated: kept checkpoint 1, of size 20, is signed; the log holds 10 events") {
		t.Fatalf("the rolled-back log against the kept checkpoint: %v", old.Findings)
	}
	// Rolled back while servers write past the kept size during the run.
	f.record(t, 10, "a")
	grown, err := f.store.Get(ctx, "audit/tree")
	if err != nil {
		t.Fatal(err)
	}
	old, err = audit.Verify(ctx, &growingState{Store: before, later: grown}, v, rep.Latest)
	if err != nil {
		t.Fatal(err)
	}
	if len(old.Findings) == 0 || !strings.Contains(old.Findings[0].String(), "kept checkpoint 1, of size 20, is signed; the log holds 10 events") {
		t.Fatalf("the rolled-back log, growing during the run, against the kept checkpoint: %v", old.Findings)
	}
	// The kept checkpoint's signature counts too.
	forged := bytes.Clone(rep.Latest)
	forged[len(forged)-2] ^= 1
	if now, err := audit.Verify(ctx, f.store, v, forged); err != nil || len(now.Findings) == 0 {
		t.Fatalf("a forged kept checkpoint: %v, %v; want a finding", now, err)
	}
	if now, err := audit.Verify(ctx, f.store, v, rep.Latest); err != nil || len(now.Findings) != 0 {
		t.Fatalf("the log against its own kept checkpoint: %v, %v", now, err)
	}
}

// A log whose tree state was deleted is checked as empty: its kept and
// stored checkpoints and its bodies are reported, where verify used to
// stop at the missing state and report nothing.
func TestALogWithoutItsStateIsNotClean(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, memory.New(), "")
	f.record(t, 10, "a")
	rep := verify(t, f)
	if len(rep.Findings) != 0 || rep.Size != 10 {
		t.Fatalf("the log of 10 events: size %d, findings %v", rep.Size, rep.Findings)
	}
	v, err := audit.VerifierOf(ctx, f.store, f.root)
	if err != nil {
		t.Fatal(err)
	}
	del(t, f.store, "audit/tree")
	got, err := audit.Verify(ctx, f.store, v, rep.Latest)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, fd := range got.Findings {
		kinds[fd.Kind]++
	}
	if kinds["truncated"] == 0 || kinds["inserted"] != 10 {
		t.Fatalf("findings %v; want the kept checkpoint truncated and the 10 bodies inserted", got.Findings)
	}
	// An empty store is an empty log, and clean.
	if got, err := audit.Verify(ctx, memory.New(), v); err != nil || len(got.Findings) != 0 || got.Events != 0 {
		t.Fatalf("an empty store: %v, %v", got, err)
	}
}

// An integrator that finds the tree state behind the stored events (the
// state deleted) stops rather than overwrite their bodies from index 0.
func TestIntegrationNeverOverwritesStoredEvents(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, memory.New(), "")
	f.record(t, 5, "a")
	first := get(t, f.store, "audit/l/0000000000000000")
	del(t, f.store, "audit/tree")
	if err := f.w.Record(event("a", 99)); err != nil {
		t.Fatal(err)
	}
	if n, err := f.log.Integrate(ctx, 100); err == nil || !strings.Contains(err.Error(), "behind the log") {
		t.Fatalf("Integrate = %d, %v; want it refused", n, err)
	}
	if now, err := f.store.Get(ctx, "audit/l/0000000000000000"); err != nil || !bytes.Equal(now.Value, first.Value) {
		t.Fatalf("event 0 after the refused integration: %v (changed: %v)", err, err == nil && !bytes.Equal(now.Value, first.Value))
	}
}

// growingState is a store whose tree state grows to later after its first
// read: servers integrating while a verify runs.
type growingState struct {
	storage.Store
	later storage.Record
	reads atomic.Int32
}

func (g *growingState) Get(ctx context.Context, key string) (storage.Record, error) {
	if key == "audit/tree" && g.reads.Add(1) > 1 {
		return g.later, nil
	}
	return g.Store.Get(ctx, key)
}

func TestBboltLogSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "custos.db")
	s, err := bbolt.Open(path, bbolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, s, "")
	f.record(t, 20, "a")
	f.w.Close()
	s.Close()
	s2, err := bbolt.Open(path, bbolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	f.store = s2
	if rep := verify(t, f); len(rep.Findings) != 0 || rep.Events != 20 {
		t.Fatalf("reopened: %d events, %v", rep.Events, rep.Findings)
	}
}

func TestJournalFirstShipsInBulkAndDeletesShippedSegments(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	spool := filepath.Join(t.TempDir(), "audit.spool")
	f := newFixture(t, st, "")
	w, err := audit.NewWriter(audit.WriterConfig{Store: st, SpoolPath: spool, JournalFirst: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// Enough events, one batch each, to fill more than one 8 MiB segment.
	big := event("a", 0)
	big.Identity = strings.Repeat("i", 12000)
	for i := range 800 {
		big.RequestId = fmt.Sprintf("req-%d", i)
		if err := w.Record(big); err != nil {
			t.Fatal(err)
		}
	}
	if m, _ := filepath.Glob(spool + ".0*"); len(m) < 2 {
		t.Fatalf("%d spool segments after ~9.6 MB; want a second one", len(m))
	}
	if recs, _ := st.List(ctx, "audit/q/", "", 10); len(recs) != 0 {
		t.Fatal("journal-first wrote to the store before shipping")
	}
	if err := w.ShipOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if m, _ := filepath.Glob(spool + ".0*"); len(m) != 1 {
		t.Fatalf("after shipping everything: segments %v; want one", m)
	}
	if n, b := w.Spooled(); n != 0 || b != 0 {
		t.Fatalf("after shipping everything: %d batches, %d bytes in the spool; want none", n, b)
	}
	if err := f.log.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if cp, err := f.log.Latest(ctx); err != nil || cp.Size != 800 {
		t.Fatalf("checkpoint %v, %v; want 800 events", cp, err)
	}
}

func TestRewrapSigningKeyKeepsTheLogVerifiable(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, memory.New(), "")
	f.record(t, 5, "a")
	before, err := f.store.Get(ctx, "audit/signing-key")
	if err != nil {
		t.Fatal(err)
	}
	bounded := &roottest.Deadlines{Root: f.root}
	if found, err := audit.RewrapSigningKey(ctx, f.store, bounded); err != nil || !found {
		t.Fatal(found, err)
	}
	if bounded.Calls.Load() != 2 || bounded.Unbounded.Load() != 0 {
		t.Fatalf("%d root calls (want an unwrap and a wrap), %d without a deadline", bounded.Calls.Load(), bounded.Unbounded.Load())
	}
	after, err := f.store.Get(ctx, "audit/signing-key")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(before.Value, after.Value) {
		t.Fatal("the wrapped signing key did not change")
	}
	// A new log over the store signs with the same key after the rewrap.
	l2, err := audit.Open(ctx, audit.Config{Store: f.store, Root: f.root})
	if err != nil {
		t.Fatal(err)
	}
	f.record(t, 3, "a")
	if _, err := l2.Sign(ctx); err != nil {
		t.Fatal(err)
	}
	if rep := verify(t, f); len(rep.Findings) != 0 || rep.Events != 8 {
		t.Fatalf("after rewrap: %d events, %v", rep.Events, rep.Findings)
	}
	// Another root cannot unwrap it: verification refuses to start.
	other, err := local.Create(filepath.Join(t.TempDir(), "other.key"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := audit.VerifierOf(ctx, f.store, other); err == nil {
		t.Fatal("another root unwrapped the signing key")
	}
}

func TestASpoolIsNeverShared(t *testing.T) {
	spool := filepath.Join(t.TempDir(), "audit.spool")
	st := memory.New()
	w, err := audit.NewWriter(audit.WriterConfig{Store: st, SpoolPath: spool})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := audit.NewWriter(audit.WriterConfig{Store: st, SpoolPath: spool}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("a second writer on the same spool: %v, want refused", err)
	}
	w.Close()
	// A stray file beside a new spool does not stop it from opening.
	other := filepath.Join(t.TempDir(), "audit.spool")
	if err := os.WriteFile(other+".bak", []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	w2, err := audit.NewWriter(audit.WriterConfig{Store: st, SpoolPath: other})
	if err != nil {
		t.Fatalf("after Close, with a stray file: %v", err)
	}
	w2.Close()
}

func TestIntegrateSkipsABatchItsWriterAlreadyHasInTheTree(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	f := newFixture(t, st, "")
	f.record(t, 3, "a") // writer w's batches 1.. are in the tree
	recs, err := st.List(ctx, "audit/shipped/", "", 10)
	if err != nil || len(recs) != 1 {
		t.Fatalf("shipped marks: %v %v", recs, err)
	}
	writer := strings.TrimPrefix(recs[0].Key, "audit/shipped/")
	// The same batch arrives again (a late commit of a timed-out write, or
	// a spool shipped twice): its counter is at or below the mark.
	leaf, err := audit.Marshal(event("a", 99))
	if err != nil {
		t.Fatal(err)
	}
	dup := append([]byte{1}, byte(len(leaf)))
	dup = append(dup, leaf...)
	if _, err := st.Put(ctx, "audit/q/"+writer+"/0000000000000001", dup, 0); err != nil {
		t.Fatal(err)
	}
	before, _ := f.log.Latest(ctx)
	if err := f.log.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	after, _ := f.log.Latest(ctx)
	if after.Size != before.Size {
		t.Fatalf("log grew from %d to %d: a batch already in the tree was integrated again", before.Size, after.Size)
	}
	if q, _ := st.List(ctx, "audit/q/", "", 10); len(q) != 0 {
		t.Fatalf("the duplicate stays queued: %v", q)
	}
}

func TestVerifyOfALogBeingWrittenFindsNothing(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, memory.New(), "")
	f.record(t, 50, "a", "b")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = f.w.Record(event("c", i))
			_ = f.log.Flush(ctx)
		}
	}()
	v, err := f.log.Verifier(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		rep, err := audit.Verify(ctx, f.store, v)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Findings) != 0 {
			close(stop)
			<-done
			t.Fatalf("verify beside a writer: %v", rep.Findings)
		}
	}
	close(stop)
	<-done
}

// blocked is an export destination that never takes a byte (a stalled
// log shipper).
type blocked struct{ release chan struct{} }

func (b blocked) Write(p []byte) (int, error) { <-b.release; return len(p), nil }

func TestAStalledExportNeverHoldsUpCalls(t *testing.T) {
	st := memory.New()
	b := blocked{release: make(chan struct{})}
	exp := audit.NewExporter(audit.ExportConfig{Path: "-", Stdout: b})
	w, err := audit.NewWriter(audit.WriterConfig{Store: st, Export: exp})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for i := range 3000 {
			if err := w.Record(event("a", i)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Record blocked behind a stalled export")
	}
	if exp.Dropped() == 0 {
		t.Fatal("a stalled export dropped nothing")
	}
	close(b.release)
	w.Close()
	if err := exp.Close(); err != nil {
		t.Fatal(err)
	}
}

// hangingMarks is flaky whose reads of shipped marks, once hang is set,
// wait until their context ends: a connection that stopped answering.
type hangingMarks struct {
	flaky
	hang atomic.Bool
}

func (h *hangingMarks) Get(ctx context.Context, key string) (storage.Record, error) {
	if h.hang.Load() && strings.Contains(key, "/shipped/") {
		<-ctx.Done()
		return storage.Record{}, fmt.Errorf("hanging: %w", storage.ErrUnavailable)
	}
	return h.flaky.Get(ctx, key)
}

// Shipping reads each writer's shipped mark within the commit timeout: a
// store that stopped answering must not hold the shipper (and its lock)
// until the server stops.
func TestShippingGivesUpOnAStoreThatStoppedAnswering(t *testing.T) {
	st := &hangingMarks{flaky: flaky{Store: memory.New()}}
	spool := filepath.Join(t.TempDir(), "audit.spool")
	w, err := audit.NewWriter(audit.WriterConfig{Store: st, SpoolPath: spool, CommitTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	st.set(true)
	if err := w.Record(event("a", 1)); err != nil {
		t.Fatal(err)
	}
	st.set(false)
	st.hang.Store(true)
	done := make(chan error, 1)
	go func() { done <- w.ShipOnce(context.Background()) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("ShipOnce succeeded against a store that does not answer")
		}
	case <-time.After(10 * time.Second):
		st.hang.Store(false)
		t.Fatal("ShipOnce still waits for a shipped mark after 10s")
	}
}

// A tree size tampered to far beyond what is stored does not make verify
// walk empty indexes for ever (silencing the tool meant to find it): it
// reports the events the state claims and the store lacks, and ends.
func TestVerifyOfAnInflatedTreeSizeEnds(t *testing.T) {
	f := newFixture(t, memory.New(), "")
	f.record(t, 10, "a", "b")
	r := get(t, f.store, "audit/tree")
	var st map[string]any
	if err := json.Unmarshal(r.Value, &st); err != nil {
		t.Fatal(err)
	}
	st["size"] = uint64(1) << 62
	r.Value, _ = json.Marshal(st)
	put(t, f.store, r)
	// And a body planted near that end, so that something is stored "later"
	// at every step.
	planted := get(t, f.store, "audit/l/0000000000000001")
	planted.Key, planted.Version = fmt.Sprintf("audit/l/%016x", uint64(1)<<62-1), 0
	put(t, f.store, planted)
	// And strip records whose keys sort after every real one.
	for _, k := range []string{"audit/n/00/zz", "audit/n/00/ffffffffffffffff"} {
		put(t, f.store, storage.Record{Key: k, Value: make([]byte, 32)})
	}
	v, err := audit.VerifierOf(context.Background(), f.store, f.root)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		rep *audit.Report
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := audit.Verify(context.Background(), f.store, v)
		done <- result{rep, err}
	}()
	var rep *audit.Report
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		rep = r.rep
	case <-time.After(20 * time.Second):
		t.Fatal("verify of a tree whose size was inflated still runs after 20s")
	}
	want := fmt.Sprintf("event 20: deleted: events 20 to %d are missing", uint64(1)<<62-2)
	var got []string
	for _, fd := range rep.Findings {
		got = append(got, fd.String())
		if strings.Contains(fd.String(), want) {
			return
		}
	}
	t.Fatalf("findings %q do not report %q", got, want)
}

// Write access to the store alone must not get a rewritten history signed:
// a tree whose nodes and state were replaced by another history's is not
// an extension of the checkpoint already signed, and the log refuses to
// sign it (the events and their proofs would otherwise verify against the
// genuine key).
func TestARewrittenHistoryIsNotSigned(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, memory.New(), "")
	f.record(t, 10, "a", "b")
	forged := newFixture(t, memory.New(), "")
	forged.record(t, 10, "a", "c")
	for _, prefix := range []string{"audit/n/", "audit/l/"} {
		recs, err := forged.store.List(ctx, prefix, "", 10000)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			cur, err := f.store.Get(ctx, r.Key)
			if err == nil {
				r.Version = cur.Version
			} else {
				r.Version = 0
			}
			put(t, f.store, r)
		}
	}
	var genuine, fake map[string]any
	gr := get(t, f.store, "audit/tree")
	if err := json.Unmarshal(gr.Value, &genuine); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(get(t, forged.store, "audit/tree").Value, &fake); err != nil {
		t.Fatal(err)
	}
	genuine["range"] = fake["range"] // same size, another history
	gr.Value, _ = json.Marshal(genuine)
	put(t, f.store, gr)
	if err := f.w.Record(event("a", 99)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.log.Integrate(ctx, 100); err != nil {
		t.Fatal(err)
	}
	if cp, err := f.log.Sign(ctx); err == nil {
		t.Fatalf("the log signed a rewritten history (size %d)", cp.Size)
	}
	// The same with the state's checkpoint removed, signed by a server
	// that never signed (just started): the history's checkpoints still
	// say what was signed.
	gr = get(t, f.store, "audit/tree")
	if err := json.Unmarshal(gr.Value, &genuine); err != nil {
		t.Fatal(err)
	}
	genuine["checkpoint"] = nil
	gr.Value, _ = json.Marshal(genuine)
	put(t, f.store, gr)
	fresh, err := audit.Open(ctx, audit.Config{Store: f.store, Root: f.root})
	if err != nil {
		t.Fatal(err)
	}
	if cp, err := fresh.Sign(ctx); err == nil {
		t.Fatalf("a fresh server signed a rewritten history whose state lost its checkpoint (size %d)", cp.Size)
	}
}

// A deleted signing key is not replaced by a new one once the log has a
// tree: the new key, wrapped under the root like the old, would sign
// whatever the store holds and verify as genuine.
func TestADeletedSigningKeyIsNotReplaced(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, memory.New(), "")
	f.record(t, 3, "a")
	del(t, f.store, "audit/signing-key")
	l, err := audit.Open(ctx, audit.Config{Store: f.store, Root: f.root})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.w.Record(event("a", 50)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Integrate(ctx, 100); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Sign(ctx); err == nil {
		t.Fatal("a log whose signing key was deleted made a new key and signed")
	}
	if _, err := f.store.Get(ctx, "audit/signing-key"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a new signing key was stored: %v", err)
	}
}

// countingLists counts the Lists of one prefix, and the records they
// returned.
type countingLists struct {
	storage.Store
	prefix string
	n      atomic.Int64
	listed atomic.Int64
}

func (c *countingLists) Apply(ctx context.Context, ops []storage.Op) error {
	return c.Store.(storage.Applier).Apply(ctx, ops)
}

func (c *countingLists) List(ctx context.Context, prefix, after string, limit int) ([]storage.Record, error) {
	recs, err := c.Store.List(ctx, prefix, after, limit)
	if prefix == c.prefix {
		c.n.Add(1)
		c.listed.Add(int64(len(recs)))
	}
	return recs, err
}

// Keys that are no strip's, planted after the real ones, are listed once,
// not again at every step of a walk over planted bodies far apart.
func TestVerifyListsPlantedStripKeysOnce(t *testing.T) {
	cl := &countingLists{Store: memory.New(), prefix: "audit/n/00/"}
	f := newFixture(t, cl, "")
	f.record(t, 10, "a")
	r := get(t, f.store, "audit/tree")
	var st map[string]any
	if err := json.Unmarshal(r.Value, &st); err != nil {
		t.Fatal(err)
	}
	st["size"] = 1000 * 256
	r.Value, _ = json.Marshal(st)
	put(t, f.store, r)
	body := get(t, f.store, "audit/l/0000000000000001")
	for k := range 500 {
		put(t, f.store, storage.Record{Key: fmt.Sprintf("audit/l/%016x", (k+2)*256), Value: body.Value})
	}
	for k := range 2000 {
		put(t, f.store, storage.Record{Key: fmt.Sprintf("audit/n/00/zz%08d", k), Value: make([]byte, 32)})
	}
	cl.n.Store(0)
	verify(t, f)
	if n := cl.n.Load(); n > 200 {
		t.Fatalf("verify listed the strips %d times", n)
	}
}

// blockingRoot holds every Unwrap until release is closed, telling
// entered when the first one starts.
type blockingRoot struct {
	*local.Root
	entered, release chan struct{}
	once             sync.Once
	unwraps          atomic.Int32
}

func (b *blockingRoot) Unwrap(ctx context.Context, blob, aad []byte) ([]byte, error) {
	b.unwraps.Add(1)
	b.once.Do(func() { close(b.entered) })
	select {
	case <-b.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return b.Root.Unwrap(ctx, blob, aad)
}

// While the signing key's unwrap waits on a slow root, the log's public
// key (GetAuditCheckpoint, ListAuditEvents) is not answered until the root
// vouches for it, but a caller waits only until its own deadline (no lock
// held across the other's unwrap); once unwrapped, it is answered at once.
func TestThePublicKeyWaitsForTheRootOnlyUntilItsDeadline(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, memory.New(), "")
	f.record(t, 3, "a")
	want, err := f.log.PublicKey(ctx)
	if err != nil || want == "" {
		t.Fatalf("public key: %q, %v", want, err)
	}
	br := &blockingRoot{Root: f.root, entered: make(chan struct{}), release: make(chan struct{})}
	l, err := audit.Open(ctx, audit.Config{Store: f.store, Root: br})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.w.Record(event("a", 50)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Integrate(ctx, 100); err != nil {
		t.Fatal(err)
	}
	signed := make(chan error, 1)
	go func() { _, err := l.Sign(ctx); signed <- err }()
	select {
	case <-br.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("signing never asked the root")
	}
	got := make(chan error, 1)
	go func() {
		dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		pk, err := l.PublicKey(dctx)
		if err == nil {
			err = fmt.Errorf("answered %q before the root vouched for it", pk)
		}
		got <- err
	}()
	select {
	case err := <-got:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("public key while the root is slow: %v, want its deadline", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the public key waited past its caller's deadline")
	}
	close(br.release)
	if err := <-signed; err != nil {
		t.Fatal(err)
	}
	if pk, err := l.PublicKey(ctx); err != nil || pk != want {
		t.Fatalf("public key once unwrapped: %q, %v; want %q", pk, err, want)
	}
}

// The verifier key stored in the clear is bound to the wrapped signing key:
// one swapped in by write access to the store alone (a forger's, to sign a
// rewritten history) is never served to callers, who would pin it.
func TestAVerifierKeySwappedInTheStoreIsNotServed(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, memory.New(), "")
	f.record(t, 3, "a")
	rec, err := f.store.Get(ctx, "audit/signing-key")
	if err != nil {
		t.Fatal(err)
	}
	var sk map[string]any
	if err := json.Unmarshal(rec.Value, &sk); err != nil {
		t.Fatal(err)
	}
	_, forged, err := note.GenerateKey(rand.Reader, audit.DefaultOrigin)
	if err != nil {
		t.Fatal(err)
	}
	sk["verifier"] = forged
	b, _ := json.Marshal(sk)
	if _, err := f.store.Put(ctx, "audit/signing-key", b, rec.Version); err != nil {
		t.Fatal(err)
	}
	l, err := audit.Open(ctx, audit.Config{Store: f.store, Root: f.root})
	if err != nil {
		t.Fatal(err)
	}
	if pk, err := l.PublicKey(ctx); err == nil || pk == forged {
		t.Fatalf("public key %q, %v; want the swapped key refused", pk, err)
	}
	if _, err := l.Latest(ctx); err == nil {
		t.Fatal("Latest verified a checkpoint with the swapped key")
	}
}

// Reads that need the verifier key before the log has it share one unwrap
// of the signing key (each made its own: a burst of reads on a new replica
// was a burst of root calls), which outlives a caller that gives up.
func TestReadsShareOneUnwrapOfTheSigningKey(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, memory.New(), "")
	f.record(t, 3, "a")
	br := &blockingRoot{Root: f.root, entered: make(chan struct{}), release: make(chan struct{})}
	l, err := audit.Open(ctx, audit.Config{Store: f.store, Root: br})
	if err != nil {
		t.Fatal(err)
	}
	// The first caller gives up at once; the unwrap goes on for the others.
	gone, cancel := context.WithCancel(ctx)
	go func() { _, _ = l.PublicKey(gone) }()
	select {
	case <-br.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no read asked the root")
	}
	cancel()
	errs := make(chan error, 20)
	for range 20 {
		go func() { _, err := l.PublicKey(ctx); errs <- err }()
	}
	time.Sleep(50 * time.Millisecond)
	close(br.release)
	for range 20 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := br.unwraps.Load(); n != 1 {
		t.Fatalf("%d unwraps for 21 reads, want 1", n)
	}
}

// The signing key's first load (the lease holder's first checkpoint, and
// audit verify's key) is bounded: a root that stops answering fails it
// instead of hanging the log.
func TestTheSigningKeysLoadsAreBounded(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	r, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	bounded := &roottest.Deadlines{Root: r}
	l, err := audit.Open(ctx, audit.Config{Store: store, Root: bounded})
	if err != nil {
		t.Fatal(err)
	}
	w, err := audit.NewWriter(audit.WriterConfig{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Record(event("a", 1)); err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := audit.VerifierOf(ctx, store, bounded); err != nil {
		t.Fatal(err)
	}
	if bounded.Calls.Load() < 2 || bounded.Unbounded.Load() != 0 {
		t.Fatalf("%d root calls (want the first signing's wrap and verify's unwrap), %d without a deadline", bounded.Calls.Load(), bounded.Unbounded.Load())
	}
}

// Bodies deleted and the retention horizon raised in the stored state are
// not excused by the checkpoints the log goes on signing: it signs only a
// horizon its own retention reached (the state's was signed as it was), and
// retention stops at the gap.
func TestARaisedHorizonInTheStateIsNotSigned(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, memory.New(), "")
	f.record(t, 10, "a", "b")
	r := get(t, f.store, "audit/tree")
	var st map[string]any
	if err := json.Unmarshal(r.Value, &st); err != nil {
		t.Fatal(err)
	}
	st["pruned"] = 20
	r.Value, _ = json.Marshal(st)
	put(t, f.store, r)
	del(t, f.store, "audit/l/0000000000000011")
	f.record(t, 1, "a") // the log signs a new checkpoint
	if _, err := f.log.Sign(ctx); err != nil {
		t.Fatal(err)
	}
	if cp, err := f.log.Latest(ctx); err != nil || cp.Pruned != 0 {
		t.Fatalf("the checkpoint signed after the tampering: %+v, %v; want no retention horizon", cp, err)
	}
	rep := verify(t, f)
	found := false
	for _, fd := range rep.Findings {
		found = found || strings.Contains(fd.String(), "event 17: deleted")
	}
	if !found {
		t.Fatalf("findings %v do not report event 17 deleted", rep.Findings)
	}
	if _, err := f.log.Prune(ctx, time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)); !errors.Is(err, audit.ErrRetentionStopped) {
		t.Fatalf("retention over the gap: %v, want ErrRetentionStopped", err)
	}
}

// gateWriter blocks writes while closed (a stalled shipper) and fails them
// while failing.
type gateWriter struct {
	mu      sync.Mutex
	open    *sync.Cond
	closed  bool
	failing bool
	writes  int
}

func newGateWriter() *gateWriter {
	g := &gateWriter{}
	g.open = sync.NewCond(&g.mu)
	return g
}

func (g *gateWriter) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.closed {
		g.open.Wait()
	}
	g.writes++
	if g.failing {
		return 0, errors.New("test: disk gone")
	}
	return len(p), nil
}

func (g *gateWriter) set(closed, failing bool) {
	g.mu.Lock()
	g.closed, g.failing = closed, failing
	g.mu.Unlock()
	g.open.Broadcast()
}

// Every run of export drops is logged, not only the first in the process's
// life, and drops and failed writes are counted.
func TestEveryRunOfExportDropsIsLoggedAndCounted(t *testing.T) {
	var logs syncBuf
	g := newGateWriter()
	exp := audit.NewExporter(audit.ExportConfig{Path: "-", Stdout: g, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	defer exp.Close()
	batch := []*custosv1.AuditEvent{event("a", 1)}
	stall := func() {
		g.set(true, false)
		before := exp.Dropped()
		for exp.Dropped() == before {
			exp.Write(batch)
		}
	}
	drain := func() {
		g.set(false, false)
		deadline := time.Now().Add(10 * time.Second)
		for {
			g.mu.Lock()
			n := g.writes
			g.mu.Unlock()
			exp.Write(batch)
			if n > 1100 && strings.Count(logs.String(), "cannot keep up") > 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("the export never drained")
			}
			time.Sleep(time.Millisecond)
		}
	}
	stall()
	drain()
	stall()
	g.set(false, false)
	if n := strings.Count(logs.String(), "cannot keep up"); n != 2 {
		t.Fatalf("%d log lines for two runs of drops, want 2:\n%s", n, logs.String())
	}
	before := exp.Dropped()
	g.set(false, true)
	exp.Write(batch)
	deadline := time.Now().Add(10 * time.Second)
	for exp.Dropped() == before {
		if time.Now().After(deadline) {
			t.Fatal("a failed write was not counted")
		}
		time.Sleep(time.Millisecond)
	}
}

// syncBuf is a bytes.Buffer safe for the exporter's goroutine and the test.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// slowWriter takes a millisecond per write: a collector that keeps up with
// less than the export's rate.
type slowWriter struct{}

func (slowWriter) Write(p []byte) (int, error) { time.Sleep(time.Millisecond); return len(p), nil }

// Under steady overload (a slow reader, not a stalled one) the drops are
// one run, logged once: each write that freed a slot started a new run.
func TestExportDropsUnderSteadyOverloadAreLoggedOnce(t *testing.T) {
	var logs syncBuf
	exp := audit.NewExporter(audit.ExportConfig{Path: "-", Stdout: slowWriter{}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	batch := []*custosv1.AuditEvent{event("a", 1)}
	stop := time.Now().Add(500 * time.Millisecond)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for time.Now().Before(stop) {
				exp.Write(batch)
			}
		})
	}
	wg.Wait()
	if n := strings.Count(logs.String(), "cannot keep up"); n > 2 || exp.Dropped() == 0 {
		t.Fatalf("%d log lines for one run of drops (%d dropped), want 1", n, exp.Dropped())
	}
	if err := exp.Close(); err != nil {
		t.Fatal(err)
	}
}

// A tenant's view records must each start past the one before: an event
// moved into a later record is still listed once, under its tenant, but a
// page of ListAuditEvents that began after the first record skips it.
func TestVerifyReportsAnEventMovedBetweenViewRecords(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, memory.New(), "")
	f.record(t, 5, "a", "b")
	f.record(t, 5, "a", "b") // a second integration: a second view record each
	if rep := verify(t, f); len(rep.Findings) != 0 {
		t.Fatalf("before tampering: %v", rep.Findings)
	}
	recs, err := f.store.List(ctx, "audit/t/b/", "", 100)
	if err != nil || len(recs) < 2 {
		t.Fatalf("tenant b's view has %d records (%v); the test needs two", len(recs), err)
	}
	first, last := decodeViewIndexes(t, recs[0].Value), decodeViewIndexes(t, recs[len(recs)-1].Value)
	if len(first) < 2 {
		t.Fatalf("tenant b's first view record holds %d indexes; the test needs two", len(first))
	}
	recs[0].Value = encodeViewIndexes(first[1:])
	recs[len(recs)-1].Value = encodeViewIndexes(append([]uint64{first[0]}, last...))
	put(t, f.store, recs[0])
	put(t, f.store, recs[len(recs)-1])
	rep := verify(t, f)
	for _, fd := range rep.Findings {
		if strings.Contains(fd.String(), "starts at or before the end of the record before it in tenant b's view") {
			return
		}
	}
	t.Fatalf("findings %v, want the overlap reported", rep.Findings)
}

// A store writer who rolls the tree back (state and all) to an older
// signed size and grows another history from there is refused by a server
// that never signed, as long as the history keeps a newer checkpoint: the
// state's own checkpoint, older, is not all that was signed.
func TestAHistoryForkedAfterAnOlderCheckpointIsNotSigned(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, memory.New(), "")
	f.record(t, 10, "a", "b") // signed at 20, kept
	snap := snapshotTree(t, f.store)
	f.record(t, 10, "a", "b") // signed at 40, kept
	// Back to the tree of size 20 (its state names the checkpoint of 20),
	// the history's checkpoint of 40 left where it is.
	restoreTree(t, f.store, snap)
	forger, err := audit.Open(ctx, audit.Config{Store: f.store, Root: f.root})
	if err != nil {
		t.Fatal(err)
	}
	wantForkRefused(t, f, forger, "a server that never signed")
}

// The same with a replica that signed before, lost the lease, and gets it
// back on a tree rolled back behind what the other replica signed since:
// its own last checkpoint is older than the state's, so the history is
// read too.
func TestAReplicaThatSignedBeforeDoesNotSignAForkedHistory(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, memory.New(), "")
	f.record(t, 10, "a", "b") // A (f.log) signs at 20
	b, err := audit.Open(ctx, audit.Config{Store: f.store, Root: f.root})
	if err != nil {
		t.Fatal(err)
	}
	recordWith := func(l *audit.Log, tenant string) {
		t.Helper()
		for i := range 10 {
			if err := f.w.Record(event(tenant, i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	recordWith(b, "a") // B signs at 30
	snap := snapshotTree(t, f.store)
	recordWith(b, "a") // B signs at 40, kept
	restoreTree(t, f.store, snap)
	wantForkRefused(t, f, f.log, "a replica that signed before")
}

// wantForkRefused records other events on a rolled-back tree (a fork of
// the history), has l integrate them, and wants l to refuse to sign.
func wantForkRefused(t *testing.T, f *fixture, l *audit.Log, who string) {
	t.Helper()
	ctx := context.Background()
	for i := range 20 {
		if err := f.w.Record(event("c", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Integrate(ctx, 100); err != nil {
		t.Fatal(err)
	}
	if cp, err := l.Sign(ctx); err == nil {
		t.Fatalf("%s signed a history forked behind a newer kept checkpoint (size %d)", who, cp.Size)
	} else if !strings.Contains(err.Error(), "refusing to sign") {
		t.Fatalf("Sign: %v, want a refusal", err)
	}
}

// A replica signing for the first time while the old lease holder signs
// a newer checkpoint (their leases overlapped) sees the kept checkpoint
// past its state: a race to retry (a conflict), not a rewritten history.
func TestACheckpointSignedMeanwhileIsAConflictNotARefusal(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, memory.New(), "")
	f.record(t, 10, "a", "b") // A (f.log) signs at 20
	for i := range 10 {
		if err := f.w.Record(event("c", i)); err != nil {
			t.Fatal(err)
		}
	}
	hooked := &listHook{Store: f.store, Applier: f.store.(storage.Applier), prefix: "audit/c/", hook: func() {
		// A, meanwhile, integrates more and signs.
		for i := range 10 {
			if err := f.w.Record(event("d", i)); err != nil {
				t.Error(err)
			}
		}
		if err := f.log.Flush(ctx); err != nil {
			t.Error(err)
		}
	}}
	b, err := audit.Open(ctx, audit.Config{Store: hooked, Root: f.root})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Integrate(ctx, 10); err != nil { // B's state: 30 events, signed at 20
		t.Fatal(err)
	}
	_, err = b.Sign(ctx)
	if !errors.Is(err, storage.ErrConflict) || strings.Contains(err.Error(), "refusing to sign") {
		t.Fatalf("B's first Sign while A signed: %v, want a conflict", err)
	}
	if rep := verify(t, f); len(rep.Findings) != 0 {
		t.Fatalf("the log after the race: %v", rep.Findings)
	}
}

// listHook runs hook once, before the first listing under prefix.
type listHook struct {
	storage.Store
	storage.Applier
	prefix string
	hook   func()
	once   sync.Once
}

func (h *listHook) List(ctx context.Context, prefix, after string, limit int) ([]storage.Record, error) {
	if prefix == h.prefix {
		h.once.Do(h.hook)
	}
	return h.Store.List(ctx, prefix, after, limit)
}

// snapshotTree copies the log's tree (bodies, nodes, views and state);
// restoreTree puts such a copy back, the kept checkpoints left as they are.
func snapshotTree(t *testing.T, s storage.Store) map[string]storage.Record {
	t.Helper()
	snap := map[string]storage.Record{}
	for _, prefix := range []string{"audit/l/", "audit/n/", "audit/t/", "audit/tree"} {
		recs, err := s.List(context.Background(), prefix, "", 100000)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			snap[r.Key] = r
		}
	}
	return snap
}

func restoreTree(t *testing.T, s storage.Store, snap map[string]storage.Record) {
	t.Helper()
	for _, prefix := range []string{"audit/l/", "audit/n/", "audit/t/", "audit/tree"} {
		recs, err := s.List(context.Background(), prefix, "", 100000)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			old, ok := snap[r.Key]
			if !ok {
				del(t, s, r.Key)
				continue
			}
			old.Version = r.Version
			put(t, s, old)
		}
	}
}

// decodeViewIndexes and encodeViewIndexes read and write a tenant view
// record's value: the indexes as uvarint deltas.
func decodeViewIndexes(t *testing.T, b []byte) []uint64 {
	t.Helper()
	var out []uint64
	var prev uint64
	for len(b) > 0 {
		d, n := binary.Uvarint(b)
		if n <= 0 {
			t.Fatalf("a view record that does not decode: %x", b)
		}
		prev += d
		out = append(out, prev)
		b = b[n:]
	}
	return out
}

func encodeViewIndexes(idx []uint64) []byte {
	var b []byte
	var prev uint64
	for _, i := range idx {
		b = binary.AppendUvarint(b, i-prev)
		prev = i
	}
	return b
}

// A record under the events' keys that names no event (a store writer's:
// an index with a suffix, or in upper-case digits) is reported by verify,
// and takes no event's place in a page: a listing of a run of events read
// as many records as it wanted events, so the stray one pushed the last
// event out of the tenant's page while verify stayed clean.
func TestAStrayKeyAmongTheEventsIsReportedAndHidesNoEvent(t *testing.T) {
	ctx := context.Background()
	for _, stray := range []string{"audit/l/000000000000000a~", "audit/l/000000000000000A"} {
		t.Run(stray, func(t *testing.T) {
			f := newFixture(t, memory.New(), "")
			f.record(t, 12, "acme")
			if rep := verify(t, f); len(rep.Findings) != 0 {
				t.Fatalf("before: %v", rep.Findings)
			}
			if _, err := f.store.Put(ctx, stray, []byte("x"), 0); err != nil {
				t.Fatal(err)
			}
			rep := verify(t, f)
			found := false
			for _, fd := range rep.Findings {
				found = found || strings.Contains(fd.String(), "names no event")
			}
			if !found {
				t.Errorf("verify's findings %v, want the stray record reported", rep.Findings)
			}
			recs, _, _, err := f.log.Events(ctx, audit.Query{Tenant: "acme", Limit: 100})
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != 12 {
				var got []uint64
				for _, r := range recs {
					got = append(got, r.Index)
				}
				t.Errorf("the tenant's page lists events %v, want all 12", got)
			}
		})
	}
}

// A query reads at most its scan bound of bodies (10 × its limit + 1,000),
// even inside one view record of thousands of events (one integration
// lists up to 12,287 of a tenant's): a page of one read them all. What it
// leaves unread comes on the next page.
func TestAQueryReadsNoMoreBodiesThanItsBound(t *testing.T) {
	ctx := context.Background()
	counted := &countingLists{Store: memory.New(), prefix: "audit/l/"}
	f := newFixture(t, counted, "")
	f.record(t, 3000, "a")
	counted.listed.Store(0)
	out, _, next, err := f.log.Events(ctx, audit.Query{Tenant: "a", Limit: 1, Operation: "no-such-operation"})
	if err != nil {
		t.Fatal(err)
	}
	if n := counted.listed.Load(); n > 1010 {
		t.Fatalf("a query with limit 1 read %d bodies, want at most 1,010", n)
	}
	if len(out) != 0 || next == 0 {
		t.Fatalf("%d events, next %d; want none and a next index to go on from", len(out), next)
	}
	// Paging on reaches every event, each read once more at most.
	seen := 0
	for from := uint64(0); ; {
		page, _, nx, err := f.log.Events(ctx, audit.Query{Tenant: "a", Limit: 100, From: from})
		if err != nil {
			t.Fatal(err)
		}
		seen += len(page)
		if nx == 0 {
			break
		}
		from = nx
	}
	if seen != 3000 {
		t.Fatalf("paging found %d events, want 3000", seen)
	}
}

// With fail_open, an event recorded after the writer closed (a call
// finishing during shutdown) is lost loudly: counted and logged with
// AUDIT EVENTS LOST, as a batch the sinks refused is.
func TestAFailOpenLossIsAlwaysLogged(t *testing.T) {
	var logs bytes.Buffer
	w, err := audit.NewWriter(audit.WriterConfig{Store: memory.New(), FailOpen: true, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Record(event("a", 1)); err != nil {
		t.Fatalf("fail-open Record after Close: %v, want nil", err)
	}
	if !strings.Contains(logs.String(), "AUDIT EVENTS LOST") {
		t.Fatalf("a fail-open loss was not logged:\n%s", logs.String())
	}
}
