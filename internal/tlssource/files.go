package tlssource

// Files is a Set read from three PEM files and kept current. SPIRE's
// helper, cert-manager and Vault Agent rotate such files in place; a
// process that read them once would present an expired certificate after
// the next rotation.
//
// Files are checked at most once per interval, from the TLS handshake that
// finds the interval over (no goroutine to stop), and whenever Reload is
// called (SIGHUP). A new set is taken only whole: a key that does not match
// its certificate, a bundle with no certificate or a file that cannot be
// read is refused and logged once, and the previous set stays in use until
// the files load. Connections already open keep their session; only new
// handshakes see the new set. A Files is safe for concurrent use.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultInterval is how often the files are checked when Options.Interval
// is zero.
const DefaultInterval = 5 * time.Second

// Options tune a Files.
type Options struct {
	// Interval is the longest a change goes unnoticed; zero means
	// DefaultInterval, a negative value checks only on Reload.
	Interval time.Duration
	// Logger receives one line per set taken or refused; nil logs nothing.
	Logger *slog.Logger
	// Name prefixes errors and log lines, e.g. "server TLS".
	Name string
}

type Files struct {
	certFile, keyFile, caFile string
	opts                      Options

	cur       atomic.Pointer[filesSet]
	nextCheck atomic.Int64 // unix nanoseconds
	mu        sync.Mutex   // one load at a time
	lastErr   string       // the refusal last logged, under mu
}

// Load reads the three files; it fails, naming the file at fault, if they
// do not make a valid set.
func Load(certFile, keyFile, caFile string, opts Options) (*Files, error) {
	if opts.Interval == 0 {
		opts.Interval = DefaultInterval
	}
	if opts.Name == "" {
		opts.Name = "TLS"
	}
	f := &Files{certFile: certFile, keyFile: keyFile, caFile: caFile, opts: opts}
	s, err := f.read()
	if err != nil {
		return nil, err
	}
	f.cur.Store(s)
	f.warnUnparsed(s)
	f.schedule()
	return f, nil
}

func (f *Files) schedule() {
	if f.opts.Interval > 0 {
		f.nextCheck.Store(time.Now().Add(f.opts.Interval).UnixNano())
	}
}

// wholePEM reports whether b has nothing but white space after its last
// PEM block. A file without any block is left to the parsers, which say so.
func wholePEM(b []byte) bool {
	found := false
	for {
		block, rest := pem.Decode(b)
		if block == nil {
			return !found || len(bytes.TrimSpace(b)) == 0
		}
		found, b = true, rest
	}
}

// filesSet is a Set and the digest of the files it came from.
type filesSet struct {
	Set
	digest [sha256.Size]byte
	// unparsed says which certificates of the CA bundle did not parse
	// (skipped, as x509.CertPool.AppendCertsFromPEM skips them), "" if none.
	unparsed string
}

// warnUnparsed logs the certificates of s's CA bundle that were skipped.
func (f *Files) warnUnparsed(s *filesSet) {
	if s.unparsed != "" {
		f.log(slog.LevelWarn, "CA bundle certificates that do not parse are skipped: callers whose chains need them are refused", "ca_file", f.caFile, "skipped", s.unparsed)
	}
}

func (f *Files) read() (*filesSet, error) {
	var all bytes.Buffer
	read := func(what, p string) ([]byte, error) {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("%s: read %s %s: %w", f.opts.Name, what, p, errors.Unwrap(err))
		}
		if !wholePEM(b) {
			// Caught half written (a writer that does not rename into
			// place): Go's parsers stop quietly at a cut last block.
			return nil, fmt.Errorf("%s: %s %s has data after its last whole PEM block (half written?)", f.opts.Name, what, p)
		}
		all.Write(b)
		all.WriteByte(0)
		return b, nil
	}
	certPEM, err := read("certificate", f.certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := read("key", f.keyFile)
	if err != nil {
		return nil, err
	}
	caPEM, err := read("CA bundle", f.caFile)
	if err != nil {
		return nil, err
	}
	// X509KeyPair's errors say what is wrong, never key bytes.
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: certificate %s and key %s: %w", f.opts.Name, f.certFile, f.keyFile, err)
	}
	if cert.Leaf == nil {
		// GODEBUG=x509keypairleaf=0 leaves it unset; Set promises it.
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("%s: certificate %s: %w", f.opts.Name, f.certFile, err)
		}
	}
	now := time.Now()
	if leaf := cert.Leaf; now.After(leaf.NotAfter) || now.Add(notBeforeSkew).Before(leaf.NotBefore) {
		// Every handshake would fail with it: the set in use stays.
		return nil, fmt.Errorf("%s: certificate %s is not valid now (valid from %s to %s)", f.opts.Name, f.certFile,
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	pool, unparsed, err := caPool(caPEM, now)
	if err != nil {
		return nil, fmt.Errorf("%s: CA bundle %s: %w", f.opts.Name, f.caFile, err)
	}
	return &filesSet{Set: Set{Cert: cert, Pool: pool}, digest: sha256.Sum256(all.Bytes()), unparsed: unparsed}, nil
}

// notBeforeSkew is how far in the future a certificate's NotBefore may be
// (another machine's clock a little ahead) and it still be taken.
const notBeforeSkew = time.Minute

// caPool parses a CA bundle, of which one CA at least must be valid now. A
// CERTIFICATE block that does not parse is skipped, as
// x509.CertPool.AppendCertsFromPEM skips it (a bundle that served before
// still loads), but said in unparsed, which is logged: one cut or damaged,
// say the new CA's in the first step of a rotation, was skipped quietly
// and found out only once certificates moved to it. Blocks of other types
// are skipped.
func caPool(b []byte, now time.Time) (pool *x509.CertPool, unparsed string, err error) {
	pool = x509.NewCertPool()
	n, valid, i := 0, 0, 0
	var bad []string
	for len(b) > 0 {
		var block *pem.Block
		if block, b = pem.Decode(b); block == nil {
			break
		}
		if block.Type != "CERTIFICATE" || len(block.Headers) != 0 {
			continue
		}
		i++
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			bad = append(bad, fmt.Sprintf("certificate %d: %v", i, err))
			continue
		}
		pool.AddCert(c)
		n++
		if !now.After(c.NotAfter) && !now.Add(notBeforeSkew).Before(c.NotBefore) {
			valid++
		}
	}
	switch {
	case n == 0 && len(bad) > 0:
		return nil, "", fmt.Errorf("holds no PEM certificate that parses (%s)", bad[0])
	case n == 0:
		return nil, "", errors.New("holds no PEM certificate")
	case valid == 0:
		return nil, "", fmt.Errorf("none of its %d certificates is valid now", n)
	}
	return pool, strings.Join(bad, "; "), nil
}

// Current returns the set in use, first checking the files if the interval
// is over. A check already under way is not waited for. It never fails.
func (f *Files) Current() (*Set, error) {
	if f.opts.Interval > 0 && time.Now().UnixNano() >= f.nextCheck.Load() && f.mu.TryLock() {
		_, _ = f.reloadLocked()
		f.mu.Unlock()
	}
	return &f.cur.Load().Set, nil
}

// Reload reads the files now and, if they changed and load, uses them from
// the next handshake on. It reports whether it took a new set; on error the
// previous set stays in use.
func (f *Files) Reload() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reloadLocked()
}

func (f *Files) reloadLocked() (bool, error) {
	defer f.schedule()
	s, err := f.read()
	if err != nil {
		if msg := err.Error(); msg != f.lastErr {
			f.lastErr = msg
			f.log(slog.LevelError, "files not taken; keeping the previous ones", "error", msg)
		}
		return false, err
	}
	f.lastErr = ""
	if s.digest == f.cur.Load().digest {
		return false, nil
	}
	f.cur.Store(s)
	f.warnUnparsed(s)
	f.log(slog.LevelInfo, "new files taken", "cert", f.certFile, "subject", s.Cert.Leaf.Subject.String(),
		"not_after", s.Cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	return true, nil
}

func (f *Files) log(level slog.Level, msg string, args ...any) {
	if f.opts.Logger != nil {
		f.opts.Logger.Log(context.Background(), level, f.opts.Name+": "+msg, args...)
	}
}
