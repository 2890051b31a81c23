package client_test

// This file holds fakeServer: a minimal in-memory stand-in for the Custos
// server. It is a fake, not the server: keys are plain AES-256-GCM keys in
// memory, there is no storage, no root and no policy file. It follows the
// contract of DESIGN.md where the client's tests depend on it: resource
// names, paging, mTLS with a verified client certificate, and the status
// codes and google.rpc.ErrorInfo reasons of every failure. Its reason
// strings are written out here rather than taken from package client, so the
// tests also check the client's constants.
//
// The tests that need what only a fake can do use it: inject any status on
// any call (injectNext), restrict an identity, count calls, fail one batch
// item on demand. Everything else — every RPC added for issue 4 (key
// lifecycle, rewrap, data keys, MAC, blind index, passwords) and the
// examples — runs against the real server through client/clienttest
// (real_server_test.go). The fake answers those RPCs with UNIMPLEMENTED
// unless a status is injected.

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/custos-kms/custos/internal/pki"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var (
	fakeIDPattern     = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	fakeTenantPattern = regexp.MustCompile(`^tenants/([a-z0-9][a-z0-9-]{0,62})$`)
	fakeKeyPattern    = regexp.MustCompile(`^tenants/([a-z0-9][a-z0-9-]{0,62})/keys/([a-z0-9][a-z0-9-]{0,62})$`)
)

// Tink-style ciphertext prefix: 0x01 and the 4-byte key version, then the
// 12-byte GCM nonce, then the sealed field.
const (
	fakePrefixLen = 5
	fakeNonceLen  = 12
)

// fakeServer implements CryptoService and KeyService in memory.
type fakeServer struct {
	// The RPCs the fake does not implement answer UNIMPLEMENTED.
	custosv1.UnimplementedCryptoServiceServer
	custosv1.UnimplementedKeyServiceServer

	mu      sync.Mutex
	now     time.Time // fixed clock
	tenants map[string]*fakeTenant
	// defaultPageSize is used when a list call gives page_size 0.
	defaultPageSize int
	// restrict maps a caller identity (certificate CN) to the one tenant it
	// may use; identities not in it may use every tenant.
	restrict map[string]string
	// calls counts calls by full method name.
	calls map[string]int
	// inject, if set, is returned by the next call instead of running it.
	inject error
	// encryptItemErr, if set, may fail an EncryptBatch item on its own.
	encryptItemErr func(index int) error
}

type fakeTenant struct {
	pb   *custosv1.Tenant
	keys map[string]*fakeKey
}

type fakeKey struct {
	pb   *custosv1.Key
	aead map[uint32]cipher.AEAD
}

func newFakeServer() *fakeServer {
	return &fakeServer{
		now:             time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC),
		tenants:         map[string]*fakeTenant{},
		defaultPageSize: 100,
		restrict:        map[string]string{},
		calls:           map[string]int{},
	}
}

// fakeEnv is a running fakeServer and the files a client needs to reach it.
type fakeEnv struct {
	fake *fakeServer
	addr string
	ca   *pki.CA
	// PEM files of the CA and of a client certificate with CN "test-client".
	caFile, certFile, keyFile string
	stop                      func()
}

// startFake starts a fakeServer on 127.0.0.1:0 with mutual TLS 1.3 and
// writes the client's PEM files into dir; startFakeT is the form tests
// use.
func startFake(dir string) (*fakeEnv, error) {
	ca, err := pki.NewCA("custos fake CA", time.Hour)
	if err != nil {
		return nil, err
	}
	serverCert, serverKey, err := ca.Issue(pki.IssueRequest{
		CommonName:  "localhost",
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		Server:      true,
		Validity:    time.Hour,
	})
	if err != nil {
		return nil, err
	}
	clientCert, clientKey, err := ca.Issue(pki.IssueRequest{
		CommonName: "test-client",
		URIs:       []*url.URL{{Scheme: "spiffe", Host: "custos.dev", Path: "/test-client"}},
		Client:     true,
		Validity:   time.Hour,
	})
	if err != nil {
		return nil, err
	}
	env := &fakeEnv{
		fake:     newFakeServer(),
		ca:       ca,
		caFile:   filepath.Join(dir, "ca.pem"),
		certFile: filepath.Join(dir, "client.pem"),
		keyFile:  filepath.Join(dir, "client-key.pem"),
	}
	for name, data := range map[string][]byte{env.caFile: ca.CertPEM(), env.certFile: clientCert, env.keyFile: clientKey} {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			return nil, err
		}
	}

	pair, err := tls.X509KeyPair(serverCert, serverKey)
	if err != nil {
		return nil, err
	}
	clientCAs := x509.NewCertPool()
	clientCAs.AppendCertsFromPEM(ca.CertPEM())
	tlsConf := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clientCAs,
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsConf)), grpc.UnaryInterceptor(env.fake.intercept))
	custosv1.RegisterCryptoServiceServer(srv, env.fake)
	custosv1.RegisterKeyServiceServer(srv, env.fake)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	env.addr = lis.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	env.stop = func() {
		srv.Stop()
		<-done
	}
	return env, nil
}

// startFakeT is startFake for tests, with cleanup.
func startFakeT(t testing.TB) *fakeEnv {
	t.Helper()
	env, err := startFake(t.TempDir())
	if err != nil {
		t.Fatalf("start fake server: %v", err)
	}
	t.Cleanup(env.stop)
	return env
}

// --- test hooks ---

// injectNext makes the next call fail with err.
func (f *fakeServer) injectNext(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inject = err
}

func (f *fakeServer) callCount(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

func (f *fakeServer) setPageSize(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.defaultPageSize = n
}

func (f *fakeServer) restrictIdentity(cn, tenant string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restrict[cn] = tenant
}

func (f *fakeServer) unrestrictIdentity(cn string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.restrict, cn)
}

func (f *fakeServer) setEncryptItemErr(fn func(int) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.encryptItemErr = fn
}

// scheduleTenantDeletion puts a tenant in DELETE_SCHEDULED, as
// DeleteTenant would.
func (f *fakeServer) scheduleTenantDeletion(tenant string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tenants[tenant]
	t.pb.State = custosv1.TenantState_TENANT_STATE_DELETE_SCHEDULED
	t.pb.DeleteTime = timestamppb.New(f.now.Add(30 * 24 * time.Hour))
}

// setVersionState changes a key version's state, as the version RPCs would.
func (f *fakeServer) setVersionState(tenant, key string, version uint32, state custosv1.KeyVersionState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := f.tenants[tenant].keys[key]
	k.pb.Versions[version-1].State = state
	if state == custosv1.KeyVersionState_KEY_VERSION_STATE_DESTROYED {
		delete(k.aead, version)
	}
}

// setMinDecryptionVersion sets a key's minimum decryption version, as
// UpdateKey would.
func (f *fakeServer) setMinDecryptionVersion(tenant, key string, version uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tenants[tenant].keys[key].pb.MinDecryptionVersion = version
}

// --- errors ---

func reasonError(code codes.Code, reason, msg string) error {
	st, err := status.New(code, msg).WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: "custos.dev"})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

func errNotAuthentic() error {
	return reasonError(codes.InvalidArgument, "CIPHERTEXT_NOT_AUTHENTIC", "ciphertext is not authentic")
}

// --- interceptor: identity, policy, counting, injection ---

type identityKey struct{}

func (f *fakeServer) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no peer")
	}
	tlsInfo, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(tlsInfo.State.VerifiedChains) == 0 {
		return nil, status.Error(codes.Unauthenticated, "no verified client certificate")
	}
	id := tlsInfo.State.VerifiedChains[0][0].Subject.CommonName

	f.mu.Lock()
	f.calls[info.FullMethod]++
	inject := f.inject
	f.inject = nil
	f.mu.Unlock()
	if inject != nil {
		return nil, inject
	}
	return handler(context.WithValue(ctx, identityKey{}, id), req)
}

// allowedLocked reports whether the caller may use tenant.
func (f *fakeServer) allowedLocked(ctx context.Context, tenant string) bool {
	id, _ := ctx.Value(identityKey{}).(string)
	only, restricted := f.restrict[id]
	return !restricted || only == tenant
}

// tenantLocked resolves a tenant the caller may use.
func (f *fakeServer) tenantLocked(ctx context.Context, id string, mustBeActive bool) (*fakeTenant, error) {
	if !f.allowedLocked(ctx, id) {
		return nil, status.Errorf(codes.PermissionDenied, "caller may not use tenants/%s", id)
	}
	t, ok := f.tenants[id]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "tenants/%s not found", id)
	}
	if mustBeActive && t.pb.GetState() == custosv1.TenantState_TENANT_STATE_DELETE_SCHEDULED {
		return nil, reasonError(codes.FailedPrecondition, "TENANT_DELETED", fmt.Sprintf("tenants/%s is scheduled for deletion", id))
	}
	return t, nil
}

// keyLocked resolves a key name of an active tenant.
func (f *fakeServer) keyLocked(ctx context.Context, name string) (*fakeKey, error) {
	m := fakeKeyPattern.FindStringSubmatch(name)
	if m == nil {
		return nil, status.Errorf(codes.InvalidArgument, "name %q is not tenants/{tenant}/keys/{key}", name)
	}
	t, err := f.tenantLocked(ctx, m[1], true)
	if err != nil {
		return nil, err
	}
	k, ok := t.keys[m[2]]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "%s not found", name)
	}
	return k, nil
}

// --- KeyService ---

func (f *fakeServer) CreateTenant(ctx context.Context, req *custosv1.CreateTenantRequest) (*custosv1.CreateTenantResponse, error) {
	if !fakeIDPattern.MatchString(req.GetTenantId()) {
		return nil, status.Errorf(codes.InvalidArgument, "tenant_id %q is malformed", req.GetTenantId())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.allowedLocked(ctx, req.GetTenantId()) {
		return nil, status.Errorf(codes.PermissionDenied, "caller may not create tenants/%s", req.GetTenantId())
	}
	if _, ok := f.tenants[req.GetTenantId()]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "tenants/%s already exists", req.GetTenantId())
	}
	t := &fakeTenant{
		pb: &custosv1.Tenant{
			Name:       "tenants/" + req.GetTenantId(),
			State:      custosv1.TenantState_TENANT_STATE_ACTIVE,
			CreateTime: timestamppb.New(f.now),
		},
		keys: map[string]*fakeKey{},
	}
	f.tenants[req.GetTenantId()] = t
	return &custosv1.CreateTenantResponse{Tenant: proto.CloneOf(t.pb)}, nil
}

func (f *fakeServer) GetTenant(ctx context.Context, req *custosv1.GetTenantRequest) (*custosv1.GetTenantResponse, error) {
	m := fakeTenantPattern.FindStringSubmatch(req.GetName())
	if m == nil {
		return nil, status.Errorf(codes.InvalidArgument, "name %q is not tenants/{tenant}", req.GetName())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t, err := f.tenantLocked(ctx, m[1], false)
	if err != nil {
		return nil, err
	}
	return &custosv1.GetTenantResponse{Tenant: proto.CloneOf(t.pb)}, nil
}

func (f *fakeServer) ListTenants(ctx context.Context, req *custosv1.ListTenantsRequest) (*custosv1.ListTenantsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for id := range f.tenants {
		if f.allowedLocked(ctx, id) {
			ids = append(ids, id)
		}
	}
	page, next, err := f.pageLocked(ids, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	resp := &custosv1.ListTenantsResponse{NextPageToken: next}
	for _, id := range page {
		resp.Tenants = append(resp.Tenants, proto.CloneOf(f.tenants[id].pb))
	}
	return resp, nil
}

// pageLocked sorts ids and returns the page after the token, whose opaque
// form is the base64 of the last id of the previous page.
func (f *fakeServer) pageLocked(ids []string, size int32, token string) (page []string, next string, err error) {
	if size < 0 || size > 1000 {
		return nil, "", status.Errorf(codes.InvalidArgument, "page_size %d is out of range [0, 1000]", size)
	}
	if size == 0 {
		size = int32(f.defaultPageSize)
	}
	slices.Sort(ids)
	start := 0
	if token != "" {
		after, err := base64.RawURLEncoding.DecodeString(token)
		if err != nil {
			return nil, "", status.Error(codes.InvalidArgument, "page_token is malformed")
		}
		start, _ = slices.BinarySearch(ids, string(after)+"\x00")
	}
	end := min(start+int(size), len(ids))
	page = ids[start:end]
	if end < len(ids) {
		next = base64.RawURLEncoding.EncodeToString([]byte(ids[end-1]))
	}
	return page, next, nil
}

func (f *fakeServer) CreateKey(ctx context.Context, req *custosv1.CreateKeyRequest) (*custosv1.CreateKeyResponse, error) {
	m := fakeTenantPattern.FindStringSubmatch(req.GetParent())
	if m == nil {
		return nil, status.Errorf(codes.InvalidArgument, "parent %q is not tenants/{tenant}", req.GetParent())
	}
	if !fakeIDPattern.MatchString(req.GetKeyId()) {
		return nil, status.Errorf(codes.InvalidArgument, "key_id %q is malformed", req.GetKeyId())
	}
	if req.GetKey().GetPurpose() != custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT {
		return nil, status.Errorf(codes.InvalidArgument, "key.purpose %v is not supported", req.GetKey().GetPurpose())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t, err := f.tenantLocked(ctx, m[1], true)
	if err != nil {
		return nil, err
	}
	if _, ok := t.keys[req.GetKeyId()]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "%s/keys/%s already exists", req.GetParent(), req.GetKeyId())
	}
	k := &fakeKey{
		pb: &custosv1.Key{
			Name:           req.GetParent() + "/keys/" + req.GetKeyId(),
			Purpose:        req.GetKey().GetPurpose(),
			RotationPeriod: req.GetKey().GetRotationPeriod(),
			CreateTime:     timestamppb.New(f.now),
		},
		aead: map[uint32]cipher.AEAD{},
	}
	if p := req.GetKey().GetRotationPeriod(); p != nil {
		k.pb.NextRotationTime = timestamppb.New(f.now.Add(p.AsDuration()))
	}
	f.addVersionLocked(k)
	t.keys[req.GetKeyId()] = k
	return &custosv1.CreateKeyResponse{Key: proto.CloneOf(k.pb)}, nil
}

func (f *fakeServer) addVersionLocked(k *fakeKey) {
	v := uint32(len(k.pb.Versions) + 1)
	secret := make([]byte, 32)
	rand.Read(secret)
	block, err := aes.NewCipher(secret)
	if err != nil {
		panic(err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	k.aead[v] = gcm
	k.pb.Versions = append(k.pb.Versions, &custosv1.KeyVersion{
		Version:    v,
		State:      custosv1.KeyVersionState_KEY_VERSION_STATE_ENABLED,
		CreateTime: timestamppb.New(f.now),
	})
	k.pb.PrimaryVersion = v
}

func (f *fakeServer) GetKey(ctx context.Context, req *custosv1.GetKeyRequest) (*custosv1.GetKeyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.keyLocked(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	return &custosv1.GetKeyResponse{Key: proto.CloneOf(k.pb)}, nil
}

func (f *fakeServer) ListKeys(ctx context.Context, req *custosv1.ListKeysRequest) (*custosv1.ListKeysResponse, error) {
	m := fakeTenantPattern.FindStringSubmatch(req.GetParent())
	if m == nil {
		return nil, status.Errorf(codes.InvalidArgument, "parent %q is not tenants/{tenant}", req.GetParent())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t, err := f.tenantLocked(ctx, m[1], true)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(t.keys))
	for id := range t.keys {
		ids = append(ids, id)
	}
	page, next, err := f.pageLocked(ids, req.GetPageSize(), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	resp := &custosv1.ListKeysResponse{NextPageToken: next}
	for _, id := range page {
		resp.Keys = append(resp.Keys, proto.CloneOf(t.keys[id].pb))
	}
	return resp, nil
}

func (f *fakeServer) RotateKey(ctx context.Context, req *custosv1.RotateKeyRequest) (*custosv1.RotateKeyResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.keyLocked(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	f.addVersionLocked(k)
	return &custosv1.RotateKeyResponse{Key: proto.CloneOf(k.pb)}, nil
}

// --- CryptoService ---

func (f *fakeServer) encryptLocked(k *fakeKey, plaintext, ad []byte) ([]byte, uint32, error) {
	if len(plaintext) == 0 {
		return nil, 0, status.Error(codes.InvalidArgument, "plaintext is empty")
	}
	if k.pb.GetPurpose() != custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT {
		return nil, 0, reasonError(codes.FailedPrecondition, "WRONG_PURPOSE", "key does not encrypt")
	}
	v := k.pb.GetPrimaryVersion()
	gcm := k.aead[v]
	out := make([]byte, fakePrefixLen+fakeNonceLen, fakePrefixLen+fakeNonceLen+len(plaintext)+gcm.Overhead())
	out[0] = 0x01
	binary.BigEndian.PutUint32(out[1:5], v)
	rand.Read(out[fakePrefixLen:])
	out = gcm.Seal(out, out[fakePrefixLen:], plaintext, ad)
	k.pb.Versions[v-1].EncryptCount++
	return out, v, nil
}

func (f *fakeServer) decryptLocked(k *fakeKey, ciphertext, ad []byte) ([]byte, uint32, error) {
	if len(ciphertext) == 0 {
		return nil, 0, status.Error(codes.InvalidArgument, "ciphertext is empty")
	}
	if len(ciphertext) < fakePrefixLen+fakeNonceLen || ciphertext[0] != 0x01 {
		return nil, 0, errNotAuthentic()
	}
	v := binary.BigEndian.Uint32(ciphertext[1:5])
	if v == 0 || int(v) > len(k.pb.Versions) {
		return nil, 0, errNotAuthentic()
	}
	switch k.pb.Versions[v-1].GetState() {
	case custosv1.KeyVersionState_KEY_VERSION_STATE_DISABLED, custosv1.KeyVersionState_KEY_VERSION_STATE_DESTROY_SCHEDULED:
		return nil, 0, reasonError(codes.FailedPrecondition, "KEY_VERSION_DISABLED", fmt.Sprintf("key version %d is disabled", v))
	case custosv1.KeyVersionState_KEY_VERSION_STATE_DESTROYED:
		return nil, 0, reasonError(codes.FailedPrecondition, "KEY_VERSION_DESTROYED", fmt.Sprintf("key version %d is destroyed", v))
	}
	if v < k.pb.GetMinDecryptionVersion() {
		return nil, 0, reasonError(codes.FailedPrecondition, "KEY_VERSION_TOO_OLD", fmt.Sprintf("key version %d is below the minimum decryption version", v))
	}
	pt, err := k.aead[v].Open(nil, ciphertext[fakePrefixLen:fakePrefixLen+fakeNonceLen], ciphertext[fakePrefixLen+fakeNonceLen:], ad)
	if err != nil {
		return nil, 0, errNotAuthentic()
	}
	return pt, v, nil
}

func (f *fakeServer) Encrypt(ctx context.Context, req *custosv1.EncryptRequest) (*custosv1.EncryptResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.keyLocked(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	ct, v, err := f.encryptLocked(k, req.GetPlaintext(), req.GetAssociatedData())
	if err != nil {
		return nil, err
	}
	return &custosv1.EncryptResponse{Ciphertext: ct, KeyVersion: v}, nil
}

func (f *fakeServer) Decrypt(ctx context.Context, req *custosv1.DecryptRequest) (*custosv1.DecryptResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.keyLocked(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	pt, v, err := f.decryptLocked(k, req.GetCiphertext(), req.GetAssociatedData())
	if err != nil {
		return nil, err
	}
	return &custosv1.DecryptResponse{Plaintext: pt, KeyVersion: v}, nil
}

// statusProto is the per-item status of err (OK for nil).
func statusProto(err error) *spb.Status {
	if err == nil {
		return status.New(codes.OK, "").Proto()
	}
	return status.Convert(err).Proto()
}

func (f *fakeServer) EncryptBatch(ctx context.Context, req *custosv1.EncryptBatchRequest) (*custosv1.EncryptBatchResponse, error) {
	if len(req.GetItems()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "items is empty")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.keyLocked(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	resp := &custosv1.EncryptBatchResponse{}
	for i, it := range req.GetItems() {
		r := &custosv1.EncryptBatchResponse_Result{}
		var err error
		if f.encryptItemErr != nil {
			err = f.encryptItemErr(i)
		}
		if err == nil {
			r.Ciphertext, r.KeyVersion, err = f.encryptLocked(k, it.GetPlaintext(), it.GetAssociatedData())
		}
		r.Status = statusProto(err)
		resp.Results = append(resp.Results, r)
	}
	return resp, nil
}

func (f *fakeServer) DecryptBatch(ctx context.Context, req *custosv1.DecryptBatchRequest) (*custosv1.DecryptBatchResponse, error) {
	if len(req.GetItems()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "items is empty")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.keyLocked(ctx, req.GetName())
	if err != nil {
		return nil, err
	}
	resp := &custosv1.DecryptBatchResponse{}
	for _, it := range req.GetItems() {
		r := &custosv1.DecryptBatchResponse_Result{}
		var err error
		r.Plaintext, r.KeyVersion, err = f.decryptLocked(k, it.GetCiphertext(), it.GetAssociatedData())
		r.Status = statusProto(err)
		resp.Results = append(resp.Results, r)
	}
	return resp, nil
}
