package postgres

import (
	"crypto/tls"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/custos-kms/custos/internal/pgtest"
)

// Every connection to the server gives up on data left unacknowledged for
// userTimeout, so a server gone silent mid-statement fails the statement
// instead of holding it for TCP's 15 minutes.
func TestConnectionsHaveAUserTimeout(t *testing.T) {
	ctx := t.Context()
	s, err := Open(ctx, Config{URL: pgtest.Start(t).NewDatabase(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	var conn net.Conn = c.Conn().PgConn().Conn()
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	sc, ok := conn.(syscall.Conn)
	if !ok || conn.RemoteAddr().Network() != "tcp" {
		t.Fatalf("the test server's connection is %T over %s, want TCP", conn, conn.RemoteAddr().Network())
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var gerr error
	if err := raw.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT) }); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	if want := int(userTimeout / time.Millisecond); got != want {
		t.Fatalf("TCP_USER_TIMEOUT %d ms, want %d", got, want)
	}
	// Go's keep-alive defaults, as pgconn's dialer has them: a probe after
	// 15 s idle.
	if err := raw.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE) }); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	if got != 15 {
		t.Fatalf("TCP_KEEPIDLE %d s, want Go's default 15", got)
	}
}
