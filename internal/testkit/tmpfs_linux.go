package testkit

import (
	"fmt"
	"syscall"
	"testing"
)

// MountTmpfs mounts a tmpfs of size bytes on a new temporary directory and
// unmounts it at cleanup. It skips the test, saying why, where mounting is
// impossible (not root, no CAP_SYS_ADMIN); CI runs as root.
func MountTmpfs(tb testing.TB, size int) string {
	tb.Helper()
	dir := tb.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		tb.Skipf("cannot mount a tmpfs to fill (needs root or CAP_SYS_ADMIN): %v", err)
	}
	tb.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			tb.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}
