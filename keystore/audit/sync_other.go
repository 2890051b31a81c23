//go:build !linux

package audit

import "os"

// datasync flushes f to stable storage.
func datasync(f *os.File) error { return f.Sync() }

// lockFile opens (creating) path. Other systems do not lock the spool:
// never give two processes one spool.
func lockFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
}
