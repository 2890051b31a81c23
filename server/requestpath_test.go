package server_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/custos-kms/custos/internal/config"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server"
)

// registeredMethods lists, through the server's own reflection service,
// every method of every service the server registers.
func registeredMethods(t *testing.T, conn *grpc.ClientConn) []string {
	t.Helper()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.CloseSend()
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, svc := range resp.GetListServicesResponse().GetService() {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc.GetName()))
		if err != nil {
			t.Fatalf("service %s is registered but its descriptor is not linked in: %v", svc.GetName(), err)
		}
		methods := d.(protoreflect.ServiceDescriptor).Methods()
		for i := range methods.Len() {
			out = append(out, "/"+svc.GetName()+"/"+string(methods.Get(i).Name()))
		}
	}
	return out
}

func TestEveryRegisteredMethodHasARow(t *testing.T) {
	t.Parallel()
	ts := start(t, newFiles(t), options{})
	methods := registeredMethods(t, ts.conn(t, idAdmin))
	if len(methods) < 26 {
		t.Fatalf("reflection lists only %d methods: %v", len(methods), methods)
	}
	table := server.MethodTable()
	for _, m := range methods {
		if !table[m] {
			t.Errorf("method %s is registered but has no row in the method table: it could ship without its permission", m)
		}
	}
}

// noRowDesc is a service the method table does not know.
var noRowDesc = grpc.ServiceDesc{
	ServiceName: "custos.test.NoRow",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Call",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(emptypb.Empty)
			if err := dec(in); err != nil {
				return nil, err
			}
			handler := func(context.Context, any) (any, error) { return in, nil }
			return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: "/custos.test.NoRow/Call"}, handler)
		},
	}},
}

func TestAMethodWithoutARowIsRefusedForEveryone(t *testing.T) {
	t.Parallel()
	ts := start(t, newFiles(t), options{register: func(gs *grpc.Server) { gs.RegisterService(&noRowDesc, struct{}{}) }})
	err := ts.conn(t, idAdmin).Invoke(testContext(t), "/custos.test.NoRow/Call", &emptypb.Empty{}, new(emptypb.Empty))
	wantCode(t, err, codes.PermissionDenied)
}

// limitedPolicy limits idOnlyA to 5 calls a second (burst 5) and its
// hashing to 1, and leaves the admin unlimited.
const limitedPolicy = `
rules:
  - identities: ["spiffe://custos.test/admin"]
    tenants: ["*"]
    permissions: ["*"]
  - name: only-a
    identities: ["spiffe://custos.test/only-a"]
    tenants: ["a"]
    permissions: [encrypt, decrypt, keys.read, tenants.admin]
    rate_limits:
      - requests_per_second: %v
        burst: %d
`

// wantRateLimited checks err is RESOURCE_EXHAUSTED, reason RATE_LIMITED,
// with a positive RetryInfo, and returns the retry delay.
func wantRateLimited(t *testing.T, err error) time.Duration {
	t.Helper()
	st := wantCode(t, err, codes.ResourceExhausted)
	if ei := errorInfo(st); ei == nil || ei.GetReason() != custosv1.ReasonRateLimited || ei.GetDomain() != custosv1.ErrorDomain {
		t.Fatalf("ErrorInfo = %v, want reason %s", ei, custosv1.ReasonRateLimited)
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			if delay := ri.GetRetryDelay().AsDuration(); delay > 0 {
				return delay
			}
			t.Fatalf("RetryInfo delay = %v, want > 0", ri.GetRetryDelay())
		}
	}
	t.Fatalf("no RetryInfo detail in %v", st.Details())
	return 0
}

func TestRateLimitsPerIdentity(t *testing.T) {
	t.Parallel()
	// A rate so low that no token comes back during the test.
	const burst = 5
	ts := start(t, newFiles(t), options{
		policy:    fmt.Sprintf(limitedPolicy, 0.001, burst),
		configure: func(c *config.Config) { c.Ops.Listen = "127.0.0.1:0" },
	})
	setup(t, ts, "a")
	ctx := testContext(t)
	limited := ts.clients(t, idOnlyA).crypto
	admin := ts.clients(t, idAdmin).crypto
	encrypt := func(c custosv1.CryptoServiceClient) error {
		_, err := c.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte("p")})
		return err
	}

	t.Run("calls within the burst pass", func(t *testing.T) {
		for i := range burst - 2 {
			if err := encrypt(limited); err != nil {
				t.Fatalf("call %d: %v", i+1, err)
			}
		}
	})
	t.Run("a batch takes one token per item", func(t *testing.T) {
		_, err := limited.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: keyName("a"), Items: encryptItems(3, 8)})
		wantRateLimited(t, err) // 2 tokens left, 3 items
		_, err = limited.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: keyName("a"), Items: encryptItems(2, 8)})
		if err != nil {
			t.Fatalf("a batch of the 2 tokens left: %v", err)
		}
	})
	t.Run("beyond the burst the caller gets RATE_LIMITED with RetryInfo", func(t *testing.T) {
		delay := wantRateLimited(t, encrypt(limited))
		if delay < 900*time.Second || delay > 1100*time.Second {
			t.Errorf("retry delay %v; at 0.001 token/s one token takes about 1000s", delay)
		}
	})
	t.Run("a batch larger than the burst can never pass, says so, and has no RetryInfo", func(t *testing.T) {
		_, err := limited.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: keyName("a"), Items: encryptItems(burst+1, 8)})
		st := wantCode(t, err, codes.ResourceExhausted)
		if ei := errorInfo(st); ei.GetReason() != custosv1.ReasonRateLimited {
			t.Errorf("reason %q", ei.GetReason())
		}
		if msg := st.Message(); !strings.Contains(msg, "burst") {
			t.Errorf("message %q does not say the batch exceeds the burst", msg)
		}
		for _, d := range st.Details() {
			if _, ok := d.(*errdetails.RetryInfo); ok {
				t.Error("a RetryInfo for a call that can never pass")
			}
		}
	})
	t.Run("a batch over the server's item limit is refused before it costs tokens", func(t *testing.T) {
		_, err := limited.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: keyName("a"), Items: encryptItems(server.DefaultMaxBatchItems+1, 1)})
		wantCode(t, err, codes.InvalidArgument)
	})
	t.Run("another identity is unaffected", func(t *testing.T) {
		for i := range 3 * burst {
			if err := encrypt(admin); err != nil {
				t.Fatalf("admin call %d: %v", i+1, err)
			}
		}
	})
	t.Run("the refusal names no identity and only the caller's own rule", func(t *testing.T) {
		err := encrypt(limited)
		wantRateLimited(t, err)
		st := status.Convert(err)
		if msg := st.Message(); strings.Contains(msg, "admin") || strings.Contains(msg, "only-a") || strings.Contains(msg, "spiffe") {
			t.Errorf("message %q names an identity", msg)
		}
		if rule := errorInfo(st).GetMetadata()["rule"]; rule != "only-a" {
			t.Errorf("ErrorInfo rule = %q, want the caller's own rule only-a", rule)
		}
	})
	t.Run("refusals are counted per rule, not per identity", func(t *testing.T) {
		resp, err := http.Get("http://" + ts.rt.OpsAddr().String() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(body), `custos_rate_limited_total{class="data",rule="only-a"}`) {
			t.Errorf("metrics lack the refusals of rule only-a:\n%s", grepLines(string(body), "rate_limited"))
		}
		if strings.Contains(grepLines(string(body), "rate_limited"), "spiffe://") {
			t.Error("a rate-limit metric carries an identity")
		}
	})
}

func grepLines(s, sub string) string {
	var out []string
	for l := range strings.Lines(s) {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "")
}

// reloadPolicy is limitedPolicy plus a limited decrypt-only identity whose
// rule does not change across the reload.
const reloadPolicy = limitedPolicy + `
  - identities: ["decrypt-only"]
    tenants: ["*"]
    permissions: [decrypt]
    rate_limits:
      - requests_per_second: 0.001
        burst: 1
`

// TestSIGHUPChangesARateLimitWithoutDroppingCalls reloads the policy by
// SIGHUP, as operators do, while another identity keeps calling.
func TestSIGHUPChangesARateLimitWithoutDroppingCalls(t *testing.T) {
	// Not parallel: it signals the whole test process.
	f := newFiles(t)
	ts := start(t, f, options{policy: fmt.Sprintf(reloadPolicy, 1, 2), sighup: true})
	setup(t, ts, "a")
	ctx := testContext(t)
	limited := ts.clients(t, idOnlyA).crypto
	admin := ts.clients(t, idAdmin).crypto
	encrypt := func(c custosv1.CryptoServiceClient) error {
		_, err := c.Encrypt(ctx, &custosv1.EncryptRequest{Name: keyName("a"), Plaintext: []byte("p")})
		return err
	}
	for range 2 {
		if err := encrypt(limited); err != nil {
			t.Fatal(err)
		}
	}
	wantRateLimited(t, encrypt(limited))
	// decrypt-only spends its one token (the call itself fails: not a ciphertext).
	decryptOnly := ts.clients(t, idDecryptOnly).crypto
	decrypt := func() error {
		_, err := decryptOnly.Decrypt(ctx, &custosv1.DecryptRequest{Name: keyName("a"), Ciphertext: []byte("not a ciphertext")})
		return err
	}
	wantCode(t, decrypt(), codes.InvalidArgument)
	wantRateLimited(t, decrypt())

	// The admin calls throughout the reload; none may fail. The callers
	// stop before the test ends, whatever happens.
	stop := make(chan struct{})
	var calls, failures atomic.Int64
	var firstFailure atomic.Value
	var wg sync.WaitGroup
	stopCallers := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopCallers)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				calls.Add(1)
				if err := encrypt(admin); err != nil {
					failures.Add(1)
					firstFailure.CompareAndSwap(nil, err.Error())
				}
			}
		})
	}
	// The new limit: a rate so high that the bucket refills at once, and a
	// burst of 100 that the old one (burst 2) could never allow.
	if err := os.WriteFile(f.policyPath, []byte(fmt.Sprintf(reloadPolicy, 1e6, 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	// The reload is asynchronous: wait (bounded) until 30 calls in a row
	// pass, which only the new limit allows.
	inARow := func() bool {
		for range 30 {
			if encrypt(limited) != nil {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(10 * time.Second)
	for !inARow() {
		if time.Now().After(deadline) {
			t.Fatal("the new rate limit did not take effect within 10s of SIGHUP")
		}
		time.Sleep(20 * time.Millisecond)
	}
	stopCallers()
	if calls.Load() == 0 || failures.Load() != 0 {
		t.Fatalf("%d of %d admin calls failed during the reload; first: %v", failures.Load(), calls.Load(), firstFailure.Load())
	}
	// An unchanged rule keeps its buckets: decrypt-only is still spent.
	wantRateLimited(t, decrypt())
}

func TestPprofIsServedOnlyWhenConfigured(t *testing.T) {
	t.Parallel()
	for _, on := range []bool{false, true} {
		ts := start(t, newFiles(t), options{configure: func(c *config.Config) { c.Ops.Listen, c.Ops.Pprof = "127.0.0.1:0", on }})
		base := "http://" + ts.rt.OpsAddr().String()
		get := func(path string) int {
			resp, err := http.Get(base + path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		want := http.StatusNotFound
		if on {
			want = http.StatusOK
		}
		if got := get("/debug/pprof/"); got != want {
			t.Errorf("pprof %v: /debug/pprof/ answered %d, want %d", on, got, want)
		}
		if got := get("/metrics"); got != http.StatusOK {
			t.Errorf("pprof %v: /metrics answered %d", on, got)
		}
	}
}
