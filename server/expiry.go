package server

import (
	"net"
	"syscall"
	"time"

	"google.golang.org/grpc/credentials"
)

// expiringCreds ends each connection when the client certificate chain it
// was verified with expires. From then on every call on it is refused
// (identity.ErrCertificateExpired), and the client, holding a renewed
// certificate, would not reconnect before tls.max_connection_age: gRPC has
// no way to end one connection gracefully, so the connection is closed,
// and the client's next call makes a new one with its current certificate.
// Calls still running on it at that moment fail as on a dropped connection.
type expiringCreds struct {
	credentials.TransportCredentials
}

// ServerHandshake implements credentials.TransportCredentials.
func (c expiringCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return conn, info, err
	}
	ti, ok := info.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return conn, info, nil // no verified chain: no call is served on it
	}
	end := ti.State.VerifiedChains[0][0].NotAfter
	for _, cert := range ti.State.VerifiedChains[0][1:] {
		if cert.NotAfter.Before(end) {
			end = cert.NotAfter
		}
	}
	ec := &expiringConn{Conn: conn}
	ec.timer = time.AfterFunc(time.Until(end), func() { _ = conn.Close() })
	if sc, ok := conn.(syscall.Conn); ok {
		// Kept visible, as credentials.NewTLS keeps it: gRPC reads the
		// socket's options through it (channelz).
		return expiringSyscallConn{ec, sc}, info, nil
	}
	return ec, info, nil
}

// expiringSyscallConn is an expiringConn over a connection that gives
// access to its socket.
type expiringSyscallConn struct {
	*expiringConn
	sc syscall.Conn
}

// SyscallConn implements syscall.Conn.
func (c expiringSyscallConn) SyscallConn() (syscall.RawConn, error) { return c.sc.SyscallConn() }

// Clone implements credentials.TransportCredentials.
func (c expiringCreds) Clone() credentials.TransportCredentials {
	return expiringCreds{c.TransportCredentials.Clone()}
}

// expiringConn is a connection closed when its client certificate expires.
type expiringConn struct {
	net.Conn
	timer *time.Timer
}

// Close stops the expiry timer, which would otherwise hold the connection
// until the certificate's expiry, and closes the connection.
func (c *expiringConn) Close() error {
	c.timer.Stop()
	return c.Conn.Close()
}
