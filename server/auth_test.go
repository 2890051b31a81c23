package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/internal/pki"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

func TestMutualTLSIsRequired(t *testing.T) {
	t.Parallel()
	f := newFiles(t)
	ts := start(t, f, options{})
	setup(t, ts, "a")

	otherCA, err := pki.NewCA("Some other CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// A certificate of the right CA that is not meant for clients.
	serverOnlyPEM, serverOnlyKey, err := f.pki.ca.Issue(pki.IssueRequest{CommonName: "custos-server", IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	serverOnly, err := tls.X509KeyPair(serverOnlyPEM, serverOnlyKey)
	if err != nil {
		t.Fatal(err)
	}

	encrypt := func(ctx context.Context, conf *tls.Config) error {
		c := custosv1.NewCryptoServiceClient(dial(t, ts.addr, conf))
		_, err := c.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte("p")})
		return err
	}
	health := func(ctx context.Context, conf *tls.Config) error {
		_, err := healthpb.NewHealthClient(dial(t, ts.addr, conf)).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}

	tests := []struct {
		name string
		conf *tls.Config
		call func(context.Context, *tls.Config) error
		want codes.Code
	}{
		{"a client certificate from the test CA is accepted", f.pki.clientTLS(f.pki.clientCert(t, idAdmin)), encrypt, codes.OK},
		{"a client without a certificate cannot encrypt", f.pki.clientTLS(), encrypt, codes.Unavailable},
		{"a client without a certificate cannot even check health", f.pki.clientTLS(), health, codes.Unavailable},
		{"a client certificate from another CA is refused", f.pki.clientTLS(issueClientCert(t, otherCA, idAdmin)), encrypt, codes.Unavailable},
		{"a certificate of the test CA without client usage is refused", f.pki.clientTLS(serverOnly), encrypt, codes.Unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A handshake failure must fail the call, not leave it waiting.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := tt.call(ctx, tt.conf)
			if tt.want == codes.OK {
				if err != nil {
					t.Fatalf("call failed: %v", err)
				}
				return
			}
			st := wantCode(t, err, tt.want)
			t.Logf("client sees: %s", st.Message())
		})
	}
}

func TestPolicyIsEnforcedPerTenantAndPermission(t *testing.T) {
	t.Parallel()
	ts := start(t, newFiles(t), options{})
	setup(t, ts, "a", "b")
	ctx := testContext(t)
	admin := ts.clients(t, idAdmin)
	ctA, err := admin.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte("field of a")})
	if err != nil {
		t.Fatal(err)
	}
	ctB, err := admin.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("b"), Plaintext: []byte("field of b")})
	if err != nil {
		t.Fatal(err)
	}

	onlyA := ts.clients(t, idOnlyA)
	decryptOnly := ts.clients(t, idDecryptOnly)
	nobody := ts.clients(t, idNobody)
	encrypt := func(c clients, tenant string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName(tenant), Plaintext: []byte("p")})
			return err
		}
	}
	decrypt := func(c clients, tenant string, ct []byte) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName(tenant), Ciphertext: ct})
			return err
		}
	}

	tests := []struct {
		name string
		call func(context.Context) error
		want codes.Code
	}{
		{"an identity allowed only tenant a encrypts for tenant a", encrypt(onlyA, "a"), codes.OK},
		{"an identity allowed only tenant a decrypts for tenant a", decrypt(onlyA, "a", ctA.GetCiphertext()), codes.OK},
		{"an identity allowed only tenant a cannot encrypt for tenant b", encrypt(onlyA, "b"), codes.PermissionDenied},
		{"an identity allowed only tenant a cannot decrypt tenant b's ciphertext", decrypt(onlyA, "b", ctB.GetCiphertext()), codes.PermissionDenied},
		{"an identity allowed only tenant a cannot batch-encrypt for tenant b", func(ctx context.Context) error {
			_, err := onlyA.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: keyName("b"), Items: encryptItems(2, 1)})
			return err
		}, codes.PermissionDenied},
		{"an identity allowed only tenant a cannot batch-decrypt for tenant b", func(ctx context.Context) error {
			_, err := onlyA.crypto.DecryptBatch(ctx, &custosv1.DecryptBatchRequest{Name: keyName("b"), Items: []*custosv1.DecryptBatchRequest_Item{{Ciphertext: ctB.GetCiphertext()}}})
			return err
		}, codes.PermissionDenied},
		{"an identity allowed only tenant a cannot read tenant b's key", func(ctx context.Context) error {
			_, err := onlyA.keys.GetKey(ctx, &custosv1.GetKeyRequest{Name: keyName("b")})
			return err
		}, codes.PermissionDenied},
		{"an identity allowed only tenant a cannot rotate tenant b's key", func(ctx context.Context) error {
			_, err := onlyA.keys.RotateKey(ctx, &custosv1.RotateKeyRequest{Name: keyName("b")})
			return err
		}, codes.PermissionDenied},
		{"an identity allowed only tenant a cannot create keys without keys.write", func(ctx context.Context) error {
			_, err := onlyA.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/a", KeyId: "new", Key: &custosv1.Key{Purpose: custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT}})
			return err
		}, codes.PermissionDenied},
		{"an identity allowed only tenant a learns nothing about a tenant that does not exist", encrypt(onlyA, "ghost"), codes.PermissionDenied},
		{"an identity with decrypt but not encrypt cannot encrypt", encrypt(decryptOnly, "a"), codes.PermissionDenied},
		{"an identity with decrypt but not encrypt cannot batch-encrypt", func(ctx context.Context) error {
			_, err := decryptOnly.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: keyName("a"), Items: encryptItems(1, 1)})
			return err
		}, codes.PermissionDenied},
		{"an identity with decrypt but not encrypt decrypts", decrypt(decryptOnly, "b", ctB.GetCiphertext()), codes.OK},
		{"an identity no rule names cannot encrypt", encrypt(nobody, "a"), codes.PermissionDenied},
		{"an identity no rule names cannot list tenants", func(ctx context.Context) error {
			_, err := nobody.keys.ListTenants(ctx, &custosv1.ListTenantsRequest{})
			return err
		}, codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call(ctx)
			if tt.want == codes.OK {
				if err != nil {
					t.Fatalf("call failed: %v", err)
				}
				return
			}
			wantCode(t, err, tt.want)
		})
	}
}

func TestListTenantsShowsOnlyTenantsTheCallerMaySee(t *testing.T) {
	t.Parallel()
	ts := start(t, newFiles(t), options{})
	setup(t, ts, "a", "b", "c", "d")
	ctx := testContext(t)

	// list pages through ListTenants with pageSize and returns the tenant names.
	list := func(t *testing.T, id string, pageSize int32) []string {
		c := ts.clients(t, id)
		var names []string
		token := ""
		for range 20 {
			resp, err := c.keys.ListTenants(ctx, &custosv1.ListTenantsRequest{PageSize: pageSize, PageToken: token})
			if err != nil {
				t.Fatalf("ListTenants: %v", err)
			}
			for _, tn := range resp.GetTenants() {
				names = append(names, tn.GetName())
			}
			if token = resp.GetNextPageToken(); token == "" {
				return names
			}
		}
		t.Fatal("ListTenants never reached its last page")
		return nil
	}

	tests := []struct {
		name     string
		id       string
		pageSize int32
		want     []string
	}{
		{"an identity allowed every tenant sees them all", idAdmin, 0, []string{"tenants/a", "tenants/b", "tenants/c", "tenants/d"}},
		{"an identity allowed every tenant sees them all one page at a time", idAdmin, 1, []string{"tenants/a", "tenants/b", "tenants/c", "tenants/d"}},
		{"an identity allowed tenants a and c sees only those", idListAC, 0, []string{"tenants/a", "tenants/c"}},
		{"an identity allowed tenants a and c sees only those one page at a time", idListAC, 1, []string{"tenants/a", "tenants/c"}},
		{"an identity allowed only tenant a sees only tenant a", idOnlyA, 0, []string{"tenants/a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := list(t, tt.id, tt.pageSize); !slices.Equal(got, tt.want) {
				t.Errorf("ListTenants = %q, want %q", got, tt.want)
			}
		})
	}

	t.Run("an identity without tenants.admin anywhere is PERMISSION_DENIED", func(t *testing.T) {
		_, err := ts.clients(t, idDecryptOnly).keys.ListTenants(ctx, &custosv1.ListTenantsRequest{})
		wantCode(t, err, codes.PermissionDenied)
	})
}

// ListTenants' page tokens reveal nothing of the tenants a caller may not
// see, however many it skips, and a token not made by the server is
// refused.
func TestListTenantsTokensRevealNoHiddenTenant(t *testing.T) {
	t.Parallel()
	ts := start(t, newFiles(t), options{})
	hidden := []string{}
	for i := range 25 { // more than a call scans, one at a time
		hidden = append(hidden, fmt.Sprintf("hid%02d", i))
	}
	setup(t, ts, append([]string{"a"}, hidden...)...)
	ctx := testContext(t)
	c := ts.clients(t, idOnlyA)
	var names []string
	token := ""
	for range 30 {
		resp, err := c.keys.ListTenants(ctx, &custosv1.ListTenantsRequest{PageSize: 1, PageToken: token})
		if err != nil {
			t.Fatalf("ListTenants: %v", err)
		}
		for _, tn := range resp.GetTenants() {
			names = append(names, tn.GetName())
		}
		token = resp.GetNextPageToken()
		raw, _ := base64.RawURLEncoding.DecodeString(token)
		for _, h := range hidden {
			if strings.Contains(token, h) || bytes.Contains(raw, []byte(h)) {
				t.Fatalf("a page token names hidden tenant %s: %q", h, raw)
			}
		}
		if token == "" {
			break
		}
	}
	if !slices.Equal(names, []string{"tenants/a"}) {
		t.Fatalf("ListTenants = %q, want only tenants/a", names)
	}
	forged := base64.RawURLEncoding.EncodeToString([]byte("p1:hid05"))
	if _, err := c.keys.ListTenants(ctx, &custosv1.ListTenantsRequest{PageSize: 1, PageToken: forged}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a token the server did not make: %v, want INVALID_ARGUMENT", err)
	}
}
