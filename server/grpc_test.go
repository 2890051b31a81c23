package server_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server"
)

func TestHealthAndReflectionOverMutualTLS(t *testing.T) {
	t.Parallel()
	ts := start(t, newFiles(t), options{})
	ctx := testContext(t)
	conn := ts.conn(t, idNobody) // any verified certificate; no policy rule needed

	for _, tt := range []struct{ name, service string }{
		{"health reports the server as a whole SERVING", ""},
		{"health reports custos.v1.CryptoService SERVING", "custos.v1.CryptoService"},
		{"health reports custos.v1.KeyService SERVING", "custos.v1.KeyService"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: tt.service})
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("status = %v, want SERVING", resp.GetStatus())
			}
		})
	}
	t.Run("health reports an unknown service NOT_FOUND", func(t *testing.T) {
		_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "no.such.Service"})
		wantCode(t, err, codes.NotFound)
	})

	t.Run("reflection lists the Custos services and health", func(t *testing.T) {
		stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		req := &reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range resp.GetListServicesResponse().GetService() {
			names = append(names, s.GetName())
		}
		for _, want := range []string{"custos.v1.CryptoService", "custos.v1.KeyService", "grpc.health.v1.Health"} {
			if !slices.Contains(names, want) {
				t.Errorf("reflection lists %q, missing %s", names, want)
			}
		}
	})

	t.Run("reflection describes custos.v1.CryptoService", func(t *testing.T) {
		stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		req := &reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "custos.v1.CryptoService"}}
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
			t.Errorf("no file descriptor for custos.v1.CryptoService: %v", resp.GetErrorResponse())
		}
	})
}

// panicService is a one-method service registered by hand, next to the
// Custos services on the same grpc.Server, whose handler panics with the
// request's bytes. It goes through the server's interceptor chain like any
// handler.
const panicMethod = "/custos.test.Panicker/Panic"

var panicDesc = grpc.ServiceDesc{
	ServiceName: "custos.test.Panicker",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Panic",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.BytesValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			handler := func(context.Context, any) (any, error) {
				panic("handler bug while holding " + string(in.GetValue()))
			}
			if interceptor == nil {
				return handler(ctx, in)
			}
			return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: panicMethod}, handler)
		},
	}},
}

func registerPanicker(gs *grpc.Server) { gs.RegisterService(&panicDesc, struct{}{}) }

func TestHandlerPanicIsInternalAndServerKeepsServing(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{}
	ts := start(t, newFiles(t), options{register: registerPanicker, logger: slog.New(slog.NewJSONHandler(logs, nil))})
	setup(t, ts, "a")
	ctx := testContext(t)
	conn := ts.conn(t, idAdmin)
	crypto := custosv1.NewCryptoServiceClient(conn)

	panics := func(t *testing.T) {
		err := conn.Invoke(ctx, panicMethod, wrapperspb.Bytes([]byte("request secret")), new(wrapperspb.BytesValue))
		st := wantCode(t, err, codes.Internal)
		if st.Message() != "internal error" {
			t.Errorf("message = %q, want %q", st.Message(), "internal error")
		}
	}
	serves := func(t *testing.T) {
		enc, err := crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte("still here")})
		if err != nil {
			t.Fatal(err)
		}
		dec, err := crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName("a"), Ciphertext: enc.GetCiphertext()})
		if err != nil || string(dec.GetPlaintext()) != "still here" {
			t.Fatalf("Decrypt = %q, %v", dec.GetPlaintext(), err)
		}
	}
	steps := []struct {
		name string
		step func(*testing.T)
	}{
		{"a panicking handler fails with a bland INTERNAL error", panics},
		{"the server keeps serving on the same connection after the panic", serves},
		{"a second panic fails the same way", panics},
		{"the server still serves after the second panic", serves},
	}
	for _, s := range steps {
		t.Run(s.name, s.step)
	}
	t.Run("the panic is logged without the panic value", func(t *testing.T) {
		got := logs.Bytes()
		if !bytes.Contains(got, []byte("panic in handler")) {
			t.Errorf("no panic logged:\n%s", got)
		}
		if bytes.Contains(got, []byte("request secret")) {
			t.Errorf("the panic value, holding request bytes, reached the logs:\n%s", got)
		}
	})
}

// TestLogsNeverContainPlaintext runs succeeding and failing calls carrying a
// recognizable plaintext against a server logging at debug level, then
// searches the logs for it in every encoding a logger might use.
func TestLogsNeverContainPlaintext(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ts := start(t, newFiles(t), options{
		logger:   logger,
		limits:   server.Limits{MaxPlaintextBytes: testMaxPlaintext},
		register: registerPanicker,
	})
	setup(t, ts, "a", "b")
	ctx := testContext(t)
	admin := ts.clients(t, idAdmin)
	onlyA := ts.clients(t, idOnlyA)
	secret := []byte("PAN 4929-1234-5678-9012 plaintext-marker")
	aad := []byte("cards/1/pan")

	enc, err := admin.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: secret, AssociatedData: aad})
	if err != nil {
		t.Fatal(err)
	}
	calls := []struct {
		name string
		call func(context.Context) error
		want codes.Code
	}{
		{"a succeeding Encrypt", func(ctx context.Context) error {
			_, err := admin.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: secret, AssociatedData: aad})
			return err
		}, codes.OK},
		{"a succeeding Decrypt", func(ctx context.Context) error {
			_, err := admin.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName("a"), Ciphertext: enc.GetCiphertext(), AssociatedData: aad})
			return err
		}, codes.OK},
		{"a succeeding EncryptBatch", func(ctx context.Context) error {
			_, err := admin.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: keyName("a"), Items: []*custosv1.EncryptBatchRequest_Item{{Plaintext: secret}}})
			return err
		}, codes.OK},
		{"a succeeding DecryptBatch", func(ctx context.Context) error {
			_, err := admin.crypto.DecryptBatch(ctx, &custosv1.DecryptBatchRequest{Name: keyName("a"), Items: []*custosv1.DecryptBatchRequest_Item{{Ciphertext: enc.GetCiphertext(), AssociatedData: aad}}})
			return err
		}, codes.OK},
		{"an Encrypt under an unknown key", func(ctx context.Context) error {
			_, err := admin.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: "tenants/a/keys/nope", Plaintext: secret})
			return err
		}, codes.NotFound},
		{"an Encrypt of an oversized plaintext", func(ctx context.Context) error {
			_, err := admin.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: bytes.Repeat(secret, testMaxPlaintext/len(secret)+1)})
			return err
		}, codes.InvalidArgument},
		{"an Encrypt with a malformed name", func(ctx context.Context) error {
			_, err := admin.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: "keys/x", Plaintext: secret})
			return err
		}, codes.InvalidArgument},
		{"an Encrypt the policy denies", func(ctx context.Context) error {
			_, err := onlyA.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("b"), Plaintext: secret})
			return err
		}, codes.PermissionDenied},
		{"a Decrypt with the wrong associated data", func(ctx context.Context) error {
			_, err := admin.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName("a"), Ciphertext: enc.GetCiphertext(), AssociatedData: []byte("cards/2/pan")})
			return err
		}, codes.InvalidArgument},
		{"a Decrypt under another tenant's key", func(ctx context.Context) error {
			_, err := admin.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName("b"), Ciphertext: enc.GetCiphertext(), AssociatedData: aad})
			return err
		}, codes.InvalidArgument},
		{"a handler that panics holding the plaintext", func(ctx context.Context) error {
			return ts.conn(t, idAdmin).Invoke(ctx, panicMethod, wrapperspb.Bytes(secret), new(wrapperspb.BytesValue))
		}, codes.Internal},
	}
	for _, c := range calls {
		t.Run(c.name+" logs no plaintext", func(t *testing.T) {
			before := len(logs.Bytes())
			err := c.call(ctx)
			if c.want == codes.OK {
				if err != nil {
					t.Fatalf("call failed: %v", err)
				}
			} else {
				wantCode(t, err, c.want)
			}
			got := logs.Bytes()
			if len(got) == before {
				t.Fatal("the call logged nothing, so the search below would prove nothing")
			}
			for _, enc := range []struct {
				name   string
				needle []byte
			}{
				{"raw", secret},
				{"base64", []byte(base64.StdEncoding.EncodeToString(secret))},
				{"unpadded base64", []byte(base64.RawStdEncoding.EncodeToString(secret))},
				{"hex", []byte(hex.EncodeToString(secret))},
				{"a distinctive fragment", []byte("4929-1234")},
			} {
				if bytes.Contains(got[before:], enc.needle) {
					t.Errorf("the logs hold the plaintext (%s):\n%s", enc.name, got[before:])
				}
			}
		})
	}
}

// One connection carries at most MaxStreamsPerConnection calls at once: a
// caller holding streams open waits for one to end instead of making the
// server keep a goroutine and buffers for each.
func TestAConnectionCarriesABoundedNumberOfCalls(t *testing.T) {
	ts := start(t, newFiles(t), options{})
	conn := ts.conn(t, idAdmin)
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	hc := healthpb.NewHealthClient(conn)
	for i := range server.MaxStreamsPerConnection {
		st, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatalf("watch %d: %v", i, err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatalf("watch %d: %v", i, err)
		}
	}
	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancelShort()
	_, err := hc.Check(short, &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a call past %d open streams on one connection: %v, want it to wait (DEADLINE_EXCEEDED)", server.MaxStreamsPerConnection, err)
	}
	// Another connection is not held up.
	if _, err := healthpb.NewHealthClient(ts.conn(t, idAdmin)).Check(testContext(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("a call on another connection: %v", err)
	}
}
