//go:build !linux

package testkit

import "testing"

// MountTmpfs skips the test: mounting a tmpfs needs Linux.
func MountTmpfs(tb testing.TB, size int) string {
	tb.Helper()
	tb.Skip("cannot mount a tmpfs to fill: not Linux")
	return ""
}
