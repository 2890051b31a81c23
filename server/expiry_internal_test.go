package server

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"
)

// handshaken is transport credentials whose handshake hands back the raw
// connection with a verified chain of one certificate expiring at end.
type handshaken struct {
	credentials.TransportCredentials
	end time.Time
}

func (h handshaken) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	cert := &x509.Certificate{NotAfter: h.end}
	return raw, credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{cert}}}}, nil
}

// The connection expiringCreds hands gRPC still gives access to its socket
// when the one under it does (gRPC reads socket options through it), and
// closes at the certificate's expiry.
func TestAnExpiringConnKeepsItsSocketAndClosesAtTheExpiry(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := lis.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	client, err := net.DialTimeout("tcp", lis.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var raw net.Conn
	select {
	case raw = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("no connection accepted")
	}
	conn, _, err := expiringCreds{handshaken{end: time.Now().Add(200 * time.Millisecond)}}.ServerHandshake(raw)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := conn.(syscall.Conn); !ok {
		t.Fatal("the expiring connection hides its socket")
	}
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Fatal("the connection was not closed at the certificate's expiry")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the connection was still open 5 s after the certificate's expiry: %v", err)
	}
	_ = conn.Close()
}
