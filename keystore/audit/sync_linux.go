package audit

import (
	"errors"
	"os"
	"syscall"
)

// datasync flushes f's data (and the metadata needed to read it back):
// fdatasync, cheaper than fsync.
func datasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			return err
		}
	}
}

// lockFile opens (creating) path and takes an exclusive flock on it, so
// that two processes never share one spool.
func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, errors.New("in use by another process (each replica needs a spool of its own)")
	}
	return f, nil
}
