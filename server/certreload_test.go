package server_test

// Certificate rotation under load: the server and the Go client take new
// certificates, keys and CA bundles from files rotated in place, or from a
// SPIFFE Workload API, with calls running and none failing.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/pki"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// shortConnections makes the server end every connection after about
// 150 ms (gracefully: calls in flight finish), so that clients make new
// handshakes, and so use rotated files, many times during a test.
var shortConnections = []grpc.ServerOption{grpc.KeepaliveParams(keepalive.ServerParameters{
	MaxConnectionAge: 150 * time.Millisecond, MaxConnectionAgeGrace: 10 * time.Second,
})}

// writeAtomic replaces path with data as rotation tools do: a temporary
// file renamed over the old one.
func writeAtomic(t *testing.T, path string, data ...[]byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, bytes.Join(data, nil), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func issue(t *testing.T, ca *pki.CA, req pki.IssueRequest) (certPEM, keyPEM []byte, serial *big.Int) {
	t.Helper()
	req.Validity = time.Hour
	certPEM, keyPEM, err := ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM, c.SerialNumber
}

func serverReq() pki.IssueRequest {
	return pki.IssueRequest{CommonName: "custos-server", IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true}
}

func clientReq(id string) pki.IssueRequest {
	u, _ := url.Parse(id)
	return pki.IssueRequest{URIs: []*url.URL{u}, Client: true}
}

// handshake makes one TLS connection to addr presenting cert and returns
// the serial of the certificate the server presented, or the error the
// server's verdict on cert produced (TLS 1.3 reports a refused client
// certificate on the first read, where an accepted one reads the server's
// first HTTP/2 frame).
func handshake(t *testing.T, addr string, cert tls.Certificate) (*big.Int, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		InsecureSkipVerify: true, // this probe only reads which certificate the server presents
		NextProtos:         []string{"h2"},
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	serial := conn.ConnectionState().PeerCertificates[0].SerialNumber
	// An accepted client gets the gRPC server's HTTP/2 SETTINGS frame at
	// once; a refused one gets the TLS alert. Either comes well within 10 s.
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("handshake probe: neither HTTP/2 settings nor an alert from %s within 10s", addr)
		}
		return serial, err
	}
	return serial, nil
}

func pair(t *testing.T, certPEM, keyPEM []byte) tls.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// load runs Encrypt calls from 4 goroutines until stop is called, and then
// reports how many succeeded and the failures.
func load(t *testing.T, c *client.Client) (ok *atomic.Int64, stop func() []error) {
	t.Helper()
	ok = new(atomic.Int64)
	ctx, cancel := context.WithCancel(context.Background())
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
				_, _, err := c.Encrypt(cctx, "tenants/a/keys/k", []byte("field"), nil)
				ccancel()
				switch {
				case err == nil:
					ok.Add(1)
				case ctx.Err() != nil && status.Code(err) == codes.Canceled:
				default:
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	return ok, func() []error { cancel(); wg.Wait(); return errs }
}

// progresses fails the test unless ok grows by at least 20 within 10 s.
func progresses(t *testing.T, ok *atomic.Int64, when string) {
	t.Helper()
	start := ok.Load()
	waitFor(t, 10*time.Second, "calls succeeding "+when, func() bool { return ok.Load() >= start+20 })
}

func TestCertificateFilesRotateUnderLoadWithoutAFailedCall(t *testing.T) {
	f := newFiles(t)
	ts := start(t, f, options{
		configure:     func(c *config.Config) { c.TLS.ReloadInterval = 50 * time.Millisecond },
		serverOptions: shortConnections,
	})
	setup(t, ts, "a")
	ca1, p := f.pki.ca, f.pki
	ca2, err := pki.NewCA("Custos test CA 2", time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	// The client's files, from CA 1.
	dir := t.TempDir()
	cCA, cCert, cKey := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	cp, kp, _ := issue(t, ca1, clientReq(idAdmin))
	writeAtomic(t, cCA, ca1.CertPEM())
	writeAtomic(t, cCert, cp)
	writeAtomic(t, cKey, kp)
	c, err := client.New(context.Background(), client.Config{Address: ts.addr, CAFile: cCA, CertFile: cCert, KeyFile: cKey, ReloadInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ok, stop := load(t, c)
	progresses(t, ok, "before rotation")

	// 1. Both sides trust CA 1 and CA 2.
	writeAtomic(t, p.caFile, ca1.CertPEM(), ca2.CertPEM())
	writeAtomic(t, cCA, ca1.CertPEM(), ca2.CertPEM())
	time.Sleep(200 * time.Millisecond)
	progresses(t, ok, "with both CAs trusted")

	// 2. Both sides take certificates from CA 2 (key first, then the
	// certificate: in between the pair does not match and is refused).
	sp, sk, newSerial := issue(t, ca2, serverReq())
	writeAtomic(t, p.keyFile, sk)
	writeAtomic(t, p.certFile, sp)
	cp2, kp2, _ := issue(t, ca2, clientReq(idAdmin))
	writeAtomic(t, cKey, kp2)
	writeAtomic(t, cCert, cp2)
	time.Sleep(200 * time.Millisecond)
	progresses(t, ok, "with CA 2 certificates")

	// 3. CA 1 is no longer trusted anywhere. Calls go on only if the
	// client's new connections present its CA 2 certificate and trust the
	// server's: the server ends every connection within ~150 ms.
	writeAtomic(t, p.caFile, ca2.CertPEM())
	writeAtomic(t, cCA, ca2.CertPEM())
	time.Sleep(500 * time.Millisecond)
	progresses(t, ok, "with CA 1 retired")

	if errs := stop(); len(errs) > 0 {
		t.Fatalf("%d calls failed during rotation; first: %v", len(errs), errs[0])
	}
	t.Logf("%d calls, none failed", ok.Load())

	// A new handshake gets the new server certificate; a CA 1 client
	// certificate is refused, a CA 2 one accepted.
	got, err := handshake(t, ts.addr, pair(t, cp2, kp2))
	if err != nil {
		t.Fatalf("handshake with the CA 2 client certificate: %v", err)
	}
	if got.Cmp(newSerial) != 0 {
		t.Fatalf("server presents serial %v, want the rotated certificate's %v", got, newSerial)
	}
	if _, err := handshake(t, ts.addr, pair(t, cp, kp)); err == nil {
		t.Fatal("a CA 1 client certificate is still accepted after CA 1 left the bundle")
	}
}

func TestCertificateReloadRefusesABadPairAndKeepsThePreviousOne(t *testing.T) {
	f := newFiles(t)
	logs := &syncBuffer{}
	ts := start(t, f, options{
		configure: func(c *config.Config) { c.TLS.ReloadInterval = time.Hour }, // SIGHUP only
		sighup:    true,
		logger:    slog.New(slog.NewJSONHandler(logs, nil)),
	})
	p := f.pki
	cp, kp, _ := issue(t, p.ca, clientReq(idAdmin))
	probe := pair(t, cp, kp)
	before, err := handshake(t, ts.addr, probe)
	if err != nil {
		t.Fatal(err)
	}
	hup := func() {
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}

	origCert, err := os.ReadFile(p.certFile)
	if err != nil {
		t.Fatal(err)
	}
	// A certificate whose key is not in the key file: refused, logged
	// naming the files, the previous pair still presented.
	sp, _, _ := issue(t, p.ca, serverReq())
	writeAtomic(t, p.certFile, sp)
	hup()
	waitFor(t, 10*time.Second, "the refusal logged", func() bool { return bytes.Contains(logs.Bytes(), []byte("files not taken")) })
	if !bytes.Contains(logs.Bytes(), []byte(filepath.Base(p.certFile))) {
		t.Errorf("the refusal does not name the certificate file:\n%s", logs.Bytes())
	}
	if got, err := handshake(t, ts.addr, probe); err != nil || got.Cmp(before) != 0 {
		t.Fatalf("after a bad pair: serial %v, err %v; want the previous certificate %v", got, err, before)
	}
	// An empty CA bundle is refused too.
	writeAtomic(t, p.certFile, origCert)
	writeAtomic(t, p.caFile, []byte("not a certificate\n"))
	hup()
	waitFor(t, 10*time.Second, "the empty bundle refused", func() bool { return bytes.Contains(logs.Bytes(), []byte("holds no PEM certificate")) })
	if _, err := handshake(t, ts.addr, probe); err != nil {
		t.Fatalf("after an empty bundle the previous one should still verify clients: %v", err)
	}

	// A good pair and bundle are taken on the next SIGHUP.
	sp, sk, serial := issue(t, p.ca, serverReq())
	writeAtomic(t, p.caFile, p.ca.CertPEM())
	writeAtomic(t, p.keyFile, sk)
	writeAtomic(t, p.certFile, sp)
	hup()
	waitFor(t, 10*time.Second, "the new certificate presented", func() bool {
		got, err := handshake(t, ts.addr, probe)
		return err == nil && got.Cmp(serial) == 0
	})
	if bytes.Contains(logs.Bytes(), []byte("PRIVATE KEY")) {
		t.Fatal("key material in the log")
	}
}

// fakeWorkloadAPI is a small in-test implementation of the SPIFFE Workload
// API's X.509 stream (what a SPIRE agent serves): it sends the current
// SVIDs and sends again each time they are replaced.
type fakeWorkloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	mu      sync.Mutex
	resp    *workload.X509SVIDResponse
	changed chan struct{}
}

func (f *fakeWorkloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	for {
		f.mu.Lock()
		resp, changed := f.resp, f.changed
		f.mu.Unlock()
		if err := stream.Send(resp); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// set replaces the SVID with one for id from ca and returns its serial.
func (f *fakeWorkloadAPI) set(t *testing.T, ca *pki.CA, id string, server bool) *big.Int {
	t.Helper()
	req := clientReq(id)
	if server {
		req.Server = true
	}
	certPEM, keyPEM, serial := issue(t, ca, req)
	der := func(p []byte) []byte { b, _ := pem.Decode(p); return b.Bytes }
	resp := &workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
		SpiffeId: id, X509Svid: der(certPEM), X509SvidKey: der(keyPEM), Bundle: der(ca.CertPEM()),
	}}}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resp = resp
	if f.changed != nil {
		close(f.changed)
	}
	f.changed = make(chan struct{})
	return serial
}

// serveWorkloadAPI serves f on a Unix socket in a temporary directory and
// returns its address.
func serveWorkloadAPI(t *testing.T, f *fakeWorkloadAPI) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(gs, f)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return "unix://" + sock
}

func TestSPIFFEWorkloadAPISVIDsRotateUnderLoadWithoutAFailedCall(t *testing.T) {
	f := newFiles(t)
	ca := f.pki.ca // the trust domain custos.test's authority
	const serverID = "spiffe://custos.test/custos"
	serverAPI, clientAPI := &fakeWorkloadAPI{}, &fakeWorkloadAPI{}
	serverAPI.set(t, ca, serverID, true)
	clientAPI.set(t, ca, idAdmin, false)
	serverAddr, clientAddr := serveWorkloadAPI(t, serverAPI), serveWorkloadAPI(t, clientAPI)

	ts := start(t, f, options{
		configure: func(c *config.Config) {
			c.TLS = config.TLS{SPIFFE: config.SPIFFE{WorkloadAPI: serverAddr}}
		},
		serverOptions: shortConnections,
	})

	ctx := testContext(t)
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(clientAddr)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	c, err := client.New(context.Background(), client.Config{
		Address:   ts.addr,
		TLSConfig: tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID))),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateTenant(ctx, "a"); err != nil {
		t.Fatalf("CreateTenant over SPIFFE mTLS: %v", err)
	}
	if _, err := c.CreateKey(ctx, "tenants/a", "k", client.KeySpec{Purpose: client.PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	ok, stop := load(t, c)
	progresses(t, ok, "before rotation")

	probeCert, probeKey, _ := issue(t, ca, clientReq(idAdmin))
	probe := pair(t, probeCert, probeKey)
	for i := range 3 {
		serial := serverAPI.set(t, ca, serverID, true)
		clientSerial := clientAPI.set(t, ca, idAdmin, false)
		waitFor(t, 10*time.Second, fmt.Sprintf("rotation %d: the server presenting its new SVID", i), func() bool {
			got, err := handshake(t, ts.addr, probe)
			return err == nil && got.Cmp(serial) == 0
		})
		waitFor(t, 10*time.Second, fmt.Sprintf("rotation %d: the client source holding its new SVID", i), func() bool {
			s, err := src.GetX509SVID()
			return err == nil && s.Certificates[0].SerialNumber.Cmp(clientSerial) == 0
		})
		progresses(t, ok, fmt.Sprintf("after rotation %d", i))
	}
	if errs := stop(); len(errs) > 0 {
		t.Fatalf("%d calls failed during SVID rotation; first: %v", len(errs), errs[0])
	}
	t.Logf("%d calls over 3 SVID rotations, none failed", ok.Load())
}

// The Go client checks the server's certificate against the address it
// dials, an IP address included (for which TLS sends no server name): a
// certificate from the same CA for another address is refused.
func TestTheClientRefusesAServerCertificateForAnotherAddress(t *testing.T) {
	f := newFiles(t)
	p := f.pki
	sp, sk, _ := issue(t, p.ca, pki.IssueRequest{CommonName: "elsewhere", IPAddresses: []net.IP{net.IPv4(10, 9, 9, 9)}, DNSNames: []string{"elsewhere.internal"}, Server: true})
	writeAtomic(t, p.keyFile, sk)
	writeAtomic(t, p.certFile, sp)
	ts := start(t, f, options{})
	cp, kp, _ := issue(t, p.ca, clientReq(idAdmin))
	dir := t.TempDir()
	cCert, cKey := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	writeAtomic(t, cCert, cp)
	writeAtomic(t, cKey, kp)
	for _, addr := range []string{ts.addr, strings.Replace(ts.addr, "127.0.0.1", "localhost", 1)} {
		c, err := client.New(context.Background(), client.Config{Address: addr, CAFile: p.caFile, CertFile: cCert, KeyFile: cKey})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = c.CreateTenant(ctx, "a")
		cancel()
		c.Close()
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("dialling %s, a server certificate for 10.9.9.9 and elsewhere.internal was accepted (err %v)", addr, err)
		}
		// Not UNAVAILABLE, which callers retry: no retry can help.
		if !errors.Is(err, client.ErrUnauthenticated) {
			t.Errorf("dialling %s, the refused handshake is %v, want ErrUnauthenticated", addr, err)
		}
	}
}

// A CA taken out of the client bundle stops serving its open connections
// within tls.max_connection_age: the server ends each connection then, and
// the client's new handshake with the same certificate is refused (a
// connection kept serving until its certificate expired).
func TestADroppedCAStopsServingWithinTheConnectionAge(t *testing.T) {
	f := newFiles(t)
	ts := start(t, f, options{configure: func(c *config.Config) {
		c.TLS.ReloadInterval = 20 * time.Millisecond
		c.TLS.MaxConnectionAge = 300 * time.Millisecond
	}})
	setup(t, ts, "a")
	c := ts.clients(t, idAdmin) // its certificate from CA 1
	ctx := testContext(t)
	if _, err := c.keys.GetTenant(ctx, &custosv1.GetTenantRequest{Name: "tenants/a"}); err != nil {
		t.Fatal(err)
	}
	ca2, err := pki.NewCA("Custos test CA 2", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, f.pki.caFile, ca2.CertPEM())
	waitFor(t, 10*time.Second, "the CA 1 client refused", func() bool {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := c.keys.GetTenant(cctx, &custosv1.GetTenantRequest{Name: "tenants/a"})
		return err != nil
	})
}

// In SPIFFE mode only SVIDs of the server's own trust domain are callers:
// a certificate the bundle's authority signed for another trust domain, or
// with no SPIFFE ID (its common name would have been the identity), is
// refused at the handshake.
func TestSPIFFEModeRefusesCertificatesThatAreNotSVIDsOfItsTrustDomain(t *testing.T) {
	f := newFiles(t)
	ca := f.pki.ca
	serverAPI := &fakeWorkloadAPI{}
	serverAPI.set(t, ca, "spiffe://custos.test/custos", true)
	ts := start(t, f, options{configure: func(c *config.Config) {
		c.TLS = config.TLS{SPIFFE: config.SPIFFE{WorkloadAPI: serveWorkloadAPI(t, serverAPI)}}
	}})
	own, ownKey, _ := issue(t, ca, clientReq(idAdmin))
	if _, err := handshake(t, ts.addr, pair(t, own, ownKey)); err != nil {
		t.Fatalf("an SVID of the trust domain: %v", err)
	}
	foreign, foreignKey, _ := issue(t, ca, clientReq("spiffe://partner.test/admin"))
	if _, err := handshake(t, ts.addr, pair(t, foreign, foreignKey)); err == nil {
		t.Error("an SVID of another trust domain was accepted")
	}
	cn, cnKey, _ := issue(t, ca, pki.IssueRequest{CommonName: "ops-admin", Client: true})
	if _, err := handshake(t, ts.addr, pair(t, cn, cnKey)); err == nil {
		t.Error("a certificate with no SPIFFE ID was accepted")
	}
}

// A connection ends when the client certificate it was verified with
// expires, so that a client holding a renewed certificate reconnects with
// it: the connection had been kept until tls.max_connection_age (30
// minutes by default), every call on it refused as made with an expired
// certificate.
func TestAConnectionEndsWhenItsClientCertificateExpires(t *testing.T) {
	f := newFiles(t)
	ts := start(t, f, options{})
	setup(t, ts, "a")
	req := clientReq(idAdmin)
	req.Validity = 3 * time.Second
	short, shortKey, err := f.pki.ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(short)
	leaf, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	writeAtomic(t, certFile, short)
	writeAtomic(t, keyFile, shortKey)
	c, err := client.New(context.Background(), client.Config{Address: ts.addr, CAFile: f.pki.caFile, CertFile: certFile, KeyFile: keyFile, ReloadInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := testContext(t)
	if _, err := c.GetTenant(ctx, client.TenantName("a")); err != nil {
		t.Fatal(err)
	}
	renewed, renewedKey, _ := issue(t, f.pki.ca, clientReq(idAdmin))
	writeAtomic(t, keyFile, renewedKey)
	writeAtomic(t, certFile, renewed)
	select {
	case <-time.After(time.Until(leaf.NotAfter) + 500*time.Millisecond):
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	if _, err := c.GetTenant(ctx, client.TenantName("a")); err != nil {
		t.Fatalf("after the first certificate expired, with a renewed one loaded: %v", err)
	}
}

// A SPIFFE client that refuses the server's ID (go-spiffe's check, not
// crypto/tls's) gets ErrUnauthenticated, as for a certificate crypto/tls
// refuses: not ErrUnavailable, which callers retry.
func TestASPIFFEClientRefusingTheServersIDIsUnauthenticated(t *testing.T) {
	f := newFiles(t)
	serverAPI, clientAPI := &fakeWorkloadAPI{}, &fakeWorkloadAPI{}
	serverAPI.set(t, f.pki.ca, "spiffe://custos.test/custos", true)
	clientAPI.set(t, f.pki.ca, idAdmin, false)
	ts := start(t, f, options{configure: func(c *config.Config) {
		c.TLS = config.TLS{SPIFFE: config.SPIFFE{WorkloadAPI: serveWorkloadAPI(t, serverAPI)}}
	}})
	ctx := testContext(t)
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(serveWorkloadAPI(t, clientAPI))))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for _, authorize := range []tlsconfig.Authorizer{
		tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://custos.test/not-custos")),
		tlsconfig.AuthorizeMemberOf(spiffeid.RequireTrustDomainFromString("elsewhere.test")),
	} {
		c, err := client.New(context.Background(), client.Config{Address: ts.addr, TLSConfig: tlsconfig.MTLSClientConfig(src, src, authorize)})
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, _, err = c.ListTenants(cctx, client.ListOptions{})
		cancel()
		c.Close()
		if !errors.Is(err, client.ErrUnauthenticated) {
			t.Errorf("a server ID the client does not authorize: %v, want ErrUnauthenticated", err)
		}
	}
}
