//go:build !(linux || darwin || freebsd)

package bbolt

// freeBytes cannot read free space here.
func freeBytes(string) (uint64, bool) { return 0, false }
