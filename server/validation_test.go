package server_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/custos"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server"
)

// containsField reports whether an error message names field: the field
// appears as a word of its own, not as part of a longer identifier, so
// "plaintext" does not match "plaintexts".
func containsField(msg, field string) bool {
	for i := 0; ; {
		j := strings.Index(msg[i:], field)
		if j < 0 {
			return false
		}
		start, end := i+j, i+j+len(field)
		before := start == 0 || !isIdentByte(msg[start-1])
		after := end == len(msg) || !isIdentByte(msg[end])
		if before && after {
			return true
		}
		i = end
	}
}

func isIdentByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// Test limits, low so tests stay small.
const (
	testMaxPlaintext = 1024
	testMaxBatch     = 10
)

func encryptItems(n, size int) []*custosv1.EncryptBatchRequest_Item {
	items := make([]*custosv1.EncryptBatchRequest_Item, n)
	for i := range items {
		items[i] = &custosv1.EncryptBatchRequest_Item{Plaintext: bytes.Repeat([]byte("x"), size)}
	}
	return items
}

func decryptItems(n int) []*custosv1.DecryptBatchRequest_Item {
	items := make([]*custosv1.DecryptBatchRequest_Item, n)
	for i := range items {
		items[i] = &custosv1.DecryptBatchRequest_Item{Ciphertext: append(tinkPrefix(1), make([]byte, 28)...)}
	}
	return items
}

func TestInvalidArgumentsNameTheField(t *testing.T) {
	t.Parallel()
	ts := start(t, newFiles(t), options{limits: server.Limits{MaxPlaintextBytes: testMaxPlaintext, MaxBatchItems: testMaxBatch}})
	setup(t, ts, "a")
	c := ts.clients(t, idAdmin)
	ctx := testContext(t)

	encryptKey := &custosv1.Key{Purpose: custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT}
	tests := []struct {
		name  string
		call  func(context.Context) error
		field string
	}{
		{"Encrypt with an upper-case tenant id names name", func(ctx context.Context) error {
			_, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: "tenants/ACME/keys/x", Plaintext: []byte("p")})
			return err
		}, "name"},
		{"Encrypt with a name lacking its tenant names name", func(ctx context.Context) error {
			_, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: "keys/x", Plaintext: []byte("p")})
			return err
		}, "name"},
		{"Encrypt with an empty name names name", func(ctx context.Context) error {
			_, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Plaintext: []byte("p")})
			return err
		}, "name"},
		{"Encrypt with a trailing slash in the name names name", func(ctx context.Context) error {
			_, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: "tenants/a/keys/k/", Plaintext: []byte("p")})
			return err
		}, "name"},
		{"Decrypt with a malformed name names name", func(ctx context.Context) error {
			_, err := c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: "tenants/a/keys/", Ciphertext: []byte("c")})
			return err
		}, "name"},
		{"EncryptBatch with a malformed name names name", func(ctx context.Context) error {
			_, err := c.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: "tenants/a/keys/K", Items: encryptItems(1, 1)})
			return err
		}, "name"},
		{"GetKey with a tenant name instead of a key name names name", func(ctx context.Context) error {
			_, err := c.keys.GetKey(ctx, &custosv1.GetKeyRequest{Name: "tenants/a"})
			return err
		}, "name"},
		{"GetTenant with a malformed name names name", func(ctx context.Context) error {
			_, err := c.keys.GetTenant(ctx, &custosv1.GetTenantRequest{Name: "tenant/a"})
			return err
		}, "name"},
		{"Encrypt with an empty plaintext names plaintext", func(ctx context.Context) error {
			_, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a")})
			return err
		}, "plaintext"},
		{"Encrypt with a plaintext one byte over the server's limit names plaintext", func(ctx context.Context) error {
			_, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: make([]byte, testMaxPlaintext+1)})
			return err
		}, "plaintext"},
		{"Encrypt with a plaintext over the API's 1 MiB ceiling names plaintext", func(ctx context.Context) error {
			_, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: make([]byte, 1<<20+1)})
			return err
		}, "plaintext"},
		{"Encrypt with associated data over 64 KiB names associated_data", func(ctx context.Context) error {
			_, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte("p"), AssociatedData: make([]byte, 64<<10+1)})
			return err
		}, "associated_data"},
		{"Decrypt with an empty ciphertext names ciphertext", func(ctx context.Context) error {
			_, err := c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName("a")})
			return err
		}, "ciphertext"},
		{"EncryptBatch with one item over the server's batch limit names items", func(ctx context.Context) error {
			_, err := c.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: keyName("a"), Items: encryptItems(testMaxBatch+1, 1)})
			return err
		}, "items"},
		{"DecryptBatch with one item over the server's batch limit names items", func(ctx context.Context) error {
			_, err := c.crypto.DecryptBatch(ctx, &custosv1.DecryptBatchRequest{Name: keyName("a"), Items: decryptItems(testMaxBatch + 1)})
			return err
		}, "items"},
		{"EncryptBatch without items names items", func(ctx context.Context) error {
			_, err := c.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: keyName("a")})
			return err
		}, "items"},
		{"ListTenants with a garbage page token names page_token", func(ctx context.Context) error {
			_, err := c.keys.ListTenants(ctx, &custosv1.ListTenantsRequest{PageToken: "not a token"})
			return err
		}, "page_token"},
		{"ListTenants with well-formed base64 that is no page token names page_token", func(ctx context.Context) error {
			_, err := c.keys.ListTenants(ctx, &custosv1.ListTenantsRequest{PageToken: base64.RawURLEncoding.EncodeToString([]byte("p2:a"))})
			return err
		}, "page_token"},
		{"ListKeys with a garbage page token names page_token", func(ctx context.Context) error {
			_, err := c.keys.ListKeys(ctx, &custosv1.ListKeysRequest{Parent: "tenants/a", PageToken: "!!!"})
			return err
		}, "page_token"},
		{"ListTenants with a negative page size names page_size", func(ctx context.Context) error {
			_, err := c.keys.ListTenants(ctx, &custosv1.ListTenantsRequest{PageSize: -1})
			return err
		}, "page_size"},
		{"CreateTenant with an upper-case id names tenant_id", func(ctx context.Context) error {
			_, err := c.keys.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: "ACME"})
			return err
		}, "tenant_id"},
		{"CreateTenant with an empty id names tenant_id", func(ctx context.Context) error {
			_, err := c.keys.CreateTenant(ctx, &custosv1.CreateTenantRequest{})
			return err
		}, "tenant_id"},
		{"CreateKey with an empty key id names key_id", func(ctx context.Context) error {
			_, err := c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/a", Key: encryptKey})
			return err
		}, "key_id"},
		{"CreateKey without a key names key", func(ctx context.Context) error {
			_, err := c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/a", KeyId: "k9"})
			return err
		}, "key"},
		{"CreateKey without a purpose names key.purpose", func(ctx context.Context) error {
			_, err := c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/a", KeyId: "k9", Key: &custosv1.Key{}})
			return err
		}, "key.purpose"},
		{"CreateKey with a malformed parent names parent", func(ctx context.Context) error {
			_, err := c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "a", KeyId: "k9", Key: encryptKey})
			return err
		}, "parent"},
		{"UpdateKey with a malformed key name names key.name", func(ctx context.Context) error {
			_, err := c.keys.UpdateKey(ctx, &custosv1.UpdateKeyRequest{Key: &custosv1.Key{Name: "bad"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"rotation_period"}}})
			return err
		}, "key.name"},
		{"ListKeys with a malformed parent names parent", func(ctx context.Context) error {
			_, err := c.keys.ListKeys(ctx, &custosv1.ListKeysRequest{Parent: "tenants/"})
			return err
		}, "parent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := wantCode(t, tt.call(ctx), codes.InvalidArgument)
			if !containsField(st.Message(), tt.field) {
				t.Errorf("message %q does not name %s", st.Message(), tt.field)
			}
			if !hasBadRequestField(st, tt.field) {
				t.Errorf("no BadRequest naming %s in %v", tt.field, st.Details())
			}
		})
	}

	t.Run("an empty item in EncryptBatch fails alone, naming plaintext", func(t *testing.T) {
		items := encryptItems(3, 8)
		items[2].Plaintext = nil
		resp, err := c.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: keyName("a"), Items: items})
		if err != nil {
			t.Fatalf("EncryptBatch failed as a whole: %v", err)
		}
		for i, r := range resp.GetResults() {
			st := status.FromProto(r.GetStatus())
			if want := codes.OK; i == 2 {
				if st.Code() != codes.InvalidArgument || !containsField(st.Message(), "plaintext") {
					t.Errorf("item 2: %v %q, want InvalidArgument naming plaintext", st.Code(), st.Message())
				}
				// The details a whole call's refusal carries, per item too.
				if info := errorInfo(st); info == nil || info.GetReason() != custosv1.ReasonInvalidArgument {
					t.Errorf("item 2: ErrorInfo %v, want reason %s", info, custosv1.ReasonInvalidArgument)
				}
				if !hasBadRequestField(st, "plaintext") {
					t.Errorf("item 2: no BadRequest naming plaintext in %v", st.Details())
				}
			} else if st.Code() != want {
				t.Errorf("item %d: %v %q, want OK", i, st.Code(), st.Message())
			}
		}
	})

	t.Run("an item the keystore refuses carries the details a whole call's refusal does", func(t *testing.T) {
		items := encryptItems(2, 8)
		items[1].AssociatedData = []byte("custos:datakey:x") // reserved for data keys
		resp, err := c.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: keyName("a"), Items: items})
		if err != nil {
			t.Fatalf("EncryptBatch failed as a whole: %v", err)
		}
		st := status.FromProto(resp.GetResults()[1].GetStatus())
		if st.Code() != codes.InvalidArgument || !hasBadRequestField(st, "associated_data") {
			t.Errorf("item 1: %v %q %v, want InvalidArgument with a BadRequest naming associated_data", st.Code(), st.Message(), st.Details())
		}
	})

	t.Run("an empty or oversized item in DecryptBatch fails alone, naming its field", func(t *testing.T) {
		ok, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		items := []*custosv1.DecryptBatchRequest_Item{
			{Ciphertext: ok.Ciphertext},
			{Ciphertext: nil},
			{Ciphertext: ok.Ciphertext, AssociatedData: make([]byte, 65537)},
		}
		resp, err := c.crypto.DecryptBatch(ctx, &custosv1.DecryptBatchRequest{Name: keyName("a"), Items: items})
		if err != nil {
			t.Fatalf("DecryptBatch failed as a whole: %v", err)
		}
		for i, want := range []string{"", "ciphertext", "associated_data"} {
			st := status.FromProto(resp.GetResults()[i].GetStatus())
			if want == "" && st.Code() != codes.OK || want != "" && (st.Code() != codes.InvalidArgument || !containsField(st.Message(), want)) {
				t.Errorf("item %d: %v %q, want %q", i, st.Code(), st.Message(), want)
			}
		}
	})

	t.Run("an oversized item in EncryptBatch fails alone, naming plaintext", func(t *testing.T) {
		items := encryptItems(3, 8)
		items[1].Plaintext = make([]byte, testMaxPlaintext+1)
		resp, err := c.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: keyName("a"), Items: items})
		if err != nil {
			t.Fatalf("EncryptBatch failed as a whole: %v", err)
		}
		for i, r := range resp.GetResults() {
			st := status.FromProto(r.GetStatus())
			switch {
			case i == 1 && (st.Code() != codes.InvalidArgument || !containsField(st.Message(), "plaintext")):
				t.Errorf("item 1: %v %q, want InvalidArgument naming plaintext", st.Code(), st.Message())
			case i != 1 && (st.Code() != codes.OK || r.GetKeyVersion() != 1):
				t.Errorf("item %d: %v %q, want OK", i, st.Code(), st.Message())
			}
		}
	})
}

func TestUnknownResourcesAreNotFound(t *testing.T) {
	t.Parallel()
	ts := start(t, newFiles(t), options{limits: server.Limits{MaxPlaintextBytes: testMaxPlaintext}})
	setup(t, ts, "a")
	c := ts.clients(t, idAdmin)
	ctx := testContext(t)
	enc, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte("p")})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		call func(context.Context) error
	}{
		{"Encrypt under a key of an unknown tenant", func(ctx context.Context) error {
			_, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("nope"), Plaintext: []byte("p")})
			return err
		}},
		{"Encrypt under an unknown key of a known tenant", func(ctx context.Context) error {
			_, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: "tenants/a/keys/nope", Plaintext: []byte("p")})
			return err
		}},
		{"Decrypt under an unknown key", func(ctx context.Context) error {
			_, err := c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: "tenants/a/keys/nope", Ciphertext: enc.GetCiphertext()})
			return err
		}},
		{"EncryptBatch under an unknown key fails as a whole", func(ctx context.Context) error {
			_, err := c.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: "tenants/a/keys/nope", Items: encryptItems(3, 1)})
			return err
		}},
		{"EncryptBatch under an unknown key fails as a whole even when its first item is oversized", func(ctx context.Context) error {
			items := encryptItems(3, 1)
			items[0].Plaintext = make([]byte, testMaxPlaintext+1)
			_, err := c.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: "tenants/a/keys/nope", Items: items})
			return err
		}},
		{"DecryptBatch under an unknown key fails as a whole", func(ctx context.Context) error {
			_, err := c.crypto.DecryptBatch(ctx, &custosv1.DecryptBatchRequest{Name: "tenants/nope/keys/k", Items: decryptItems(3)})
			return err
		}},
		{"GetTenant of an unknown tenant", func(ctx context.Context) error {
			_, err := c.keys.GetTenant(ctx, &custosv1.GetTenantRequest{Name: "tenants/nope"})
			return err
		}},
		{"GetKey of an unknown key", func(ctx context.Context) error {
			_, err := c.keys.GetKey(ctx, &custosv1.GetKeyRequest{Name: "tenants/a/keys/nope"})
			return err
		}},
		{"ListKeys of an unknown tenant", func(ctx context.Context) error {
			_, err := c.keys.ListKeys(ctx, &custosv1.ListKeysRequest{Parent: "tenants/nope"})
			return err
		}},
		{"CreateKey in an unknown tenant", func(ctx context.Context) error {
			_, err := c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/nope", KeyId: "k", Key: &custosv1.Key{Purpose: custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT}})
			return err
		}},
		{"RotateKey of an unknown key", func(ctx context.Context) error {
			_, err := c.keys.RotateKey(ctx, &custosv1.RotateKeyRequest{Name: "tenants/a/keys/nope"})
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is NOT_FOUND", func(t *testing.T) {
			wantCode(t, tt.call(ctx), codes.NotFound)
		})
	}
}

func TestCreatingTwiceIsAlreadyExists(t *testing.T) {
	t.Parallel()
	ts := start(t, newFiles(t), options{})
	setup(t, ts, "a")
	c := ts.clients(t, idAdmin)
	ctx := testContext(t)

	t.Run("a second CreateTenant with the same id is ALREADY_EXISTS", func(t *testing.T) {
		_, err := c.keys.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: "a"})
		wantCode(t, err, codes.AlreadyExists)
	})
	t.Run("a second CreateKey with the same id is ALREADY_EXISTS", func(t *testing.T) {
		_, err := c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/a", KeyId: "k", Key: &custosv1.Key{Purpose: custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT}})
		wantCode(t, err, codes.AlreadyExists)
	})
	t.Run("the existing key still decrypts what it encrypted before", func(t *testing.T) {
		enc, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte("kept")})
		if err != nil {
			t.Fatal(err)
		}
		dec, err := c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName("a"), Ciphertext: enc.GetCiphertext()})
		if err != nil || string(dec.GetPlaintext()) != "kept" {
			t.Fatalf("Decrypt = %q, %v", dec.GetPlaintext(), err)
		}
	})
}

// A limit above the API's own bound could never be reached: the server
// refuses to start with it instead of serving less than it says.
func TestALimitAboveTheAPIsBoundIsRefusedAtStart(t *testing.T) {
	for name, l := range map[string]config.Limits{
		"max_plaintext_bytes": {MaxPlaintextBytes: 4 << 20},
		"max_batch_items":     {MaxBatchItems: 20000},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFiles(t)
			cfg := f.config(t)
			cfg.Limits = l
			rt, err := custos.New(context.Background(), cfg, custos.Options{Logger: discardLogger(), Root: f.root})
			if err == nil {
				rt.Close()
				t.Fatal("the server started")
			}
			if !strings.Contains(err.Error(), name) {
				t.Fatalf("error %q does not name limits.%s", err, name)
			}
		})
	}
}

// hasBadRequestField reports whether st carries a BadRequest whose field
// violation names field.
func hasBadRequestField(st *status.Status, field string) bool {
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				if strings.Contains(v.GetField(), field) {
					return true
				}
			}
		}
	}
	return false
}

// An update_mask path the server does not know is named in the error, cut
// short: a caller cannot make its refusal (returned and logged) as large as
// the message limit.
func TestAnUnknownUpdateMaskPathIsQuotedShort(t *testing.T) {
	ts := start(t, newFiles(t), options{})
	setup(t, ts, "a")
	long := strings.Repeat("x", 10000)
	_, err := ts.clients(t, idAdmin).keys.UpdateKey(testContext(t), &custosv1.UpdateKeyRequest{
		Key:        &custosv1.Key{Name: keyName("a")},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{long}},
	})
	st := wantCode(t, err, codes.InvalidArgument)
	if len(st.Message()) > 300 {
		t.Fatalf("the refusal quotes %d bytes of the path", len(st.Message()))
	}
}

// A long malformed name (ending inside a character) still gets its
// ErrorInfo and BadRequest, with a message that is valid UTF-8, which a
// protobuf string needs (the message no longer repeats the name).
func TestALongMalformedNameKeepsItsErrorDetails(t *testing.T) {
	ts := start(t, newFiles(t), options{})
	for _, prefix := range []string{"tenants/", "tenants/" + strings.Repeat("a", 63)} {
		name := prefix + strings.Repeat("é", 200)
		_, err := ts.clients(t, idAdmin).crypto.Encrypt(testContext(t), &custosv1.EncryptRequest{Name: name, Plaintext: []byte("x")})
		st := wantCode(t, err, codes.InvalidArgument)
		var info, br bool
		for _, d := range st.Details() {
			switch d.(type) {
			case *errdetails.ErrorInfo:
				info = true
			case *errdetails.BadRequest:
				br = true
			}
		}
		if !info || !br {
			t.Fatalf("a long malformed name (prefix %d bytes): ErrorInfo %v, BadRequest %v; message %q", len(prefix), info, br, st.Message())
		}
	}
}
