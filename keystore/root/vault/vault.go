// Package vault is a root provider backed by the Transit secrets engine of
// HashiCorp Vault (or OpenBao), through github.com/hashicorp/vault/api.
//
// Wrap calls <mount>/encrypt/<key> and Unwrap <mount>/decrypt/<key>, passing
// the associated data as Transit's associated_data (not context, which
// Transit silently ignores on non-derived keys). The Transit key must be of
// type aes256-gcm96, not derived and not convergent, and (unless
// Config.AllowKeyExport) neither exportable nor allow_plaintext_backup;
// New reads <mount>/keys/<key> and refuses anything else.
//
// # Wrapped blob format
//
// Transit answers "vault:v<N>:<base64>"; the provider stores it in binary:
//
//	0x01 | N (4 bytes, big-endian) | the decoded Transit ciphertext (12-byte nonce | AES-256-GCM ciphertext | 16-byte tag)
//
// and rebuilds the Transit string to decrypt. N is the Transit key version
// the KEK was wrapped under (KeyVersion reads it), so a root rotation can
// find the blobs still under an old version. Storing the decoded bytes
// rather than the string keeps the blob canonical: every bit of it is
// authenticated by Transit or checked here.
//
// # Authentication
//
// One of: a token (given directly or read from a file, re-read when Vault
// refuses the token, so an agent can rotate it); AppRole (role_id and a
// secret_id given directly or read from a file at each login); or a TLS
// client certificate (the cert auth method). With AppRole and cert the
// provider logs in at New, logs in again once three quarters of the token's
// TTL has passed, and once more when Vault answers 403 to an operation.
//
// # Errors
//
// Connection failures, timeouts, 429, 5xx and a sealed or standby Vault
// (503) wrap root.ErrUnavailable. A ciphertext Transit cannot authenticate
// (or cannot parse, or whose version is unknown or below the key's minimum
// decryption version) wraps root.ErrNotAuthentic. A 403 that persists after
// a fresh login, and rejected credentials, wrap ErrPermissionDenied, which is
// neither: it is a misconfiguration that retrying will not fix. Errors never
// contain tokens, secret IDs, plaintext or associated data.
package vault

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/custos-kms/custos/keystore/root"
)

// ErrPermissionDenied is wrapped by errors for which Vault refused the
// credentials or the token's policy does not allow the operation. It is a
// misconfiguration: neither root.ErrUnavailable (retrying will not help)
// nor root.ErrNotAuthentic (it says nothing about the blob).
var ErrPermissionDenied = errors.New("vault root: permission denied")

// Config configures a Vault Transit root.
type Config struct {
	// Address is Vault's URL, e.g. https://vault.example.com:8200. Required.
	Address string
	// Namespace is the Vault Enterprise namespace (sent as
	// X-Vault-Namespace); empty for none.
	Namespace string
	// Mount is the Transit mount path. Default "transit".
	Mount string
	// KeyName is the Transit key's name. Required.
	KeyName string
	// CACertFile is a PEM file of the CAs that verify Vault's certificate;
	// empty uses the system roots.
	CACertFile string
	// Auth says how to obtain a token. Exactly one method must be set.
	Auth Auth
	// Timeout bounds each request to Vault, on top of the caller's context.
	// Default 30s.
	Timeout time.Duration
	// MaxRetries is how many times the Vault client retries a request that
	// failed with a connection error, 412 or 5xx, with a 1–1.5 s pause. Zero
	// disables retries: the keystore above has its own policy.
	MaxRetries int
	// AllowKeyExport accepts a key created exportable or with
	// allow_plaintext_backup: Vault hands its material to whoever may read
	// transit/export or transit/backup, so by default New refuses it. With
	// this set New accepts it and logs a warning naming the flags.
	AllowKeyExport bool
	// Logger receives what no call returns: a failed renewal of the token
	// made in the background while the current one still serves. Nil
	// discards it.
	Logger *slog.Logger
}

// Auth is exactly one Vault authentication method.
type Auth struct {
	// Token is a Vault token. Prefer TokenFile outside tests.
	Token string
	// TokenFile holds a Vault token (for instance one written by Vault
	// Agent). It is read at New and again whenever Vault refuses the token.
	TokenFile string
	// AppRole logs in with the AppRole auth method.
	AppRole *AppRole
	// Cert logs in with the TLS certificate auth method.
	Cert *Cert
}

// AppRole configures the AppRole auth method.
type AppRole struct {
	// Mount is the auth method's mount path. Default "approle".
	Mount string
	// RoleID is the role's role_id. Required.
	RoleID string
	// SecretID is the secret_id; or set SecretIDFile.
	SecretID string
	// SecretIDFile holds the secret_id; it is read at each login.
	SecretIDFile string
}

// Cert configures the TLS certificate auth method. The client certificate
// is presented on every connection to Vault.
type Cert struct {
	// Mount is the auth method's mount path. Default "cert".
	Mount string
	// Role is the name of the certificate role to log in as; empty lets
	// Vault pick the role matching the certificate.
	Role string
	// CertFile and KeyFile are the PEM client certificate and its key,
	// read at each new connection (each login opens one). Required.
	CertFile string
	KeyFile  string
}

// Root is a Vault Transit root. It is safe for concurrent use.
type Root struct {
	client      *api.Client // carries the current token
	session     *session
	keyPath     string
	encryptPath string
	decryptPath string
}

var _ root.Root = (*Root)(nil)

// Blob layout; see the package documentation.
const (
	formatVersion = 0x01
	headerSize    = 1 + 4
	minCiphertext = 12 + 16 // nonce and tag
)

// New connects to Vault, authenticates, and checks that the Transit key
// exists and is an aes256-gcm96 key that is neither derived nor convergent
// (nor exportable, unless cfg.AllowKeyExport).
// It fails with an error wrapping root.ErrUnavailable when Vault cannot be
// reached and ErrPermissionDenied when the credentials or policy are wrong.
func New(ctx context.Context, cfg Config) (*Root, error) {
	r, err := newRoot(cfg)
	if err != nil {
		return nil, err
	}
	if _, err := r.session.current(ctx); err != nil {
		return nil, err
	}
	if err := r.checkKey(ctx, cfg); err != nil {
		return nil, err
	}
	return r, nil
}

// newRoot builds the provider without talking to Vault.
func newRoot(cfg Config) (*Root, error) {
	if cfg.Address == "" {
		return nil, errors.New("vault root: address is required")
	}
	// A Vault Agent's unix socket (which Vault's client dials) is local;
	// any other address is checked as a URL.
	if !strings.HasPrefix(cfg.Address, "unix://") {
		if err := root.CheckEndpoint(cfg.Address); err != nil {
			return nil, fmt.Errorf("vault root: address: %w", err)
		}
	}
	if cfg.KeyName == "" || strings.Contains(cfg.KeyName, "/") {
		return nil, errors.New("vault root: key name is required and must not contain '/'")
	}
	if cfg.Mount == "" {
		cfg.Mount = "transit"
	}
	cfg.Mount = strings.Trim(cfg.Mount, "/")
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.MaxRetries < 0 {
		return nil, errors.New("vault root: max retries must not be negative")
	}
	login, renewable, err := newLogin(cfg.Auth)
	if err != nil {
		return nil, err
	}

	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	tr.TLSHandshakeTimeout = 10 * time.Second
	apiConfig := func(tr *http.Transport) *api.Config {
		return &api.Config{
			Address: cfg.Address,
			HttpClient: &http.Client{
				Transport: tr,
				CheckRedirect: func(*http.Request, []*http.Request) error {
					return http.ErrUseLastResponse // the Vault client follows redirects itself
				},
			},
			Timeout:    cfg.Timeout,
			MaxRetries: cfg.MaxRetries,
		}
	}
	apiCfg := apiConfig(tr)
	if err := apiCfg.ConfigureTLS(&api.TLSConfig{CACert: cfg.CACertFile}); err != nil {
		return nil, fmt.Errorf("vault root: TLS configuration: %w", err)
	}
	loginTr := tr
	if c := cfg.Auth.Cert; c != nil {
		cc := &clientCert{certFile: c.CertFile, keyFile: c.KeyFile}
		if _, err := cc.get(nil); err != nil {
			return nil, fmt.Errorf("vault root: client certificate: %w", err)
		}
		tr.TLSClientConfig.GetClientCertificate = cc.get
		// Each login on a connection of its own, so that it presents
		// the certificate the files hold now: cert-manager or Vault
		// Agent renew them in place, and a pooled connection would
		// present the one it was opened with.
		loginTr = tr.Clone()
		loginTr.DisableKeepAlives = true
	}
	client, err := newClient(apiCfg, cfg.Namespace)
	if err != nil {
		return nil, err
	}
	loginClient, err := newClient(apiConfig(loginTr), cfg.Namespace)
	if err != nil {
		return nil, err
	}
	base := cfg.Mount + "/"
	return &Root{
		client:      client,
		session:     newSession(client, loginClient, login, renewable, time.Now, cfg.Logger),
		keyPath:     base + "keys/" + cfg.KeyName,
		encryptPath: base + "encrypt/" + cfg.KeyName,
		decryptPath: base + "decrypt/" + cfg.KeyName,
	}, nil
}

// clientCert gives a TLS handshake the client certificate and key their
// files hold now: they are read at each handshake (Vault's connections are
// kept alive, so that is seldom), and the last pair that loaded serves
// while a read fails (a file being rewritten).
type clientCert struct {
	certFile, keyFile string
	mu                sync.Mutex
	last              *tls.Certificate
}

func (c *clientCert) get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	pair, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		if c.last != nil {
			return c.last, nil
		}
		return nil, err
	}
	c.last = &pair
	return c.last, nil
}

// newClient builds an API client configured only by apiCfg and namespace:
// VAULT_TOKEN, VAULT_NAMESPACE and VAULT_HEADERS, which api.NewClient reads
// from the environment, are discarded.
func newClient(apiCfg *api.Config, namespace string) (*api.Client, error) {
	c, err := api.NewClient(apiCfg)
	if err != nil {
		if def := api.DefaultConfig(); def != nil && def.Error != nil {
			// Custos uses none of them, but api.NewClient parses them.
			return nil, fmt.Errorf("vault root: client: a VAULT_* environment variable is malformed (Custos does not use them; unset it): %w", err)
		}
		return nil, fmt.Errorf("vault root: client: %w", err)
	}
	c.SetHeaders(http.Header{api.RequestHeaderName: []string{"true"}})
	c.ClearToken()
	if namespace != "" {
		c.SetNamespace(namespace)
	}
	return c, nil
}

// checkKey reads the key's configuration and refuses keys that cannot bind
// associated data or that would wrap deterministically.
func (r *Root) checkKey(ctx context.Context, cfg Config) error {
	s, err := r.call(ctx, "read key", func(ctx context.Context) (*api.Secret, error) {
		return r.client.Logical().ReadWithContext(ctx, r.keyPath)
	})
	if err != nil {
		return err
	}
	if s == nil || s.Data == nil {
		return fmt.Errorf("vault root: transit key %q not found at mount %q", cfg.KeyName, cfg.Mount)
	}
	if typ, _ := s.Data["type"].(string); typ != "aes256-gcm96" {
		return fmt.Errorf("vault root: transit key %q has type %q; it must be aes256-gcm96, the type whose associated_data binds a KEK to its tenant", cfg.KeyName, typ)
	}
	if d, _ := s.Data["derived"].(bool); d {
		return fmt.Errorf("vault root: transit key %q is derived; use a non-derived aes256-gcm96 key", cfg.KeyName)
	}
	if c, _ := s.Data["convergent_encryption"].(bool); c {
		return fmt.Errorf("vault root: transit key %q uses convergent encryption; use a non-convergent key", cfg.KeyName)
	}
	var export []string
	for _, flag := range []string{"exportable", "allow_plaintext_backup"} {
		if on, _ := s.Data[flag].(bool); on {
			export = append(export, flag)
		}
	}
	switch {
	case len(export) == 0:
	case !cfg.AllowKeyExport:
		return fmt.Errorf("vault root: transit key %q is %s: Vault gives its material to any token allowed transit/export or transit/backup, and the flag cannot be unset; create a key without it and move to it (root.previous, then custos root rewrap), or set allow_key_export to accept this one", cfg.KeyName, strings.Join(export, " and "))
	default:
		r.session.logger.Warn("vault root: the transit key's material can leave Vault (allow_key_export is set)", "key", cfg.KeyName, "flags", strings.Join(export, ","))
	}
	return nil
}

// Close ends a token renewal running in the background (waiting for it)
// and closes the idle connections to Vault. The token stays valid until
// its TTL. Calls after Close still work, logging in as they need to, but
// start no background renewal.
func (r *Root) Close() error {
	r.session.close()
	for _, c := range []*api.Client{r.client, r.session.loginClient} {
		if hc := c.CloneConfig().HttpClient; hc != nil {
			hc.CloseIdleConnections()
		}
	}
	return nil
}

// Wrap encrypts plaintext with the Transit key's latest version, binding aad.
func (r *Root) Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	data := map[string]any{
		"plaintext":       base64.StdEncoding.EncodeToString(plaintext),
		"associated_data": base64.StdEncoding.EncodeToString(aad),
	}
	s, err := r.call(ctx, "wrap", func(ctx context.Context) (*api.Secret, error) {
		return r.client.Logical().WriteWithContext(ctx, r.encryptPath, data)
	})
	if err != nil {
		return nil, err
	}
	ct, _ := dataString(s, "ciphertext")
	version, raw, ok := parseTransit(ct)
	if !ok {
		return nil, errors.New("vault root: wrap: Vault's answer holds no well-formed ciphertext")
	}
	out := make([]byte, headerSize, headerSize+len(raw))
	out[0] = formatVersion
	binary.BigEndian.PutUint32(out[1:], version)
	return append(out, raw...), nil
}

// Unwrap decrypts a blob made by Wrap with the same aad, under whichever
// Transit key version made it.
func (r *Root) Unwrap(ctx context.Context, wrapped, aad []byte) ([]byte, error) {
	version, err := KeyVersion(wrapped)
	if err != nil {
		return nil, err
	}
	data := map[string]any{
		"ciphertext":      "vault:v" + strconv.Itoa(version) + ":" + base64.StdEncoding.EncodeToString(wrapped[headerSize:]),
		"associated_data": base64.StdEncoding.EncodeToString(aad),
	}
	s, err := r.call(ctx, "unwrap", func(ctx context.Context) (*api.Secret, error) {
		return r.client.Logical().WriteWithContext(ctx, r.decryptPath, data)
	})
	if err != nil {
		return nil, err
	}
	b64, ok := dataString(s, "plaintext")
	if !ok {
		return nil, errors.New("vault root: unwrap: Vault's answer holds no plaintext")
	}
	pt, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, errors.New("vault root: unwrap: Vault's plaintext is not base64")
	}
	return pt, nil
}

// KeyVersion returns the Transit key version a blob made by Wrap was
// wrapped under. It fails with an error wrapping root.ErrNotAuthentic when
// the blob is not in this provider's format.
func KeyVersion(wrapped []byte) (int, error) {
	if len(wrapped) < headerSize+minCiphertext || wrapped[0] != formatVersion {
		return 0, fmt.Errorf("vault root: %w", root.ErrNotAuthentic)
	}
	v := binary.BigEndian.Uint32(wrapped[1:headerSize])
	if v == 0 || v > 1<<31-1 {
		return 0, fmt.Errorf("vault root: %w", root.ErrNotAuthentic)
	}
	return int(v), nil
}

// parseTransit splits "vault:v<N>:<base64>" into N and the decoded bytes.
func parseTransit(s string) (uint32, []byte, bool) {
	rest, ok := strings.CutPrefix(s, "vault:v")
	if !ok {
		return 0, nil, false
	}
	vs, b64, ok := strings.Cut(rest, ":")
	if !ok {
		return 0, nil, false
	}
	v, err := strconv.ParseUint(vs, 10, 31)
	if err != nil || v == 0 {
		return 0, nil, false
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) < minCiphertext {
		return 0, nil, false
	}
	return uint32(v), raw, true
}

func dataString(s *api.Secret, key string) (string, bool) {
	if s == nil || s.Data == nil {
		return "", false
	}
	v, ok := s.Data[key].(string)
	return v, ok
}

// call runs op with a current token; if Vault answers 403 and the provider
// can obtain a fresh token, it logs in again once and retries. Errors are
// classified (see the package documentation).
func (r *Root) call(ctx context.Context, what string, op func(context.Context) (*api.Secret, error)) (*api.Secret, error) {
	if err := ctx.Err(); err != nil {
		return nil, classify(ctx, what, err)
	}
	epoch, err := r.session.current(ctx)
	if err != nil {
		return nil, err
	}
	s, err := op(ctx)
	if isForbidden(err) && r.session.canRenew() {
		fresh, lerr := r.session.renew(ctx, epoch)
		if lerr != nil {
			return nil, lerr
		}
		if fresh {
			s, err = op(ctx)
		}
	}
	if err != nil {
		return nil, classify(ctx, what, err)
	}
	return s, nil
}

func isForbidden(err error) bool {
	var re *api.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusForbidden
}

// Transit's messages for a ciphertext it cannot authenticate or parse
// (sdk/helper/keysutil); all are final.
var notAuthenticMessages = []string{
	"message authentication failed",
	"invalid ciphertext",
	"disallowed by policy (too old)",
}

// classify maps an error from the Vault client to the root sentinels.
func classify(ctx context.Context, what string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		if errors.Is(cerr, context.DeadlineExceeded) {
			return fmt.Errorf("vault root: %s: %w: %w", what, root.ErrUnavailable, cerr)
		}
		return fmt.Errorf("vault root: %s: %w", what, cerr)
	}
	var re *api.ResponseError
	if errors.As(err, &re) {
		msg := strings.Join(re.Errors, "; ")
		if re.RawError {
			msg = "unparsable answer" // an HTML error page from a proxy, say: do not echo it
		}
		switch {
		case re.StatusCode == http.StatusForbidden:
			return fmt.Errorf("vault root: %s: %w (Vault answered 403: the token's policy must allow the operation; see docs/roots.md)", what, ErrPermissionDenied)
		case re.StatusCode == http.StatusTooManyRequests || re.StatusCode >= 500:
			return fmt.Errorf("vault root: %s: %w: Vault answered %d: %s", what, root.ErrUnavailable, re.StatusCode, msg)
		case re.StatusCode == http.StatusBadRequest && what == "unwrap" && containsAny(msg, notAuthenticMessages):
			return fmt.Errorf("vault root: %w", root.ErrNotAuthentic)
		}
		return fmt.Errorf("vault root: %s: Vault answered %d: %s", what, re.StatusCode, msg)
	}
	var (
		unknownCA   x509.UnknownAuthorityError
		hostname    x509.HostnameError
		invalidCert x509.CertificateInvalidError
		verifyErr   *tls.CertificateVerificationError
	)
	if errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalidCert) || errors.As(err, &verifyErr) {
		return fmt.Errorf("vault root: %s: Vault's TLS certificate does not verify (check ca_cert_file and the address): %w", what, err)
	}
	var (
		ue *url.Error
		ne net.Error
	)
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ue) || errors.As(err, &ne) {
		return fmt.Errorf("vault root: %s: %w: %w", what, root.ErrUnavailable, err)
	}
	return fmt.Errorf("vault root: %s: %w", what, err)
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// readSecretFile reads a token or secret_id file, trimming surrounding
// whitespace. Its error names the file, never its content.
func readSecretFile(kind, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("vault root: %s file: %w", kind, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("vault root: %s file %s is empty", kind, path)
	}
	return s, nil
}
