package bbolt_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/bbolt"
	"github.com/custos-kms/custos/keystore/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Test(t, func(t *testing.T) storage.Store {
		return open(t, filepath.Join(t.TempDir(), "custos.db"), bbolt.Options{})
	})
}

func TestReopenKeepsRecordsAndVersions(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "custos.db")
	s := open(t, path, bbolt.Options{})
	a1 := put(t, s, "a", "one", 0)
	a2 := put(t, s, "a", "two", a1)
	b := put(t, s, "b", "bee", 0)
	gone := put(t, s, "gone", "x", 0)
	if err := s.Delete(ctx, "gone", gone); err != nil {
		t.Fatalf("Delete = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}

	if fi, err := os.Stat(path); err != nil {
		t.Fatal(err)
	} else if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("file mode = %v, want 0600", perm)
	}

	s = open(t, path, bbolt.Options{})
	defer s.Close()
	got, err := s.List(ctx, "", "", 10)
	if err != nil {
		t.Fatalf("List after reopen = %v", err)
	}
	want := []storage.Record{{Key: "a", Value: []byte("two"), Version: a2}, {Key: "b", Value: []byte("bee"), Version: b}}
	if len(got) != len(want) {
		t.Fatalf("List after reopen = %d records, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Key != want[i].Key || string(got[i].Value) != string(want[i].Value) || got[i].Version != want[i].Version {
			t.Errorf("record %d after reopen = {%q %q %d}, want {%q %q %d}", i,
				got[i].Key, got[i].Value, got[i].Version, want[i].Key, want[i].Value, want[i].Version)
		}
	}
	if v := put(t, s, "gone", "again", 0); v <= gone {
		t.Errorf("recreated key after reopen got version %d, want > %d", v, gone)
	}
	if v := put(t, s, "a", "three", a2); v <= gone {
		t.Errorf("update after reopen got version %d, want > %d", v, gone)
	}
}

func TestSecondOpenFailsWhileLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "custos.db")
	first := open(t, path, bbolt.Options{})

	for _, timeout := range []time.Duration{200 * time.Millisecond, 0} {
		wait := timeout
		if wait == 0 {
			wait = bbolt.DefaultTimeout
		}
		start := time.Now()
		s, err := bbolt.Open(path, bbolt.Options{Timeout: timeout})
		elapsed := time.Since(start)
		if err == nil {
			s.Close()
			t.Fatalf("second Open with Timeout %v succeeded while the file was open", timeout)
		}
		if !errors.Is(err, bbolt.ErrLocked) || !strings.Contains(err.Error(), "locked") {
			t.Errorf("second Open with Timeout %v = %v, want an error wrapping ErrLocked", timeout, err)
		}
		// bbolt retries the lock every 50ms and may give up one retry early.
		if elapsed < wait/2 || elapsed > wait+2*time.Second {
			t.Errorf("second Open with Timeout %v failed after %v, want about %v", timeout, elapsed, wait)
		}
	}

	if err := first.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	open(t, path, bbolt.Options{Timeout: 200 * time.Millisecond}).Close()
}

func open(t *testing.T, path string, opts bbolt.Options) *bbolt.Store {
	t.Helper()
	s, err := bbolt.Open(path, opts)
	if err != nil {
		t.Fatalf("Open = %v", err)
	}
	return s
}

func put(t *testing.T, s storage.Store, key, value string, expect uint64) uint64 {
	t.Helper()
	v, err := s.Put(t.Context(), key, []byte(value), expect)
	if err != nil {
		t.Fatalf("Put(%q, expect %d) = %v", key, expect, err)
	}
	return v
}

// Records Apply writes under increasing keys (the audit trail's leaves,
// strips and queue; a restore's batches) fill the pages they are written
// to, instead of leaving each page half empty as bbolt does by default
// when it splits one.
func TestAppendedRecordsFillTheirPages(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "custos.db")
	s := open(t, path, bbolt.Options{})
	const n, size, perApply = 40_000, 256, 1000
	value := []byte(strings.Repeat("v", size))
	for i := 0; i < n; i += perApply {
		ops := make([]storage.Op, perApply)
		for j := range ops {
			ops[j] = storage.Op{Key: fmt.Sprintf("audit/l/%016x", i+j), Value: value, Expect: storage.AnyVersion}
		}
		if err := s.Apply(ctx, ops); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// How full the leaf pages are, from bbolt's own statistics (the file's
	// size grows in steps, and would hide it).
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var st bolt.BucketStats
	if err := db.View(func(tx *bolt.Tx) error {
		st = tx.Bucket([]byte("records")).Stats()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	fill := float64(st.LeafInuse) / float64(st.LeafAlloc)
	t.Logf("%d records in %d leaf pages, %.2f full", st.KeyN, st.LeafPageN, fill)
	// bbolt's default leaves them about half full.
	if fill < 0.8 {
		t.Errorf("leaf pages %.2f full after appending in order, want at least 0.8", fill)
	}
}

// A snapshot's copy of the store has no name while it is read, and a copy
// a dead process left is removed by the next Open: it would keep a tenant
// shredded since unwrappable.
func TestSnapshotCopiesDoNotOutliveTheSnapshot(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	path := filepath.Join(dir, "custos.db")
	stale := path + ".snapshot-1234"
	if err := os.WriteFile(stale, []byte("a copy left by a killed backup"), 0o600); err != nil {
		t.Fatal(err)
	}
	ro := path + ".other.snapshot-1" // not a copy of this store
	if err := os.WriteFile(ro, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := open(t, path, bbolt.Options{})
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a stale snapshot copy survived Open: %v", err)
	}
	if _, err := os.Stat(ro); err != nil {
		t.Fatalf("Open removed a file that is not its copy: %v", err)
	}
	put(t, s, "a", "one", 0)
	err := s.Snapshot(ctx, func(storage.Record) error {
		left, _ := filepath.Glob(path + ".snapshot-*")
		if len(left) != 0 {
			return fmt.Errorf("copies on disk while the snapshot is read: %v", left)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
