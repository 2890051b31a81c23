//go:build linux || darwin || freebsd

package bbolt

import (
	"os"
	"syscall"
)

// freeBytes is the space this process may still use on the filesystem
// holding dir: the blocks available to unprivileged users, or, running as
// root, every free block (root may write into the reserved ones).
func freeBytes(dir string) (uint64, bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false
	}
	blocks := uint64(st.Bavail)
	if os.Geteuid() == 0 {
		blocks = uint64(st.Bfree)
	}
	return blocks * uint64(st.Bsize), true
}
