//go:build scale && linux

package bench_test

import (
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestAuditJournalSyncFloor measures what one group commit of the audit
// journal cannot go below on this disk (make bench-audit; docs/performance.md):
// a 2 KiB write and an fdatasync of a preallocated, zero-filled file, as the
// journal does, one at a time and 2 and 4 at a time on the same file. It
// logs syncs a second and the mean time each; it asserts nothing about
// them. CUSTOS_SYNC_DIR picks the directory (default: the test's temporary
// directory; put it on the disk the journal will use).
func TestAuditJournalSyncFloor(t *testing.T) {
	dir := t.TempDir()
	if d := os.Getenv("CUSTOS_SYNC_DIR"); d != "" {
		var err error
		if dir, err = os.MkdirTemp(d, "custos-sync-floor-"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	f, err := os.CreateTemp(dir, "journal-")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 8 << 20
	if _, err := f.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err == nil {
		t.Logf("file %s, filesystem type %#x (ext4 0xef53, xfs 0x58465342, tmpfs 0x1021994: no sync at all)", f.Name(), fs.Type)
	}
	for _, writers := range []int{1, 2, 4} {
		var syncs, off atomic.Int64
		var (
			mu     sync.Mutex
			failed error // the first writer's error
		)
		fail := func(err error) {
			mu.Lock()
			defer mu.Unlock()
			if failed == nil {
				failed = err
			}
		}
		stop := time.Now().Add(3 * time.Second)
		var wg sync.WaitGroup
		for range writers {
			wg.Go(func() {
				buf := make([]byte, 2048)
				for time.Now().Before(stop) {
					at := off.Add(int64(len(buf))) % (size - int64(len(buf)))
					if _, err := f.WriteAt(buf, at); err != nil {
						fail(err)
						return
					}
					if err := fdatasync(f); err != nil {
						fail(err)
						return
					}
					syncs.Add(1)
				}
			})
		}
		wg.Wait()
		if failed != nil {
			t.Fatal(failed)
		}
		n := syncs.Load()
		t.Logf("%d at a time: %.0f syncs/s, %.0f µs each", writers, float64(n)/3, 3e6*float64(writers)/float64(n))
	}
}

// fdatasync is the journal's group-commit sync (keystore/audit's datasync):
// retried when a signal interrupts it.
func fdatasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			return err
		}
	}
}
