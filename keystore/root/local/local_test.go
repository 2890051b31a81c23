package local_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/root/roottest"
)

func TestConformance(t *testing.T) {
	r, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	roottest.Test(t, r)
}

func TestCreateWritesOwnerOnlyFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "root.key")
	if _, err := local.Create(p); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Size() != local.KeySize {
		t.Fatalf("mode %v size %d, want 0600 and %d bytes", st.Mode().Perm(), st.Size(), local.KeySize)
	}
	if _, err := local.Create(p); err == nil {
		t.Fatal("Create over an existing key succeeded")
	}
}

func TestOpenRefusesReadableByOthers(t *testing.T) {
	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o644} {
		p := filepath.Join(t.TempDir(), "root.key")
		if _, err := local.Create(p); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := local.Open(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("mode %04o: got %v, want refusal", mode, err)
		}
	}
}

func TestOpenRefusesWrongSize(t *testing.T) {
	p := filepath.Join(t.TempDir(), "root.key")
	if err := os.WriteFile(p, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := local.Open(p); err == nil {
		t.Fatal("Open of a 5-byte key succeeded")
	}
}

func TestReopenedKeyUnwrapsEarlierBlobs(t *testing.T) {
	p := filepath.Join(t.TempDir(), "root.key")
	r1, err := local.OpenOrCreate(p)
	if err != nil {
		t.Fatal(err)
	}
	w, err := r1.Wrap(t.Context(), []byte("0123456789abcdef0123456789abcdef"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := local.OpenOrCreate(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r2.Unwrap(t.Context(), w, []byte("aad")); err != nil {
		t.Fatalf("reopened root: %v", err)
	}
}

func TestCheckNoticesAKeyFileDeletedOrReplaced(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "root.key")
	r, err := local.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Check(ctx); err != nil {
		t.Fatalf("fresh file: %v", err)
	}
	wrapped, err := r.Wrap(ctx, []byte("kek"), []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	// Replaced by another key: refused, and the loaded key stays in use.
	other := make([]byte, local.KeySize)
	other[0] = 1
	if err := os.WriteFile(path, other, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.Check(ctx); err == nil || !strings.Contains(err.Error(), "no longer holds the key") || !errors.Is(err, root.ErrAtRisk) {
		t.Fatalf("replaced file: %v", err)
	}
	if _, err := r.Unwrap(ctx, wrapped, []byte("ad")); err != nil {
		t.Fatalf("the loaded key is no longer used: %v", err)
	}
	// Gone: a restart would fail.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := r.Check(ctx); err == nil || !strings.Contains(err.Error(), "restart would fail") {
		t.Fatalf("deleted file: %v", err)
	}
}
