package bbolt

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/custos-kms/custos/keystore/storage"
)

// A write refused by a disk quota keeps the store "full" although the
// filesystem has room (statfs does not see quotas), until a write
// succeeds: it was reported writable at the next readiness probe while
// every write still failed.
func TestAQuotaErrorStaysUntilAWriteSucceeds(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "custos.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.full.Note(fmt.Errorf("%w: %w", storage.ErrFull, syscall.EDQUOT))
	if err := s.WriteHealth(); err == nil {
		t.Fatal("WriteHealth after a quota error, with the filesystem's room: nil; want ErrFull")
	}
	if _, err := s.Put(context.Background(), "k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteHealth(); err != nil {
		t.Fatalf("WriteHealth after a write succeeded: %v; want nil", err)
	}
}

// Copies a killed snapshot left are removed at the next open whatever the
// file's name (a glob pattern built from it missed names holding '[' and
// could match another store's copies), and only this file's.
func TestStaleSnapshotsAreRemovedWhateverTheName(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "custos[1].db")
	stale := path + ".snapshot-123"
	other := filepath.Join(dir, "custos1.db.snapshot-456")
	for _, f := range []string{stale, other} {
		if err := os.WriteFile(f, []byte("copy"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("the stale copy %s: %v; want it removed", stale, err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("another store's copy %s: %v; want it kept", other, err)
	}
}
