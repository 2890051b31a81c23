package client_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/internal/pki"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// newClient returns a client of env's server, closed at cleanup.
func newClient(t *testing.T, env *testEnv) *client.Client {
	t.Helper()
	c, err := client.New(t.Context(), client.Config{
		Address:  env.addr,
		CAFile:   env.caFile,
		CertFile: env.certFile,
		KeyFile:  env.keyFile,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// setupKey makes tenant "acme" with ENCRYPT key "pii" and returns the key's
// name.
func setupKey(t *testing.T, c *client.Client) string {
	t.Helper()
	ctx := t.Context()
	if _, err := c.CreateTenant(ctx, "acme"); err != nil {
		t.Fatalf("CreateTenant: %v", err)
	}
	k, err := c.CreateKey(ctx, client.TenantName("acme"), "pii", client.KeySpec{Purpose: client.PurposeEncrypt})
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	return k.Name
}

// sentinels are every sentinel of package client, by name.
var sentinels = []struct {
	name string
	err  error
}{
	{"ErrInvalidArgument", client.ErrInvalidArgument},
	{"ErrInvalidCiphertext", client.ErrInvalidCiphertext},
	{"ErrNotFound", client.ErrNotFound},
	{"ErrAlreadyExists", client.ErrAlreadyExists},
	{"ErrPermissionDenied", client.ErrPermissionDenied},
	{"ErrUnauthenticated", client.ErrUnauthenticated},
	{"ErrFailedPrecondition", client.ErrFailedPrecondition},
	{"ErrTenantDeleted", client.ErrTenantDeleted},
	{"ErrKeyVersionDisabled", client.ErrKeyVersionDisabled},
	{"ErrKeyVersionDestroyed", client.ErrKeyVersionDestroyed},
	{"ErrKeyVersionTooOld", client.ErrKeyVersionTooOld},
	{"ErrWrongPurpose", client.ErrWrongPurpose},
	{"ErrPrimaryVersion", client.ErrPrimaryVersion},
	{"ErrWrongState", client.ErrWrongState},
	{"ErrResourceExhausted", client.ErrResourceExhausted},
	{"ErrHashQueueFull", client.ErrHashQueueFull},
	{"ErrSubjectLocked", client.ErrSubjectLocked},
	{"ErrUnavailable", client.ErrUnavailable},
	{"ErrAborted", client.ErrAborted},
	{"ErrClosed", client.ErrClosed},
}

// checkSentinels fails unless err matches exactly the sentinels in want.
func checkSentinels(t *testing.T, err error, want ...error) {
	t.Helper()
	if err == nil {
		t.Fatalf("err = nil, want an error matching %v", want)
	}
	for _, s := range sentinels {
		wantMatch := false
		for _, w := range want {
			if w == s.err {
				wantMatch = true
			}
		}
		if got := errors.Is(err, s.err); got != wantMatch {
			t.Errorf("errors.Is(%q, %s) = %v, want %v", err, s.name, got, wantMatch)
		}
	}
}

func TestNewRejectsConfigsWithoutMutualTLS(t *testing.T) {
	env := startEnv(t)
	pair, err := tls.LoadX509KeyPair(env.certFile, env.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  client.Config
	}{
		{"an empty address is refused", client.Config{CAFile: env.caFile, CertFile: env.certFile, KeyFile: env.keyFile}},
		{"no TLS settings at all are refused", client.Config{Address: env.addr}},
		{"a CA file without a client certificate is refused", client.Config{Address: env.addr, CAFile: env.caFile}},
		{"a client certificate without a CA file is refused", client.Config{Address: env.addr, CertFile: env.certFile, KeyFile: env.keyFile}},
		{"both TLSConfig and PEM files are refused", client.Config{Address: env.addr, CAFile: env.caFile, CertFile: env.certFile, KeyFile: env.keyFile, TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair}}}},
		{"a TLSConfig without a client certificate is refused", client.Config{Address: env.addr, TLSConfig: &tls.Config{}}},
		{"a TLSConfig capped below TLS 1.3 is refused", client.Config{Address: env.addr, TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair}, MaxVersion: tls.VersionTLS12}}},
		{"InsecureSkipVerify without a verifier is refused", client.Config{Address: env.addr, TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair}, InsecureSkipVerify: true}}},
		{"a missing CA file is refused", client.Config{Address: env.addr, CAFile: env.caFile + ".missing", CertFile: env.certFile, KeyFile: env.keyFile}},
		{"a CA file without certificates is refused", client.Config{Address: env.addr, CAFile: env.keyFile, CertFile: env.certFile, KeyFile: env.keyFile}},
		{"a key that does not match the certificate is refused", client.Config{Address: env.addr, CAFile: env.caFile, CertFile: env.certFile, KeyFile: env.caFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := client.New(t.Context(), tt.cfg)
			if err == nil {
				c.Close()
				t.Fatal("New succeeded, want an error")
			}
		})
	}
}

func TestNewFailsOnADoneContext(t *testing.T) {
	env := startEnv(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := client.New(ctx, client.Config{Address: env.addr, CAFile: env.caFile, CertFile: env.certFile, KeyFile: env.keyFile})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("New with a canceled context: err = %v, want context.Canceled", err)
	}
}

func TestClientWithTLSConfigConnects(t *testing.T) {
	env := startEnv(t)
	pair, err := tls.LoadX509KeyPair(env.certFile, env.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(env.caPEM)
	// MinVersion 1.2 is raised to 1.3, and the caller's config is untouched.
	tc := &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	c, err := client.New(t.Context(), client.Config{Address: env.addr, TLSConfig: tc})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer c.Close()
	if _, err := c.CreateTenant(t.Context(), "acme"); err != nil {
		t.Fatalf("CreateTenant over a TLSConfig client: %v", err)
	}
	if tc.MinVersion != tls.VersionTLS12 {
		t.Errorf("New modified the caller's TLSConfig: MinVersion = %x", tc.MinVersion)
	}
}

func TestDialOptionsCannotMakeTheConnectionPlaintext(t *testing.T) {
	env := startEnv(t)
	c, err := client.New(t.Context(), client.Config{
		Address:     env.addr,
		CAFile:      env.caFile,
		CertFile:    env.certFile,
		KeyFile:     env.keyFile,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer c.Close()
	// The server only speaks mutual TLS, so a call that succeeds went over it.
	if _, err := c.CreateTenant(t.Context(), "acme"); err != nil {
		t.Fatalf("CreateTenant: %v", err)
	}
}

func TestServerRequiresAClientCertificate(t *testing.T) {
	env := startEnv(t)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(env.caPEM)

	call := func(t *testing.T, tc *tls.Config) error {
		conn, err := grpc.NewClient(env.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		_, err = custosv1.NewKeyServiceClient(conn).GetTenant(ctx, &custosv1.GetTenantRequest{Name: "tenants/acme"})
		return err
	}

	t.Run("a caller without a certificate cannot call", func(t *testing.T) {
		err := call(t, &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13})
		if code := status.Code(err); code != codes.Unavailable {
			t.Fatalf("call without a client certificate: %v (code %v), want the handshake to fail (Unavailable)", err, code)
		}
	})
	t.Run("a caller whose certificate another CA signed cannot call", func(t *testing.T) {
		other, err := pki.NewCA("other CA", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		certPEM, keyPEM, err := other.Issue(pki.IssueRequest{CommonName: "intruder", Client: true, Validity: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		err = call(t, &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13})
		if code := status.Code(err); code != codes.Unavailable {
			t.Fatalf("call with a foreign client certificate: %v (code %v), want the handshake to fail (Unavailable)", err, code)
		}
	})
	t.Run("a client that does not trust the server's CA cannot call", func(t *testing.T) {
		other, err := pki.NewCA("other CA", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		ca := dir + "/other-ca.pem"
		if err := os.WriteFile(ca, other.CertPEM(), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := client.New(t.Context(), client.Config{Address: env.addr, CAFile: ca, CertFile: env.certFile, KeyFile: env.keyFile})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.GetTenant(t.Context(), client.TenantName("acme"))
		// Not UNAVAILABLE, which callers retry: no retry can help.
		checkSentinels(t, err, client.ErrUnauthenticated)
	})
}

func TestTenants(t *testing.T) {
	env := startEnv(t)
	c := newClient(t, env)
	ctx := t.Context()

	created, err := c.CreateTenant(ctx, "acme")
	if err != nil {
		t.Fatalf("CreateTenant: %v", err)
	}
	want := client.Tenant{Name: "tenants/acme", ID: "acme", State: client.TenantActive, CreateTime: env.now}
	if !equalTenant(created, want) {
		t.Errorf("CreateTenant = %+v, want %+v", created, want)
	}
	got, err := c.GetTenant(ctx, client.TenantName("acme"))
	if err != nil {
		t.Fatalf("GetTenant: %v", err)
	}
	if !equalTenant(got, want) {
		t.Errorf("GetTenant = %+v, want %+v", got, want)
	}

	_, err = c.CreateTenant(ctx, "acme")
	checkSentinels(t, err, client.ErrAlreadyExists)
	_, err = c.GetTenant(ctx, client.TenantName("nobody"))
	checkSentinels(t, err, client.ErrNotFound)
	_, err = c.CreateTenant(ctx, "Not_An_ID")
	checkSentinels(t, err, client.ErrInvalidArgument)

	env.scheduleTenantDeletion(t, "acme")
	got, err = c.GetTenant(ctx, client.TenantName("acme"))
	if err != nil {
		t.Fatalf("GetTenant of a tenant scheduled for deletion: %v", err)
	}
	if got.State != client.TenantDeleteScheduled || !got.DeleteTime.Equal(env.now.Add(30*24*time.Hour)) {
		t.Errorf("GetTenant after deletion = %+v, want DELETE_SCHEDULED with a delete time", got)
	}
}

func equalTenant(a, b client.Tenant) bool {
	return a.Name == b.Name && a.ID == b.ID && a.State == b.State && a.CreateTime.Equal(b.CreateTime) && a.DeleteTime.Equal(b.DeleteTime)
}

func TestKeys(t *testing.T) {
	env := startEnv(t)
	c := newClient(t, env)
	ctx := t.Context()
	if _, err := c.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}

	k, err := c.CreateKey(ctx, client.TenantName("acme"), "pii", client.KeySpec{Purpose: client.PurposeEncrypt, RotationPeriod: 90 * 24 * time.Hour})
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	if k.Name != "tenants/acme/keys/pii" || k.Purpose != client.PurposeEncrypt || k.PrimaryVersion != 1 ||
		k.RotationPeriod != 90*24*time.Hour || !k.NextRotationTime.Equal(env.now.Add(90*24*time.Hour)) ||
		len(k.Versions) != 1 || k.Versions[0].State != client.VersionEnabled || !k.CreateTime.Equal(env.now) {
		t.Errorf("CreateKey = %+v", k)
	}

	if _, _, err := c.Encrypt(ctx, k.Name, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	rotated, err := c.RotateKey(ctx, k.Name)
	if err != nil {
		t.Fatalf("RotateKey: %v", err)
	}
	if rotated.PrimaryVersion != 2 || len(rotated.Versions) != 2 || rotated.Versions[1].Version != 2 {
		t.Errorf("RotateKey = %+v, want primary version 2 of 2", rotated)
	}
	env.waitForEncryptCounts(t, k.Name, 1, 0)

	_, err = c.CreateKey(ctx, client.TenantName("acme"), "pii", client.KeySpec{Purpose: client.PurposeEncrypt})
	checkSentinels(t, err, client.ErrAlreadyExists)
	_, err = c.CreateKey(ctx, client.TenantName("nobody"), "pii", client.KeySpec{Purpose: client.PurposeEncrypt})
	checkSentinels(t, err, client.ErrNotFound)
	_, err = c.CreateKey(ctx, client.TenantName("acme"), "nopurpose", client.KeySpec{})
	checkSentinels(t, err, client.ErrInvalidArgument)
	_, err = c.GetKey(ctx, client.KeyName("acme", "nothing"))
	checkSentinels(t, err, client.ErrNotFound)
	_, err = c.RotateKey(ctx, "not a name")
	checkSentinels(t, err, client.ErrInvalidArgument)

	env.scheduleTenantDeletion(t, "acme")
	_, err = c.CreateKey(ctx, client.TenantName("acme"), "late", client.KeySpec{Purpose: client.PurposeEncrypt})
	checkSentinels(t, err, client.ErrTenantDeleted, client.ErrFailedPrecondition)
}

func TestListTenantsPagesByToken(t *testing.T) {
	env := startEnv(t)
	c := newClient(t, env)
	ctx := t.Context()
	for i := range 7 {
		if _, err := c.CreateTenant(ctx, "t"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	token := ""
	pages := 0
	for {
		page, next, err := c.ListTenants(ctx, client.ListOptions{PageSize: 3, PageToken: token})
		if err != nil {
			t.Fatalf("ListTenants page %d: %v", pages, err)
		}
		pages++
		for _, tn := range page {
			names = append(names, tn.ID)
		}
		if next == "" {
			break
		}
		token = next
	}
	if pages != 3 || len(names) != 7 || names[0] != "t0" || names[6] != "t6" {
		t.Errorf("ListTenants by 3: %d pages, ids %v; want 3 pages of t0…t6", pages, names)
	}

	_, _, err := c.ListTenants(ctx, client.ListOptions{PageSize: -1})
	checkSentinels(t, err, client.ErrInvalidArgument)
	_, _, err = c.ListTenants(ctx, client.ListOptions{PageSize: 5000})
	checkSentinels(t, err, client.ErrInvalidArgument)
	_, _, err = c.ListTenants(ctx, client.ListOptions{PageToken: "!!not a token!!"})
	checkSentinels(t, err, client.ErrInvalidArgument)
}

func TestAllTenantsWalksThreePages(t *testing.T) {
	env := startEnv(t)
	c := newClient(t, env)
	ctx := t.Context()
	for i := range 8 {
		if _, err := c.CreateTenant(ctx, "t"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	env.hooks.setPageSize(3)
	const method = "/custos.v1.KeyService/ListTenants"

	t.Run("every tenant is yielded once, in order, over three calls", func(t *testing.T) {
		before := env.hooks.callCount(method)
		var ids []string
		for tn, err := range c.AllTenants(ctx) {
			if err != nil {
				t.Fatalf("AllTenants: %v", err)
			}
			ids = append(ids, tn.ID)
		}
		if want := []string{"t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"}; !slices.Equal(ids, want) {
			t.Errorf("AllTenants ids = %v, want %v", ids, want)
		}
		if calls := env.hooks.callCount(method) - before; calls != 3 {
			t.Errorf("AllTenants made %d ListTenants calls, want 3", calls)
		}
	})
	t.Run("breaking out of the loop stops paging", func(t *testing.T) {
		before := env.hooks.callCount(method)
		for range c.AllTenants(ctx) {
			break
		}
		if calls := env.hooks.callCount(method) - before; calls != 1 {
			t.Errorf("after break: %d ListTenants calls, want 1", calls)
		}
	})
	t.Run("a failure on a later page is yielded once and ends the loop", func(t *testing.T) {
		var ids []string
		var errs []error
		for tn, err := range c.AllTenants(ctx) {
			if err != nil {
				errs = append(errs, err)
				continue
			}
			ids = append(ids, tn.ID)
			if len(ids) == 3 {
				env.hooks.injectNext(status.Error(codes.Unavailable, "storage unreachable"))
			}
		}
		if len(ids) != 3 || len(errs) != 1 {
			t.Fatalf("got %d tenants and errors %v; want 3 tenants then one error", len(ids), errs)
		}
		checkSentinels(t, errs[0], client.ErrUnavailable)
	})
}

func TestAllKeysWalksThreePages(t *testing.T) {
	env := startEnv(t)
	c := newClient(t, env)
	ctx := t.Context()
	if _, err := c.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	for i := range 7 {
		if _, err := c.CreateKey(ctx, client.TenantName("acme"), "k"+strconv.Itoa(i), client.KeySpec{Purpose: client.PurposeEncrypt}); err != nil {
			t.Fatal(err)
		}
	}
	env.hooks.setPageSize(3)
	const method = "/custos.v1.KeyService/ListKeys"
	before := env.hooks.callCount(method)
	var names []string
	for k, err := range c.AllKeys(ctx, client.TenantName("acme")) {
		if err != nil {
			t.Fatalf("AllKeys: %v", err)
		}
		names = append(names, k.Name)
	}
	if len(names) != 7 || names[0] != client.KeyName("acme", "k0") || names[6] != client.KeyName("acme", "k6") {
		t.Errorf("AllKeys = %v, want k0…k6", names)
	}
	if calls := env.hooks.callCount(method) - before; calls != 3 {
		t.Errorf("AllKeys made %d ListKeys calls, want 3", calls)
	}

	for _, err := range c.AllKeys(ctx, client.TenantName("nobody")) {
		checkSentinels(t, err, client.ErrNotFound)
	}
}

func TestEncryptDecrypt(t *testing.T) {
	env := startEnv(t)
	c := newClient(t, env)
	ctx := t.Context()
	name := setupKey(t, c)
	ad := client.AssociatedData("users", "42", "email")

	ct, v, err := c.Encrypt(ctx, name, []byte("alice@example.com"), ad)
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	if v != 1 || len(ct) == 0 || bytes.Contains(ct, []byte("alice")) {
		t.Fatalf("Encrypt = %x, version %d", ct, v)
	}
	pt, v, err := c.Decrypt(ctx, name, ct, ad)
	if err != nil || string(pt) != "alice@example.com" || v != 1 {
		t.Fatalf("Decrypt = %q, %d, %v", pt, v, err)
	}

	t.Run("the wrong associated data is an invalid ciphertext", func(t *testing.T) {
		_, _, err := c.Decrypt(ctx, name, ct, client.AssociatedData("users", "43", "email"))
		checkSentinels(t, err, client.ErrInvalidCiphertext, client.ErrInvalidArgument)
		var e *client.Error
		if !errors.As(err, &e) || e.Code != codes.InvalidArgument || e.Reason != client.ReasonCiphertextNotAuthentic {
			t.Errorf("errors.As: %+v", e)
		}
	})
	t.Run("missing associated data is an invalid ciphertext", func(t *testing.T) {
		_, _, err := c.Decrypt(ctx, name, ct, nil)
		checkSentinels(t, err, client.ErrInvalidCiphertext, client.ErrInvalidArgument)
	})
	t.Run("a bit-flipped ciphertext is an invalid ciphertext", func(t *testing.T) {
		for _, i := range []int{0, 4, 10, len(ct) - 1} {
			bad := bytes.Clone(ct)
			bad[i] ^= 0x01
			_, _, err := c.Decrypt(ctx, name, bad, ad)
			checkSentinels(t, err, client.ErrInvalidCiphertext, client.ErrInvalidArgument)
		}
	})
	t.Run("a truncated ciphertext is an invalid ciphertext", func(t *testing.T) {
		_, _, err := c.Decrypt(ctx, name, ct[:len(ct)-1], ad)
		checkSentinels(t, err, client.ErrInvalidCiphertext, client.ErrInvalidArgument)
	})
	t.Run("a ciphertext of another key is an invalid ciphertext", func(t *testing.T) {
		if _, err := c.CreateKey(ctx, client.TenantName("acme"), "other", client.KeySpec{Purpose: client.PurposeEncrypt}); err != nil {
			t.Fatal(err)
		}
		_, _, err := c.Decrypt(ctx, client.KeyName("acme", "other"), ct, ad)
		checkSentinels(t, err, client.ErrInvalidCiphertext, client.ErrInvalidArgument)
	})
	t.Run("nil associated data round-trips with nil", func(t *testing.T) {
		ct, _, err := c.Encrypt(ctx, name, []byte("x"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if pt, _, err := c.Decrypt(ctx, name, ct, nil); err != nil || string(pt) != "x" {
			t.Fatalf("Decrypt = %q, %v", pt, err)
		}
	})
	t.Run("an empty plaintext is an invalid argument", func(t *testing.T) {
		_, _, err := c.Encrypt(ctx, name, nil, ad)
		checkSentinels(t, err, client.ErrInvalidArgument)
	})
	t.Run("an unknown key is not found", func(t *testing.T) {
		_, _, err := c.Encrypt(ctx, client.KeyName("acme", "missing"), []byte("x"), ad)
		checkSentinels(t, err, client.ErrNotFound)
		_, _, err = c.Decrypt(ctx, client.KeyName("acme", "missing"), ct, ad)
		checkSentinels(t, err, client.ErrNotFound)
	})
	t.Run("an old version still decrypts after a rotation", func(t *testing.T) {
		if _, err := c.RotateKey(ctx, name); err != nil {
			t.Fatal(err)
		}
		ct2, v2, err := c.Encrypt(ctx, name, []byte("bob"), ad)
		if err != nil || v2 != 2 {
			t.Fatalf("Encrypt after rotation: version %d, %v; want 2", v2, err)
		}
		if _, v, err := c.Decrypt(ctx, name, ct, ad); err != nil || v != 1 {
			t.Fatalf("Decrypt of a version-1 ciphertext: version %d, %v", v, err)
		}
		if _, v, err := c.Decrypt(ctx, name, ct2, ad); err != nil || v != 2 {
			t.Fatalf("Decrypt of a version-2 ciphertext: version %d, %v", v, err)
		}
	})
	t.Run("a version below the minimum is too old", func(t *testing.T) {
		env.setMinDecryptionVersion(t, name, 2)
		defer env.setMinDecryptionVersion(t, name, 0)
		_, _, err := c.Decrypt(ctx, name, ct, ad)
		checkSentinels(t, err, client.ErrKeyVersionTooOld, client.ErrFailedPrecondition)
	})
	t.Run("a disabled version refuses to decrypt", func(t *testing.T) {
		defer env.disableVersion(t, name, 1)()
		_, _, err := c.Decrypt(ctx, name, ct, ad)
		checkSentinels(t, err, client.ErrKeyVersionDisabled, client.ErrFailedPrecondition)
	})
	t.Run("another tenant's key is permission denied", func(t *testing.T) {
		restricted := env.srv.ClientAs(t, restrictedID)
		_, _, err := restricted.Encrypt(ctx, name, []byte("x"), ad)
		checkSentinels(t, err, client.ErrPermissionDenied)
	})
	t.Run("a destroyed version can never decrypt again", func(t *testing.T) {
		if _, err := c.DestroyKeyVersion(ctx, name, 1, 0); err != nil {
			t.Fatal(err)
		}
		_, _, err := c.Decrypt(ctx, name, ct, ad)
		checkSentinels(t, err, client.ErrKeyVersionDestroyed, client.ErrFailedPrecondition)
	})
	t.Run("a tenant scheduled for deletion refuses everything", func(t *testing.T) {
		env.scheduleTenantDeletion(t, "acme")
		_, _, err := c.Encrypt(ctx, name, []byte("x"), ad)
		checkSentinels(t, err, client.ErrTenantDeleted, client.ErrFailedPrecondition)
	})
}

// TestErrorMappingOverTheWire sends every status the contract uses through
// a real gRPC connection and checks which sentinels the client's error
// matches, and that the status survives for status.FromError.
func TestErrorMappingOverTheWire(t *testing.T) {
	env := startEnv(t)
	c := newClient(t, env)
	name := setupKey(t, c)

	tests := []struct {
		name   string
		sent   error
		reason string
		want   []error
	}{
		{"INVALID_ARGUMENT is ErrInvalidArgument (the server adds reason INVALID_ARGUMENT)", status.Error(codes.InvalidArgument, "bad name"), "INVALID_ARGUMENT", []error{client.ErrInvalidArgument}},
		{"INVALID_ARGUMENT with CIPHERTEXT_NOT_AUTHENTIC is also ErrInvalidCiphertext", reasonError(codes.InvalidArgument, "CIPHERTEXT_NOT_AUTHENTIC", "ciphertext is not authentic"), "CIPHERTEXT_NOT_AUTHENTIC", []error{client.ErrInvalidArgument, client.ErrInvalidCiphertext}},
		{"NOT_FOUND is ErrNotFound", status.Error(codes.NotFound, "no such key"), "", []error{client.ErrNotFound}},
		{"ALREADY_EXISTS is ErrAlreadyExists", status.Error(codes.AlreadyExists, "exists"), "", []error{client.ErrAlreadyExists}},
		{"PERMISSION_DENIED is ErrPermissionDenied", status.Error(codes.PermissionDenied, "denied"), "", []error{client.ErrPermissionDenied}},
		{"UNAUTHENTICATED is ErrUnauthenticated", status.Error(codes.Unauthenticated, "no certificate"), "", []error{client.ErrUnauthenticated}},
		{"FAILED_PRECONDITION without a reason is only ErrFailedPrecondition", status.Error(codes.FailedPrecondition, "no"), "", []error{client.ErrFailedPrecondition}},
		{"FAILED_PRECONDITION with TENANT_DELETED is also ErrTenantDeleted", reasonError(codes.FailedPrecondition, "TENANT_DELETED", "deleted"), "TENANT_DELETED", []error{client.ErrFailedPrecondition, client.ErrTenantDeleted}},
		{"FAILED_PRECONDITION with KEY_VERSION_DISABLED is also ErrKeyVersionDisabled", reasonError(codes.FailedPrecondition, "KEY_VERSION_DISABLED", "disabled"), "KEY_VERSION_DISABLED", []error{client.ErrFailedPrecondition, client.ErrKeyVersionDisabled}},
		{"FAILED_PRECONDITION with KEY_VERSION_DESTROYED is also ErrKeyVersionDestroyed", reasonError(codes.FailedPrecondition, "KEY_VERSION_DESTROYED", "destroyed"), "KEY_VERSION_DESTROYED", []error{client.ErrFailedPrecondition, client.ErrKeyVersionDestroyed}},
		{"FAILED_PRECONDITION with KEY_VERSION_TOO_OLD is also ErrKeyVersionTooOld", reasonError(codes.FailedPrecondition, "KEY_VERSION_TOO_OLD", "too old"), "KEY_VERSION_TOO_OLD", []error{client.ErrFailedPrecondition, client.ErrKeyVersionTooOld}},
		{"FAILED_PRECONDITION with WRONG_PURPOSE is also ErrWrongPurpose", reasonError(codes.FailedPrecondition, "WRONG_PURPOSE", "wrong purpose"), "WRONG_PURPOSE", []error{client.ErrFailedPrecondition, client.ErrWrongPurpose}},
		{"FAILED_PRECONDITION with PRIMARY_VERSION is also ErrPrimaryVersion", reasonError(codes.FailedPrecondition, "PRIMARY_VERSION", "primary"), "PRIMARY_VERSION", []error{client.ErrFailedPrecondition, client.ErrPrimaryVersion}},
		{"FAILED_PRECONDITION with WRONG_STATE is also ErrWrongState", reasonError(codes.FailedPrecondition, "WRONG_STATE", "wrong state"), "WRONG_STATE", []error{client.ErrFailedPrecondition, client.ErrWrongState}},
		{"FAILED_PRECONDITION with an unknown reason is only ErrFailedPrecondition", reasonError(codes.FailedPrecondition, "SOMETHING_NEW", "new"), "SOMETHING_NEW", []error{client.ErrFailedPrecondition}},
		{"RESOURCE_EXHAUSTED is ErrResourceExhausted", status.Error(codes.ResourceExhausted, "slow down"), "", []error{client.ErrResourceExhausted}},
		{"RESOURCE_EXHAUSTED with HASH_QUEUE_FULL is also ErrHashQueueFull", reasonError(codes.ResourceExhausted, "HASH_QUEUE_FULL", "hashing queue full"), "HASH_QUEUE_FULL", []error{client.ErrResourceExhausted, client.ErrHashQueueFull}},
		{"RESOURCE_EXHAUSTED with SUBJECT_LOCKED is also ErrSubjectLocked", reasonError(codes.ResourceExhausted, "SUBJECT_LOCKED", "subject locked"), "SUBJECT_LOCKED", []error{client.ErrResourceExhausted, client.ErrSubjectLocked}},
		{"UNAVAILABLE is ErrUnavailable", status.Error(codes.Unavailable, "root KMS unreachable"), "", []error{client.ErrUnavailable}},
		{"ABORTED is ErrAborted", reasonError(codes.Aborted, "CONFLICT", "too many concurrent changes"), "CONFLICT", []error{client.ErrAborted}},
		{"INTERNAL matches no sentinel", status.Error(codes.Internal, "internal error"), "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env.hooks.injectNext(tt.sent)
			_, _, err := c.Encrypt(t.Context(), name, []byte("x"), nil)
			if len(tt.want) == 0 {
				for _, s := range sentinels {
					if errors.Is(err, s.err) {
						t.Errorf("errors.Is(%q, %s) = true, want false", err, s.name)
					}
				}
			} else {
				checkSentinels(t, err, tt.want...)
			}

			sentSt := status.Convert(tt.sent)
			var e *client.Error
			if !errors.As(err, &e) {
				t.Fatalf("errors.As(%q, *client.Error) = false", err)
			}
			if e.Code != sentSt.Code() || e.Message != sentSt.Message() || e.Reason != tt.reason {
				t.Errorf("Error = {%v %q %q}, want {%v %q %q}", e.Code, e.Reason, e.Message, sentSt.Code(), tt.reason, sentSt.Message())
			}
			st, ok := status.FromError(err)
			if !ok || st.Code() != sentSt.Code() {
				t.Fatalf("status.FromError = %v, %v; want code %v", st, ok, sentSt.Code())
			}
			if tt.reason != "" {
				var info *errdetails.ErrorInfo
				for _, d := range st.Details() {
					if i, ok := d.(*errdetails.ErrorInfo); ok {
						info = i
					}
				}
				if info.GetReason() != tt.reason || info.GetDomain() != "custos.dev" {
					t.Errorf("status details lost the ErrorInfo: %v", st.Details())
				}
			}
		})
	}
}

func TestBatchItemsFailOnTheirOwn(t *testing.T) {
	env := startEnv(t)
	c := newClient(t, env)
	ctx := t.Context()
	name := setupKey(t, c)

	items := []client.EncryptItem{
		{Plaintext: []byte("zero"), AssociatedData: client.AssociatedData("row", "0")},
		{Plaintext: []byte("one"), AssociatedData: client.AssociatedData("row", "1")},
		{Plaintext: []byte("two"), AssociatedData: client.AssociatedData("row", "2")},
		{Plaintext: []byte("three"), AssociatedData: client.AssociatedData("row", "3")},
	}
	env.hooks.setEncryptItemErr(func(i int) error {
		if i == 1 {
			return status.Error(codes.ResourceExhausted, "item quota exceeded")
		}
		return nil
	})
	enc, err := c.EncryptBatch(ctx, name, items)
	env.hooks.setEncryptItemErr(nil)
	if err != nil {
		t.Fatalf("EncryptBatch: %v", err)
	}
	if len(enc) != len(items) {
		t.Fatalf("EncryptBatch returned %d results for %d items", len(enc), len(items))
	}
	for i, r := range enc {
		if i == 1 {
			checkSentinels(t, r.Err, client.ErrResourceExhausted)
			if r.Ciphertext != nil || r.Version != 0 {
				t.Errorf("failed item 1 has ciphertext %x version %d", r.Ciphertext, r.Version)
			}
			continue
		}
		if r.Err != nil || r.Version != 1 || len(r.Ciphertext) == 0 {
			t.Errorf("item %d = %+v, want a ciphertext of version 1", i, r)
		}
	}

	single, _, err := c.Encrypt(ctx, name, []byte("single"), client.AssociatedData("row", "9"))
	if err != nil {
		t.Fatal(err)
	}
	dec, err := c.DecryptBatch(ctx, name, []client.DecryptItem{
		{Ciphertext: enc[0].Ciphertext, AssociatedData: items[0].AssociatedData},
		{Ciphertext: enc[2].Ciphertext, AssociatedData: items[3].AssociatedData}, // moved to another row
		{Ciphertext: []byte("garbage, not a ciphertext"), AssociatedData: nil},
		{Ciphertext: enc[3].Ciphertext, AssociatedData: items[3].AssociatedData},
		{Ciphertext: single, AssociatedData: client.AssociatedData("row", "9")},
	})
	if err != nil {
		t.Fatalf("DecryptBatch: %v", err)
	}
	if len(dec) != 5 {
		t.Fatalf("DecryptBatch returned %d results for 5 items", len(dec))
	}
	if dec[0].Err != nil || string(dec[0].Plaintext) != "zero" || dec[0].Version != 1 {
		t.Errorf("item 0 = %+v, want zero", dec[0])
	}
	checkSentinels(t, dec[1].Err, client.ErrInvalidCiphertext, client.ErrInvalidArgument)
	checkSentinels(t, dec[2].Err, client.ErrInvalidCiphertext, client.ErrInvalidArgument)
	if dec[3].Err != nil || string(dec[3].Plaintext) != "three" {
		t.Errorf("item 3 = %+v, want three", dec[3])
	}
	if dec[4].Err != nil || string(dec[4].Plaintext) != "single" {
		t.Errorf("item 4 = %+v, want single", dec[4])
	}
	if dec[1].Plaintext != nil {
		t.Errorf("failed item 1 has plaintext %q", dec[1].Plaintext)
	}

	t.Run("a disabled version fails only its items", func(t *testing.T) {
		if _, err := c.RotateKey(ctx, name); err != nil {
			t.Fatal(err)
		}
		ct2, _, err := c.Encrypt(ctx, name, []byte("v2"), nil)
		if err != nil {
			t.Fatal(err)
		}
		env.disableVersion(t, name, 1)
		dec, err := c.DecryptBatch(ctx, name, []client.DecryptItem{
			{Ciphertext: enc[0].Ciphertext, AssociatedData: items[0].AssociatedData},
			{Ciphertext: ct2},
		})
		if err != nil {
			t.Fatalf("DecryptBatch: %v", err)
		}
		checkSentinels(t, dec[0].Err, client.ErrKeyVersionDisabled, client.ErrFailedPrecondition)
		if dec[1].Err != nil || string(dec[1].Plaintext) != "v2" || dec[1].Version != 2 {
			t.Errorf("item 1 = %+v, want v2 from version 2", dec[1])
		}
	})
	t.Run("a whole-call failure returns an error and no results", func(t *testing.T) {
		res, err := c.EncryptBatch(ctx, client.KeyName("acme", "missing"), items)
		checkSentinels(t, err, client.ErrNotFound)
		if res != nil {
			t.Errorf("results = %v, want nil", res)
		}
		dres, err := c.DecryptBatch(ctx, client.KeyName("acme", "missing"), []client.DecryptItem{{Ciphertext: enc[0].Ciphertext}})
		checkSentinels(t, err, client.ErrNotFound)
		if dres != nil {
			t.Errorf("results = %v, want nil", dres)
		}
	})
	t.Run("an empty batch makes no call", func(t *testing.T) {
		methods := []string{"EncryptBatch", "DecryptBatch", "RewrapBatch"}
		before := make([]int, len(methods))
		for i, m := range methods {
			before[i] = env.hooks.callCount("/custos.v1.CryptoService/" + m)
		}
		res, err := c.EncryptBatch(ctx, name, nil)
		if err != nil || len(res) != 0 {
			t.Errorf("EncryptBatch(nil) = %v, %v", res, err)
		}
		dres, err := c.DecryptBatch(ctx, name, nil)
		if err != nil || len(dres) != 0 {
			t.Errorf("DecryptBatch(nil) = %v, %v", dres, err)
		}
		rres, err := c.RewrapBatch(ctx, name, nil)
		if err != nil || len(rres) != 0 {
			t.Errorf("RewrapBatch(nil) = %v, %v", rres, err)
		}
		for i, m := range methods {
			if env.hooks.callCount("/custos.v1.CryptoService/"+m) != before[i] {
				t.Errorf("an empty %s called the server", m)
			}
		}
	})
}

// TestEveryNewCallReportsTheServersStatus injects a failure into each call
// added with the key lifecycle and the crypto surface (their behaviour is
// tested against the real server in real_server_test.go) and checks that
// the error matches the status's sentinels, keeps the status for
// status.FromError, and names the operation and the resource.
func TestEveryNewCallReportsTheServersStatus(t *testing.T) {
	env := startEnv(t)
	c := newClient(t, env)
	const (
		tenant = "tenants/acme"
		key    = "tenants/acme/keys/k"
	)
	pw := c.Password(key)
	calls := []struct {
		op   string
		call func(context.Context) error
	}{
		{"delete tenant " + tenant, func(ctx context.Context) error { _, err := c.DeleteTenant(ctx, tenant, 0); return err }},
		{"undelete tenant " + tenant, func(ctx context.Context) error { _, err := c.UndeleteTenant(ctx, tenant); return err }},
		{"update key " + key, func(ctx context.Context) error {
			v := uint32(2)
			_, err := c.UpdateKey(ctx, key, client.KeyUpdate{MinDecryptionVersion: &v})
			return err
		}},
		{"enable version 2 of key " + key, func(ctx context.Context) error { _, err := c.EnableKeyVersion(ctx, key, 2); return err }},
		{"disable version 2 of key " + key, func(ctx context.Context) error { _, err := c.DisableKeyVersion(ctx, key, 2); return err }},
		{"destroy version 2 of key " + key, func(ctx context.Context) error { _, err := c.DestroyKeyVersion(ctx, key, 2, 0); return err }},
		{"restore version 2 of key " + key, func(ctx context.Context) error { _, err := c.RestoreKeyVersion(ctx, key, 2); return err }},
		{"rewrap with " + key, func(ctx context.Context) error { _, _, err := c.Rewrap(ctx, key, []byte("c"), nil); return err }},
		{"rewrap batch with " + key, func(ctx context.Context) error {
			_, err := c.RewrapBatch(ctx, key, []client.RewrapItem{{Ciphertext: []byte("c")}})
			return err
		}},
		{"generate data key with " + key, func(ctx context.Context) error { _, err := c.GenerateDataKey(ctx, key, nil); return err }},
		{"generate wrapped data key with " + key, func(ctx context.Context) error {
			_, _, err := c.GenerateWrappedDataKey(ctx, key, nil)
			return err
		}},
		{"decrypt data key with " + key, func(ctx context.Context) error { _, err := c.DecryptDataKey(ctx, key, []byte("w"), nil); return err }},
		{"compute MAC with " + key, func(ctx context.Context) error { _, _, err := c.ComputeMAC(ctx, key, []byte("d")); return err }},
		{"verify MAC with " + key, func(ctx context.Context) error { _, err := c.VerifyMAC(ctx, key, []byte("d"), []byte("m")); return err }},
		{"blind index with " + key, func(ctx context.Context) error { _, err := c.BlindIndex(ctx, key, []byte("d")); return err }},
		{"hash password with " + key, func(ctx context.Context) error { _, err := pw.Hash(ctx, []byte("pw")); return err }},
		{"verify password with " + key, func(ctx context.Context) error { _, _, err := pw.Verify(ctx, []byte("pw"), "h"); return err }},
		{"verify password with " + key, func(ctx context.Context) error {
			_, _, err := pw.VerifySubject(ctx, []byte("pw"), "h", "user-1")
			return err
		}},
	}
	for _, tt := range calls {
		t.Run(tt.op, func(t *testing.T) {
			env.hooks.injectNext(reasonError(codes.ResourceExhausted, "HASH_QUEUE_FULL", "hashing queue full"))
			err := tt.call(t.Context())
			checkSentinels(t, err, client.ErrResourceExhausted, client.ErrHashQueueFull)
			if st, ok := status.FromError(err); !ok || st.Code() != codes.ResourceExhausted {
				t.Errorf("status.FromError(%q) = %v, %v", err, st, ok)
			}
			if want := "custos: " + tt.op + ": "; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error %q does not start with %q", err, want)
			}
		})
	}
}

func TestContextErrorsMatchTheContext(t *testing.T) {
	env := startEnv(t)
	c := newClient(t, env)
	name := setupKey(t, c)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, _, err := c.Encrypt(ctx, name, []byte("x"), nil)
	if !errors.Is(err, context.Canceled) || status.Code(err) != codes.Canceled {
		t.Errorf("Encrypt with a canceled context: %v (code %v), want context.Canceled", err, status.Code(err))
	}

	ctx, cancel = context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel()
	_, err = c.GetKey(ctx, name)
	if !errors.Is(err, context.DeadlineExceeded) || status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("GetKey past its deadline: %v (code %v), want context.DeadlineExceeded", err, status.Code(err))
	}
}

func TestClose(t *testing.T) {
	env := startEnv(t)
	c, err := client.New(t.Context(), client.Config{Address: env.addr, CAFile: env.caFile, CertFile: env.certFile, KeyFile: env.keyFile})
	if err != nil {
		t.Fatal(err)
	}
	name := setupKey(t, c)
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	_, _, err = c.Encrypt(t.Context(), name, []byte("x"), nil)
	if !errors.Is(err, client.ErrClosed) {
		t.Errorf("Encrypt after Close: %v, want ErrClosed", err)
	}
	for _, err := range c.AllTenants(t.Context()) {
		if !errors.Is(err, client.ErrClosed) {
			t.Errorf("AllTenants after Close: %v, want ErrClosed", err)
		}
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
}

func TestNewDoesNotConnect(t *testing.T) {
	// Reserve a port, then free it: nothing listens there.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	env := startEnv(t)
	c, err := client.New(t.Context(), client.Config{Address: addr, CAFile: env.caFile, CertFile: env.certFile, KeyFile: env.keyFile})
	if err != nil {
		t.Fatalf("New with no server listening: %v", err)
	}
	defer c.Close()
	_, err = c.GetTenant(t.Context(), client.TenantName("acme"))
	checkSentinels(t, err, client.ErrUnavailable)
}

func TestAssociatedDataIsUnambiguous(t *testing.T) {
	distinct := [][]string{
		{},
		{""},
		{"", ""},
		{"a"},
		{"a", ""},
		{"", "a"},
		{"ab", "c"},
		{"a", "bc"},
		{"abc"},
		{"users", "42", "email"},
		{"users", "4", "2email"},
	}
	seen := map[string][]string{}
	for _, parts := range distinct {
		enc := string(client.AssociatedData(parts...))
		if prev, ok := seen[enc]; ok {
			t.Errorf("AssociatedData(%q) = AssociatedData(%q)", parts, prev)
		}
		seen[enc] = parts
	}
	if got := client.AssociatedData(); got == nil || len(got) != 0 {
		t.Errorf("AssociatedData() = %#v, want an empty slice", got)
	}
}

// A call cut off by Close fails with CANCELLED and ErrClosed, not with a
// retryable UNAVAILABLE.
func TestACallInFlightWhenTheClientClosesIsCancelled(t *testing.T) {
	env := startEnv(t)
	c, err := client.New(t.Context(), client.Config{Address: env.addr, CAFile: env.caFile, CertFile: env.certFile, KeyFile: env.keyFile})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := c.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	k, err := c.CreateKey(ctx, client.TenantName("acme"), "pw", client.KeySpec{Purpose: client.PurposePassword, PasswordPolicy: &client.PasswordPolicy{BcryptCost: 15}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := c.HashPassword(ctx, k.Name, []byte("p")); done <- err }()
	time.Sleep(200 * time.Millisecond) // bcrypt cost 15 takes seconds
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the call in flight did not end within 30s of Close")
	}
	if !errors.Is(err, client.ErrClosed) || status.Code(err) != codes.Canceled || errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("a call cut off by Close: %v (code %v), want ErrClosed with CANCELLED, not ErrUnavailable", err, status.Code(err))
	}
}

// A batch whose answer is above gRPC's default 4 MiB (the server bounds
// requests, at 16 MiB by default) reaches the caller: with the default it
// failed RESOURCE_EXHAUSTED here after the server had served it.
func TestABatchAnswerAboveFourMiBIsReceived(t *testing.T) {
	env := startEnv(t)
	c := newClient(t, env)
	ctx := t.Context()
	if _, err := c.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	k, err := c.CreateKey(ctx, client.TenantName("acme"), "pii", client.KeySpec{Purpose: client.PurposeEncrypt})
	if err != nil {
		t.Fatal(err)
	}
	items := make([]client.EncryptItem, 600)
	for i := range items {
		items[i] = client.EncryptItem{Plaintext: make([]byte, 8<<10)}
	}
	res, err := c.EncryptBatch(ctx, k.Name, items)
	if err != nil {
		t.Fatalf("a batch of 600 × 8 KiB (an answer of about 5 MiB): %v", err)
	}
	if len(res) != len(items) || res[0].Err != nil {
		t.Fatalf("%d results, first %v", len(res), res[0].Err)
	}
}

// A batch item answered OK without its ciphertext (a misbehaving server or
// proxy) fails on its own as INTERNAL: taken as it came, it was a field of
// no bytes that the record helper stored as encrypted.
func TestABatchItemAnsweredEmptyFails(t *testing.T) {
	env := startEnv(t)
	c := newClient(t, env)
	name := setupKey(t, c)
	env.hooks.setEncryptItemErr(func(i int) error {
		if i == 0 {
			return errAnsweredEmpty
		}
		return nil
	})
	defer env.hooks.setEncryptItemErr(nil)
	res, err := c.EncryptBatch(t.Context(), name, []client.EncryptItem{{Plaintext: []byte("a")}, {Plaintext: []byte("b")}})
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := status.FromError(res[0].Err); res[0].Err == nil || st.Code() != codes.Internal {
		t.Fatalf("an item answered OK and empty: %+v, want an INTERNAL error", res[0])
	}
	if res[1].Err != nil || len(res[1].Ciphertext) == 0 {
		t.Fatalf("the other item: %+v", res[1])
	}
}

// A single call answered OK without its bytes (a misbehaving proxy) is
// INTERNAL, as a batch item is: a rewrap job wrote the empty answer over
// the row's only ciphertext.
func TestASingleCallAnsweredEmptyFails(t *testing.T) {
	env := startEnv(t)
	c := newClient(t, env)
	name := setupKey(t, c)
	ct, _, err := c.Encrypt(t.Context(), name, []byte("v"), nil)
	if err != nil {
		t.Fatal(err)
	}
	mk, err := c.CreateKey(t.Context(), client.TenantName("acme"), "empty-mac", client.KeySpec{Purpose: client.PurposeMAC})
	if err != nil {
		t.Fatal(err)
	}
	macKey := mk.Name
	for op, call := range map[string]func() error{
		"Encrypt": func() error { _, _, err := c.Encrypt(t.Context(), name, []byte("v"), nil); return err },
		"Decrypt": func() error { _, _, err := c.Decrypt(t.Context(), name, ct, nil); return err },
		"Rewrap":  func() error { _, _, err := c.Rewrap(t.Context(), name, ct, nil); return err },
		"ComputeMAC": func() error {
			_, _, err := c.ComputeMAC(t.Context(), macKey, []byte("d"))
			return err
		},
		"BlindIndex": func() error {
			_, err := c.BlindIndex(t.Context(), macKey, []byte("d"))
			return err
		},
	} {
		env.hooks.answerEmptyNext()
		if err := call(); status.Code(err) != codes.Internal {
			t.Errorf("%s answered OK and empty: %v, want INTERNAL", op, err)
		}
		if err := call(); err != nil {
			t.Errorf("%s answered in full: %v", op, err)
		}
	}
}

// A name that is not UTF-8 cannot be sent: the call fails with
// ErrInvalidArgument before it leaves, not INTERNAL.
func TestANameThatIsNotUTF8IsInvalidArgument(t *testing.T) {
	env := startEnv(t)
	c := newClient(t, env)
	if _, _, err := c.Encrypt(t.Context(), "tenants/\xff/keys/k", []byte("v"), nil); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("Encrypt under a name that is not UTF-8: %v, want ErrInvalidArgument", err)
	}
}
