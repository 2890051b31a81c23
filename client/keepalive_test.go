package client_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/client"
)

// blackholeProxy forwards TCP connections to a server until drop is
// called; from then on the connections it had stay open but carry nothing
// either way, as when a NAT or load balancer forgets them without a reset.
// Connections made after drop are forwarded.
type blackholeProxy struct {
	lis      net.Listener
	upstream string
	mu       sync.Mutex
	live     []*forwarded // forwarding
	all      []*forwarded // closed at the end
	wg       sync.WaitGroup
}

type forwarded struct {
	mu      sync.Mutex
	dropped bool
	a, b    net.Conn
}

func (f *forwarded) isDropped() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dropped
}

func startBlackholeProxy(t *testing.T, upstream string) *blackholeProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackholeProxy{lis: lis, upstream: upstream}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *blackholeProxy) accept() {
	defer p.wg.Done()
	for {
		a, err := p.lis.Accept()
		if err != nil {
			return
		}
		b, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
		if err != nil {
			a.Close()
			continue
		}
		f := &forwarded{a: a, b: b}
		p.mu.Lock()
		p.live = append(p.live, f)
		p.all = append(p.all, f)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(f, a, b)
		go p.pipe(f, b, a)
	}
}

// pipe copies src to dst until either ends; once dropped, what src sends
// is read and thrown away, so the sender's writes still succeed.
func (p *blackholeProxy) pipe(f *forwarded, src, dst net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !f.isDropped() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) || !f.isDropped() {
				dst.Close()
			}
			return
		}
	}
}

// drop silences every connection made so far.
func (p *blackholeProxy) drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.live {
		f.mu.Lock()
		f.dropped = true
		f.mu.Unlock()
	}
	p.live = nil
}

func (p *blackholeProxy) close() {
	p.lis.Close()
	p.mu.Lock()
	for _, f := range p.all {
		f.a.Close()
		f.b.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// A connection the network dropped silently is found by the client's
// pings: the call on it fails with UNAVAILABLE (to retry) within about
// KeepaliveTime and a third, not at its deadline (which without pings is
// what it got, as did every later call on the same dead connection), and
// the next call goes over a new connection. The server lets the client
// ping that often.
func TestASilentlyDroppedConnectionIsFound(t *testing.T) {
	t.Parallel()
	env := startEnv(t)
	setup := newClient(t, env)
	name := setupKey(t, setup)
	proxy := startBlackholeProxy(t, env.addr)
	c, err := client.New(t.Context(), client.Config{
		Address: proxy.lis.Addr().String(), CAFile: env.caFile, CertFile: env.certFile, KeyFile: env.keyFile,
		KeepaliveTime: 10 * time.Second, // gRPC's floor
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, _, err := c.Encrypt(t.Context(), name, []byte("v"), nil); err != nil {
		t.Fatal(err)
	}
	proxy.drop()
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	defer cancel()
	start := time.Now()
	_, _, err = c.Encrypt(ctx, name, []byte("v"), nil)
	if status.Code(err) != codes.Unavailable || !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("a call on a silently dropped connection: %v after %v, want UNAVAILABLE once the pings go unanswered", err, time.Since(start).Round(time.Second))
	}
	if _, _, err := c.Encrypt(ctx, name, []byte("v"), nil); err != nil {
		t.Fatalf("the next call, on a new connection: %v", err)
	}
}
