package postgres

import (
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// userTimeout bounds how long data sent on a connection to the server may
// stay unacknowledged before the kernel gives the connection up
// (TCP_USER_TIMEOUT). A server gone silent in the middle of a statement (a
// failover without a reset) otherwise held the statement, and a caller
// without a deadline of its own (the scheduler's passes), until TCP's
// retransmissions ran out, some 15 minutes. A live server acknowledges at
// the TCP level while it works, so a long statement is not cut.
const userTimeout = 30 * time.Second

// setUserTimeout is a net.Dialer's Control: TCP_USER_TIMEOUT on TCP
// connections; a Unix socket has no such option and is left as it is.
func setUserTimeout(network, _ string, c syscall.RawConn) error {
	if !strings.HasPrefix(network, "tcp") {
		return nil
	}
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(userTimeout/time.Millisecond))
	}); err != nil {
		return err
	}
	return serr
}
