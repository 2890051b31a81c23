// Package clienttest runs a real, in-process Custos for the tests of
// programs that use the client library: the runtime `custos serve` runs
// (keystore over memory storage and a local root key in a temp dir, the
// gRPC server with mutual TLS on 127.0.0.1, the scheduler that rotates keys
// by period and shreds deleted tenants, the encryption-count flush) and a
// policy that lets the test client do everything. Nothing is faked, so what
// passes here passes against a deployed Custos. The scheduler and the count
// flush run every [Options.SchedulerInterval] (default 200ms) rather than
// the production 30s and 10s, so tests see their effects quickly.
//
//	srv := clienttest.Start(t)
//	c := srv.Client(t)
//	ct, _, err := c.Encrypt(ctx, client.KeyName("acme", "pii"), []byte("x"), ad)
//
// To test how a program behaves with fewer permissions, start the server
// with a policy of your own and connect as another identity:
//
//	srv := clienttest.StartWith(t, clienttest.Options{Policy: `rules:
//	  - identities: ["` + clienttest.ClientID + `"]
//	    tenants: ["*"]
//	    permissions: ["*"]
//	  - identities: ["spiffe://example.org/billing"]
//	    tenants: ["acme"]
//	    permissions: [encrypt]
//	`})
//	admin := srv.Client(t)
//	billing := srv.ClientAs(t, "spiffe://example.org/billing")
package clienttest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/custos"
	"github.com/custos-kms/custos/internal/pki"
	"github.com/custos-kms/custos/keystore/root/local"
)

// ClientID is the identity (a SPIFFE ID) of the client that [Server.Client]
// and [Server.Config] connect as.
const ClientID = pki.DevClientID

// AllowAll is the default policy: it gives [ClientID] every permission on
// every tenant, and nobody else anything.
const AllowAll = `rules:
  - identities: ["` + ClientID + `"]
    tenants: ["*"]
    permissions: ["*"]
`

// Options configure a server. The zero value is what [Start] uses.
type Options struct {
	// Policy is the server's policy file, in YAML (docs/authorization.md).
	// Empty means [AllowAll].
	Policy string
	// SchedulerInterval is how often the scheduler runs a pass (rotation by
	// period, destruction, shredding) and encryption counts are flushed.
	// Default 200ms.
	SchedulerInterval time.Duration
	// Now is the server's clock: creation times, rotation due dates,
	// destruction and deletion dates. Default time.Now. A test that wants
	// a key to rotate by period (at least an hour) or a deleted tenant to
	// be shredded passes a clock it can move forward.
	Now func() time.Time
	// Interceptor, if set, runs on every call after the server's own
	// checks (mutual TLS, validation, authorization, rate limits), just
	// before the handler: a test can count calls, inject a failure, or
	// change a response to see how a program copes.
	Interceptor grpc.UnaryServerInterceptor
}

// DefaultSchedulerInterval is the scheduler and count-flush interval of a
// test server.
const DefaultSchedulerInterval = 200 * time.Millisecond

// Server is a running in-process Custos.
type Server struct {
	// Addr is the server's host:port on 127.0.0.1.
	Addr string
	// Dir holds ca.pem, client.pem and client-key.pem (the layout of
	// `custos dev`'s .custos-dev directory), for code that reads files.
	Dir string
	// Files are the paths of the PKI files in Dir.
	Files pki.DevFiles

	ca   *pki.CA
	stop func()
	once sync.Once
}

// Start starts a server with the [AllowAll] policy that stops when the test
// ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith starts a server configured by opts that stops when the test
// ends.
func StartWith(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := start(t.TempDir(), opts)
	if err != nil {
		t.Fatalf("clienttest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// New starts a server outside a test — in an Example function or TestMain —
// in a new temporary directory. Close stops it and removes the directory.
func New(opts Options) (*Server, error) {
	dir, err := os.MkdirTemp("", "custos-clienttest-")
	if err != nil {
		return nil, fmt.Errorf("clienttest: %w", err)
	}
	s, err := start(dir, opts)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("clienttest: %w", err)
	}
	stop := s.stop
	s.stop = func() {
		stop()
		os.RemoveAll(dir)
	}
	return s, nil
}

// Close stops the server: calls in flight get a second to finish, later calls cannot
// connect. Closing again does nothing. A server from [Start] or
// [StartWith] is closed when its test ends.
func (s *Server) Close() { s.once.Do(s.stop) }

// start runs a server whose files live in dir.
func start(dir string, opts Options) (*Server, error) {
	files, err := pki.WriteDevFiles(dir)
	if err != nil {
		return nil, fmt.Errorf("PKI: %w", err)
	}
	ca, err := loadCA(files)
	if err != nil {
		return nil, fmt.Errorf("PKI: %w", err)
	}
	rootFile := filepath.Join(dir, "root.key")
	if _, err := local.Create(rootFile); err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	pol := opts.Policy
	if pol == "" {
		pol = AllowAll
	}
	policyFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyFile, []byte(pol), 0o600); err != nil {
		return nil, err
	}
	interval := opts.SchedulerInterval
	if interval <= 0 {
		interval = DefaultSchedulerInterval
	}
	cfg := &config.Config{
		Listen:     "127.0.0.1:0",
		TLS:        config.TLS{CertFile: files.ServerCert, KeyFile: files.ServerKey, ClientCAFile: files.CA},
		PolicyFile: policyFile,
		Root:       config.Root{Type: "local", Local: config.LocalRoot{KeyFile: rootFile}},
		Storage:    config.Storage{Type: "memory"},
		Ops:        config.Ops{Listen: "off", ProbeInterval: time.Second},
		Scheduler:  config.Scheduler{Interval: interval, FlushInterval: interval},
		Audit:      config.Audit{CheckpointInterval: interval},
		// A test's server stops at once: its calls are the test's own.
		ShutdownTimeout: time.Second,
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	rt, err := custos.New(context.Background(), cfg, custos.Options{Logger: slog.New(slog.DiscardHandler), Now: opts.Now, ServerOptions: serverOptions(opts)})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = rt.Run(ctx) }()
	s := &Server{Addr: rt.Addr().String(), Dir: dir, Files: files, ca: ca}
	s.stop = func() {
		cancel()
		<-done
	}
	return s, nil
}

func serverOptions(opts Options) []grpc.ServerOption {
	if opts.Interceptor == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(opts.Interceptor)}
}

// loadCA loads the CA that WriteDevFiles made, to issue more client
// certificates.
func loadCA(files pki.DevFiles) (*pki.CA, error) {
	certPEM, err := os.ReadFile(files.CA)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(files.CAKey)
	if err != nil {
		return nil, err
	}
	return pki.LoadCA(certPEM, keyPEM)
}

// Config returns a client configuration for the test client, [ClientID].
func (s *Server) Config() client.Config {
	return client.Config{Address: s.Addr, CAFile: s.Files.CA, CertFile: s.Files.ClientCert, KeyFile: s.Files.ClientKey}
}

// Client returns a client connected as [ClientID] that is closed when the
// test ends.
func (s *Server) Client(t testing.TB) *client.Client {
	t.Helper()
	return newClient(t, s.Config())
}

// ConfigAs returns a client configuration with a new client certificate for
// identity: a SPIFFE ID ("spiffe://…"), which the certificate carries as its
// URI SAN, or else a plain name, which it carries as its common name. The
// server's policy decides what identity may do; the default policy lets it
// do nothing.
func (s *Server) ConfigAs(identity string) (client.Config, error) {
	req := pki.IssueRequest{CommonName: identity, Client: true, Validity: 24 * time.Hour}
	if strings.HasPrefix(identity, "spiffe://") {
		u, err := url.Parse(identity)
		if err != nil {
			return client.Config{}, fmt.Errorf("clienttest: identity %q: %w", identity, err)
		}
		req.CommonName, req.URIs = "", []*url.URL{u}
	}
	if req.CommonName == "" && len(req.URIs) == 0 {
		return client.Config{}, errors.New("clienttest: empty identity")
	}
	certPEM, keyPEM, err := s.ca.Issue(req)
	if err != nil {
		return client.Config{}, fmt.Errorf("clienttest: certificate for %q: %w", identity, err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return client.Config{}, fmt.Errorf("clienttest: certificate for %q: %w", identity, err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(s.ca.CertPEM())
	return client.Config{
		Address:   s.Addr,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, Certificates: []tls.Certificate{cert}},
	}, nil
}

// ClientAs returns a client connected as identity (see [Server.ConfigAs])
// that is closed when the test ends.
func (s *Server) ClientAs(t testing.TB, identity string) *client.Client {
	t.Helper()
	cfg, err := s.ConfigAs(identity)
	if err != nil {
		t.Fatal(err)
	}
	return newClient(t, cfg)
}

func newClient(t testing.TB, cfg client.Config) *client.Client {
	t.Helper()
	c, err := client.New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("clienttest: client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
