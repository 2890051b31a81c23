package server_test

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"
	"sync/atomic"
	"testing"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/custos-kms/custos/keystore/root/gcpkms"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server"
)

// fakeKMS is a Cloud KMS client that "encrypts" by copying, until deny is set:
// then Decrypt fails as real Cloud KMS does when IAM refuses the call.
type fakeKMS struct{ deny atomic.Bool }

func crcOf(b []byte) *wrapperspb.Int64Value {
	return wrapperspb.Int64(int64(crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))))
}

func (f *fakeKMS) Encrypt(_ context.Context, r *kmspb.EncryptRequest, _ ...gax.CallOption) (*kmspb.EncryptResponse, error) {
	ct := append([]byte(nil), r.GetPlaintext()...)
	return &kmspb.EncryptResponse{Ciphertext: ct, CiphertextCrc32C: crcOf(ct), VerifiedPlaintextCrc32C: true, VerifiedAdditionalAuthenticatedDataCrc32C: true}, nil
}

func (f *fakeKMS) Decrypt(_ context.Context, r *kmspb.DecryptRequest, _ ...gax.CallOption) (*kmspb.DecryptResponse, error) {
	if f.deny.Load() {
		return nil, status.Error(codes.PermissionDenied, "Permission 'cloudkms.cryptoKeyVersions.useToDecrypt' denied on resource 'projects/secret-prod-123/locations/global/keyRings/custos/cryptoKeys/root'")
	}
	pt := append([]byte(nil), r.GetCiphertext()...)
	return &kmspb.DecryptResponse{Plaintext: pt, PlaintextCrc32C: crcOf(pt)}, nil
}

// A root failure that carries a gRPC status (every Cloud KMS error does) must
// not reach the caller as that status: DESIGN says INTERNAL/UNAVAILABLE with a
// bland message, details only in the server log.
func TestARootsGRPCStatusNeverReachesTheCaller(t *testing.T) {
	f := newFiles(t)
	kms := &fakeKMS{}
	r, err := gcpkms.NewWithClient(kms, "projects/secret-prod-123/locations/global/keyRings/custos/cryptoKeys/root")
	if err != nil {
		t.Fatal(err)
	}
	ts := start(t, f, options{root: r})
	setup(t, ts, "a")
	ts.stop()
	kms.deny.Store(true)
	ts = start(t, f, options{root: r}) // cold cache: the KEK must be unwrapped
	c := ts.clients(t, idAdmin)
	_, err = c.crypto.Encrypt(testContext(t), &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte("x")})
	st, _ := status.FromError(err)
	t.Logf("caller sees: code=%v msg=%q", st.Code(), st.Message())
	if st.Code() != codes.Internal || strings.Contains(st.Message(), "secret-prod") {
		t.Fatalf("root error leaked to the caller: code=%v msg=%q", st.Code(), st.Message())
	}
}

// DESIGN: an unknown key fails the whole batch call, regardless of item order.
func TestABatchOnAnUnknownKeyFailsAsAWholeWhateverItsItems(t *testing.T) {
	f := newFiles(t)
	ts := start(t, f, options{})
	setup(t, ts, "a")
	c := ts.clients(t, idAdmin)
	ctx := testContext(t)
	items := []*custosv1.DecryptBatchRequest_Item{{Ciphertext: nil}, {Ciphertext: []byte("0123456789abcdef0123456789")}}
	resp, err := c.crypto.DecryptBatch(ctx, &custosv1.DecryptBatchRequest{Name: "tenants/a/keys/nope", Items: items})
	if err == nil {
		t.Errorf("DecryptBatch on unknown key: call OK, item statuses %v / %v; want the call to fail NOT_FOUND",
			codes.Code(resp.Results[0].Status.Code), codes.Code(resp.Results[1].Status.Code))
	}
	ritems := []*custosv1.RewrapBatchRequest_Item{{Ciphertext: nil}, {Ciphertext: []byte("0123456789abcdef0123456789")}}
	rresp, err := c.crypto.RewrapBatch(ctx, &custosv1.RewrapBatchRequest{Name: "tenants/a/keys/nope", Items: ritems})
	if err == nil {
		t.Errorf("RewrapBatch on unknown key: call OK, item statuses %v / %v; want NOT_FOUND",
			codes.Code(rresp.Results[0].Status.Code), codes.Code(rresp.Results[1].Status.Code))
	}
	// EncryptBatch: an item refused by the keystore before the key lookup (reserved AAD) also clears "first".
	eitems := []*custosv1.EncryptBatchRequest_Item{{Plaintext: []byte("x"), AssociatedData: []byte("custos:datakey:x")}, {Plaintext: []byte("y")}}
	eresp, err := c.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: "tenants/a/keys/nope", Items: eitems})
	if err == nil {
		t.Errorf("EncryptBatch on unknown key: call OK, item statuses %v / %v; want NOT_FOUND",
			codes.Code(eresp.Results[0].Status.Code), codes.Code(eresp.Results[1].Status.Code))
	}
}

var _ = errors.New
var _ = fmt.Sprintf

// The protos' 1 MiB plaintext ceiling is absolute (a higher limit is refused
// at start); a server configured at it, with room for larger messages, must
// still refuse a 1.5 MiB batch item (as it refuses Encrypt).
func TestNoBatchItemExceedsTheProtosPlaintextCeiling(t *testing.T) {
	f := newFiles(t)
	ts := start(t, f, options{limits: server.Limits{MaxPlaintextBytes: 1 << 20, MaxMessageBytes: 64 << 20}})
	setup(t, ts, "a")
	c := ts.clients(t, idAdmin)
	ctx := testContext(t)
	big := make([]byte, 1536<<10)
	_, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: big}, grpc.MaxCallSendMsgSize(64<<20), grpc.MaxCallRecvMsgSize(64<<20))
	t.Logf("Encrypt 1.5 MiB: %v", status.Code(err))
	resp, err := c.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: keyName("a"), Items: []*custosv1.EncryptBatchRequest_Item{{Plaintext: big}}}, grpc.MaxCallSendMsgSize(64<<20), grpc.MaxCallRecvMsgSize(64<<20))
	if err != nil {
		t.Fatal(err)
	}
	if code := codes.Code(resp.Results[0].Status.GetCode()); code != codes.InvalidArgument {
		t.Errorf("EncryptBatch item of 1.5 MiB: %v, want InvalidArgument (proto max_len 1 MiB)", code)
	}
}

func TestADecryptOnlyCallerCannotReadDataKeys(t *testing.T) {
	f := newFiles(t)
	ts := start(t, f, options{})
	setup(t, ts, "a")
	ctx := testContext(t)
	adm := ts.clients(t, idAdmin)
	dk, err := adm.crypto.GenerateDataKey(ctx, &custosv1.GenerateDataKeyRequest{Name: keyName("a"), AssociatedData: []byte("ad")})
	if err != nil {
		t.Fatal(err)
	}
	d := ts.clients(t, idDecryptOnly)
	for _, aad := range [][]byte{[]byte("ad"), []byte("custos:datakey:ad")} {
		_, err := d.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName("a"), Ciphertext: dk.Wrapped, AssociatedData: aad})
		st := wantCode(t, err, codes.InvalidArgument)
		t.Logf("decrypt-only, aad %q: %v %q", aad, st.Code(), st.Message())
		r, err := d.crypto.DecryptBatch(ctx, &custosv1.DecryptBatchRequest{Name: keyName("a"), Items: []*custosv1.DecryptBatchRequest_Item{{Ciphertext: dk.Wrapped, AssociatedData: aad}}})
		if err != nil || r.Results[0].Status.GetCode() != int32(codes.InvalidArgument) {
			t.Fatalf("batch: %v %v", err, r)
		}
	}
}

// An answer may outgrow the message limit, which bounds requests: a batch
// whose request fits gets its answer, not a RESOURCE_EXHAUSTED after its
// event, metrics and log said OK (gRPC checked its send limit after the
// interceptor had recorded the call).
func TestABatchAnswerLargerThanTheMessageLimitIsSent(t *testing.T) {
	f := newFiles(t)
	const limit = 72 << 10
	ts := start(t, f, options{limits: server.Limits{MaxPlaintextBytes: 1 << 10, MaxMessageBytes: limit}})
	setup(t, ts, "a")
	c := ts.clients(t, idAdmin)
	ctx := testContext(t)
	req := &custosv1.EncryptBatchRequest{Name: keyName("a")}
	for range 1000 {
		req.Items = append(req.Items, &custosv1.EncryptBatchRequest_Item{Plaintext: make([]byte, 64)})
	}
	if n := proto.Size(req); n >= limit {
		t.Fatalf("the request is %d bytes: want it under the %d limit", n, limit)
	}
	resp, err := c.crypto.EncryptBatch(ctx, req, grpc.MaxCallRecvMsgSize(1<<20))
	if err != nil {
		t.Fatalf("a request under the limit, its answer over it: %v", err)
	}
	if n := proto.Size(resp); n <= limit || len(resp.Results) != 1000 {
		t.Fatalf("the answer is %d bytes with %d results: want over the %d limit, 1000 results", n, len(resp.Results), limit)
	}
}
