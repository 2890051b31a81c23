package vaulttest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/roottest"
	vaultroot "github.com/custos-kms/custos/keystore/root/vault"
)

func (v *testVault) config(auth vaultroot.Auth) vaultroot.Config {
	return vaultroot.Config{
		Address:    v.addr,
		KeyName:    keyName,
		CACertFile: v.caFile,
		Auth:       auth,
	}
}

func newRoot(t *testing.T, cfg vaultroot.Config) *vaultroot.Root {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	r, err := vaultroot.New(ctx, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r
}

func TestConformanceWithAPolicyToken(t *testing.T) {
	v := startVault(t)
	r := newRoot(t, v.config(vaultroot.Auth{Token: v.token(t, "custos")}))
	roottest.Test(t, r)
}

func TestSealedVaultIsUnavailableAndRecovers(t *testing.T) {
	v := startVault(t)
	r := newRoot(t, v.config(vaultroot.Auth{Token: v.token(t, "custos")}))
	roottest.TestUnavailable(t, r, func() { v.seal(t) }, func() { v.unseal(t) })
}

func TestStoppedVaultIsUnavailable(t *testing.T) {
	// The cluster's HTTPS server closed, listener and connections:
	// connection refused, as when the Vault process is down. (The test
	// cluster cannot reopen it, so recovery is covered by the sealing test.)
	v := startVault(t)
	r := newRoot(t, v.config(vaultroot.Auth{Token: v.token(t, "custos")}))
	w, err := r.Wrap(t.Context(), []byte("0123456789abcdef0123456789abcdef"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	if err := v.core.Server.Close(); err != nil { // the listener and every open connection
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := r.Wrap(ctx, []byte("k"), []byte("aad")); !errors.Is(err, root.ErrUnavailable) {
		t.Fatalf("Wrap with Vault's server closed: %v; want ErrUnavailable", err)
	}
	if _, err := r.Unwrap(ctx, w, []byte("aad")); !errors.Is(err, root.ErrUnavailable) {
		t.Fatalf("Unwrap with Vault's server closed: %v; want ErrUnavailable", err)
	}
}

func TestRotationKeepsOldBlobsAndWrapsUnderTheNewVersion(t *testing.T) {
	v := startVault(t)
	r := newRoot(t, v.config(vaultroot.Auth{Token: v.token(t, "custos")}))
	ctx := t.Context()
	kek := bytes.Repeat([]byte{7}, 32)
	aad := []byte("custos:tenant:acme")
	old, err := r.Wrap(ctx, kek, aad)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := vaultroot.KeyVersion(old); err != nil || n != 1 {
		t.Fatalf("KeyVersion before rotation = %d, %v; want 1", n, err)
	}
	if _, err := v.admin.Logical().Write("transit/keys/"+keyName+"/rotate", nil); err != nil {
		t.Fatal(err)
	}
	fresh, err := r.Wrap(ctx, kek, aad)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := vaultroot.KeyVersion(fresh); err != nil || n != 2 {
		t.Fatalf("KeyVersion after rotation = %d, %v; want 2", n, err)
	}
	for name, blob := range map[string][]byte{"v1": old, "v2": fresh} {
		got, err := r.Unwrap(ctx, blob, aad)
		if err != nil || !bytes.Equal(got, kek) {
			t.Fatalf("Unwrap %s blob after rotation: %v", name, err)
		}
	}
	// Relabelling the v1 blob as v2 must not unwrap: the version is bound.
	relabelled := bytes.Clone(old)
	relabelled[4] = 2
	if _, err := r.Unwrap(ctx, relabelled, aad); !errors.Is(err, root.ErrNotAuthentic) {
		t.Fatalf("v1 blob relabelled v2: %v; want ErrNotAuthentic", err)
	}
	// Once v1 is below the minimum decryption version, its blobs are refused
	// for good (not retryable).
	if _, err := v.admin.Logical().Write("transit/keys/"+keyName+"/config", map[string]any{"min_decryption_version": 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Unwrap(ctx, old, aad); !errors.Is(err, root.ErrNotAuthentic) {
		t.Fatalf("v1 blob below min_decryption_version: %v; want ErrNotAuthentic", err)
	}
}

func TestTokenFileIsReReadWhenVaultRefusesTheToken(t *testing.T) {
	v := startVault(t)
	file := filepath.Join(t.TempDir(), "token")
	first := v.token(t, "custos")
	writeFile(t, file, first+"\n")
	r := newRoot(t, v.config(vaultroot.Auth{TokenFile: file}))
	ctx := t.Context()
	if _, err := r.Wrap(ctx, []byte("k"), nil); err != nil {
		t.Fatal(err)
	}
	if err := v.admin.Auth().Token().RevokeOrphan(first); err != nil {
		t.Fatal(err)
	}
	writeFile(t, file, v.token(t, "custos"))
	if _, err := r.Wrap(ctx, []byte("k"), nil); err != nil {
		t.Fatalf("Wrap after the token in the file was replaced: %v", err)
	}
}

func TestAPolicyWithoutDecryptIsPermissionDeniedNotUnavailable(t *testing.T) {
	v := startVault(t)
	if err := v.admin.Sys().PutPolicy("encrypt-only", `
path "transit/encrypt/custos-root" { capabilities = ["update"] }
path "transit/keys/custos-root"    { capabilities = ["read"] }
`); err != nil {
		t.Fatal(err)
	}
	r := newRoot(t, v.config(vaultroot.Auth{Token: v.token(t, "encrypt-only")}))
	w, err := r.Wrap(t.Context(), []byte("k"), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Unwrap(t.Context(), w, nil)
	if !errors.Is(err, vaultroot.ErrPermissionDenied) || errors.Is(err, root.ErrUnavailable) || errors.Is(err, root.ErrNotAuthentic) {
		t.Fatalf("Unwrap without decrypt capability: %v; want ErrPermissionDenied only", err)
	}
	// New refuses a token that cannot read the key at all.
	if err := v.admin.Sys().PutPolicy("no-read", `path "transit/encrypt/custos-root" { capabilities = ["update"] }`); err != nil {
		t.Fatal(err)
	}
	_, err = vaultroot.New(t.Context(), v.config(vaultroot.Auth{Token: v.token(t, "no-read")}))
	if !errors.Is(err, vaultroot.ErrPermissionDenied) {
		t.Fatalf("New with a token that cannot read the key: %v; want ErrPermissionDenied", err)
	}
}

func TestNewRefusesKeysThatCannotBindAssociatedData(t *testing.T) {
	v := startVault(t)
	if err := v.admin.Sys().PutPolicy("any-key", `path "transit/keys/*" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	token := v.token(t, "any-key")
	cases := map[string]map[string]any{
		"chacha20-poly1305":         {"type": "chacha20-poly1305"},
		"rsa-2048":                  {"type": "rsa-2048"},
		"a derived aes256-gcm96":    {"type": "aes256-gcm96", "derived": true},
		"a convergent aes256-gcm96": {"type": "aes256-gcm96", "derived": true, "convergent_encryption": true},
	}
	for name, params := range cases {
		t.Run(name, func(t *testing.T) {
			key := strings.NewReplacer(" ", "-").Replace(name)
			if _, err := v.admin.Logical().Write("transit/keys/"+key, params); err != nil {
				t.Fatal(err)
			}
			cfg := v.config(vaultroot.Auth{Token: token})
			cfg.KeyName = key
			if _, err := vaultroot.New(t.Context(), cfg); err == nil || !strings.Contains(err.Error(), "aes256-gcm96") {
				t.Fatalf("New with a %s key: %v; want a refusal naming aes256-gcm96", name, err)
			}
		})
	}
	cfg := v.config(vaultroot.Auth{Token: token})
	cfg.KeyName = "missing"
	if _, err := vaultroot.New(t.Context(), cfg); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("New with a missing key: %v; want not found", err)
	}
}

// TestNewRefusesExportableKeys: a key whose material Vault would hand out
// (exportable, allow_plaintext_backup; neither can be unset) is refused
// unless AllowKeyExport accepts it, and then a warning names the flags.
func TestNewRefusesExportableKeys(t *testing.T) {
	v := startVault(t)
	if err := v.admin.Sys().PutPolicy("export-keys", `
path "transit/keys/export-*" { capabilities = ["read"] }
path "transit/encrypt/export-*" { capabilities = ["update"] }
path "transit/decrypt/export-*" { capabilities = ["update"] }
`); err != nil {
		t.Fatal(err)
	}
	token := v.token(t, "export-keys")
	cases := map[string]map[string]any{
		"exportable":             {"type": "aes256-gcm96", "exportable": true},
		"allow_plaintext_backup": {"type": "aes256-gcm96", "allow_plaintext_backup": true},
	}
	for flag, params := range cases {
		t.Run(flag, func(t *testing.T) {
			key := "export-" + strings.ReplaceAll(flag, "_", "-")
			if _, err := v.admin.Logical().Write("transit/keys/"+key, params); err != nil {
				t.Fatal(err)
			}
			cfg := v.config(vaultroot.Auth{Token: token})
			cfg.KeyName = key
			if _, err := vaultroot.New(t.Context(), cfg); err == nil || !strings.Contains(err.Error(), flag) || !strings.Contains(err.Error(), "allow_key_export") {
				t.Fatalf("New with a key %s: %v; want a refusal naming %s and allow_key_export", flag, err, flag)
			}
			var logs bytes.Buffer
			cfg.AllowKeyExport = true
			cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			r := newRoot(t, cfg)
			if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), flag) {
				t.Fatalf("accepted with AllowKeyExport, the log says %q; want a warning naming %s", logs.String(), flag)
			}
			roottest.Test(t, r)
		})
	}
}

// A Vault Agent (or Vault Proxy) listening on a unix socket: stood in for
// by a reverse proxy on a socket that forwards to the test cluster over
// TLS, as the agent's API proxy does.
func TestThroughAVaultAgentSocket(t *testing.T) {
	v := startVault(t)
	caPEM, err := os.ReadFile(v.caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("the cluster's CA does not parse")
	}
	target, err := url.Parse(v.addr)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: proxy, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	r := newRoot(t, vaultroot.Config{Address: "unix://" + sock, KeyName: keyName, Auth: vaultroot.Auth{Token: v.token(t, "custos")}})
	roottest.Test(t, r)
}

func TestAppRole(t *testing.T) {
	v := startVault(t)
	if err := v.admin.Sys().EnableAuthWithOptions("approle", &api.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatal(err)
	}
	// A short token TTL, so the test sees the provider log in again.
	if _, err := v.admin.Logical().Write("auth/approle/role/custos", map[string]any{
		"token_policies": "custos",
		"token_ttl":      "3s",
		"token_max_ttl":  "3s",
	}); err != nil {
		t.Fatal(err)
	}
	s, err := v.admin.Logical().Read("auth/approle/role/custos/role-id")
	if err != nil {
		t.Fatal(err)
	}
	roleID := s.Data["role_id"].(string)
	s, err = v.admin.Logical().Write("auth/approle/role/custos/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(t.TempDir(), "secret-id")
	writeFile(t, secretFile, s.Data["secret_id"].(string))

	r := newRoot(t, v.config(vaultroot.Auth{AppRole: &vaultroot.AppRole{RoleID: roleID, SecretIDFile: secretFile}}))
	t.Run("passes the conformance suite", func(t *testing.T) { roottest.Test(t, r) })

	ctx := t.Context()
	kek := bytes.Repeat([]byte{9}, 32)
	w, err := r.Wrap(ctx, kek, []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("logs in again when the token expires", func(t *testing.T) {
		time.Sleep(3500 * time.Millisecond) // past the 3 s TTL
		if got, err := r.Unwrap(ctx, w, []byte("aad")); err != nil || !bytes.Equal(got, kek) {
			t.Fatalf("Unwrap after the token's TTL: %v", err)
		}
	})
	t.Run("logs in again when Vault refuses a revoked token", func(t *testing.T) {
		if _, err := v.admin.Logical().Write("sys/leases/revoke-prefix/auth/approle/login", nil); err != nil {
			t.Fatal(err)
		}
		if n := v.liveTokens(t, "auth/approle/login"); n != 0 {
			t.Fatalf("%d AppRole tokens still live after revoking them all", n)
		}
		if _, err := r.Wrap(ctx, kek, []byte("aad")); err != nil {
			t.Fatalf("Wrap after the provider's token was revoked: %v", err)
		}
		if n := v.liveTokens(t, "auth/approle/login"); n != 1 {
			t.Fatalf("%d live AppRole tokens after Wrap; want 1, from the provider's fresh login", n)
		}
	})
	t.Run("a wrong secret_id is permission denied at New", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad")
		writeFile(t, bad, "00000000-0000-0000-0000-000000000000")
		_, err := vaultroot.New(ctx, v.config(vaultroot.Auth{AppRole: &vaultroot.AppRole{RoleID: roleID, SecretIDFile: bad}}))
		if !errors.Is(err, vaultroot.ErrPermissionDenied) || errors.Is(err, root.ErrUnavailable) {
			t.Fatalf("New with a wrong secret_id: %v; want ErrPermissionDenied", err)
		}
		if strings.Contains(err.Error(), "00000000-0000") {
			t.Fatalf("the error reveals the secret_id: %v", err)
		}
	})
}

func TestTLSCertificateAuth(t *testing.T) {
	v := startVault(t)
	if err := v.admin.Sys().EnableAuthWithOptions("cert", &api.EnableAuthOptions{Type: "cert"}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caPEM, certFile, keyFile := clientCertificate(t, dir)
	if _, err := v.admin.Logical().Write("auth/cert/certs/custos", map[string]any{
		"certificate":    string(caPEM),
		"token_policies": "custos",
	}); err != nil {
		t.Fatal(err)
	}
	r := newRoot(t, v.config(vaultroot.Auth{Cert: &vaultroot.Cert{Role: "custos", CertFile: certFile, KeyFile: keyFile}}))
	roottest.Test(t, r)

	// A certificate from another CA is refused as a misconfiguration.
	_, otherCert, otherKey := clientCertificate(t, t.TempDir())
	_, err := vaultroot.New(t.Context(), v.config(vaultroot.Auth{Cert: &vaultroot.Cert{Role: "custos", CertFile: otherCert, KeyFile: otherKey}}))
	if !errors.Is(err, vaultroot.ErrPermissionDenied) {
		t.Fatalf("New with a certificate Vault does not trust: %v; want ErrPermissionDenied", err)
	}
}

// The client certificate and key are read again for each login: files
// renewed in place (cert-manager, Vault Agent) are presented from the next
// login on. Here Vault's role moves to another CA, the files to a
// certificate from it, and the provider's token is revoked.
func TestTLSCertificateAuthReadsRenewedFiles(t *testing.T) {
	v := startVault(t)
	if err := v.admin.Sys().EnableAuthWithOptions("cert", &api.EnableAuthOptions{Type: "cert"}); err != nil {
		t.Fatal(err)
	}
	caPEM, certFile, keyFile := clientCertificate(t, t.TempDir())
	trust := func(ca []byte) {
		t.Helper()
		if _, err := v.admin.Logical().Write("auth/cert/certs/custos", map[string]any{
			"certificate":    string(ca),
			"token_policies": "custos",
		}); err != nil {
			t.Fatal(err)
		}
	}
	trust(caPEM)
	r := newRoot(t, v.config(vaultroot.Auth{Cert: &vaultroot.Cert{Role: "custos", CertFile: certFile, KeyFile: keyFile}}))
	ctx := t.Context()
	if _, err := r.Wrap(ctx, []byte("kek"), []byte("aad")); err != nil {
		t.Fatal(err)
	}

	newCA, newCert, newKey := clientCertificate(t, t.TempDir())
	trust(newCA)
	for src, dst := range map[string]string{newCert: certFile, newKey: keyFile} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, dst, string(b))
	}
	if _, err := v.admin.Logical().Write("sys/leases/revoke-prefix/auth/cert/login", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Wrap(ctx, []byte("kek"), []byte("aad")); err != nil {
		t.Fatalf("Wrap after the certificate files were renewed and the token revoked: %v", err)
	}
}

// clientCertificate writes a fresh CA-signed client certificate and key to
// dir and returns the CA's PEM and the two file names.
func clientCertificate(t *testing.T, dir string) (caPEM []byte, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "custos test client CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "custos"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	writeFile(t, certFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER})))
	writeFile(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})))
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), certFile, keyFile
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
