package server_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/custos"
	"github.com/custos-kms/custos/keystore/root"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// shutdown_timeout bounds the stop even with a hash running that takes
// far longer: the call is cut (UNAVAILABLE to its caller) and its hashing
// abandoned.
func TestShutdownTimeoutBoundsTheStopWithAHashInFlight(t *testing.T) {
	const timeout = 200 * time.Millisecond
	ts := start(t, newFiles(t), options{configure: func(c *config.Config) {
		c.ShutdownTimeout = timeout
		c.Passwords.HashWorkers = 1
	}})
	ctx := testContext(t)
	c := slowHashKey(t, ts)
	// bcrypt cost 15 takes over a second here (many under -race).
	hashErr := make(chan error, 1)
	go func() {
		_, err := c.crypto.HashPassword(ctx, &custosv1.HashPasswordRequest{Name: "tenants/a/keys/pw", Password: []byte("p")})
		hashErr <- err
	}()
	waitFor(t, 10*time.Second, "the hash running", func() bool { return ts.rt.Passwords().Stats().Running == 1 })

	begin := time.Now()
	ts.stop()
	took := time.Since(begin)
	t.Logf("stop took %v with shutdown_timeout %v and a bcrypt-15 hash in flight", took, timeout)
	if took > timeout+500*time.Millisecond {
		t.Fatalf("stop took %v; shutdown_timeout is %v", took, timeout)
	}
	select {
	case err := <-hashErr:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("the cut call got %v, want UNAVAILABLE", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the cut call was not answered within 5s of the stop")
	}
	// The abandoned hash ends on its own, after the store closed; nothing
	// may break when it does.
	waitFor(t, 60*time.Second, "the abandoned hash to end", func() bool { return ts.rt.Passwords().Stats().Running == 0 })
}

// A start that fails on its policy or its listen address leaves no store
// file behind.
func TestAFailedStartCreatesNoStoreFile(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for name, breakIt := range map[string]func(*files, *config.Config){
		"bad policy": func(f *files, _ *config.Config) {
			if err := os.WriteFile(f.policyPath, []byte("rules:\n  - identitiez: [x]\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		},
		"address in use": func(_ *files, c *config.Config) { c.Listen = busy.Addr().String() },
	} {
		f := newFiles(t)
		cfg := f.config(t)
		breakIt(f, cfg)
		rt, err := custos.New(context.Background(), cfg, custos.Options{Logger: discardLogger(), Root: f.root})
		if err == nil {
			rt.Close()
			t.Fatalf("%s: the start succeeded", name)
		}
		if _, serr := os.Stat(f.dbPath); !errors.Is(serr, os.ErrNotExist) {
			t.Errorf("%s: failed with %q but left %s behind (stat: %v)", name, err, f.dbPath, serr)
		}
	}
}

// Once the server is shutting down, /readyz answers 503 ("draining") for
// the whole drain, not the readiness of its last probe: a prober stops
// sending it traffic while its calls finish.
func TestReadyzSaysDrainingDuringTheDrain(t *testing.T) {
	ts := start(t, newFiles(t), options{configure: func(c *config.Config) {
		c.ShutdownTimeout = 5 * time.Second
		c.Passwords.HashWorkers = 1
		c.Ops.Listen = "127.0.0.1:0"
	}})
	ctx := testContext(t)
	c := slowHashKey(t, ts)
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + ts.rt.OpsAddr().String() + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor(t, 10*time.Second, "/readyz 200", func() bool { code, _ := readyz(); return code == http.StatusOK })
	go func() {
		_, _ = c.crypto.HashPassword(ctx, &custosv1.HashPasswordRequest{Name: "tenants/a/keys/pw", Password: []byte("p")})
	}()
	waitFor(t, 10*time.Second, "the hash running", func() bool { return ts.rt.Passwords().Stats().Running == 1 })
	stopped := make(chan struct{})
	go func() { ts.stop(); close(stopped) }()
	var code int
	var body string
	waitFor(t, 10*time.Second, "/readyz to say draining", func() bool {
		select {
		case <-stopped:
			return true
		default:
		}
		code, body = readyz()
		return code == http.StatusServiceUnavailable && strings.Contains(body, `"draining":true`)
	})
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `"draining":true`) {
		t.Fatalf("/readyz during the drain: %d %s, want 503 saying draining", code, body)
	}
	<-stopped
}

// gatedRoot holds every Wrap until release is closed, telling entered
// when the first one starts.
type gatedRoot struct {
	root.Root
	entered, release chan struct{}
	once             sync.Once
}

func (g *gatedRoot) Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	g.once.Do(func() { close(g.entered) })
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.Root.Wrap(ctx, plaintext, aad)
}

// When the gRPC listener fails, the calls in flight still finish and are
// answered, as on SIGTERM: the runtime stopped the server without waiting
// for them and closed the audit trail and the store under them.
func TestAFailedListenerLetsTheCallsInFlightFinish(t *testing.T) {
	f := newFiles(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gr := &gatedRoot{Root: f.root, entered: make(chan struct{}), release: make(chan struct{})}
	logs := &syncBuffer{}
	var runErr error
	ts := start(t, f, options{root: gr, listener: lis, runErr: &runErr, logger: slog.New(slog.NewJSONHandler(logs, nil)), configure: func(c *config.Config) { c.ShutdownTimeout = 20 * time.Second }})
	ctx := testContext(t)
	conn := ts.conn(t, idAdmin)
	hc := healthpb.NewHealthClient(conn)
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := custosv1.NewKeyServiceClient(conn).CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: "a"})
		done <- err
	}()
	select {
	case <-gr.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("CreateTenant never reached the root")
	}
	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
	// The runtime has seen Serve fail once it says so; the call in flight
	// then goes on (or, cut, fails) whatever the timing.
	waitFor(t, 10*time.Second, "the runtime logs the listener's failure", func() bool {
		return strings.Contains(logs.String(), "custos listener failed")
	})
	close(gr.release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the call in flight when the listener failed: %v, want it answered", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the call in flight was not answered within 10s")
	}
	// And the runtime fails, so that a supervisor restarts the process.
	ts.stop()
	if runErr == nil || !strings.Contains(runErr.Error(), "listener failed") {
		t.Fatalf("Run after its listener failed: %v, want an error", runErr)
	}
}

// A listener handed to the runtime is closed by it even when the start
// fails before the runtime would have bound one of its own.
func TestAFailedStartClosesTheListenerItWasGiven(t *testing.T) {
	f := newFiles(t)
	if err := os.WriteFile(f.policyPath, []byte("rules:\n  - identitiez: [x]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	if rt, err := custos.New(context.Background(), f.config(t), custos.Options{Logger: discardLogger(), Root: f.root, Listener: lis}); err == nil {
		rt.Close()
		t.Fatal("the start succeeded with a bad policy")
	}
	accepted := make(chan error, 1)
	go func() {
		c, err := lis.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	select {
	case err := <-accepted:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept on the listener after the failed start: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the listener given to a failed start is still open")
	}
}

// slowHashKey creates tenant a with PASSWORD key pw at bcrypt cost 15 (over
// a second a hash here) and returns clients as the admin.
func slowHashKey(t *testing.T, ts *testServer) clients {
	t.Helper()
	ctx := testContext(t)
	c := ts.clients(t, idAdmin)
	if _, err := c.keys.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/a", KeyId: "pw", Key: &custosv1.Key{
		Purpose:        custosv1.KeyPurpose_KEY_PURPOSE_PASSWORD,
		PasswordPolicy: &custosv1.PasswordPolicy{Algorithm: custosv1.PasswordAlgorithm_PASSWORD_ALGORITHM_BCRYPT, BcryptCost: 15},
	}}); err != nil {
		t.Fatal(err)
	}
	return c
}

// A peer watching the health service does not hold the stop to
// shutdown_timeout: its watch hears NOT_SERVING and ends (OK, not an error
// logged per watching connection) when the drain starts.
func TestAHealthWatchDoesNotHoldTheStop(t *testing.T) {
	const timeout = 20 * time.Second
	ts := start(t, newFiles(t), options{configure: func(c *config.Config) { c.ShutdownTimeout = timeout }})
	ctx := testContext(t)
	watch, err := healthpb.NewHealthClient(ts.conn(t, idAdmin)).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := watch.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first watch answer: %v, %v; want SERVING", m, err)
	}
	begin := time.Now()
	ts.stop()
	if took := time.Since(begin); took > timeout/4 {
		t.Fatalf("the stop took %v with a health watch open (shutdown_timeout %v)", took, timeout)
	}
	var last healthpb.HealthCheckResponse_ServingStatus
	for {
		m, err := watch.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("the watch ended with %v, want its end (OK)", err)
			}
			break
		}
		last = m.GetStatus()
	}
	if last != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("the watch's last status: %v, want NOT_SERVING", last)
	}
}

// A runtime closed without running leaves no goroutines behind (the gRPC
// server's stream workers start when it is built).
func TestARuntimeClosedWithoutRunningLeavesNoGoroutines(t *testing.T) {
	f := newFiles(t)
	before := runtime.NumGoroutine()
	for range 3 {
		rt, err := custos.New(context.Background(), f.config(t), custos.Options{Logger: discardLogger(), Root: f.root})
		if err != nil {
			t.Fatal(err)
		}
		rt.Close()
	}
	for deadline := time.Now().Add(10 * time.Second); runtime.NumGoroutine() >= before+50; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines 10s after three New and Close, %d before", runtime.NumGoroutine(), before)
		}
	}
}

// A reflection stream kept open (grpcui, a reflection client not reset)
// does not hold the stop either: it waits in Recv for the client's next
// request, and a graceful stop waits for every handler.
func TestAReflectionStreamDoesNotHoldTheStop(t *testing.T) {
	const timeout = 20 * time.Second
	ts := start(t, newFiles(t), options{configure: func(c *config.Config) { c.ShutdownTimeout = timeout }})
	ctx := testContext(t)
	stream, err := reflectionv1.NewServerReflectionClient(ts.conn(t, idAdmin)).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("list services: %v", err)
	}
	begin := time.Now()
	ts.stop()
	if took := time.Since(begin); took > timeout/4 {
		t.Fatalf("the stop took %v with a reflection stream open (shutdown_timeout %v)", took, timeout)
	}
}
