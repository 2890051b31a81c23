// Package clienttest runs a real, in-process Custos for the tests of
// programs that use the client library: the real keystore (memory storage, a
// local root key in a temp dir), the real gRPC server with mutual TLS on
// 127.0.0.1, and a policy that lets the test client do everything. Nothing
// is faked, so what passes here passes against a deployed Custos.
//
//	srv := clienttest.Start(t)
//	c := srv.Client(t)
//	ct, _, err := c.Encrypt(ctx, client.KeyName("acme", "pii"), []byte("x"), ad)
package clienttest

import (
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/internal/pki"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/storage/memory"
	"github.com/custos-kms/custos/server"
	"github.com/custos-kms/custos/server/policy"
)

// Server is a running in-process Custos.
type Server struct {
	// Addr is the server's host:port on 127.0.0.1.
	Addr string
	// Dir holds ca.pem, client.pem and client-key.pem (the layout of
	// `custos dev`'s .custos-dev directory), for code that reads files.
	Dir string
	// Files are the paths of the PKI files in Dir.
	Files pki.DevFiles
}

// allowAll gives the dev client identity every permission on every tenant.
const allowAll = `rules:
  - identities: ["` + pki.DevClientID + `"]
    tenants: ["*"]
    permissions: ["*"]
`

// Start starts a server that stops when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	dir := t.TempDir()
	files, err := pki.WriteDevFiles(dir)
	if err != nil {
		t.Fatalf("clienttest: PKI: %v", err)
	}
	rt, err := local.Create(filepath.Join(dir, "root.key"))
	if err != nil {
		t.Fatalf("clienttest: root: %v", err)
	}
	store := memory.New()
	ks, err := keystore.New(keystore.Config{Storage: store, Root: rt})
	if err != nil {
		t.Fatalf("clienttest: keystore: %v", err)
	}
	policyFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyFile, []byte(allowAll), 0o600); err != nil {
		t.Fatal(err)
	}
	pol, err := policy.NewHolder(policyFile)
	if err != nil {
		t.Fatalf("clienttest: policy: %v", err)
	}
	srv, err := server.New(server.Config{Keystore: ks, Policy: pol, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatalf("clienttest: server: %v", err)
	}
	tlsConf, err := server.TLSConfig(files.ServerCert, files.ServerKey, files.CA)
	if err != nil {
		t.Fatalf("clienttest: TLS: %v", err)
	}
	gs, err := srv.NewGRPCServer(tlsConf)
	if err != nil {
		t.Fatalf("clienttest: gRPC: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("clienttest: listen: %v", err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	t.Cleanup(func() {
		gs.Stop()
		<-done
		store.Close()
	})
	return &Server{Addr: lis.Addr().String(), Dir: dir, Files: files}
}

// Config returns a client configuration for the test client.
func (s *Server) Config() client.Config {
	return client.Config{Address: s.Addr, CAFile: s.Files.CA, CertFile: s.Files.ClientCert, KeyFile: s.Files.ClientKey}
}

// Client returns a connected client that is closed when the test ends.
func (s *Server) Client(t testing.TB) *client.Client {
	t.Helper()
	c, err := client.New(t.Context(), s.Config())
	if err != nil {
		t.Fatalf("clienttest: client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
