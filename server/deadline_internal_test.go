package server

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/storage/memory"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// expired is a context whose deadline has passed.
func expired(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 0)
	t.Cleanup(cancel)
	<-ctx.Done()
	return ctx
}

// A call whose deadline passed before its handler ran (in the server's
// queue) is answered DEADLINE_EXCEEDED without running it: an Encrypt ran,
// was counted and was recorded OK for a caller that had its answer.
func TestACallPastItsDeadlineIsNotRun(t *testing.T) {
	p := mustPolicy(t, "rules:\n  - {identities: [x], tenants: [t], permissions: [encrypt]}\n")
	s := &Server{policy: &fixedPolicy{p}, logger: slog.New(slog.DiscardHandler)}
	ran := false
	handler := func(context.Context, any) (any, error) { ran = true; return &custosv1.EncryptResponse{}, nil }
	req := &custosv1.EncryptRequest{Name: "tenants/t/keys/k", Plaintext: []byte("v")}
	info := &grpc.UnaryServerInfo{FullMethod: custosv1.CryptoService_Encrypt_FullMethodName}
	_, err := s.requestPath(expired(t), &call{identity: "x"}, req, info, handler)
	if status.Code(err) != codes.DeadlineExceeded || ran {
		t.Fatalf("a call past its deadline: %v, handler ran: %v; want DEADLINE_EXCEEDED, not run", err, ran)
	}
	if _, err := s.requestPath(t.Context(), &call{identity: "x"}, req, info, handler); err != nil || !ran {
		t.Fatalf("the same call in time: %v, handler ran: %v", err, ran)
	}
}

// A batch whose caller went away stops: it ran every item (up to 10,000)
// for nobody.
func TestABatchStopsWhenItsCallEnds(t *testing.T) {
	r, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	ks, err := keystore.New(keystore.Config{Storage: memory.New(), Root: r})
	if err != nil {
		t.Fatal(err)
	}
	ref := keystore.KeyRef{Tenant: "t", Key: "k"}
	if _, err := ks.CreateTenant(t.Context(), "t"); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.CreateKey(t.Context(), ref, keystore.KeySpec{Purpose: keystore.PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	s := cryptoService{Server: &Server{ks: ks, limits: Limits{}.withDefaults(), logger: slog.New(slog.DiscardHandler)}}
	items := make([]*custosv1.EncryptBatchRequest_Item, 200)
	for i := range items {
		items[i] = &custosv1.EncryptBatchRequest_Item{Plaintext: []byte("v")}
	}
	ctx, cancel := context.WithCancel(context.WithValue(t.Context(), callKey{}, &call{key: ref}))
	resp, err := s.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: "tenants/t/keys/k", Items: items})
	if err != nil || len(resp.GetResults()) != len(items) {
		t.Fatalf("a batch in time: %v", err)
	}
	cancel()
	for name, run := range map[string]func() error{
		"EncryptBatch": func() error {
			_, err := s.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: "tenants/t/keys/k", Items: items})
			return err
		},
		"DecryptBatch": func() error {
			_, err := s.DecryptBatch(ctx, &custosv1.DecryptBatchRequest{Name: "tenants/t/keys/k", Items: []*custosv1.DecryptBatchRequest_Item{{Ciphertext: resp.GetResults()[0].GetCiphertext()}}})
			return err
		},
		"RewrapBatch": func() error {
			_, err := s.RewrapBatch(ctx, &custosv1.RewrapBatchRequest{Name: "tenants/t/keys/k", Items: []*custosv1.RewrapBatchRequest_Item{{Ciphertext: resp.GetResults()[0].GetCiphertext()}}})
			return err
		},
	} {
		if err := run(); status.Code(err) != codes.Canceled {
			t.Errorf("%s after its caller went away: %v, want CANCELLED", name, err)
		}
	}
}

// An outage error met because the caller's own deadline ended the wait is
// the deadline (not logged, not UNAVAILABLE to retry); in time it stays
// UNAVAILABLE, and a full store stays what it is.
func TestTheCallersDeadlineIsNotAnOutage(t *testing.T) {
	s := &Server{logger: slog.New(slog.DiscardHandler)}
	outage := fmt.Errorf("read tenant t: %w: storage: context deadline exceeded", keystore.ErrUnavailable)
	if got := status.Code(s.toError(expired(t), outage)); got != codes.DeadlineExceeded {
		t.Errorf("an outage error past the caller's deadline: %v, want DEADLINE_EXCEEDED", got)
	}
	if got := status.Code(s.toError(t.Context(), outage)); got != codes.Unavailable {
		t.Errorf("an outage error in time: %v, want UNAVAILABLE", got)
	}
	full := fmt.Errorf("put: %w", keystore.ErrStorageFull)
	if got := status.Code(s.toError(expired(t), full)); got != codes.Unavailable {
		t.Errorf("a full store past the deadline: %v, want UNAVAILABLE (STORAGE_FULL)", got)
	}
	if got := status.Code(s.toError(expired(t), keystore.ErrInvalidCiphertext)); got != codes.InvalidArgument {
		t.Errorf("a caller's error past its deadline: %v, want INVALID_ARGUMENT", got)
	}
}

// Inside a batch too, an item whose wait the caller's deadline ended is
// the deadline, logged at WARN with the outage's detail, not an outage
// logged at ERROR.
func TestABatchItemCutByTheDeadlineIsNotAnOutage(t *testing.T) {
	var buf bytes.Buffer
	s := &Server{logger: slog.New(slog.NewJSONHandler(&buf, nil))}
	ctx := context.WithValue(expired(t), callKey{}, &call{rid: "rid-3"})
	statuses := newItemStatuses(ctx, s)
	outage := fmt.Errorf("reload key tenants/a/keys/k: %w: storage: context deadline exceeded", keystore.ErrUnavailable)
	if st := statuses.of(outage); codes.Code(st.GetCode()) != codes.DeadlineExceeded {
		t.Fatalf("an item cut by the caller's deadline: %v, want DEADLINE_EXCEEDED", st)
	}
	statuses.done()
	if out := buf.String(); strings.Contains(out, `"level":"ERROR"`) || !strings.Contains(out, `"level":"WARN"`) || !strings.Contains(out, "reload key") {
		t.Fatalf("logged: %s; want one WARN line with the outage's detail", out)
	}
	buf.Reset()
	if s.toError(expired(t), outage); !strings.Contains(buf.String(), `"level":"WARN"`) || !strings.Contains(buf.String(), "reload key") {
		t.Fatalf("a single call cut by its deadline logged: %s; want a WARN line with the outage's detail", buf.String())
	}
}
