// Package durable makes file system changes survive a crash of the machine,
// not only of the process.
package durable

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// SyncDir makes the entries of dir (a file created, renamed or removed in
// it) durable: without it, a file whose data was synced can still be
// missing after a power loss. File systems that cannot sync a directory
// (EINVAL, ENOTSUP) are taken as having nothing to sync.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOTSUP) {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
