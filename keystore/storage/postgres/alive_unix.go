//go:build unix

package postgres

import (
	"crypto/tls"
	"errors"
	"net"
	"syscall"
)

// connAlive reports whether c, an idle connection, is still open: whether
// reading from it would block. A server that shut down or restarted has
// closed the socket (a read returns end of file) or sent a last error
// before closing (a read returns data); either way the connection is dead.
// It costs one non-blocking system call and no round trip, so the pool runs
// it before every use: a connection used moments before the server restarted
// is replaced instead of failing the next statement.
func connAlive(c net.Conn) bool {
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	alive := true
	// Control, not Read: pgx may have a background read pending on the
	// connection, which holds the descriptor's read lock until data comes.
	// A peek that does not wait can run beside it.
	err = raw.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = n < 0 && (errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK) || errors.Is(err, syscall.EINTR))
	})
	return err == nil && alive
}
