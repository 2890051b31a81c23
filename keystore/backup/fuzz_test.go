package backup_test

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	"github.com/custos-kms/custos/keystore/backup"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/memory"
)

// FuzzRead: any bytes given as a backup are refused or read without a
// panic, and nothing past a bad byte is ever handed out as a record.
func FuzzRead(f *testing.F) {
	r, err := local.Create(filepath.Join(f.TempDir(), "root.key"))
	if err != nil {
		f.Fatal(err)
	}
	s := memory.New()
	if _, err := s.Put(context.Background(), "a", []byte("1"), 0); err != nil {
		f.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := backup.Write(context.Background(), &buf, storage.Snapshotter(s), r, backup.Options{}); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte("custos-backup\x00v1\n\x00\x00\x00\x05hello"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = backup.Read(context.Background(), bytes.NewReader(b), r, func(string, []byte) error { return nil })
	})
}
