package identity_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/internal/pki"
	"github.com/custos-kms/custos/server/identity"
)

// AuthFunc plugs straight into go-grpc-middleware's auth interceptors.
var _ auth.AuthFunc = identity.AuthFunc

type testPKI struct {
	ca    *pki.CA
	roots *x509.CertPool
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	ca, err := pki.NewCA("identity test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM())
	return &testPKI{ca: ca, roots: roots}
}

func (p *testPKI) pair(t *testing.T, req pki.IssueRequest) tls.Certificate {
	t.Helper()
	if req.Validity == 0 {
		req.Validity = time.Hour
	}
	certPEM, keyPEM, err := p.ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

func (p *testPKI) client(t *testing.T, cn string, uris ...string) *x509.Certificate {
	t.Helper()
	req := pki.IssueRequest{CommonName: cn, Client: true}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		req.URIs = append(req.URIs, u)
	}
	if cn == "" && len(uris) == 0 {
		req.DNSNames = []string{"client.example"} // a name, but not an identity
	}
	return p.pair(t, req).Leaf
}

func TestFromCertificate(t *testing.T) {
	p := newTestPKI(t)
	tests := []struct {
		name    string
		cert    *x509.Certificate
		want    string
		wantErr bool
	}{
		{"a SPIFFE ID is the identity", p.client(t, "", "spiffe://custos.dev/billing"), "spiffe://custos.dev/billing", false},
		{"a SPIFFE ID takes precedence over the common name", p.client(t, "billing-cn", "spiffe://custos.dev/billing"), "spiffe://custos.dev/billing", false},
		{"the common name is used without a URI SAN", p.client(t, "billing-cn"), "billing-cn", false},
		{"a non-SPIFFE URI falls back to the common name", p.client(t, "billing-cn", "https://billing.example/"), "billing-cn", false},
		{"an upper-case scheme is still SPIFFE", p.client(t, "cn", "SPIFFE://custos.dev/billing"), "spiffe://custos.dev/billing", false},
		{"no SPIFFE ID and no common name is an error", p.client(t, ""), "", true},
		{"two SPIFFE IDs are ambiguous", p.client(t, "cn", "spiffe://custos.dev/a", "spiffe://custos.dev/b"), "", true},
		{"a SPIFFE ID beside another URI is not an SVID", p.client(t, "cn", "spiffe://custos.dev/a", "https://a.example/"), "", true},
		{"a malformed SPIFFE ID does not fall back to the common name", p.client(t, "cn", "spiffe://Custos.Dev/a"), "", true},
		{"a nil certificate is an error", nil, "", true},
		{"a common name spelling a SPIFFE ID is not that identity", p.client(t, "spiffe://custos.dev/dev-client"), "", true},
		{"a common name spelling a SPIFFE ID in upper case is refused too", p.client(t, "SPIFFE://custos.dev/dev-client"), "", true},
		{"two common names are ambiguous", &x509.Certificate{Subject: pkix.Name{CommonName: "ops-admin", Names: []pkix.AttributeTypeAndValue{
			{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "alice-laptop"}, {Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "ops-admin"},
		}}}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := identity.FromCertificate(tt.cert)
			if tt.wantErr {
				if !errors.Is(err, identity.ErrNoIdentity) {
					t.Errorf("FromCertificate() = %q, %v; want ErrNoIdentity", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("FromCertificate() = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestContextRoundTrip(t *testing.T) {
	ctx := context.Background()
	if id, ok := identity.FromContext(ctx); ok {
		t.Errorf("empty context has identity %q", id)
	}
	ctx = identity.NewContext(ctx, "spiffe://custos.dev/a")
	if id, ok := identity.FromContext(ctx); !ok || id != "spiffe://custos.dev/a" {
		t.Errorf("FromContext() = %q, %v", id, ok)
	}
	if _, ok := identity.FromContext(identity.NewContext(ctx, "")); ok {
		t.Error("empty identity reported as present")
	}
}

func peerContext(state *tls.ConnectionState) context.Context {
	p := &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4242}}
	if state != nil {
		p.AuthInfo = credentials.TLSInfo{State: *state}
	}
	return peer.NewContext(context.Background(), p)
}

func TestAuthFunc(t *testing.T) {
	p := newTestPKI(t)
	leaf := p.client(t, "billing-cn", "spiffe://custos.dev/billing")
	nameless := p.client(t, "")
	caCert := func() *x509.Certificate {
		chains, err := leaf.Verify(x509.VerifyOptions{Roots: p.roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err != nil {
			t.Fatal(err)
		}
		return chains[0][1]
	}()

	tests := []struct {
		name     string
		ctx      context.Context
		want     string
		wantCode codes.Code
	}{
		{"a verified SPIFFE certificate authenticates", peerContext(&tls.ConnectionState{
			PeerCertificates: []*x509.Certificate{leaf},
			VerifiedChains:   [][]*x509.Certificate{{leaf, caCert}},
		}), "spiffe://custos.dev/billing", codes.OK},
		{"a context without a peer is unauthenticated", context.Background(), "", codes.Unauthenticated},
		{"a peer without TLS is unauthenticated", peerContext(nil), "", codes.Unauthenticated},
		{"TLS without a client certificate is unauthenticated", peerContext(&tls.ConnectionState{}), "", codes.Unauthenticated},
		{"an unverified client certificate is unauthenticated", peerContext(&tls.ConnectionState{
			PeerCertificates: []*x509.Certificate{leaf},
		}), "", codes.Unauthenticated},
		{"a verified certificate without an identity is unauthenticated", peerContext(&tls.ConnectionState{
			PeerCertificates: []*x509.Certificate{nameless},
			VerifiedChains:   [][]*x509.Certificate{{nameless, caCert}},
		}), "", codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, err := identity.AuthFunc(tt.ctx)
			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("AuthFunc() code = %v (%v), want %v", got, err, tt.wantCode)
			}
			if tt.wantCode != codes.OK {
				return
			}
			if id, ok := identity.FromContext(ctx); !ok || id != tt.want {
				t.Errorf("identity = %q, %v; want %q", id, ok, tt.want)
			}
		})
	}

	t.Run("the message for a missing certificate is the documented one", func(t *testing.T) {
		_, err := identity.AuthFunc(context.Background())
		if msg := status.Convert(err).Message(); msg != "no verified client certificate" {
			t.Errorf("message = %q", msg)
		}
	})
}

// TestAuthInterceptorOverMutualTLS runs a real gRPC server with the standard
// health service behind auth.UnaryServerInterceptor(identity.AuthFunc).
// The server only asks for client certificates (VerifyClientCertIfGiven)
// so that a certificate-less call reaches the interceptor, which must refuse
// it: health checks get no exemption.
func TestAuthInterceptorOverMutualTLS(t *testing.T) {
	p := newTestPKI(t)
	serverPair := p.pair(t, pki.IssueRequest{DNSNames: []string{"localhost"}, Server: true})
	u, _ := url.Parse("spiffe://custos.dev/billing")
	clientPair := p.pair(t, pki.IssueRequest{CommonName: "billing", URIs: []*url.URL{u}, Client: true})

	var (
		mu   sync.Mutex
		seen []string
	)
	record := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		id, _ := identity.FromContext(ctx)
		mu.Lock()
		seen = append(seen, id)
		mu.Unlock()
		return handler(ctx, req)
	}
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{serverPair},
			ClientCAs:    p.roots,
			ClientAuth:   tls.VerifyClientCertIfGiven,
			MinVersion:   tls.VersionTLS13,
		})),
		grpc.ChainUnaryInterceptor(auth.UnaryServerInterceptor(identity.AuthFunc), record),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)

	check := func(t *testing.T, certs []tls.Certificate) error {
		t.Helper()
		conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			Certificates: certs,
			RootCAs:      p.roots,
			ServerName:   "localhost",
			MinVersion:   tls.VersionTLS13,
		})))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}

	t.Run("a client certificate passes and the handler sees its SPIFFE ID", func(t *testing.T) {
		if err := check(t, []tls.Certificate{clientPair}); err != nil {
			t.Fatalf("Check: %v", err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(seen) != 1 || seen[0] != "spiffe://custos.dev/billing" {
			t.Errorf("handler saw identities %q", seen)
		}
	})
	t.Run("a health check without a certificate is unauthenticated", func(t *testing.T) {
		err := check(t, nil)
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("Check error = %v, want Unauthenticated", err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(seen) != 1 {
			t.Errorf("handler ran for an unauthenticated call")
		}
	})
}

// A connection outlives its client certificate, not the certificate's
// authority: once the certificate expires, the next call on the same
// connection is refused.
func TestACallAfterTheClientCertificateExpiredIsRefused(t *testing.T) {
	p := newTestPKI(t)
	serverPair := p.pair(t, pki.IssueRequest{DNSNames: []string{"localhost"}, Server: true})
	clientPair := p.pair(t, pki.IssueRequest{CommonName: "short-lived", Client: true, Validity: 2 * time.Second})
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{serverPair},
			ClientCAs:    p.roots,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			MinVersion:   tls.VersionTLS13,
		})),
		grpc.ChainUnaryInterceptor(auth.UnaryServerInterceptor(identity.AuthFunc)),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{clientPair},
		RootCAs:      p.roots,
		ServerName:   "localhost",
		MinVersion:   tls.VersionTLS13,
	})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	call := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	if err := call(); err != nil {
		t.Fatalf("a call with a current certificate: %v", err)
	}
	time.Sleep(time.Until(clientPair.Leaf.NotAfter) + 100*time.Millisecond)
	err = call()
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), "expired") {
		t.Fatalf("a call on the same connection after the certificate expired: %v, want UNAUTHENTICATED saying it expired", err)
	}
}

// Resumed TLS 1.3 connections share one leaf pointer (crypto/tls's
// certificate cache), each with the chain its ticket carried: one chain's
// expiry is not another's. A leaf first seen under an intermediate about
// to expire was refused as expired on a connection whose chain (a renewed
// intermediate) is valid.
func TestAChainsExpiryIsItsOwn(t *testing.T) {
	now := time.Now()
	leaf := &x509.Certificate{Subject: pkix.Name{CommonName: "svc-a"}, NotAfter: now.Add(time.Hour)}
	short := &x509.Certificate{Subject: pkix.Name{CommonName: "intermediate"}, NotAfter: now.Add(50 * time.Millisecond)}
	long := &x509.Certificate{Subject: pkix.Name{CommonName: "intermediate"}, NotAfter: now.Add(time.Hour)}
	ctxOf := func(chain ...*x509.Certificate) context.Context {
		return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{chain}}}})
	}
	if id, err := identity.FromPeer(ctxOf(leaf, short)); err != nil || id != "svc-a" {
		t.Fatalf("the first chain: %q, %v", id, err)
	}
	time.Sleep(100 * time.Millisecond)
	if _, err := identity.FromPeer(ctxOf(leaf, short)); !errors.Is(err, identity.ErrCertificateExpired) {
		t.Fatalf("the chain whose intermediate expired: %v, want ErrCertificateExpired", err)
	}
	if id, err := identity.FromPeer(ctxOf(leaf, long)); err != nil || id != "svc-a" {
		t.Fatalf("the same leaf under a renewed intermediate: %q, %v; want svc-a", id, err)
	}
}
