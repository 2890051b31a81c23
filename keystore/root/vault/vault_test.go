package vault_test

// These tests run the provider against a fake Vault (an httptest TLS server
// answering canned responses) to pin the error mapping, the namespace
// header and the token handling without a real Vault. The real-Vault tests,
// including the conformance suite, live in the nested module test/vault.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custos-kms/custos/internal/testkit"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/roottest"
	"github.com/custos-kms/custos/keystore/root/vault"
)

// fakeVault answers the Transit and AppRole paths the provider uses.
// Ciphertexts are random bytes: it checks the plumbing, not the crypto.
type fakeVault struct {
	srv    *httptest.Server
	caFile string

	mu         sync.Mutex
	namespaces map[string]string // path → X-Vault-Namespace seen
	tokens     map[string]time.Time
	logins     atomic.Int64
	failWith   atomic.Pointer[cannedError]
	tokenTTL   time.Duration
	hangLogin  atomic.Pointer[chan struct{}] // if set, logins wait until it closes (or the client gives up)
	hung       atomic.Int64                  // logins that began to hang
	gaveUp     atomic.Int64                  // hung logins the client gave up
}

type cannedError struct {
	status int
	body   string
}

func newFakeVault(t *testing.T) *fakeVault {
	t.Helper()
	f := &fakeVault{namespaces: map[string]string{}, tokens: map[string]time.Time{"static-token": {}}, tokenTTL: time.Hour}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	f.caFile = filepath.Join(t.TempDir(), "ca.pem")
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
	if err := os.WriteFile(f.caFile, ca, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fakeVault) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.namespaces[r.URL.Path] = r.Header.Get("X-Vault-Namespace")
	f.mu.Unlock()
	if r.URL.Path == "/v1/auth/approle/login" {
		if hang := f.hangLogin.Load(); hang != nil {
			_, _ = io.Copy(io.Discard, r.Body) // read whole, so a client that hangs up ends r.Context()
			f.hung.Add(1)
			select {
			case <-*hang:
			case <-r.Context().Done():
				f.gaveUp.Add(1)
			}
			writeJSON(w, 503, map[string]any{"errors": []string{"standby cannot reach the active node"}})
			return
		}
		n := f.logins.Add(1)
		token := fmt.Sprintf("approle-token-%d", n)
		f.mu.Lock()
		f.tokens[token] = time.Now().Add(f.tokenTTL)
		f.mu.Unlock()
		writeJSON(w, 200, map[string]any{"auth": map[string]any{"client_token": token, "lease_duration": int(f.tokenTTL / time.Second)}})
		return
	}
	f.mu.Lock()
	exp, ok := f.tokens[r.Header.Get("X-Vault-Token")]
	f.mu.Unlock()
	if !ok || (!exp.IsZero() && time.Now().After(exp)) {
		writeJSON(w, 403, map[string]any{"errors": []string{"permission denied"}})
		return
	}
	if r.URL.Path == "/v1/auth/token/lookup-self" {
		writeJSON(w, 200, map[string]any{"data": map[string]any{"id": r.Header.Get("X-Vault-Token")}})
		return
	}
	if e := f.failWith.Load(); e != nil && r.URL.Path != "/v1/transit/keys/custos" {
		w.WriteHeader(e.status)
		fmt.Fprint(w, e.body)
		return
	}
	switch r.URL.Path {
	case "/v1/transit/keys/custos":
		writeJSON(w, 200, map[string]any{"data": map[string]any{"type": "aes256-gcm96", "derived": false}})
	case "/v1/transit/encrypt/custos":
		ct := make([]byte, 12+16+32)
		rand.Read(ct)
		writeJSON(w, 200, map[string]any{"data": map[string]any{"ciphertext": "vault:v3:" + base64.StdEncoding.EncodeToString(ct), "key_version": 3}})
	case "/v1/transit/decrypt/custos":
		writeJSON(w, 200, map[string]any{"data": map[string]any{"plaintext": base64.StdEncoding.EncodeToString([]byte("kek"))}})
	default:
		writeJSON(w, 404, map[string]any{"errors": []string{}})
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (f *fakeVault) config(auth vault.Auth) vault.Config {
	return vault.Config{Address: f.srv.URL, KeyName: "custos", CACertFile: f.caFile, Auth: auth}
}

func TestNamespaceHeaderIsSentOnEveryRequest(t *testing.T) {
	// Namespaces are a Vault Enterprise feature, absent from the open-source
	// test cluster; this checks only that the header reaches the server.
	f := newFakeVault(t)
	secretFile := filepath.Join(t.TempDir(), "secret-id")
	if err := os.WriteFile(secretFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := f.config(vault.Auth{AppRole: &vault.AppRole{RoleID: "role", SecretIDFile: secretFile}})
	cfg.Namespace = "team-a/prod"
	r, err := vault.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	w, err := r.Wrap(t.Context(), []byte("kek"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Unwrap(t.Context(), w, []byte("aad")); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range []string{"/v1/auth/approle/login", "/v1/transit/keys/custos", "/v1/transit/encrypt/custos", "/v1/transit/decrypt/custos"} {
		if got := f.namespaces[p]; got != "team-a/prod" {
			t.Errorf("%s: X-Vault-Namespace = %q, want team-a/prod", p, got)
		}
	}
}

func TestEnvironmentDoesNotLeakIntoTheClient(t *testing.T) {
	t.Setenv("VAULT_TOKEN", "env-token")
	t.Setenv("VAULT_NAMESPACE", "env-namespace")
	f := newFakeVault(t)
	r, err := vault.New(t.Context(), f.config(vault.Auth{Token: "static-token"}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Wrap(t.Context(), []byte("kek"), nil); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if ns := f.namespaces["/v1/transit/encrypt/custos"]; ns != "" {
		t.Fatalf("VAULT_NAMESPACE from the environment was sent: %q", ns)
	}
}

// A malformed VAULT_* variable, which Custos does not use but Vault's
// client parses, stops the start with an error that says what to do.
func TestAMalformedVaultVariableIsNamedAsTheCause(t *testing.T) {
	t.Setenv("VAULT_CACERT", filepath.Join(t.TempDir(), "missing.pem"))
	f := newFakeVault(t)
	_, err := vault.New(t.Context(), f.config(vault.Auth{Token: "static-token"}))
	if err == nil || !strings.Contains(err.Error(), "VAULT_* environment variable is malformed") {
		t.Fatalf("New with a malformed VAULT_CACERT: %v; want an error naming the environment", err)
	}
}

func TestWrapRecordsTheTransitKeyVersion(t *testing.T) {
	f := newFakeVault(t)
	r, err := vault.New(t.Context(), f.config(vault.Auth{Token: "static-token"}))
	if err != nil {
		t.Fatal(err)
	}
	w, err := r.Wrap(t.Context(), []byte("kek"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := vault.KeyVersion(w); err != nil || n != 3 {
		t.Fatalf("KeyVersion = %d, %v; want 3", n, err)
	}
	if w[0] != 0x01 || len(w) != 1+4+12+16+32 {
		t.Fatalf("blob is % x..., %d bytes; want 0x01 | version | raw Transit ciphertext", w[:5], len(w))
	}
}

func TestErrorsAreClassified(t *testing.T) {
	type want int
	const (
		unavailable want = iota
		notAuthentic
		permissionDenied
		neither
	)
	cases := []struct {
		name   string
		status int
		body   string
		want   want
	}{
		{"a sealed Vault (503) is unavailable", 503, `{"errors":["Vault is sealed"]}`, unavailable},
		{"a 500 is unavailable", 500, `{"errors":["internal error"]}`, unavailable},
		{"rate limiting (429) is unavailable", 429, `{"errors":["request path \"transit/encrypt\": rate limit quota exceeded"]}`, unavailable},
		{"a proxy's HTML 502 is unavailable", 502, `<html>bad gateway, token=should-not-leak</html>`, unavailable},
		{"a failed GCM check is not authentic", 400, `{"errors":["cipher: message authentication failed"]}`, notAuthentic},
		{"an unparsable ciphertext is not authentic", 400, `{"errors":["invalid ciphertext: version is too new"]}`, notAuthentic},
		{"a version below the minimum is not authentic", 400, `{"errors":["ciphertext or signature version is disallowed by policy (too old)"]}`, notAuthentic},
		{"a 403 is permission denied", 403, `{"errors":["permission denied"]}`, permissionDenied},
		{"a missing key (400) is neither", 400, `{"errors":["encryption key not found"]}`, neither},
	}
	f := newFakeVault(t)
	r, err := vault.New(t.Context(), f.config(vault.Auth{Token: "static-token"}))
	if err != nil {
		t.Fatal(err)
	}
	blob, err := r.Wrap(t.Context(), []byte("kek"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f.failWith.Store(&cannedError{c.status, c.body})
			defer f.failWith.Store(nil)
			_, err := r.Unwrap(t.Context(), blob, nil)
			if err == nil {
				t.Fatal("Unwrap succeeded")
			}
			got := neither
			switch {
			case errors.Is(err, root.ErrUnavailable):
				got = unavailable
			case errors.Is(err, root.ErrNotAuthentic):
				got = notAuthentic
			case errors.Is(err, vault.ErrPermissionDenied):
				got = permissionDenied
			}
			if got != c.want {
				t.Fatalf("Unwrap: %v; classified %d, want %d", err, got, c.want)
			}
			if strings.Contains(err.Error(), "static-token") || strings.Contains(err.Error(), "should-not-leak") {
				t.Fatalf("error reveals a secret or echoes a raw body: %v", err)
			}
			if c.want == notAuthentic {
				return
			}
			// Wrap is classified alike, except that a 400 from encrypt says
			// nothing about a blob.
			_, err = r.Wrap(t.Context(), []byte("kek"), nil)
			if errors.Is(err, root.ErrNotAuthentic) || (c.want == unavailable) != errors.Is(err, root.ErrUnavailable) {
				t.Fatalf("Wrap: %v", err)
			}
		})
	}
}

func TestRefusedConnectionIsUnavailable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = vault.New(t.Context(), vault.Config{Address: "https://" + addr, KeyName: "custos", Auth: vault.Auth{Token: "t"}})
	if !errors.Is(err, root.ErrUnavailable) {
		t.Fatalf("New against a closed port: %v; want ErrUnavailable", err)
	}
}

func TestUnresponsiveVaultHonoursTheDeadline(t *testing.T) {
	// A listener that accepts and never speaks: the TLS handshake hangs.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	r, err := vault.NewUnchecked(vault.Config{Address: "https://" + ln.Addr().String(), KeyName: "custos", Auth: vault.Auth{Token: "t"}})
	if err != nil {
		t.Fatal(err)
	}
	blob := append([]byte{0x01, 0, 0, 0, 1}, bytes.Repeat([]byte{0xaa}, 60)...)
	roottest.TestUnresponsive(t, r, blob)

	// New, which reads the key, is bounded by its context too.
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := vault.New(ctx, vault.Config{Address: "https://" + ln.Addr().String(), KeyName: "custos", Auth: vault.Auth{Token: "t"}}); !errors.Is(err, root.ErrUnavailable) {
		t.Fatalf("New against an unresponsive Vault: %v; want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("New took %v with a 300ms deadline", d)
	}
}

func TestConcurrentCallsShareOneLoginPerToken(t *testing.T) {
	f := newFakeVault(t)
	f.tokenTTL = time.Second // renewed every 750ms
	secretFile := writeSecretID(t)
	r, err := vault.New(t.Context(), f.config(vault.Auth{AppRole: &vault.AppRole{RoleID: "role", SecretIDFile: secretFile}}))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	deadline := time.Now().Add(2 * time.Second)
	for range 8 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				if _, err := r.Wrap(t.Context(), []byte("kek"), nil); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent Wrap across token renewals: %v", err)
	}
	// About one login per 750ms (plus the first), not one per caller.
	if n := f.logins.Load(); n < 2 || n > 6 {
		t.Fatalf("%d logins in 2s with a 1s token TTL; want 2 to 6", n)
	}
}

// A renewal due while the token in use still has time runs in the
// background: a login that hangs (a standby cut off from the active node)
// costs no call its deadline, and calls go on with the token in use.
func TestAHangingEarlyRenewalFailsNoCall(t *testing.T) {
	f := newFakeVault(t)
	f.tokenTTL = 8 * time.Second // renewed after 6s
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // before the server closes: it waits for its handlers
	secretFile := writeSecretID(t)
	r, err := vault.New(t.Context(), f.config(vault.Auth{AppRole: &vault.AppRole{RoleID: "role", SecretIDFile: secretFile}}))
	if err != nil {
		t.Fatal(err)
	}
	f.hangLogin.Store(&release)
	select {
	case <-time.After(6200 * time.Millisecond): // past the renewal time, well before the expiry
	case <-t.Context().Done():
		t.Fatal(t.Context().Err())
	}
	for i := range 3 {
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		_, err := r.Wrap(ctx, []byte("kek"), nil)
		cancel()
		if err != nil {
			t.Fatalf("call %d while the renewal hangs, the token still valid: %v", i, err)
		}
	}
}

// Close ends a renewal running in the background and waits for it: it
// belonged to nothing, and ran on for up to 30 s after the server stopped.
func TestCloseEndsABackgroundRenewal(t *testing.T) {
	f := newFakeVault(t)
	f.tokenTTL = 8 * time.Second // renewed after 6s, well before the expiry
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	r, err := vault.New(t.Context(), f.config(vault.Auth{AppRole: &vault.AppRole{RoleID: "role", SecretIDFile: writeSecretID(t)}}))
	if err != nil {
		t.Fatal(err)
	}
	f.hangLogin.Store(&release)
	time.Sleep(6200 * time.Millisecond) // past the renewal time, well before the expiry
	if _, err := r.Wrap(t.Context(), []byte("kek"), nil); err != nil {
		t.Fatal(err) // starts the renewal, which hangs
	}
	for deadline := time.Now().Add(10 * time.Second); f.hung.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no renewal began within 10s")
		}
	}
	done := make(chan error, 1)
	go func() { done <- r.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close still waiting 10s for the renewal")
	}
	for deadline := time.Now().Add(10 * time.Second); f.gaveUp.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the renewal's login still hangs 10s after Close")
		}
	}
}

// A renewal that fails in the background, while the token in use still
// serves, is logged: no call fails yet, and nothing else would tell that
// an outage comes when the token expires.
func TestAFailedEarlyRenewalIsLogged(t *testing.T) {
	f := newFakeVault(t)
	f.tokenTTL = 6 * time.Second // renewed after 4.5s; 1.4s of margin after the Wrap below
	secretFile := writeSecretID(t)
	logs := &testkit.SyncBuffer{}
	cfg := f.config(vault.Auth{AppRole: &vault.AppRole{RoleID: "role", SecretIDFile: secretFile}})
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	r, err := vault.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	refused := make(chan struct{})
	close(refused) // logins answer 503 at once
	f.hangLogin.Store(&refused)
	time.Sleep(4600 * time.Millisecond) // past the renewal time, well before the expiry
	if _, err := r.Wrap(t.Context(), []byte("kek"), nil); err != nil {
		t.Fatalf("Wrap while the token still serves: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "renewing the token failed") {
		if time.Now().After(deadline) {
			t.Fatalf("no log line for the failed renewal within 5s; logs: %q", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := logs.String(); !strings.Contains(got, "token_expires") || strings.Contains(got, "s3cret") {
		t.Errorf("log: %q, want the token's expiry and no secret", got)
	}
}

func TestConfigIsValidated(t *testing.T) {
	cases := map[string]vault.Config{
		"no address":               {KeyName: "k", Auth: vault.Auth{Token: "t"}},
		"no key":                   {Address: "https://v", Auth: vault.Auth{Token: "t"}},
		"no auth":                  {Address: "https://v", KeyName: "k"},
		"two auth methods":         {Address: "https://v", KeyName: "k", Auth: vault.Auth{Token: "t", TokenFile: "/f"}},
		"AppRole without role_id":  {Address: "https://v", KeyName: "k", Auth: vault.Auth{AppRole: &vault.AppRole{SecretID: "s"}}},
		"AppRole with two secrets": {Address: "https://v", KeyName: "k", Auth: vault.Auth{AppRole: &vault.AppRole{RoleID: "r", SecretID: "s", SecretIDFile: "/f"}}},
		"cert without key":         {Address: "https://v", KeyName: "k", Auth: vault.Auth{Cert: &vault.Cert{CertFile: "/c"}}},
		"plain http to a remote":   {Address: "http://vault.example.com:8200", KeyName: "k", Auth: vault.Auth{Token: "t"}},
		"no URL":                   {Address: "vault.example.com:8200", KeyName: "k", Auth: vault.Auth{Token: "t"}},
	}
	// A Vault Agent's socket is local: accepted by the constructor.
	if _, err := vault.NewUnchecked(vault.Config{Address: "unix:///run/vault-agent.sock", KeyName: "k", Auth: vault.Auth{Token: "t"}}); err != nil {
		t.Errorf("a unix socket address: %v", err)
	}
	for name, cfg := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := vault.New(t.Context(), cfg); err == nil {
				t.Fatal("New succeeded")
			}
			if _, err := vault.NewUnchecked(cfg); err == nil {
				t.Fatal("NewUnchecked succeeded")
			}
		})
	}
}

// writeSecretID writes an AppRole secret_id file ("s3cret") and returns
// its path.
func writeSecretID(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret-id")
	if err := os.WriteFile(p, []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// A 403 for a token that still looks itself up is the policy's answer:
// the provider does not log in again for it on every call (each login is
// a token, a lease and one use of a secret_id that may allow only a few).
// A token Vault no longer knows is logged in again at once (the real-Vault
// tests revoke one).
func TestAPolicyRefusalDoesNotLogInOnEveryCall(t *testing.T) {
	f := newFakeVault(t)
	secretFile := writeSecretID(t)
	r, err := vault.New(t.Context(), f.config(vault.Auth{AppRole: &vault.AppRole{RoleID: "role", SecretIDFile: secretFile}}))
	if err != nil {
		t.Fatal(err)
	}
	before := f.logins.Load()
	f.failWith.Store(&cannedError{403, `{"errors":["1 error occurred:\n\t* permission denied\n\n"]}`})
	for range 10 {
		if _, err := r.Wrap(t.Context(), []byte("kek"), nil); !errors.Is(err, vault.ErrPermissionDenied) {
			t.Fatalf("Wrap refused by the policy: %v, want ErrPermissionDenied", err)
		}
	}
	if n := f.logins.Load() - before; n != 0 {
		t.Fatalf("%d logins for 10 calls the policy refused; want none", n)
	}
	// The token revoked: the next call logs in again and goes through.
	f.failWith.Store(nil)
	f.mu.Lock()
	clear(f.tokens)
	f.mu.Unlock()
	if _, err := r.Wrap(t.Context(), []byte("kek"), nil); err != nil {
		t.Fatalf("Wrap after the token was revoked: %v", err)
	}
	if n := f.logins.Load() - before; n != 1 {
		t.Fatalf("%d logins after the revocation; want 1", n)
	}
}
