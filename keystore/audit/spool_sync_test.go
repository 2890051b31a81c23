package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/custos-kms/custos/internal/testkit"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/memory"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// countSyncs replaces syncEntry for the test with one that counts and
// then calls fail (nil: the real sync).
func countSyncs(t *testing.T, fail func() error) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	real := syncEntry
	syncEntry = func(f *os.File) error {
		n.Add(1)
		if fail != nil {
			if err := fail(); err != nil {
				return err
			}
		}
		return real(f)
	}
	t.Cleanup(func() { syncEntry = real })
	return &n
}

func testEvent(n int) *custosv1.AuditEvent {
	return &custosv1.AuditEvent{
		Time: timestamppb.New(time.Date(2026, 11, 27, 12, 0, n, 0, time.UTC)), RequestId: fmt.Sprintf("req-%d", n),
		Identity: "spiffe://test/acme", Tenant: "acme", Key: "k", Operation: "encrypt", Method: "/custos.v1.CryptoService/Encrypt", Code: "OK",
	}
}

// By default every batch is synced before its calls are answered; with
// SyncInterval, none is, and the spool is synced on the interval and at
// Close instead. The entries are in the file either way.
func TestTheSpoolSyncsPerBatchOrOnItsInterval(t *testing.T) {
	for _, lazy := range []bool{false, true} {
		t.Run(fmt.Sprintf("lazy=%v", lazy), func(t *testing.T) {
			syncs := countSyncs(t, nil)
			cfg := WriterConfig{Store: memory.New(), SpoolPath: filepath.Join(t.TempDir(), "spool"), JournalFirst: true, ShipInterval: time.Hour}
			if lazy {
				cfg.SyncInterval = time.Minute // never within the test: only Close syncs
			}
			w, err := NewWriter(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			before := syncs.Load() // opening the spool syncs its new segment
			for i := range 5 {
				if err := w.Record(testEvent(i)); err != nil {
					t.Fatal(err)
				}
			}
			got := syncs.Load() - before
			if batches, _ := w.Spooled(); batches != 5 {
				t.Fatalf("%d batches in the spool, want 5", batches)
			}
			switch {
			case !lazy && got != 5:
				t.Fatalf("%d syncs for 5 batches answered one after another, want 5", got)
			case lazy && got != 0:
				t.Fatalf("%d syncs before the interval, want 0", got)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if lazy && syncs.Load()-before != 1 {
				t.Fatalf("Close made %d syncs, want 1 (what the interval had not synced yet)", syncs.Load()-before)
			}
			// What was answered is in the spool for the next start.
			w2, err := NewWriter(WriterConfig{Store: memory.New(), SpoolPath: cfg.SpoolPath, JournalFirst: true, ShipInterval: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			defer w2.Close()
			if batches, _ := w2.Spooled(); batches != 5 {
				t.Fatalf("reopened: %d batches in the spool, want 5", batches)
			}
		})
	}
}

// The interval's syncs happen without any Close.
func TestALazySpoolIsSyncedOnItsInterval(t *testing.T) {
	syncs := countSyncs(t, nil)
	w, err := NewWriter(WriterConfig{Store: memory.New(), SpoolPath: filepath.Join(t.TempDir(), "spool"), JournalFirst: true, ShipInterval: time.Hour, SyncInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	before := syncs.Load()
	if err := w.Record(testEvent(1)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for syncs.Load() == before {
		if time.Now().After(deadline) {
			t.Fatal("no sync within 5s of an interval of 10ms")
		}
		time.Sleep(5 * time.Millisecond)
	}
	w.spoolMu.Lock()
	dirty := w.spool.segs[len(w.spool.segs)-1].dirty
	w.spoolMu.Unlock()
	if dirty {
		t.Fatal("the segment is still dirty after its sync")
	}
}

// A sync that fails may have lost what it was to make durable: the writer
// says so once, loudly, and answers no call from then on (fail closed).
func TestAFailedIntervalSyncFailsLaterCallsClosed(t *testing.T) {
	var failing atomic.Bool
	countSyncs(t, func() error {
		if failing.Load() {
			return syscall.EIO
		}
		return nil
	})
	var logs testkit.SyncBuffer
	w, err := NewWriter(WriterConfig{Store: memory.New(), SpoolPath: filepath.Join(t.TempDir(), "spool"), JournalFirst: true, ShipInterval: time.Hour,
		SyncInterval: 5 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Record(testEvent(0)); err != nil {
		t.Fatal(err)
	}
	failing.Store(true)
	deadline := time.Now().Add(5 * time.Second)
	for i := 1; ; i++ {
		err := w.Record(testEvent(i))
		if errors.Is(err, ErrUnavailable) && errors.Is(err, syscall.EIO) {
			break
		}
		if err != nil {
			t.Fatalf("Record: %v, want ErrUnavailable wrapping EIO", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("calls still answered 5s after the interval's sync began to fail")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := w.Record(testEvent(1000)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a later call: %v, want ErrUnavailable", err)
	}
	if err := w.Close(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Close: %v, want the sync's error", err)
	}
	if n := strings.Count(logs.String(), "AUDIT EVENTS MAY BE LOST"); n != 1 {
		t.Fatalf("the failed sync was logged %d times, want once:\n%s", n, logs.String())
	}
}

// When an append fails and cutting it off fails too, a lazy spool cannot
// tell whether its earlier, unsynced entries reached the disk (the kernel
// reports a writeback error once, and that cut's sync took it): it refuses
// everything from then on, like a failed interval sync.
func TestALazySpoolThatCannotCutAFailedAppendStopsTakingBatches(t *testing.T) {
	w, err := NewWriter(WriterConfig{Store: memory.New(), SpoolPath: filepath.Join(t.TempDir(), "spool"), JournalFirst: true, ShipInterval: time.Hour, SyncInterval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Record(testEvent(0)); err != nil {
		t.Fatal(err)
	}
	w.spoolMu.Lock()
	w.spool.segs[len(w.spool.segs)-1].f.Close() // every write and sync of it fails now
	w.spoolMu.Unlock()
	if err := w.Record(testEvent(1)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Record on a failing spool: %v, want ErrUnavailable", err)
	}
	w.spoolMu.Lock()
	poisoned := w.spool.syncErr != nil
	w.spoolMu.Unlock()
	if !poisoned {
		t.Fatal("the lazy spool takes batches again after a failed append it could not cut off")
	}
}

// A lazy spool whose write fails while the disk is full (on a
// copy-on-write filesystem even overwriting its preallocated space does)
// fails that batch, and takes the next once there is room: only a failed
// sync, which may have lost acknowledged entries, stops it for good.
func TestALazySpoolTakesBatchesAgainAfterAFullDisk(t *testing.T) {
	full := errors.New("no space left on device")
	var failing atomic.Bool
	real := writeAt
	writeAt = func(f *os.File, p []byte, off int64) error {
		if failing.Load() {
			return full
		}
		return real(f, p, off)
	}
	t.Cleanup(func() { writeAt = real })
	w, err := NewWriter(WriterConfig{Store: memory.New(), SpoolPath: filepath.Join(t.TempDir(), "spool"), JournalFirst: true, ShipInterval: time.Hour, SyncInterval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	failing.Store(true)
	if err := w.Record(testEvent(0)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Record on a full disk: %v, want ErrUnavailable", err)
	}
	failing.Store(false)
	if err := w.Record(testEvent(1)); err != nil {
		t.Fatalf("Record once there is room again: %v", err)
	}
	if n, _ := w.Spooled(); n != 1 {
		t.Errorf("%d entries in the spool, want 1", n)
	}
}

// When an append's own sync fails (the writeback error of earlier entries),
// the loss is logged as it is when the interval's sync fails.
func TestALazySpoolLogsTheLossWhenAnAppendsSyncFails(t *testing.T) {
	var logs testkit.SyncBuffer
	w, err := NewWriter(WriterConfig{Store: memory.New(), SpoolPath: filepath.Join(t.TempDir(), "spool"), JournalFirst: true, ShipInterval: time.Hour, SyncInterval: time.Minute,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.spoolMu.Lock()
	w.spool.segs[len(w.spool.segs)-1].f.Close() // every write and sync of it fails now
	w.spoolMu.Unlock()
	for i := range 2 {
		if err := w.Record(testEvent(i)); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Record %d on a failing spool: %v, want ErrUnavailable", i, err)
		}
	}
	if n := strings.Count(logs.String(), "AUDIT EVENTS MAY BE LOST"); n != 1 {
		t.Errorf("the loss was logged %d times, want once:\n%s", n, logs.String())
	}
}

// A damaged entry in the middle of a segment costs that entry only: the
// acknowledged entries after it are kept, and a torn tail is still cut.
func TestADamagedSpoolEntryDoesNotCostTheEntriesAfterIt(t *testing.T) {
	for _, damaged := range [][]int{{0}, {1}, {0, 1}} {
		t.Run(fmt.Sprint(damaged), func(t *testing.T) {
			prefix := filepath.Join(t.TempDir(), "spool")
			s, _, _, _, err := openSpool(prefix)
			if err != nil {
				t.Fatal(err)
			}
			var written []spoolEntry
			for i := range 4 {
				e, err := s.append(fmt.Sprintf("audit/q/w/%016x", i+1), encodeBatch([][]byte{[]byte(fmt.Sprint("event ", i))}))
				if err != nil {
					t.Fatal(err)
				}
				written = append(written, e)
			}
			f := s.segs[0].f
			for _, i := range damaged {
				b := []byte{0}
				if _, err := f.ReadAt(b, written[i].end-1); err != nil {
					t.Fatal(err)
				}
				b[0] ^= 1
				if _, err := f.WriteAt(b, written[i].end-1); err != nil {
					t.Fatal(err)
				}
			}
			// and a torn entry after the last
			if _, err := f.WriteAt([]byte{0, 0, 1, 0, 9, 9, 9}, written[3].end); err != nil {
				t.Fatal(err)
			}
			s.close()
			s, entries, torn, corrupt, err := openSpool(prefix)
			if err != nil {
				t.Fatal(err)
			}
			defer s.close()
			var keys []string
			for _, e := range entries {
				keys = append(keys, e.key)
			}
			want := len(written) - len(damaged)
			if len(entries) != want || corrupt != len(damaged) || torn == 0 {
				t.Fatalf("reopened: entries %v, %d corrupt, %d torn bytes; want %d entries, %d corrupt and the torn tail cut", keys, corrupt, torn, want, len(damaged))
			}
			if entries[len(entries)-1].key != written[3].key {
				t.Fatalf("the last entry %q is not the last written", entries[len(entries)-1].key)
			}
			s.close()
			// A writer opening the spool counts the damaged entries.
			w, err := NewWriter(WriterConfig{Store: memory.New(), SpoolPath: prefix, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			var m dto.Metric
			if err := w.damaged.Write(&m); err != nil {
				t.Fatal(err)
			}
			if got := m.GetCounter().GetValue(); got != float64(len(damaged)) {
				t.Fatalf("custos_audit_spool_damaged_entries_total %v, want %d", got, len(damaged))
			}
		})
	}
}

// A failed emptying of a shipped spool (its zeros written, or part of
// them, but not synced) does not cost the entries appended after it: they
// went after a region that reads as zeros, and the next start cut them as
// a torn tail although their calls were answered.
func TestAFailedEmptyingDoesNotCostLaterEntries(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "spool")
	sp, _, _, _, err := openSpool(prefix)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"audit/q/w/1", "audit/q/w/2"} {
		if _, err := sp.append(k, []byte("shipped")); err != nil {
			t.Fatal(err)
		}
	}
	real := writeAt
	failed := false
	writeAt = func(f *os.File, p []byte, off int64) error {
		if err := real(f, p, off); err != nil {
			return err
		}
		if !failed && off == 0 && strings.Count(string(p), "\x00") == len(p) {
			failed = true
			return syscall.EIO // the zeros written, the call failing after
		}
		return nil
	}
	err = sp.release(0)
	writeAt = real
	if err == nil {
		t.Fatal("the emptying with a failing write reported no error")
	}
	if _, err := sp.append("audit/q/w/3", []byte("answered")); err != nil {
		t.Fatal(err)
	}
	if err := sp.close(); err != nil {
		t.Fatal(err)
	}
	sp, entries, _, _, err := openSpool(prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.close()
	found := false
	for _, e := range entries {
		found = found || e.key == "audit/q/w/3"
	}
	if !found {
		t.Fatalf("the entry appended after the failed emptying is gone at the next start (%d entries)", len(entries))
	}
}

// A spool whose path holds a glob's special characters, or names a
// directory (a trailing slash: its segments are ".<n>" in it), finds all
// its segments again: segments after the first were missed, and the
// acknowledged events in them never shipped.
func TestASpoolUnderAGlobLikePathFindsEverySegment(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "custos[x]")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{filepath.Join(dir, "spool"), filepath.Join(dir, "in") + "/"} {
		if strings.HasSuffix(prefix, "/") {
			if err := os.Mkdir(prefix, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		t.Run(prefix, func(t *testing.T) { spoolFindsItsSegments(t, prefix) })
	}
}

func spoolFindsItsSegments(t *testing.T, prefix string) {
	s, _, _, _, err := openSpool(prefix)
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte{'e'}, 1<<20)
	n := 0
	for len(s.segs) < 2 {
		if _, err := s.append(fmt.Sprintf("audit/q/w/%016x", n+1), big); err != nil {
			t.Fatal(err)
		}
		n++
		if n > 100 {
			t.Fatal("no second segment after 100 MiB")
		}
	}
	s.close()
	s, entries, _, _, err := openSpool(prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if len(entries) != n {
		t.Fatalf("reopened: %d entries, want the %d appended across %d segments", len(entries), n, 2)
	}
}

// A spool left with entries beside this server's (a PostgreSQL server's
// default spool is named after its listen address) is found, read without
// being changed; this server's own and empty ones are not listed.
func TestStrandedSpoolsAreFound(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, "audit-0.0.0.0_8443.spool")
	s, _, _, _, err := openSpool(old)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := s.append(fmt.Sprintf("audit/q/w/%016x", i+1), encodeBatch([][]byte{[]byte(fmt.Sprint("event ", i))})); err != nil {
			t.Fatal(err)
		}
	}
	s.close()
	empty := filepath.Join(dir, "audit-empty.spool")
	e, _, _, _, err := openSpool(empty)
	if err != nil {
		t.Fatal(err)
	}
	e.close()
	cur := filepath.Join(dir, "audit-_8443.spool")
	c, _, _, _, err := openSpool(cur)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	got, err := StrandedSpools(cur)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Path != old || got[0].Events != 3 {
		t.Fatalf("stranded spools %+v, want %s with 3 entries", got, old)
	}
	// Read, not changed: its entries are all there when it is opened.
	s, entries, _, _, err := openSpool(old)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if len(entries) != 3 {
		t.Fatalf("the stranded spool holds %d entries after the look, want 3", len(entries))
	}
}

// writesRefused is a store that reads but takes no write, as a full store
// or a PostgreSQL failover onto a read-only node does.
type writesRefused struct{ *memory.Store }

func (writesRefused) Put(context.Context, string, []byte, uint64) (uint64, error) {
	return 0, storage.ErrFull
}

func (writesRefused) Apply(context.Context, []storage.Op) error { return storage.ErrFull }

// A damaged spool entry met by shipping passes whose write then fails (it
// stays pending) is counted and logged once, not once a pass: a store full
// for an hour counted one lost entry 3,600 times.
func TestADamagedEntryIsCountedOnce(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "spool")
	var logs bytes.Buffer
	w, err := NewWriter(WriterConfig{Store: writesRefused{memory.New()}, SpoolPath: prefix, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i := range 2 {
		ev := &custosv1.AuditEvent{Time: timestamppb.Now(), RequestId: fmt.Sprint("r", i), Operation: "encrypt", Code: "OK"}
		if err := w.Record(ev); err != nil {
			t.Fatalf("Record with the store refusing writes: %v (want it spooled)", err)
		}
	}
	w.spoolMu.Lock()
	first := w.pending[0]
	f := w.spool.segs[0].f
	w.spoolMu.Unlock()
	b := []byte{0}
	if _, err := f.ReadAt(b, first.end-1); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 1
	if _, err := f.WriteAt(b, first.end-1); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := w.ShipOnce(context.Background()); err == nil {
			t.Fatal("ShipOnce to a store that takes no write: nil error")
		}
	}
	var m dto.Metric
	if err := w.damaged.Write(&m); err != nil {
		t.Fatal(err)
	}
	if got := m.GetCounter().GetValue(); got != 1 {
		t.Fatalf("custos_audit_spool_damaged_entries_total %v after three passes, want 1", got)
	}
	if n := strings.Count(logs.String(), "AUDIT EVENTS LOST"); n != 1 {
		t.Fatalf("the loss was logged %d times, want once", n)
	}
}
