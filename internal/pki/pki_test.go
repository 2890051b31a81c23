package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const testSPIFFEID = "spiffe://custos.test/billing"

func newTestCA(t *testing.T, name string) *CA {
	t.Helper()
	ca, err := NewCA(name, time.Hour)
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	return ca
}

func issuePair(t *testing.T, ca *CA, req IssueRequest) tls.Certificate {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(req)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("X509KeyPair: %v", err)
	}
	return pair
}

func serverRequest() IssueRequest {
	return IssueRequest{
		CommonName:  "localhost",
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		Server:      true,
		Validity:    time.Hour,
	}
}

func clientRequest(t *testing.T) IssueRequest {
	t.Helper()
	u, err := url.Parse(testSPIFFEID)
	if err != nil {
		t.Fatal(err)
	}
	return IssueRequest{CommonName: "billing", URIs: []*url.URL{u}, Client: true, Validity: time.Hour}
}

func pool(t *testing.T, ca *CA) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(ca.CertPEM()) {
		t.Fatal("CA PEM not accepted by CertPool")
	}
	return p
}

type handshakeResult struct {
	server, client tls.ConnectionState
	serverErr      error
	clientErr      error
}

// handshake runs a TLS 1.3 handshake over 127.0.0.1 between a server that
// requires and verifies client certificates from serverTrust and a client
// that trusts clientTrust, then exchanges one byte each way so that a client
// certificate rejected after the client's half of the handshake still shows
// up as a client-side error.
func handshake(t *testing.T, serverCert tls.Certificate, serverTrust *x509.CertPool, clientCert tls.Certificate, clientTrust *x509.CertPool) handshakeResult {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{serverCert},
		ClientCAs:    serverTrust,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { ln.Close() })

	type serverOut struct {
		state tls.ConnectionState
		err   error
	}
	done := make(chan serverOut, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- serverOut{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			done <- serverOut{err: err}
			return
		}
		buf := make([]byte, 1)
		if _, err := tc.Read(buf); err != nil {
			done <- serverOut{state: tc.ConnectionState(), err: err}
			return
		}
		_, err = tc.Write(buf)
		done <- serverOut{state: tc.ConnectionState(), err: err}
	}()

	var res handshakeResult
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ln.Addr().String(), &tls.Config{
		// Always present the certificate, even when its issuer is not among
		// the server's acceptable CAs, so the server has to reject it.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &clientCert, nil
		},
		RootCAs:    clientTrust,
		ServerName: "localhost",
		MinVersion: tls.VersionTLS13,
	})
	if err == nil {
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		res.client = conn.ConnectionState()
		if _, err = conn.Write([]byte{42}); err == nil {
			_, err = conn.Read(make([]byte, 1))
		}
		conn.Close()
	}
	res.clientErr = err
	out := <-done
	res.server, res.serverErr = out.state, out.err
	return res
}

func TestMutualTLSHandshakeVerifiesBothSides(t *testing.T) {
	ca := newTestCA(t, "test CA")
	srv := issuePair(t, ca, serverRequest())
	cli := issuePair(t, ca, clientRequest(t))

	res := handshake(t, srv, pool(t, ca), cli, pool(t, ca))
	if res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("handshake failed: server: %v, client: %v", res.serverErr, res.clientErr)
	}
	if res.server.Version != tls.VersionTLS13 || res.client.Version != tls.VersionTLS13 {
		t.Errorf("versions = %x/%x, want TLS 1.3", res.server.Version, res.client.Version)
	}
	if len(res.server.VerifiedChains) == 0 {
		t.Fatal("server has no verified client chain")
	}
	peer := res.server.VerifiedChains[0][0]
	if len(peer.URIs) != 1 || peer.URIs[0].String() != testSPIFFEID {
		t.Errorf("client URIs = %v, want [%s]", peer.URIs, testSPIFFEID)
	}
	if len(res.client.VerifiedChains) == 0 {
		t.Fatal("client has no verified server chain")
	}
	if got := res.client.VerifiedChains[0][0].DNSNames; len(got) != 1 || got[0] != "localhost" {
		t.Errorf("server DNS names = %v, want [localhost]", got)
	}
}

func TestHandshakeRejectsClientFromAnotherCA(t *testing.T) {
	ca := newTestCA(t, "test CA")
	other := newTestCA(t, "other CA")
	srv := issuePair(t, ca, serverRequest())
	stranger := issuePair(t, other, clientRequest(t))

	res := handshake(t, srv, pool(t, ca), stranger, pool(t, ca))
	var unknownCA x509.UnknownAuthorityError
	if !errors.As(res.serverErr, &unknownCA) {
		t.Errorf("server error = %v, want x509.UnknownAuthorityError", res.serverErr)
	}
	if res.clientErr == nil {
		t.Error("client saw no error although the server rejected its certificate")
	}
}

func TestHandshakeRejectsServerFromAnotherCA(t *testing.T) {
	ca := newTestCA(t, "test CA")
	other := newTestCA(t, "other CA")
	impostor := issuePair(t, other, serverRequest())
	cli := issuePair(t, ca, clientRequest(t))

	res := handshake(t, impostor, pool(t, ca), cli, pool(t, ca))
	var unknownCA x509.UnknownAuthorityError
	if !errors.As(res.clientErr, &unknownCA) {
		t.Errorf("client error = %v, want x509.UnknownAuthorityError", res.clientErr)
	}
	if res.serverErr == nil {
		t.Error("server saw no error although the client rejected its certificate")
	}
}

func TestIssuedCertificatesHaveOnlyTheRequestedUsage(t *testing.T) {
	ca := newTestCA(t, "test CA")
	roots := pool(t, ca)
	srv := issuePair(t, ca, serverRequest()).Leaf
	cli := issuePair(t, ca, clientRequest(t)).Leaf

	verify := func(c *x509.Certificate, name string, usage x509.ExtKeyUsage) error {
		_, err := c.Verify(x509.VerifyOptions{Roots: roots, DNSName: name, KeyUsages: []x509.ExtKeyUsage{usage}})
		return err
	}
	for _, name := range []string{"localhost", "127.0.0.1", "::1"} {
		if err := verify(srv, name, x509.ExtKeyUsageServerAuth); err != nil {
			t.Errorf("server certificate for %s: %v", name, err)
		}
	}
	if err := verify(srv, "", x509.ExtKeyUsageClientAuth); err == nil {
		t.Error("server certificate verified for client auth")
	}
	if err := verify(cli, "", x509.ExtKeyUsageClientAuth); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if err := verify(cli, "", x509.ExtKeyUsageServerAuth); err == nil {
		t.Error("client certificate verified for server auth")
	}
	if srv.IsCA || cli.IsCA {
		t.Error("leaf certificate marked as CA")
	}
}

func TestIssueRejectsIncompleteRequests(t *testing.T) {
	ca := newTestCA(t, "test CA")
	tests := []struct {
		name string
		req  IssueRequest
	}{
		{"no names", IssueRequest{Server: true, Validity: time.Hour}},
		{"no usage", IssueRequest{CommonName: "x", Validity: time.Hour}},
		{"zero validity", IssueRequest{CommonName: "x", Client: true}},
		{"negative validity", IssueRequest{CommonName: "x", Client: true, Validity: -time.Hour}},
		{"nil URI", IssueRequest{URIs: []*url.URL{nil}, Client: true, Validity: time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := ca.Issue(tt.req); err == nil {
				t.Error("Issue succeeded, want error")
			}
		})
	}
}

func TestIssueNeverOutlivesTheCA(t *testing.T) {
	ca := newTestCA(t, "test CA")
	req := serverRequest()
	req.Validity = 1000 * time.Hour
	leaf := issuePair(t, ca, req).Leaf
	if leaf.NotAfter.After(ca.cert.NotAfter) {
		t.Errorf("leaf NotAfter %v after CA NotAfter %v", leaf.NotAfter, ca.cert.NotAfter)
	}
}

func TestKeysArePKCS8(t *testing.T) {
	ca := newTestCA(t, "test CA")
	_, keyPEM, err := ca.Issue(serverRequest())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(keyPEM, []byte("-----BEGIN PRIVATE KEY-----\n")) {
		t.Errorf("key PEM does not start with a PRIVATE KEY block")
	}
	if _, err := parseKeyPEM(keyPEM); err != nil {
		t.Errorf("parseKeyPEM: %v", err)
	}
}

func TestLoadCARoundTripsAndIssues(t *testing.T) {
	ca := newTestCA(t, "test CA")
	keyPEM, err := ca.keyPEM()
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadCA(ca.CertPEM(), keyPEM)
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if !bytes.Equal(loaded.CertPEM(), ca.CertPEM()) {
		t.Error("loaded CA certificate differs")
	}
	// A certificate issued by the loaded CA verifies against the original.
	leaf := issuePair(t, loaded, clientRequest(t)).Leaf
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool(t, ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("verify: %v", err)
	}
}

func TestLoadCARejectsBadInput(t *testing.T) {
	ca := newTestCA(t, "test CA")
	other := newTestCA(t, "other CA")
	keyPEM, _ := ca.keyPEM()
	otherKeyPEM, _ := other.keyPEM()
	leafPEM, leafKeyPEM, err := ca.Issue(serverRequest())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name          string
		cert, key     []byte
		wantErrSubstr string
	}{
		{"key of another CA", ca.CertPEM(), otherKeyPEM, "does not match"},
		{"leaf instead of CA", leafPEM, leafKeyPEM, "not a CA"},
		{"empty key", ca.CertPEM(), nil, "no PEM PRIVATE KEY"},
		{"certificate as key", ca.CertPEM(), ca.CertPEM(), "no PEM PRIVATE KEY"},
		{"garbage key", ca.CertPEM(), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), "not a valid PKCS#8"},
		{"empty certificate", nil, keyPEM, "no PEM CERTIFICATE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadCA(tt.cert, tt.key)
			if err == nil || !strings.Contains(err.Error(), tt.wantErrSubstr) {
				t.Errorf("LoadCA error = %v, want one containing %q", err, tt.wantErrSubstr)
			}
		})
	}
}

func readAll(t *testing.T, f DevFiles) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, p := range []string{f.CA, f.CAKey, f.ServerCert, f.ServerKey, f.ClientCert, f.ClientKey} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(p)] = b
	}
	return out
}

func TestWriteDevFilesCreatesAWorkingPKI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	files, err := WriteDevFiles(dir)
	if err != nil {
		t.Fatalf("WriteDevFiles: %v", err)
	}
	if want := devPaths(dir); files != want {
		t.Errorf("paths = %+v, want %+v", files, want)
	}

	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o700 {
		t.Errorf("dir mode = %04o, want 0700", got)
	}
	modes := map[string]os.FileMode{
		files.CA: 0o644, files.ServerCert: 0o644, files.ClientCert: 0o644,
		files.CAKey: 0o600, files.ServerKey: 0o600, files.ClientKey: 0o600,
	}
	for p, want := range modes {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s mode = %04o, want %04o", filepath.Base(p), got, want)
		}
	}

	srv, err := tls.LoadX509KeyPair(files.ServerCert, files.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := tls.LoadX509KeyPair(files.ClientCert, files.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	if cn := cli.Leaf.Subject.CommonName; cn != "dev-client" {
		t.Errorf("client CN = %q, want dev-client", cn)
	}
	caPEM, err := os.ReadFile(files.CA)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	res := handshake(t, srv, roots, cli, roots)
	if res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("handshake with dev files: server: %v, client: %v", res.serverErr, res.clientErr)
	}
	if got := res.server.VerifiedChains[0][0].URIs[0].String(); got != DevClientID {
		t.Errorf("client identity = %q, want %q", got, DevClientID)
	}
	if ca := res.client.VerifiedChains[0][1]; ca.NotAfter.Sub(ca.NotBefore) < 9*365*24*time.Hour {
		t.Errorf("CA validity %v, want about 10 years", ca.NotAfter.Sub(ca.NotBefore))
	}
	if d := srv.Leaf.NotAfter.Sub(srv.Leaf.NotBefore); d < 364*24*time.Hour || d > 366*24*time.Hour {
		t.Errorf("server validity %v, want about 1 year", d)
	}
}

func TestWriteDevFilesReusesValidFiles(t *testing.T) {
	dir := t.TempDir()
	first, err := WriteDevFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	before := readAll(t, first)
	second, err := WriteDevFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	if first != second {
		t.Errorf("second call paths = %+v, want %+v", second, first)
	}
	after := readAll(t, second)
	for name, b := range before {
		if !bytes.Equal(b, after[name]) {
			t.Errorf("%s changed on the second call", name)
		}
	}
}

func TestWriteDevFilesReplacesOnlyWhatIsBroken(t *testing.T) {
	dir := t.TempDir()
	files, err := WriteDevFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	before := readAll(t, files)

	// A corrupt server certificate and a client certificate about to expire
	// are reissued; the CA, which clients trust, is kept.
	if err := os.WriteFile(files.ServerCert, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	ca, err := LoadCA(before["ca.pem"], before["ca-key.pem"])
	if err != nil {
		t.Fatal(err)
	}
	req := clientRequest(t)
	req.Validity = time.Hour
	shortCert, shortKey, err := ca.Issue(req)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(files.ClientCert, shortCert, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(files.ClientKey, shortKey, 0o600); err != nil {
		t.Fatal(err)
	}

	if _, err := WriteDevFiles(dir); err != nil {
		t.Fatal(err)
	}
	after := readAll(t, files)
	for _, name := range []string{"ca.pem", "ca-key.pem"} {
		if !bytes.Equal(before[name], after[name]) {
			t.Errorf("%s changed although the CA was valid", name)
		}
	}
	if bytes.Equal(after["server.pem"], []byte("not a certificate")) {
		t.Error("corrupt server.pem was kept")
	}
	if bytes.Equal(after["client.pem"], shortCert) {
		t.Error("client.pem about to expire was kept")
	}
	if _, err := tls.LoadX509KeyPair(files.ServerCert, files.ServerKey); err != nil {
		t.Errorf("reissued server pair: %v", err)
	}
	if _, err := tls.LoadX509KeyPair(files.ClientCert, files.ClientKey); err != nil {
		t.Errorf("reissued client pair: %v", err)
	}

	// A CA whose key no longer matches forces a whole new PKI.
	other := newTestCA(t, "other CA")
	otherKey, _ := other.keyPEM()
	if err := os.WriteFile(files.CAKey, otherKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteDevFiles(dir); err != nil {
		t.Fatal(err)
	}
	final := readAll(t, files)
	for name := range before {
		if bytes.Equal(final[name], after[name]) {
			t.Errorf("%s kept although the CA was replaced", name)
		}
	}
}

func TestWriteDevFilesRefusesExposedKey(t *testing.T) {
	dir := t.TempDir()
	files, err := WriteDevFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(files.ClientKey, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteDevFiles(dir); err == nil || !strings.Contains(err.Error(), "client-key.pem") {
		t.Errorf("WriteDevFiles error = %v, want one naming client-key.pem", err)
	}
}
