package audit

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/storage/memory"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// A body that is what was integrated but does not decode (no server writes
// one) goes with the old bodies: it has no time, and must not stop
// retention for good.
func TestRetentionDeletesAnIntegratedBodyThatDoesNotDecode(t *testing.T) {
	ctx := context.Background()
	store, l := newMemoryLog(t)
	old := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ev, err := Marshal(&custosv1.AuditEvent{Time: timestamppb.New(old), RequestId: "r1", Operation: "encrypt", Code: "OK"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Put(ctx, queueKey("w", 1), encodeBatch([][]byte{{0xff, 0xff}, ev}), 0); err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := l.Prune(ctx, old.Add(time.Hour))
	if n != 2 || err != nil {
		t.Fatalf("Prune deleted %d bodies, error %v; want both", n, err)
	}
}

// Retention reads a strip of leaf hashes again when the events it reaches
// were integrated after it read the strip.
func TestRetentionRereadsAStripThatGrew(t *testing.T) {
	ctx := context.Background()
	store, l := newMemoryLog(t)
	old := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	leaf := func(n int) []byte {
		b, err := Marshal(&custosv1.AuditEvent{Time: timestamppb.New(old), RequestId: fmt.Sprint("r", n), Operation: "encrypt", Code: "OK"})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	integrate := func(counter uint64, from, to int) {
		var leaves [][]byte
		for n := from; n < to; n++ {
			leaves = append(leaves, leaf(n))
		}
		if _, err := store.Put(ctx, queueKey("w", counter), encodeBatch(leaves), 0); err != nil {
			t.Fatal(err)
		}
		if err := l.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	integrate(1, 0, 10)
	for i := range 10 {
		if ok, err := l.integrated(ctx, uint64(i), leaf(i)); !ok || err != nil {
			t.Fatalf("event %d: %v, %v", i, ok, err)
		}
	}
	integrate(2, 10, 20) // the same strip, grown
	for i := 10; i < 20; i++ {
		if ok, err := l.integrated(ctx, uint64(i), leaf(i)); !ok || err != nil {
			t.Fatalf("event %d, integrated after the strip was read: %v, %v", i, ok, err)
		}
	}
}

// newMemoryLog is a log over a memory store and a local root.
func newMemoryLog(t *testing.T) (*memory.Store, *Log) {
	t.Helper()
	r, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	store := memory.New()
	l, err := Open(context.Background(), Config{Store: store, Root: r})
	if err != nil {
		t.Fatal(err)
	}
	return store, l
}

// A leaf naming two tenants (field 5 twice: no server writes one, a store
// writer could queue one) is listed under the tenant its decoding gives,
// the last one, as protobuf reads it: indexed under the first, it was in
// neither tenant's answers and hidden from the one it names.
func TestALeafWithTwoTenantsIsListedUnderTheOneItDecodesTo(t *testing.T) {
	ctx := context.Background()
	store, l := newMemoryLog(t)
	ev, err := Marshal(&custosv1.AuditEvent{Time: timestamppb.Now(), RequestId: "r1", Tenant: "a", Operation: "encrypt", Code: "OK"})
	if err != nil {
		t.Fatal(err)
	}
	twice := protowire.AppendBytes(protowire.AppendTag(ev, 5, protowire.BytesType), []byte("b"))
	if _, err := store.Put(ctx, queueKey("w", 1), encodeBatch([][]byte{twice}), 0); err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	recs, _, _, err := l.Events(ctx, Query{Tenant: "b", Limit: 10})
	if err != nil || len(recs) != 1 || recs[0].Event.GetTenant() != "b" {
		t.Fatalf("tenant b's events: %d, %v; want the leaf that decodes as b's", len(recs), err)
	}
}

// An event dated in the future (its server's clock ran ahead) holds back
// retention, and every body after it, until its time: retention says so
// rather than keeping them past the retention unseen, and still forgets
// old checkpoints.
func TestRetentionSaysItWaitsBehindAnEventDatedInTheFuture(t *testing.T) {
	ctx := context.Background()
	store, l := newMemoryLog(t)
	old := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ev := func(at time.Time, n int) []byte {
		b, err := Marshal(&custosv1.AuditEvent{Time: timestamppb.New(at), RequestId: fmt.Sprint("r", n), Operation: "encrypt", Code: "OK"})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ahead := time.Now().Add(365 * 24 * time.Hour)
	leaves := [][]byte{ev(old, 0), ev(old, 1), ev(ahead, 2), ev(old, 3)}
	if _, err := store.Put(ctx, queueKey("w", 1), encodeBatch(leaves), 0); err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := l.Prune(ctx, old.Add(time.Hour))
	if n != 2 || !errors.Is(err, ErrRetentionWaiting) || !strings.Contains(err.Error(), "event 2 is dated") {
		t.Fatalf("Prune: %d deleted, %v; want the 2 before the event dated ahead, and the wait named", n, err)
	}
	// A cutoff the event is not after: no wait to report.
	if _, err := l.Prune(ctx, ahead.Add(time.Hour)); err != nil {
		t.Fatalf("Prune past the event's time: %v", err)
	}
}

// A queue whose first page is all batches already in the log (a killed
// server's spool shipped again) does not stop Flush short: the real batch
// behind them is integrated and signed. Flush stopped at the first page
// that integrated nothing.
func TestFlushGoesOnPastAPageOfDuplicates(t *testing.T) {
	ctx := context.Background()
	store, l := newMemoryLog(t)
	ev, err := Marshal(&custosv1.AuditEvent{Time: timestamppb.Now(), RequestId: "r1", Operation: "encrypt", Code: "OK"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Put(ctx, shippedPrefix+"aaaa", []byte(`{"counter":1000}`), 0); err != nil {
		t.Fatal(err)
	}
	for n := uint64(1); n <= 300; n++ {
		if _, err := store.Put(ctx, queueKey("aaaa", n), encodeBatch([][]byte{ev}), 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := store.Put(ctx, queueKey("bbbb", 1), encodeBatch([][]byte{ev}), 0); err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	cp, err := l.Latest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cp == nil || cp.Size != 1 {
		t.Fatalf("after Flush the checkpoint is %+v; want size 1 (the real batch behind 300 duplicates)", cp)
	}
}
