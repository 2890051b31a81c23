//go:build unix

package postgres

import (
	"net"
	"testing"
	"time"
)

func TestConnAlive(t *testing.T) {
	pair := func(t *testing.T) (client, server net.Conn) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		client, err = net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		server, err = l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close(); server.Close() })
		return client, server
	}
	// eventually polls connAlive, since the peer's bytes or FIN take a
	// moment to arrive.
	eventually := func(t *testing.T, c net.Conn, want bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if connAlive(c) == want {
				return
			}
		}
		t.Fatalf("connAlive = %v, want %v", !want, want)
	}

	t.Run("an open, quiet connection is alive", func(t *testing.T) {
		c, _ := pair(t)
		if !connAlive(c) {
			t.Fatal("connAlive = false")
		}
	})
	t.Run("a connection the server closed is dead", func(t *testing.T) {
		c, s := pair(t)
		s.Close()
		eventually(t, c, false)
	})
	t.Run("a connection with unread bytes is dead", func(t *testing.T) {
		c, s := pair(t)
		s.Write([]byte("E"))
		eventually(t, c, false)
		if buf := make([]byte, 1); func() error { _, err := c.Read(buf); return err }() != nil || buf[0] != 'E' {
			t.Fatal("connAlive consumed the byte")
		}
	})
	t.Run("a read pending in another goroutine does not block it", func(t *testing.T) {
		c, s := pair(t)
		go c.Read(make([]byte, 1)) // as pgx's background reader does
		time.Sleep(20 * time.Millisecond)
		done := make(chan bool)
		go func() { done <- connAlive(c) }()
		select {
		case alive := <-done:
			if !alive {
				t.Fatal("connAlive = false")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("connAlive blocked behind a pending read")
		}
		s.Close()
	})
	t.Run("a closed connection is dead", func(t *testing.T) {
		c, _ := pair(t)
		c.Close()
		if connAlive(c) {
			t.Fatal("connAlive = true")
		}
	})
}
