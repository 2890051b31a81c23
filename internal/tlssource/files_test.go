package tlssource

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-kms/custos/internal/pki"
)

func writeSet(t *testing.T, ca *pki.CA, dir string) (certFile, keyFile, caFile string) {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(pki.IssueRequest{CommonName: "s", IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, caFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "ca.pem")
	for p, b := range map[string][]byte{certFile: certPEM, keyFile: keyPEM, caFile: ca.CertPEM()} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile, caFile
}

func TestLoadNamesTheFileAtFault(t *testing.T) {
	ca, err := pki.NewCA("t", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile, caFile := writeSet(t, ca, dir)
	other := t.TempDir()
	_, otherKey, _ := writeSet(t, ca, other)
	for name, args := range map[string][3]string{
		"missing cert": {filepath.Join(dir, "nope.pem"), keyFile, caFile},
		"mismatch":     {certFile, otherKey, caFile},
		"empty bundle": {certFile, keyFile, keyFile},
	} {
		_, err := Load(args[0], args[1], args[2], Options{Name: "server TLS"})
		if err == nil {
			t.Fatalf("%s: loaded", name)
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "server TLS: ") || strings.Contains(msg, "PRIVATE KEY") {
			t.Errorf("%s: %q", name, msg)
		}
		named := false
		for _, a := range args {
			named = named || strings.Contains(msg, a)
		}
		if !named {
			t.Errorf("%s: error names no file: %q", name, msg)
		}
	}
}

func TestCurrentTakesChangesWithinTheIntervalAndLogsARefusalOnce(t *testing.T) {
	ca, dir, certFile, _, f, logs := loadLogged(t)
	first, _ := f.Current()
	// A certificate without its key: refused, however often it is checked.
	other := t.TempDir()
	otherCert, _, _ := writeSet(t, ca, other)
	b, _ := os.ReadFile(otherCert)
	if err := os.WriteFile(certFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		time.Sleep(2 * time.Millisecond)
		if s, _ := f.Current(); s != first {
			t.Fatal("a mismatched pair was taken")
		}
	}
	if n := strings.Count(logs.String(), "files not taken"); n != 1 {
		t.Fatalf("refusal logged %d times, want once:\n%s", n, logs.String())
	}
	// The whole new set: taken at the next check.
	writeSet(t, ca, dir)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if s, _ := f.Current(); s != first {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("new files not taken within 5s")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "new files taken") {
		t.Fatalf("no log line for the new set:\n%s", logs.String())
	}
}

// With GODEBUG=x509keypairleaf=0 crypto/tls leaves Certificate.Leaf unset;
// a loaded set still carries it, and taking new files logs their subject
// without a nil dereference.
func TestALoadedSetHasItsLeafWhateverGODEBUGSays(t *testing.T) {
	t.Setenv("GODEBUG", "x509keypairleaf=0")
	ca, dir, _, _, f, _ := loadLogged(t)
	first, _ := f.Current()
	if first.Cert.Leaf == nil {
		t.Fatal("the loaded set has no Leaf")
	}
	writeSet(t, ca, dir)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if s, _ := f.Current(); s != first {
			if s.Cert.Leaf == nil {
				t.Fatal("the new set has no Leaf")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("new files not taken within 5s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// A file caught half written (a writer that does not rename into place)
// is refused, and the set in use kept: a truncated last PEM block would
// otherwise pass as a shorter chain or a smaller CA bundle.
func TestAHalfWrittenFileIsRefused(t *testing.T) {
	ca, _, certFile, caFile, f, _ := loadLogged(t)
	other, err := pki.NewCA("u", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	second := other.CertPEM()
	for name, c := range map[string]struct {
		path string
		body []byte
	}{
		"a chain cut in its second certificate": {certFile, append(bytes.Clone(cert), second[:len(second)/2]...)},
		"a bundle cut in its second CA":         {caFile, append(bytes.Clone(ca.CertPEM()), second[:len(second)/2]...)},
	} {
		t.Run(name, func(t *testing.T) {
			orig, err := os.ReadFile(c.path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.WriteFile(c.path, orig, 0o600) })
			if err := os.WriteFile(c.path, c.body, 0o600); err != nil {
				t.Fatal(err)
			}
			if changed, err := f.Reload(); changed || err == nil {
				t.Fatalf("Reload of a half-written file: changed %v, error %v; want it refused", changed, err)
			}
		})
	}
}

// loadLogged writes a set under a new CA into dir and loads it, checked
// every millisecond (unless reloaded by hand), logging into the returned
// buffer.
func loadLogged(t *testing.T) (ca *pki.CA, dir, certFile, caFile string, f *Files, logs *bytes.Buffer) {
	t.Helper()
	ca, err := pki.NewCA("t", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	certFile, keyFile, caFile := writeSet(t, ca, dir)
	logs = &bytes.Buffer{}
	f, err = Load(certFile, keyFile, caFile, Options{Interval: time.Millisecond, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return ca, dir, certFile, caFile, f, logs
}

// selfSigned is a self-signed certificate valid from notBefore to notAfter,
// and its key, in PEM.
func selfSigned(t *testing.T, notBefore, notAfter time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "s"},
		NotBefore: notBefore, NotAfter: notAfter, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

// A set every handshake would fail with is refused, and the one in use
// stays: a certificate expired or not yet valid (a stale copy written
// back), a bundle of CAs none of which is valid. A CA bundle with a block
// that does not parse (a damaged new CA in the first step of a rotation)
// is taken, as before, but says so in the log.
func TestASetThatCannotWorkIsNotTaken(t *testing.T) {
	ca, err := pki.NewCA("t", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile, caFile := writeSet(t, ca, dir)
	var logs bytes.Buffer
	f, err := Load(certFile, keyFile, caFile, Options{Name: "server TLS", Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	good, _ := f.Current()
	now := time.Now()
	expired, expiredKey := selfSigned(t, now.Add(-2*time.Hour), now.Add(-time.Hour))
	future, futureKey := selfSigned(t, now.Add(time.Hour), now.Add(2*time.Hour))
	damaged := append(bytes.Clone(ca.CertPEM()), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not DER")})...)
	validCert, validKey, err := ca.Issue(pki.IssueRequest{CommonName: "s", Server: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for name, files := range map[string][3][]byte{
		"an expired certificate":      {expired, expiredKey, ca.CertPEM()},
		"a certificate not yet valid": {future, futureKey, ca.CertPEM()},
		"a bundle of expired CAs":     {validCert, validKey, expired},
	} {
		for p, b := range map[string][]byte{certFile: files[0], keyFile: files[1], caFile: files[2]} {
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		took, err := f.Reload()
		if took || err == nil {
			t.Errorf("%s: taken (%v, %v)", name, took, err)
			continue
		}
		if cur, _ := f.Current(); !cur.Cert.Leaf.Equal(good.Cert.Leaf) {
			t.Errorf("%s: the set in use changed", name)
		}
		if _, err := Load(certFile, keyFile, caFile, Options{Name: "server TLS"}); err == nil {
			t.Errorf("%s: loaded at start", name)
		}
	}
	for p, b := range map[string][]byte{certFile: validCert, keyFile: validKey, caFile: damaged} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if took, err := f.Reload(); !took || err != nil {
		t.Fatalf("a CA bundle with a damaged block besides a good CA: (%v, %v), want it taken", took, err)
	}
	if !strings.Contains(logs.String(), "do not parse") || !strings.Contains(logs.String(), "certificate 2") {
		t.Fatalf("the damaged block was not logged:\n%s", logs.String())
	}
}
