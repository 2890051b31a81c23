//go:build !linux

package postgres

import "syscall"

// setUserTimeout does nothing where TCP_USER_TIMEOUT is not available: a
// connection to a server gone silent mid-statement lasts until TCP gives
// up.
func setUserTimeout(string, string, syscall.RawConn) error { return nil }
