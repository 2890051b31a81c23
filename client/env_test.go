package client_test

// The client's tests run against the real Custos — client/clienttest, the
// runtime `custos serve` runs — with one addition only a test can make: an
// interceptor (hooks) that counts calls, injects a status into the next
// call, shortens list pages, or fails chosen batch items, to check how the
// client reports what a server may answer.

import (
	"context"
	"errors"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/client/clienttest"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// restrictedID may use tenant globex only.
const restrictedID = "spiffe://custos.dev/restricted"

// envPolicy lets the test client do everything and restrictedID work on
// globex only.
const envPolicy = clienttest.AllowAll + `  - identities: ["` + restrictedID + `"]
    tenants: ["globex"]
    permissions: ["*"]
`

// testEnv is a running server and the files a client needs to reach it.
type testEnv struct {
	srv *clienttest.Server
	// now is the server's clock, fixed so that times can be compared.
	now   time.Time
	hooks *hooks
	// addr and the PEM files of the CA and of the test client.
	addr, caFile, certFile, keyFile string
	caPEM                           []byte
	// admin is a client the test's own changes go through.
	admin *client.Client
}

func startEnv(t *testing.T) *testEnv {
	t.Helper()
	h := &hooks{calls: map[string]int{}}
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	srv := clienttest.StartWith(t, clienttest.Options{
		Policy:      envPolicy,
		Now:         func() time.Time { return now },
		Interceptor: h.intercept,
	})
	caPEM, err := os.ReadFile(srv.Files.CA)
	if err != nil {
		t.Fatal(err)
	}
	return &testEnv{
		srv: srv, now: now, hooks: h, caPEM: caPEM,
		addr: srv.Addr, caFile: srv.Files.CA, certFile: srv.Files.ClientCert, keyFile: srv.Files.ClientKey,
		admin: srv.Client(t),
	}
}

// scheduleTenantDeletion deletes tenant with the default waiting period.
func (e *testEnv) scheduleTenantDeletion(t *testing.T, tenant string) {
	t.Helper()
	if _, err := e.admin.DeleteTenant(t.Context(), client.TenantName(tenant), 0); err != nil {
		t.Fatalf("DeleteTenant: %v", err)
	}
}

// disableVersion disables version v of key and returns a function that
// enables it again.
func (e *testEnv) disableVersion(t *testing.T, key string, v uint32) (enable func()) {
	t.Helper()
	if _, err := e.admin.DisableKeyVersion(t.Context(), key, v); err != nil {
		t.Fatalf("DisableKeyVersion: %v", err)
	}
	return func() {
		if _, err := e.admin.EnableKeyVersion(t.Context(), key, v); err != nil {
			t.Fatalf("EnableKeyVersion: %v", err)
		}
	}
}

// setMinDecryptionVersion sets key's minimum decryption version.
func (e *testEnv) setMinDecryptionVersion(t *testing.T, key string, v uint32) {
	t.Helper()
	if _, err := e.admin.UpdateKey(t.Context(), key, client.KeyUpdate{MinDecryptionVersion: &v}); err != nil {
		t.Fatalf("UpdateKey: %v", err)
	}
}

// waitForEncryptCounts polls GetKey (the count flush runs every
// clienttest.DefaultSchedulerInterval) until the versions' encrypt counts
// are want, for at most 10s.
func (e *testEnv) waitForEncryptCounts(t *testing.T, key string, want ...uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		k, err := e.admin.GetKey(t.Context(), key)
		if err != nil {
			t.Fatalf("GetKey: %v", err)
		}
		var got []uint64
		for _, v := range k.Versions {
			got = append(got, v.EncryptCount)
		}
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GetKey encrypt counts = %v after 10s, want %v", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hooks is the test's interceptor on the real server.
type hooks struct {
	mu sync.Mutex
	// calls counts calls by full method name.
	calls map[string]int
	// inject, if set, is returned by the next call instead of running it.
	inject error
	// pageSize, if set, replaces a list call's unset page_size.
	pageSize int32
	// itemErr, if set, fails the EncryptBatch items it returns an error for.
	itemErr func(index int) error
	// emptyNext makes the next call's answer OK with its bytes left out,
	// as a misbehaving proxy might send it.
	emptyNext bool
}

func (h *hooks) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	h.mu.Lock()
	h.calls[info.FullMethod]++
	inject, pageSize, itemErr, empty := h.inject, h.pageSize, h.itemErr, h.emptyNext
	h.inject, h.emptyNext = nil, false
	h.mu.Unlock()
	if inject != nil {
		return nil, inject
	}
	if pageSize > 0 {
		switch r := req.(type) {
		case *custosv1.ListTenantsRequest:
			if r.PageSize == 0 {
				r.PageSize = pageSize
			}
		case *custosv1.ListKeysRequest:
			if r.PageSize == 0 {
				r.PageSize = pageSize
			}
		}
	}
	resp, err := handler(ctx, req)
	if empty {
		switch r := resp.(type) {
		case *custosv1.EncryptResponse:
			r.Ciphertext = nil
		case *custosv1.DecryptResponse:
			r.Plaintext = nil
		case *custosv1.RewrapResponse:
			r.Ciphertext = nil
		case *custosv1.ComputeMacResponse:
			r.Mac = nil
		case *custosv1.BlindIndexResponse:
			for _, e := range r.GetEntries() {
				e.Mac = nil
			}
		}
	}
	if r, ok := resp.(*custosv1.EncryptBatchResponse); ok && itemErr != nil {
		for i, res := range r.GetResults() {
			if e := itemErr(i); e != nil {
				res.Ciphertext, res.KeyVersion, res.Status = nil, 0, status.Convert(e).Proto()
				if e == errAnsweredEmpty {
					res.Status = nil // "OK", with nothing in it
				}
			}
		}
	}
	return resp, err
}

// errAnsweredEmpty, returned by an itemErr hook, makes the item an OK
// result without a ciphertext: what a misbehaving server or proxy sends.
var errAnsweredEmpty = errors.New("test: answered OK and empty")

// injectNext makes the next call fail with err.
func (h *hooks) injectNext(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.inject = err
}

func (h *hooks) callCount(method string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls[method]
}

func (h *hooks) setPageSize(n int32) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pageSize = n
}

// answerEmptyNext makes the next call's answer OK and empty.
func (h *hooks) answerEmptyNext() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.emptyNext = true
}

func (h *hooks) setEncryptItemErr(fn func(int) error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.itemErr = fn
}

func reasonError(code codes.Code, reason, msg string) error {
	st, err := status.New(code, msg).WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: "custos.dev"})
	if err != nil {
		panic(err)
	}
	return st.Err()
}
