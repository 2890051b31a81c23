package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/google/renameio/v2"
)

// DevClientID is the SPIFFE ID of the client certificate made by
// WriteDevFiles; the dev policy grants it everything.
const DevClientID = "spiffe://custos.dev/dev-client"

// Validity periods and file names of the dev PKI.
const (
	devCAValidity   = 10 * 365 * 24 * time.Hour
	devLeafValidity = 365 * 24 * time.Hour
	// devRenewBefore: an existing dev certificate that expires sooner than
	// this is replaced rather than reused.
	devRenewBefore = 24 * time.Hour

	devCAName     = "Custos dev CA"
	devServerName = "localhost"
	devClientName = "dev-client"
)

// DevFiles holds the paths of the files written by WriteDevFiles.
type DevFiles struct {
	CA         string // ca.pem: the dev CA certificate, the trust root for both sides
	CAKey      string // ca-key.pem: the dev CA key (0600), to issue more client certificates
	ServerCert string // server.pem: for localhost, 127.0.0.1 and ::1
	ServerKey  string // server-key.pem (0600)
	ClientCert string // client.pem: identity DevClientID, common name dev-client
	ClientKey  string // client-key.pem (0600)
}

func devPaths(dir string) DevFiles {
	return DevFiles{
		CA:         filepath.Join(dir, "ca.pem"),
		CAKey:      filepath.Join(dir, "ca-key.pem"),
		ServerCert: filepath.Join(dir, "server.pem"),
		ServerKey:  filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client.pem"),
		ClientKey:  filepath.Join(dir, "client-key.pem"),
	}
}

// WriteDevFiles makes the PKI used by `custos dev` in dir, creating dir with
// mode 0700 if it is missing, and returns the paths of its files.
//
// Files that already exist and are still valid are reused untouched, so
// running `custos dev` again keeps the CA that clients already trust:
//   - the CA (ca.pem, ca-key.pem) is reused when the key matches the
//     certificate and the certificate is a CA valid for at least another day;
//     otherwise a new CA is made and both leaf pairs are reissued;
//   - each leaf pair (server.pem/server-key.pem, client.pem/client-key.pem)
//     is reused when it chains to the CA, has the expected names and usage,
//     its key matches, and it is valid for at least another day; otherwise
//     it is reissued.
//
// The CA is valid for 10 years, leaves for 1 year. Private key files have
// mode 0600, certificates 0644; files are written to a temporary name and
// renamed, so a crash never leaves a half-written file. An existing private
// key file that group or others can access is an error rather than
// something to overwrite silently.
func WriteDevFiles(dir string) (DevFiles, error) {
	files := devPaths(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return DevFiles{}, fmt.Errorf("pki: create dev directory: %w", err)
	}
	for _, p := range []string{files.CAKey, files.ServerKey, files.ClientKey} {
		if err := checkKeyFileMode(p); err != nil {
			return DevFiles{}, err
		}
	}
	now := time.Now()

	ca, err := loadDevCA(files, now)
	if err != nil {
		// Missing or unusable: start over with a new CA.
		if ca, err = NewCA(devCAName, devCAValidity); err != nil {
			return DevFiles{}, err
		}
		keyPEM, err := ca.keyPEM()
		if err != nil {
			return DevFiles{}, err
		}
		if err := writeFileAtomic(files.CAKey, keyPEM, 0o600); err != nil {
			return DevFiles{}, err
		}
		if err := writeFileAtomic(files.CA, ca.certPEM, 0o644); err != nil {
			return DevFiles{}, err
		}
	}

	leaves := []struct {
		certPath, keyPath string
		req               IssueRequest
		usage             x509.ExtKeyUsage
		check             func(*x509.Certificate) bool
	}{
		{
			certPath: files.ServerCert,
			keyPath:  files.ServerKey,
			req: IssueRequest{
				CommonName:  devServerName,
				DNSNames:    []string{devServerName},
				IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
				Server:      true,
				Validity:    devLeafValidity,
			},
			usage: x509.ExtKeyUsageServerAuth,
			check: func(c *x509.Certificate) bool {
				return slices.Contains(c.DNSNames, devServerName) &&
					slices.ContainsFunc(c.IPAddresses, net.IPv4(127, 0, 0, 1).Equal) &&
					slices.ContainsFunc(c.IPAddresses, net.IPv6loopback.Equal)
			},
		},
		{
			certPath: files.ClientCert,
			keyPath:  files.ClientKey,
			req: IssueRequest{
				CommonName: devClientName,
				URIs:       []*url.URL{mustParseURL(DevClientID)},
				Client:     true,
				Validity:   devLeafValidity,
			},
			usage: x509.ExtKeyUsageClientAuth,
			check: func(c *x509.Certificate) bool {
				return c.Subject.CommonName == devClientName &&
					len(c.URIs) == 1 && c.URIs[0].String() == DevClientID
			},
		},
	}
	for _, l := range leaves {
		if checkDevLeaf(ca, l.certPath, l.keyPath, l.usage, l.check, now) == nil {
			continue
		}
		certPEM, keyPEM, err := ca.Issue(l.req)
		if err != nil {
			return DevFiles{}, err
		}
		if err := writeFileAtomic(l.keyPath, keyPEM, 0o600); err != nil {
			return DevFiles{}, err
		}
		if err := writeFileAtomic(l.certPath, certPEM, 0o644); err != nil {
			return DevFiles{}, err
		}
	}
	return files, nil
}

// loadDevCA loads the existing dev CA, or returns an error if it is missing
// or no longer usable.
func loadDevCA(files DevFiles, now time.Time) (*CA, error) {
	certPEM, err := os.ReadFile(files.CA)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(files.CAKey)
	if err != nil {
		return nil, err
	}
	ca, err := LoadCA(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	if now.Before(ca.cert.NotBefore) || now.Add(devRenewBefore).After(ca.cert.NotAfter) {
		return nil, errors.New("pki: dev CA expired or about to expire")
	}
	return ca, nil
}

// checkDevLeaf reports whether an existing leaf pair can be reused: both
// files parse, the key matches, the certificate chains to ca for usage, has
// the names check wants, and stays valid for devRenewBefore.
func checkDevLeaf(ca *CA, certPath, keyPath string, usage x509.ExtKeyUsage, check func(*x509.Certificate) bool, now time.Time) error {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return err
	}
	if _, err := parseKeyPEM(keyPEM); err != nil {
		return err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return errors.New("certificate and key do not form a pair")
	}
	cert := pair.Leaf
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots:       roots,
		CurrentTime: now.Add(devRenewBefore),
		KeyUsages:   []x509.ExtKeyUsage{usage},
	}); err != nil {
		return err
	}
	if now.Before(cert.NotBefore) {
		return errors.New("certificate not yet valid")
	}
	if !check(cert) {
		return errors.New("certificate names differ from the dev defaults")
	}
	return nil
}

// checkKeyFileMode refuses an existing private key file that group or others
// can access. A missing file is fine: it will be created with mode 0600.
func checkKeyFileMode(path string) error {
	if runtime.GOOS == "windows" {
		return nil // no Unix permission bits to check
	}
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("pki: %s is accessible by group or others (mode %04o); run chmod 600 on it, or remove the directory to start over", path, perm)
	}
	return nil
}

// writeFileAtomic replaces path with data, with mode perm whatever the
// umask: a crash leaves the old file or the new one, never half of one.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := renameio.NewPendingFile(path, renameio.WithStaticPermissions(perm))
	if err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	defer f.Cleanup()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := f.CloseAtomicallyReplace(); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	return nil
}

func mustParseURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}
