package server_test

// The harness every test and benchmark in this package runs on: a real Custos
// server on 127.0.0.1:0, mutual TLS with certificates made by internal/pki at
// test time, a local root key file and a bbolt file in a temporary directory.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/custos"
	"github.com/custos-kms/custos/internal/pki"
	"github.com/custos-kms/custos/internal/testkit"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/local"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server"
)

// Identities of the test clients. Each gets its own certificate from the
// test CA; the SPIFFE ones carry a URI SAN, the others only a common name.
const (
	idAdmin       = "spiffe://custos.test/admin"  // everything, every tenant
	idOnlyA       = "spiffe://custos.test/only-a" // data plane and reads on tenant a only
	idDecryptOnly = "decrypt-only"                // decrypt on every tenant, nothing else
	idListAC      = "lister-ac"                   // tenants.admin on tenants a and c
	idNobody      = "spiffe://custos.test/nobody" // verified certificate, no rule
)

// testPolicy is the policy of every test server.
const testPolicy = `
rules:
  - identities: ["spiffe://custos.test/admin"]
    tenants: ["*"]
    permissions: ["*"]
  - identities: ["spiffe://custos.test/only-a"]
    tenants: ["a"]
    permissions: [encrypt, decrypt, keys.read, tenants.admin]
  - identities: ["decrypt-only"]
    tenants: ["*"]
    permissions: [decrypt]
  - identities: ["lister-ac"]
    tenants: ["a", "c"]
    permissions: [tenants.admin]
`

// discardLogger drops every record without formatting it.
func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// testPKI is a CA made for one test, the server's TLS configuration and a
// way to issue client certificates.
type testPKI struct {
	ca        *pki.CA
	roots     *x509.CertPool
	serverTLS *tls.Config
	// The server's PEM files, for configurations.
	certFile, keyFile, caFile string
}

// newPKI makes a CA, a server certificate for 127.0.0.1 and the server's TLS
// configuration, loaded from files by server.TLSConfig like in production.
func newPKI(tb testing.TB) *testPKI {
	tb.Helper()
	ca, err := pki.NewCA("Custos test CA", time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(pki.IssueRequest{
		CommonName:  "custos-server",
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		Server:      true,
		Validity:    time.Hour,
	})
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	certFile, keyFile, caFile := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem"), filepath.Join(dir, "ca.pem")
	for name, data := range map[string][]byte{certFile: certPEM, keyFile: keyPEM, caFile: ca.CertPEM()} {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	serverTLS, err := server.TLSConfig(certFile, keyFile, caFile)
	if err != nil {
		tb.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca.CertPEM()) {
		tb.Fatal("test CA certificate does not parse")
	}
	return &testPKI{ca: ca, roots: roots, serverTLS: serverTLS, certFile: certFile, keyFile: keyFile, caFile: caFile}
}

// clientCert issues a client certificate for id: a SPIFFE ID goes in the URI
// SAN, anything else in the common name.
func (p *testPKI) clientCert(tb testing.TB, id string) tls.Certificate {
	tb.Helper()
	return issueClientCert(tb, p.ca, id)
}

func issueClientCert(tb testing.TB, ca *pki.CA, id string) tls.Certificate {
	tb.Helper()
	req := pki.IssueRequest{Client: true, Validity: time.Hour}
	if u, err := url.Parse(id); err == nil && u.Scheme == "spiffe" {
		req.URIs = []*url.URL{u}
	} else {
		req.CommonName = id
	}
	certPEM, keyPEM, err := ca.Issue(req)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}

// clientTLS returns a client TLS configuration that trusts the test CA and
// presents certs (none for an empty list).
func (p *testPKI) clientTLS(certs ...tls.Certificate) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: p.roots, Certificates: certs}
}

// dial opens a client connection to addr with conf and closes it at cleanup.
func dial(tb testing.TB, addr string, conf *tls.Config) *grpc.ClientConn {
	tb.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// files are the state a server runs on; they outlive any one server, so a
// test can stop a server and start another on the same state.
type files struct {
	pki        *testPKI
	rootPath   string
	root       *local.Root
	dbPath     string
	policyPath string
}

// newFiles makes a PKI, a local root key file, the path of a bbolt file and
// the test policy in a temporary directory.
func newFiles(tb testing.TB) *files {
	tb.Helper()
	dir := tb.TempDir()
	rootPath := filepath.Join(dir, "root.key")
	r, err := local.Create(rootPath)
	if err != nil {
		tb.Fatal(err)
	}
	policyPath := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyPath, []byte(testPolicy), 0o600); err != nil {
		tb.Fatal(err)
	}
	return &files{pki: newPKI(tb), rootPath: rootPath, root: r, dbPath: filepath.Join(dir, "custos.db"), policyPath: policyPath}
}

// config is the configuration of a server on f: listeners on 127.0.0.1:0,
// ops off, bbolt and the local root of f.
func (f *files) config(tb testing.TB) *config.Config {
	tb.Helper()
	p := f.pki
	cfg := &config.Config{
		Listen:     "127.0.0.1:0",
		TLS:        config.TLS{CertFile: p.certFile, KeyFile: p.keyFile, ClientCAFile: p.caFile},
		PolicyFile: f.policyPath,
		Root:       config.Root{Type: "local", Local: config.LocalRoot{KeyFile: f.rootPath}},
		Storage:    config.Storage{Type: "bbolt", Bbolt: config.BboltConfig{Path: f.dbPath}},
		Ops:        config.Ops{Listen: "off"},
	}
	if err := cfg.Validate(); err != nil {
		tb.Fatal(err)
	}
	return cfg
}

// options tune one test server; the zero value is a quiet server with the
// default limits and testPolicy.
type options struct {
	// limits are the server's limits; zero fields take the defaults.
	limits server.Limits
	// logger receives the server's and the keystore's logs; nil discards them.
	logger *slog.Logger
	// root replaces the local root (for example to count calls to it).
	root root.Root
	// register adds services to the grpc.Server before it serves.
	register func(*grpc.Server)
	// configure changes the configuration before the server starts.
	configure func(*config.Config)
	// policy replaces testPolicy in the policy file of f.
	policy string
	// sighup makes the server reload its policy on SIGHUP.
	sighup bool
	// serverOptions are added to the gRPC server's options.
	serverOptions []grpc.ServerOption
	// listener replaces the listener bound to the configured address.
	listener net.Listener
	// runErr, if set, receives Run's error when the server stops, instead
	// of the test failing on it.
	runErr *error
}

// testServer is one running server on files.
type testServer struct {
	files *files
	addr  string
	rt    *custos.Runtime

	stopOnce sync.Once
	stopRun  func()
}

// start starts a server on f through the runtime custos serve uses: a new
// keystore (so an empty cache) over the bbolt file and root of f. It stops
// at cleanup unless stopped before.
func start(tb testing.TB, f *files, o options) *testServer {
	tb.Helper()
	logger := o.logger
	if logger == nil {
		logger = discardLogger()
	}
	var r root.Root = f.root
	if o.root != nil {
		r = o.root
	}
	cfg := f.config(tb)
	cfg.Limits = config.Limits{MaxPlaintextBytes: o.limits.MaxPlaintextBytes, MaxBatchItems: o.limits.MaxBatchItems, MaxMessageBytes: o.limits.MaxMessageBytes}
	if o.configure != nil {
		o.configure(cfg)
	}
	if o.policy != "" {
		if err := os.WriteFile(f.policyPath, []byte(o.policy), 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	var reload chan os.Signal
	if o.sighup {
		reload = make(chan os.Signal, 1)
		signal.Notify(reload, syscall.SIGHUP)
		tb.Cleanup(func() { signal.Stop(reload) })
	}
	rt, err := custos.New(context.Background(), cfg, custos.Options{Logger: logger, Root: r, Register: o.register, Reload: reload, ServerOptions: o.serverOptions, Listener: o.listener})
	if err != nil {
		tb.Fatal(err)
	}
	ts := &testServer{files: f, addr: rt.Addr().String(), rt: rt}
	if o.runErr != nil {
		ts.stopRun = runInBackground(tb, rt, o.runErr)
	} else {
		ts.stopRun = runInBackground(tb, rt)
	}
	tb.Cleanup(ts.stop)
	return ts
}

// runInBackground runs rt until the returned stop is called, failing the test
// if Run fails (unless runErr is given: then Run's error is stored there).
func runInBackground(tb testing.TB, rt *custos.Runtime, runErr ...*error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rt.Run(ctx) }()
	return func() {
		cancel()
		select {
		case err := <-done:
			if len(runErr) > 0 {
				*runErr[0] = err
			} else if err != nil {
				tb.Errorf("custos runtime: %v", err)
			}
		case <-time.After(30 * time.Second):
			tb.Errorf("custos runtime did not stop within 30s")
		}
	}
}

// stop stops the server gracefully and closes its store. It may be called
// more than once.
func (ts *testServer) stop() { ts.stopOnce.Do(ts.stopRun) }

// conn returns a connection to ts authenticated as id.
func (ts *testServer) conn(tb testing.TB, id string) *grpc.ClientConn {
	tb.Helper()
	p := ts.files.pki
	return dial(tb, ts.addr, p.clientTLS(p.clientCert(tb, id)))
}

// clients are the generated stubs over one connection.
type clients struct {
	keys   custosv1.KeyServiceClient
	crypto custosv1.CryptoServiceClient
}

func (ts *testServer) clients(tb testing.TB, id string) clients {
	tb.Helper()
	c := ts.conn(tb, id)
	return clients{keys: custosv1.NewKeyServiceClient(c), crypto: custosv1.NewCryptoServiceClient(c)}
}

// testContext is a context bounded so a hung call fails the test instead of
// the whole run.
func testContext(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

// setup creates each tenant with one ENCRYPT key "k", as the admin.
func setup(tb testing.TB, ts *testServer, tenants ...string) {
	tb.Helper()
	ctx := testContext(tb)
	c := ts.clients(tb, idAdmin)
	for _, t := range tenants {
		if _, err := c.keys.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: t}); err != nil {
			tb.Fatalf("CreateTenant(%s): %v", t, err)
		}
		_, err := c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{
			Parent: "tenants/" + t,
			KeyId:  "k",
			Key:    &custosv1.Key{Purpose: custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT},
		})
		if err != nil {
			tb.Fatalf("CreateKey(%s/k): %v", t, err)
		}
	}
}

// keyName is the name of key "k" of tenant.
func keyName(tenant string) string { return "tenants/" + tenant + "/keys/k" }

// wantCode fails the test unless err is a status with code want, and returns
// the status.
func wantCode(tb testing.TB, err error, want codes.Code) *status.Status {
	tb.Helper()
	st, ok := status.FromError(err)
	if !ok {
		tb.Fatalf("error %v is not a gRPC status", err)
	}
	if st.Code() != want {
		tb.Fatalf("code = %v (%q), want %v", st.Code(), st.Message(), want)
	}
	return st
}

// errorInfo returns the ErrorInfo detail of st, or nil.
func errorInfo(st *status.Status) *errdetails.ErrorInfo {
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei
		}
	}
	return nil
}

// countingRoot counts the calls to the root it wraps.
type countingRoot struct {
	root.Root
	mu             sync.Mutex
	wraps, unwraps int
}

// tenantMaterial reports whether aad is a tenant KEK's: not the runtime's
// dependency probe ("custos:probe") nor the audit log's signing key, which
// the lease holder unwraps once per process, off the request path.
func tenantMaterial(aad []byte) bool {
	return string(aad) != "custos:probe" && !bytes.HasPrefix(aad, []byte("custos audit signing key"))
}

// Wrap counts the wraps of tenant key material.
func (c *countingRoot) Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	c.mu.Lock()
	if tenantMaterial(aad) {
		c.wraps++
	}
	c.mu.Unlock()
	return c.Root.Wrap(ctx, plaintext, aad)
}

// Unwrap counts the unwraps of tenant key material.
func (c *countingRoot) Unwrap(ctx context.Context, wrapped, aad []byte) ([]byte, error) {
	c.mu.Lock()
	if tenantMaterial(aad) {
		c.unwraps++
	}
	c.mu.Unlock()
	return c.Root.Unwrap(ctx, wrapped, aad)
}

func (c *countingRoot) counts() (wraps, unwraps int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.wraps, c.unwraps
}

var _ root.Root = (*countingRoot)(nil)

// syncBuffer collects logs safely across goroutines.
type syncBuffer = testkit.SyncBuffer
