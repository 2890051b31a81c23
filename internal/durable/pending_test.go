package durable_test

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/custos-kms/custos/internal/durable"
)

// A pending file has no name beside its target until it is published (on
// Linux: none at all), is published whole with mode 0600 over what was
// there, and leaves nothing when closed unpublished.
func TestAPendingFileIsNamedOnlyWhenPublished(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "store.backup")
	if err := os.WriteFile(target, []byte("the old backup"), 0o644); err != nil {
		t.Fatal(err)
	}
	entries := func() []string {
		t.Helper()
		des, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, de := range des {
			names = append(names, de.Name())
		}
		return names
	}

	p, err := durable.CreatePending(target)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.WriteString("the new backup"); err != nil {
		t.Fatal(err)
	}
	if got := entries(); runtime.GOOS == "linux" && len(got) != 1 {
		t.Errorf("while written, the directory holds %v; want only the old backup (an unnamed file)", got)
	}
	if err := p.Publish(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(target)
	if err != nil || string(b) != "the new backup" {
		t.Fatalf("published: %q, %v", b, err)
	}
	if fi, err := os.Stat(target); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("published file's mode: %v, %v; want 0600", fi.Mode(), err)
	}
	if got := entries(); len(got) != 1 {
		t.Fatalf("after publishing, the directory holds %v", got)
	}

	p, err = durable.CreatePending(target)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.WriteString("a backup that failed"); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(target); err != nil || string(b) != "the new backup" {
		t.Fatalf("after an unpublished one: %q, %v", b, err)
	}
	if got := entries(); len(got) != 1 {
		t.Fatalf("an unpublished file left %v", got)
	}
}
