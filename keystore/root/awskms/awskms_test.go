package awskms_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/awskms"
	"github.com/custos-kms/custos/keystore/root/roottest"
)

// fakeKMS is a fake of awskms.Client: a test double standing in for AWS
// KMS, which cannot be reached from the test machines. It encrypts for real
// with AES-256-GCM, binding the key ID and the encryption context as GCM
// associated data, as KMS authenticates them; so the conformance suite's
// wrong-AAD and tampering checks mean something.
type fakeKMS struct {
	keyID string
	aead  cipher.AEAD
	down  atomic.Bool // answer every call with a network error
}

func newFakeKMS(t *testing.T, keyID string) *fakeKMS {
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
	return &fakeKMS{keyID: keyID, aead: aead}
}

var _ awskms.Client = (*fakeKMS)(nil)

// boundData encodes key ID and context unambiguously (length-prefixed, keys sorted).
func boundData(keyID string, ec map[string]string) []byte {
	var b []byte
	add := func(s string) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	add(keyID)
	keys := make([]string, 0, len(ec))
	for k := range ec {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		add(k)
		add(ec[k])
	}
	return b
}

// errNetwork is what a dropped connection looks like to the SDK's caller.
var errNetwork = &smithyhttp.RequestSendError{Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}}

func (f *fakeKMS) Encrypt(ctx context.Context, in *kms.EncryptInput, _ ...func(*kms.Options)) (*kms.EncryptOutput, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if f.down.Load() {
		return nil, errNetwork
	}
	if aws.ToString(in.KeyId) != f.keyID {
		return nil, &types.NotFoundException{Message: aws.String("key not found")}
	}
	nonce := make([]byte, f.aead.NonceSize())
	rand.Read(nonce)
	return &kms.EncryptOutput{
		KeyId:          in.KeyId,
		CiphertextBlob: f.aead.Seal(nonce, nonce, in.Plaintext, boundData(f.keyID, in.EncryptionContext)),
	}, nil
}

func (f *fakeKMS) Decrypt(ctx context.Context, in *kms.DecryptInput, _ ...func(*kms.Options)) (*kms.DecryptOutput, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if f.down.Load() {
		return nil, errNetwork
	}
	if id := aws.ToString(in.KeyId); id != "" && id != f.keyID {
		return nil, &types.IncorrectKeyException{Message: aws.String("incorrect key")}
	}
	n := f.aead.NonceSize()
	if len(in.CiphertextBlob) < n {
		return nil, &types.InvalidCiphertextException{}
	}
	pt, err := f.aead.Open(nil, in.CiphertextBlob[:n], in.CiphertextBlob[n:], boundData(f.keyID, in.EncryptionContext))
	if err != nil {
		return nil, &types.InvalidCiphertextException{}
	}
	return &kms.DecryptOutput{KeyId: in.KeyId, Plaintext: pt}, nil
}

const keyARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"

func TestConformanceAgainstFakeKMS(t *testing.T) {
	r, err := awskms.NewWithClient(newFakeKMS(t, keyARN), keyARN)
	if err != nil {
		t.Fatal(err)
	}
	roottest.Test(t, r)
}

func TestOutageAgainstFakeKMS(t *testing.T) {
	f := newFakeKMS(t, keyARN)
	r, _ := awskms.NewWithClient(f, keyARN)
	roottest.TestUnavailable(t, r, func() { f.down.Store(true) }, func() { f.down.Store(false) })
}

func TestABlobFromAnotherKeyIsNotAuthentic(t *testing.T) {
	f := newFakeKMS(t, keyARN)
	r, _ := awskms.NewWithClient(f, keyARN)
	w, err := r.Wrap(t.Context(), []byte("kek"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := awskms.NewWithClient(f, keyARN+"-other")
	if _, err := other.Unwrap(t.Context(), w, []byte("aad")); !errors.Is(err, root.ErrNotAuthentic) {
		t.Fatalf("Unwrap under another key ID: %v; want ErrNotAuthentic", err)
	}
}

// The tests below run the real SDK client (built by New from the default
// credential chain) against local HTTP endpoints, to pin what goes on the
// wire and how real SDK errors are classified.

func realSDK(t *testing.T, endpoint string) *awskms.Root {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	r, err := awskms.New(t.Context(), awskms.Config{KeyID: keyARN, Region: "eu-west-1", Endpoint: endpoint, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// kmsServer answers the KMS JSON protocol with handler's status and body,
// recording each request's target and body.
type kmsServer struct {
	*httptest.Server
	mu       sync.Mutex
	requests []map[string]any
	status   int
	body     string
}

func newKMSServer(t *testing.T) *kmsServer {
	s := &kmsServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var req map[string]any
		json.Unmarshal(b, &req)
		req["target"] = r.Header.Get("X-Amz-Target")
		s.mu.Lock()
		s.requests = append(s.requests, req)
		status, body := s.status, s.body
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *kmsServer) answer(status int, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.body = status, body
}

func TestTheEncryptionContextCarriesTheAADOnTheWire(t *testing.T) {
	s := newKMSServer(t)
	blob := []byte("opaque-ciphertext-blob")
	s.answer(200, fmt.Sprintf(`{"CiphertextBlob":%q,"KeyId":%q}`, base64.StdEncoding.EncodeToString(blob), keyARN))
	r := realSDK(t, s.URL)
	w, err := r.Wrap(t.Context(), []byte("kek"), []byte("custos:tenant:acme"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(w, append([]byte{1}, blob...)) {
		t.Fatalf("blob = %q; want 0x01 | CiphertextBlob", w)
	}
	s.answer(200, fmt.Sprintf(`{"Plaintext":%q,"KeyId":%q}`, base64.StdEncoding.EncodeToString([]byte("kek")), keyARN))
	if _, err := r.Unwrap(t.Context(), w, []byte("custos:tenant:acme")); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	wantCtx := map[string]any{"custos-aad": base64.StdEncoding.EncodeToString([]byte("custos:tenant:acme"))}
	for i, target := range []string{"TrentService.Encrypt", "TrentService.Decrypt"} {
		req := s.requests[i]
		if req["target"] != target || req["KeyId"] != keyARN || fmt.Sprint(req["EncryptionContext"]) != fmt.Sprint(wantCtx) {
			t.Errorf("request %d = %v; want %s with KeyId and EncryptionContext %v", i, req, target, wantCtx)
		}
	}
}

func TestRealSDKErrorsAreClassified(t *testing.T) {
	cases := []struct {
		name   string
		status int
		body   string
		want   error // nil: neither sentinel
	}{
		{"InvalidCiphertextException is not authentic", 400, `{"__type":"InvalidCiphertextException","message":""}`, root.ErrNotAuthentic},
		{"IncorrectKeyException is not authentic", 400, `{"__type":"IncorrectKeyException","message":""}`, root.ErrNotAuthentic},
		{"ThrottlingException is unavailable", 400, `{"__type":"ThrottlingException","message":"Rate exceeded"}`, root.ErrUnavailable},
		{"KMSInternalException is unavailable", 500, `{"__type":"KMSInternalException","message":""}`, root.ErrUnavailable},
		{"KeyUnavailableException is unavailable", 500, `{"__type":"KeyUnavailableException","message":""}`, root.ErrUnavailable},
		{"a bare 503 is unavailable", 503, `<html>Service Unavailable</html>`, root.ErrUnavailable},
		{"AccessDeniedException is neither", 400, `{"__type":"AccessDeniedException","message":"not authorized"}`, nil},
		{"DisabledException is neither", 400, `{"__type":"DisabledException","message":"key disabled"}`, nil},
	}
	s := newKMSServer(t)
	r := realSDK(t, s.URL)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s.answer(c.status, c.body)
			_, err := r.Unwrap(t.Context(), []byte{1, 2, 3, 4}, []byte("aad"))
			for _, sentinel := range []error{root.ErrNotAuthentic, root.ErrUnavailable} {
				if got, want := errors.Is(err, sentinel), sentinel == c.want; got != want {
					t.Fatalf("Unwrap: %v; errors.Is(%v) = %v, want %v", err, sentinel, got, want)
				}
			}
			if err == nil {
				t.Fatal("Unwrap succeeded")
			}
			if c.want == root.ErrNotAuthentic {
				return
			}
			// On Wrap, the same answers are classified alike.
			_, err = r.Wrap(t.Context(), []byte("kek"), nil)
			if err == nil || errors.Is(err, root.ErrNotAuthentic) || errors.Is(err, root.ErrUnavailable) != (c.want == root.ErrUnavailable) {
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
	r := realSDK(t, "http://"+addr)
	if _, err := r.Wrap(t.Context(), []byte("kek"), nil); !errors.Is(err, root.ErrUnavailable) {
		t.Fatalf("Wrap against a closed port: %v; want ErrUnavailable", err)
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
	r := realSDK(t, "http://"+ln.Addr().String())
	roottest.TestUnresponsive(t, r, []byte{1, 2, 3, 4})

	// A caller without a deadline (custos backup, restore) is bounded by
	// the root's own timeout.
	bounded, err := awskms.New(t.Context(), awskms.Config{KeyID: keyARN, Region: "eu-west-1", Endpoint: "http://" + ln.Addr().String(), MaxAttempts: 1, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := bounded.Wrap(context.Background(), []byte("kek"), nil); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, root.ErrUnavailable) {
			t.Fatalf("Wrap without a deadline against a silent endpoint: %v, want ErrUnavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wrap without a deadline waited for a silent endpoint past the root's timeout")
	}
}

func TestNewNeedsAKeyAndARegion(t *testing.T) {
	if _, err := awskms.New(context.Background(), awskms.Config{}); err == nil {
		t.Fatal("New without a key ID succeeded")
	}
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent")
	_, err := awskms.New(context.Background(), awskms.Config{KeyID: keyARN})
	if err == nil || !strings.Contains(err.Error(), "region") {
		t.Fatalf("New without a region: %v", err)
	}
}

// A Go caller gets the configuration's check too: KEKs never go to a
// remote endpoint over plain http.
func TestNewRefusesPlainHTTPToARemoteEndpoint(t *testing.T) {
	// Nothing of the developer's AWS setup: only what each case sets.
	for _, env := range []string{"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"} {
		t.Setenv(env, "")
	}
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	_, err := awskms.New(t.Context(), awskms.Config{KeyID: keyARN, Region: "eu-west-1", Endpoint: "http://kms.example.com"})
	if !errors.Is(err, root.ErrPlainHTTP) {
		t.Fatalf("New with a plain-http remote endpoint: %v, want root.ErrPlainHTTP", err)
	}
	if _, err := awskms.New(t.Context(), awskms.Config{KeyID: keyARN, Region: "eu-west-1", Endpoint: "http://127.0.0.1:4566"}); err != nil {
		t.Fatalf("New with a plain-http loopback endpoint: %v", err)
	}
	// From the environment, which the SDK reads, as well.
	for _, env := range []string{"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS"} {
		t.Run(env, func(t *testing.T) {
			t.Setenv(env, "http://kms.example.com")
			if _, err := awskms.New(t.Context(), awskms.Config{KeyID: keyARN, Region: "eu-west-1"}); !errors.Is(err, root.ErrPlainHTTP) {
				t.Fatalf("New with %s a plain-http remote endpoint: %v, want root.ErrPlainHTTP", env, err)
			}
		})
	}
}

// A blob longer than any KMS ciphertext is not authentic, and KMS is not
// asked: it refuses such a request as malformed (ValidationException),
// which read as a misconfiguration of the root, not a tampered blob.
func TestABlobPastKMSsLimitIsNotAuthentic(t *testing.T) {
	s := newKMSServer(t)
	s.answer(400, `{"__type":"ValidationException","message":"1 validation error detected: Value at 'ciphertextBlob' failed to satisfy constraint: Member must have length less than or equal to 6144"}`)
	r := realSDK(t, s.URL)
	_, err := r.Unwrap(t.Context(), append([]byte{1}, make([]byte, 7000)...), []byte("aad"))
	if !errors.Is(err, root.ErrNotAuthentic) {
		t.Fatalf("Unwrap of a 7001-byte blob: %v, want not authentic", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.requests) != 0 {
		t.Fatalf("KMS was asked %d times", len(s.requests))
	}
}
