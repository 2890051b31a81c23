package gcpkms_test

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/gcpkms"
	"github.com/custos-kms/custos/keystore/root/roottest"
)

const keyName = "projects/custos/locations/europe-west1/keyRings/custos/cryptoKeys/root"

// fakeKMS is a fake of gcpkms.Client: a test double standing in for Cloud
// KMS, which cannot be reached from the test machines. It encrypts for real
// with AES-256-GCM, binding the key name and the AAD, checks and returns
// CRC32C checksums as Cloud KMS does, and can be made to fail.
type fakeKMS struct {
	aead    cipher.AEAD
	down    atomic.Bool // answer UNAVAILABLE
	corrupt atomic.Bool // return a ciphertext checksum that does not match
}

var _ gcpkms.Client = (*fakeKMS)(nil)

func newFakeKMS(t *testing.T) *fakeKMS {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeKMS{aead: aead}
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc(b []byte) *wrapperspb.Int64Value {
	return wrapperspb.Int64(int64(crc32.Checksum(b, castagnoli)))
}

func bound(name string, aad []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	return append(append(b, name...), aad...)
}

func (f *fakeKMS) Encrypt(ctx context.Context, req *kmspb.EncryptRequest, _ ...gax.CallOption) (*kmspb.EncryptResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	if f.down.Load() {
		return nil, status.Error(codes.Unavailable, "the service is currently unavailable")
	}
	if req.GetName() != keyName {
		return nil, status.Error(codes.NotFound, "CryptoKey not found")
	}
	if req.PlaintextCrc32C.GetValue() != crc(req.Plaintext).GetValue() || req.AdditionalAuthenticatedDataCrc32C.GetValue() != crc(req.AdditionalAuthenticatedData).GetValue() {
		return nil, status.Error(codes.InvalidArgument, "checksum mismatch")
	}
	nonce := make([]byte, f.aead.NonceSize())
	rand.Read(nonce)
	ct := f.aead.Seal(nonce, nonce, req.Plaintext, bound(req.Name, req.AdditionalAuthenticatedData))
	sum := crc(ct)
	if f.corrupt.Load() {
		sum = wrapperspb.Int64(sum.GetValue() ^ 1)
	}
	return &kmspb.EncryptResponse{
		Name:                    keyName + "/cryptoKeyVersions/1",
		Ciphertext:              ct,
		CiphertextCrc32C:        sum,
		VerifiedPlaintextCrc32C: req.PlaintextCrc32C != nil,
		VerifiedAdditionalAuthenticatedDataCrc32C: req.AdditionalAuthenticatedDataCrc32C != nil,
	}, nil
}

func (f *fakeKMS) Decrypt(ctx context.Context, req *kmspb.DecryptRequest, _ ...gax.CallOption) (*kmspb.DecryptResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	if f.down.Load() {
		return nil, status.Error(codes.Unavailable, "the service is currently unavailable")
	}
	if req.GetName() != keyName {
		return nil, status.Error(codes.NotFound, "CryptoKey not found")
	}
	n := f.aead.NonceSize()
	if len(req.Ciphertext) < n {
		return nil, status.Error(codes.InvalidArgument, "Decryption failed: the ciphertext is invalid.")
	}
	pt, err := f.aead.Open(nil, req.Ciphertext[:n], req.Ciphertext[n:], bound(req.Name, req.AdditionalAuthenticatedData))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "Decryption failed: the ciphertext is invalid.")
	}
	return &kmspb.DecryptResponse{Plaintext: pt, PlaintextCrc32C: crc(pt)}, nil
}

func TestConformanceAgainstFakeKMS(t *testing.T) {
	r, err := gcpkms.NewWithClient(newFakeKMS(t), keyName)
	if err != nil {
		t.Fatal(err)
	}
	roottest.Test(t, r)
}

func TestOutageAgainstFakeKMS(t *testing.T) {
	f := newFakeKMS(t)
	r, _ := gcpkms.NewWithClient(f, keyName)
	roottest.TestUnavailable(t, r, func() { f.down.Store(true) }, func() { f.down.Store(false) })
}

func TestAChecksumMismatchIsUnavailable(t *testing.T) {
	f := newFakeKMS(t)
	r, _ := gcpkms.NewWithClient(f, keyName)
	f.corrupt.Store(true)
	if _, err := r.Wrap(t.Context(), []byte("kek"), nil); !errors.Is(err, root.ErrUnavailable) {
		t.Fatalf("Wrap with a corrupted response: %v; want ErrUnavailable", err)
	}
}

func TestKeyNameMustBeACryptoKey(t *testing.T) {
	for _, name := range []string{"", "root", keyName + "/cryptoKeyVersions/1", "projects/p/locations/l/keyRings/r"} {
		if _, err := gcpkms.NewWithClient(newFakeKMS(t), name); err == nil {
			t.Errorf("NewWithClient(%q) succeeded", name)
		}
	}
}

// The tests below run the real Cloud KMS client over gRPC against a local
// server, to pin the wire format and how real client errors are classified.

// fakeKMSServer serves the KeyManagementService over gRPC with fakeKMS's
// crypto, or with a canned status.
type fakeKMSServer struct {
	kmspb.UnimplementedKeyManagementServiceServer
	kms  *fakeKMS
	fail atomic.Pointer[status.Status]
}

func (s *fakeKMSServer) Encrypt(ctx context.Context, req *kmspb.EncryptRequest) (*kmspb.EncryptResponse, error) {
	if st := s.fail.Load(); st != nil {
		return nil, st.Err()
	}
	return s.kms.Encrypt(ctx, req)
}

func (s *fakeKMSServer) Decrypt(ctx context.Context, req *kmspb.DecryptRequest) (*kmspb.DecryptResponse, error) {
	if st := s.fail.Load(); st != nil {
		return nil, st.Err()
	}
	return s.kms.Decrypt(ctx, req)
}

// realClient dials addr in plaintext (with opts) and builds the root with New.
func realClient(t *testing.T, addr string, opts ...grpc.DialOption) *gcpkms.Root {
	t.Helper()
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	r, err := gcpkms.New(t.Context(), gcpkms.Config{KeyName: keyName}, option.WithGRPCConn(conn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func startServer(t *testing.T) (*fakeKMSServer, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeKMSServer{kms: newFakeKMS(t)}
	g := grpc.NewServer()
	kmspb.RegisterKeyManagementServiceServer(g, s)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	return s, ln.Addr().String()
}

func TestConformanceThroughTheRealClient(t *testing.T) {
	_, addr := startServer(t)
	roottest.Test(t, realClient(t, addr))
}

func TestRealClientErrorsAreClassified(t *testing.T) {
	s, addr := startServer(t)
	r := realClient(t, addr)
	w, err := r.Wrap(t.Context(), []byte("kek"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		code codes.Code
		msg  string // empty: "canned"
		want error  // nil: neither sentinel
	}{
		{"INVALID_ARGUMENT is not authentic", codes.InvalidArgument, "", root.ErrNotAuthentic},
		// Cloud KMS refusing the request's own checksum: corrupted on the
		// way there, retried, not a verdict on the blob.
		{"INVALID_ARGUMENT on a request checksum is unavailable", codes.InvalidArgument, "The checksum in field ciphertext_crc32c did not match the data in field ciphertext.", root.ErrUnavailable},
		{"UNAVAILABLE is unavailable", codes.Unavailable, "", root.ErrUnavailable},
		{"RESOURCE_EXHAUSTED is unavailable", codes.ResourceExhausted, "", root.ErrUnavailable},
		{"INTERNAL is unavailable", codes.Internal, "", root.ErrUnavailable},
		{"PERMISSION_DENIED is neither", codes.PermissionDenied, "", nil},
		{"FAILED_PRECONDITION (a disabled version) is neither", codes.FailedPrecondition, "", nil},
		{"NOT_FOUND is neither", codes.NotFound, "", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			msg := c.msg
			if msg == "" {
				msg = "canned"
			}
			s.fail.Store(status.New(c.code, msg))
			defer s.fail.Store(nil)
			// The client retries UNAVAILABLE until the deadline.
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			_, err := r.Unwrap(ctx, w, []byte("aad"))
			if err == nil {
				t.Fatal("Unwrap succeeded")
			}
			for _, sentinel := range []error{root.ErrNotAuthentic, root.ErrUnavailable} {
				if got, want := errors.Is(err, sentinel), sentinel == c.want; got != want {
					t.Fatalf("Unwrap: %v; errors.Is(%v) = %v, want %v", err, sentinel, got, want)
				}
			}
		})
	}
}

func TestUnresponsiveEndpointHonoursTheDeadline(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() { // accept and never answer
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
	r := realClient(t, ln.Addr().String())
	roottest.TestUnresponsive(t, r, []byte{1, 2, 3, 4})
}

// failingCreds cannot get a token: the metadata server or the token
// endpoint does not answer.
type failingCreds struct{}

func (failingCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return nil, &url.Error{Op: "Post", URL: "https://oauth2.googleapis.com/token", Err: errors.New("dial tcp: i/o timeout")}
}

func (failingCreds) RequireTransportSecurity() bool { return false }

// Credentials that cannot be fetched are an outage (cached tenants keep
// serving through the grace), not Cloud KMS refusing the call.
func TestCredentialsThatCannotBeFetchedAreUnavailable(t *testing.T) {
	_, addr := startServer(t)
	r := realClient(t, addr, grpc.WithPerRPCCredentials(failingCreds{}))
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := r.Wrap(ctx, []byte("kek"), []byte("aad")); !errors.Is(err, root.ErrUnavailable) {
		t.Fatalf("Wrap without credentials: %v, want ErrUnavailable", err)
	}
}

// tokenCreds fail to get a token with err.
type tokenCreds struct{ err error }

func (c tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return nil, c.err
}

func (tokenCreds) RequireTransportSecurity() bool { return false }

// A token endpoint that refused the credentials is a misconfiguration; one
// that said "try again" (408, 429, 5xx) is an outage.
func TestTokenFetchFailuresAreClassified(t *testing.T) {
	_, addr := startServer(t)
	for msg, outage := range map[string]bool{
		"auth: cannot fetch token: 400\nResponse: {\"error\":\"invalid_grant\"}": false,
		"auth: cannot fetch token: 401\nResponse: {}":                            false,
		`auth: "invalid_client" "The OAuth client was not found."`:               false,
		"auth: cannot fetch token: 429\nResponse: {}":                            true,
		"auth: cannot fetch token: 408\nResponse: {}":                            true,
		"auth: cannot fetch token: 503\nResponse: {}":                            true,
	} {
		r := realClient(t, addr, grpc.WithPerRPCCredentials(tokenCreds{errors.New(msg)}))
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		_, err := r.Wrap(ctx, []byte("kek"), []byte("aad"))
		cancel()
		if got := errors.Is(err, root.ErrUnavailable); got != outage || err == nil {
			t.Errorf("token fetch %q: %v; outage %v, want %v", msg, err, got, outage)
		}
	}
}
