package durable

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// An unnamed file that cannot be linked where it was made is copied to a
// name instead: the backup it holds is published, not lost.
func TestAnUnnamedFileThatCannotBeLinkedIsCopied(t *testing.T) {
	defer func(l func(*os.File, string) error) { link = l }(link)
	link = func(*os.File, string) error { return errors.New("operation not permitted") }
	dir := t.TempDir()
	target := filepath.Join(dir, "store.backup")
	p, err := CreatePending(target)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.named {
		t.Skip("this file system makes no unnamed files: the fallback under test is not reached")
	}
	if _, err := p.WriteString("the whole backup"); err != nil {
		t.Fatal(err)
	}
	if err := p.Publish(); err != nil {
		t.Fatalf("Publish with linking refused: %v", err)
	}
	if b, err := os.ReadFile(target); err != nil || string(b) != "the whole backup" {
		t.Fatalf("published: %q, %v", b, err)
	}
	if des, _ := os.ReadDir(dir); len(des) != 1 {
		t.Fatalf("the directory holds %d entries, want the backup alone", len(des))
	}
}
