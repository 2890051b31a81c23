package bench

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeConn answers every unary call after a short pause, counting them: a
// stand-in for a server, so that Run's own arithmetic can be checked
// exactly. The real tool is tested against real servers in cmd/custos.
type fakeConn struct {
	delay    time.Duration // default 200µs
	calls    atomic.Int64
	failHalf bool // every other call fails (UNAVAILABLE)
}

func (f *fakeConn) Invoke(ctx context.Context, _ string, _, _ any, _ ...grpc.CallOption) error {
	d := f.delay
	if d == 0 {
		d = 200 * time.Microsecond
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
		return ctx.Err()
	}
	if n := f.calls.Add(1); f.failHalf && n%2 == 0 {
		return status.Error(codes.Unavailable, "fakeConn: every other call fails")
	}
	return nil
}

func (f *fakeConn) NewStream(context.Context, *grpc.StreamDesc, string, ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, errors.New("fakeConn: no streams")
}

// perCall reads a usage that grows by a fixed amount per call the fake
// server answered, as a server's CPU time and allocation counter do.
type perCall struct {
	conn   *fakeConn
	cpu    time.Duration
	allocs uint64
	err    error
}

func (p perCall) CPU() (time.Duration, error) {
	return time.Duration(p.conn.calls.Load()) * p.cpu, p.err
}

func (p perCall) Allocs() (uint64, error) { return uint64(p.conn.calls.Load()) * p.allocs, p.err }

// shrinking is an allocation counter that went backwards (a restarted
// server, or a metrics URL that reached another replica).
type shrinking struct{ n atomic.Int64 }

func (s *shrinking) Allocs() (uint64, error) { return uint64(1_000_000 - s.n.Add(1000)), nil }

func runWorkload() Workload {
	return Workload{Op: OpEncrypt, Concurrency: 16, PayloadBytes: 8, Warmup: 50 * time.Millisecond, Duration: 500 * time.Millisecond}
}

func TestRunReportsTheServersCPUAndAllocationsPerCall(t *testing.T) {
	conn := &fakeConn{}
	r := perCall{conn: conn, cpu: 10 * time.Microsecond, allocs: 50}
	res, err := Run(context.Background(), Target{Name: "fake", Conn: conn, CPU: r, Allocs: r}, runWorkload())
	if err != nil {
		t.Fatal(err)
	}
	if res.Calls < minCallsForAllocs {
		t.Fatalf("%d calls in the window, fewer than the %d that allocations are reported for", res.Calls, minCallsForAllocs)
	}
	// The readings bracket the window give or take a scheduling delay, and
	// calls that straddle its edges are not counted: the figures are close
	// to the true cost per call, a little above it more often than below.
	if res.ServerCPUPerCall < 9 || res.ServerCPUPerCall > 12 {
		t.Errorf("CPU per call %.2f µs, want about 10", res.ServerCPUPerCall)
	}
	if res.ServerAllocsPerCall < 47.5 || res.ServerAllocsPerCall > 60 {
		t.Errorf("allocations per call %.2f, want about 50", res.ServerAllocsPerCall)
	}
}

// A failed call used the server's CPU too: the CPU per call is divided by
// every call answered, not only the successful ones (a run of half fast
// errors doubled it).
func TestRunCountsFailedCallsInTheCPUPerCall(t *testing.T) {
	conn := &fakeConn{failHalf: true}
	r := perCall{conn: conn, cpu: 10 * time.Microsecond}
	res, err := Run(context.Background(), Target{Name: "fake", Conn: conn, CPU: r}, runWorkload())
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors["Unavailable"] == 0 {
		t.Fatalf("no errors counted: %+v", res.Errors)
	}
	if res.ServerCPUPerCall < 9 || res.ServerCPUPerCall > 12 {
		t.Errorf("CPU per call %.2f µs with half the calls failing, want about 10", res.ServerCPUPerCall)
	}
}

func TestRunReportsTheClientsCPUPerCallAndTheMachinesIdleShare(t *testing.T) {
	// The machine's ticks: the window opens at (idle 100, total 1000) and
	// closes at (400, 2000), so 300 of its 1000 ticks were idle. A third
	// reading would mean the window read the machine more than twice.
	readings := []hostTicks{{idle: 100, total: 1000}, {idle: 400, total: 2000}}
	var reads atomic.Int32
	hostTicksNow = func() (hostTicks, error) {
		i := int(reads.Add(1)) - 1
		if i >= len(readings) {
			return hostTicks{}, errors.New("read more than twice")
		}
		return readings[i], nil
	}
	t.Cleanup(func() { hostTicksNow = readHostTicks })

	conn := &fakeConn{}
	self := perCall{conn: conn, cpu: 20 * time.Microsecond}
	// A warm-up as long as the window: a reading taken when the warm-up
	// starts instead of when it ends would double the figure.
	w := runWorkload()
	w.Warmup = w.Duration
	res, err := Run(context.Background(), Target{Name: "fake", Conn: conn, Client: self}, w)
	if err != nil {
		t.Fatal(err)
	}
	// The readings bracket the window give or take a scheduling delay: a
	// late opening reading lowers the figure a little, calls straddling the
	// window's edges raise it a little.
	if res.ClientCPUPerCall < 16 || res.ClientCPUPerCall > 25 {
		t.Errorf("client CPU per call %.2f µs, want about 20", res.ClientCPUPerCall)
	}
	if res.ServerCPUPerCall != 0 || res.ServerAllocsPerCall != 0 {
		t.Errorf("server figures without readers: %v, %v", res.ServerCPUPerCall, res.ServerAllocsPerCall)
	}
	if res.IdleShare == nil || *res.IdleShare != 0.3 {
		t.Errorf("idle share %v, want 0.3", res.IdleShare)
	}

	// Without a client reader, neither is reported.
	res, err = Run(context.Background(), Target{Name: "fake", Conn: conn}, runWorkload())
	if err != nil {
		t.Fatal(err)
	}
	if res.ClientCPUPerCall != 0 || res.IdleShare != nil {
		t.Errorf("without a client reader: client CPU %v, idle share %v", res.ClientCPUPerCall, res.IdleShare)
	}
	if n := reads.Load(); n != 2 {
		t.Errorf("the machine was read %d times, want 2", n)
	}
}

func TestReadHostTicksReadsThisMachine(t *testing.T) {
	h, err := readHostTicks()
	if err != nil {
		t.Skipf("no /proc/stat here: %v", err)
	}
	if h.total == 0 || h.idle > h.total {
		t.Errorf("host ticks %+v", h)
	}
}

func TestHostTicksCountIdleAndIOWaitOutOfTheTotal(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice
	h, err := parseHostTicks("cpu  100 5 50 800 40 3 2 0 70 9\n")
	if err != nil {
		t.Fatal(err)
	}
	// Guest time is part of user and nice already.
	if want := (hostTicks{idle: 840, total: 1000}); h != want {
		t.Errorf("got %+v, want %+v", h, want)
	}
	for _, bad := range []string{"", "cpu0 1 2 3 4 5\n", "cpu  1 2 3\n", "cpu  1 2 x 4 5 6\n", "cpu  1 2 3 -4 5 6\n"} {
		if _, err := parseHostTicks(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestRunLeavesOutWhatItCouldNotRead(t *testing.T) {
	conn := &fakeConn{}
	failing := perCall{conn: conn, cpu: time.Microsecond, allocs: 1, err: errors.New("scrape failed")}
	res, err := Run(context.Background(), Target{Name: "fake", Conn: conn, CPU: failing, Allocs: &shrinking{}}, runWorkload())
	if err != nil {
		t.Fatal(err)
	}
	if res.Calls < minCallsForAllocs {
		t.Fatalf("%d calls, fewer than the %d that allocations are reported for", res.Calls, minCallsForAllocs)
	}
	if res.ServerCPUPerCall != 0 || res.ServerAllocsPerCall != 0 {
		t.Errorf("CPU %v µs and %v allocations per call from failed or backward readings; want none", res.ServerCPUPerCall, res.ServerAllocsPerCall)
	}
}

func TestRunReturnsPromptlyWhenCancelledDuringTheWarmup(t *testing.T) {
	conn := &fakeConn{}
	r := perCall{conn: conn, cpu: time.Microsecond, allocs: 1}
	w := runWorkload()
	w.Warmup = time.Minute
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	done := make(chan error, 1)
	go func() {
		_, err := Run(ctx, Target{Name: "fake", Conn: conn, CPU: r, Allocs: r}, w)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run after cancel: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run still running 10s after its context was cancelled (warm-up 1m)")
	}
}

// A window of few calls (password hashing) gets its CPU per call but no
// allocations per call: the metrics scrape in the window would dominate.
func TestRunReportsNoAllocationsForAFewCalls(t *testing.T) {
	conn := &fakeConn{delay: 5 * time.Millisecond}
	r := perCall{conn: conn, cpu: 10 * time.Microsecond, allocs: 50}
	w := runWorkload()
	w.Concurrency = 1
	res, err := Run(context.Background(), Target{Name: "fake", Conn: conn, CPU: r, Allocs: r}, w)
	if err != nil {
		t.Fatal(err)
	}
	if res.Calls == 0 || res.Calls >= minCallsForAllocs {
		t.Fatalf("%d calls; the test wants a few", res.Calls)
	}
	if res.ServerCPUPerCall < 8 || res.ServerAllocsPerCall != 0 {
		t.Errorf("CPU %.2f µs (want about 10) and %.2f allocations per call (want none) for %d calls", res.ServerCPUPerCall, res.ServerAllocsPerCall, res.Calls)
	}
}

// With both readers on one metrics endpoint (--server-metrics), a reading
// is one scrape, and a metric the endpoint lacks leaves out that figure
// only.
func TestUsageScrapesAMetricsEndpointOnce(t *testing.T) {
	var scrapes atomic.Int64
	body := "# HELP process_cpu_seconds_total x\nprocess_cpu_seconds_total 1.5\ngo_memstats_mallocs_total 12345\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scrapes.Add(1)
		if r.URL.Path == "/cpu-only" {
			_, _ = io.WriteString(w, "process_cpu_seconds_total 2\n")
			return
		}
		_, _ = io.WriteString(w, body)
	}))
	defer srv.Close()

	url := srv.URL + "/metrics"
	u := Target{CPU: Metrics(url), Allocs: Metrics(url)}.usage()
	if n := scrapes.Load(); n != 1 {
		t.Errorf("%d scrapes for one reading, want 1", n)
	}
	if !u.cpuOK || !u.allocsOK || u.cpu != 1500*time.Millisecond || u.allocs != 12345 {
		t.Errorf("reading %+v, want 1.5s and 12345 allocations", u)
	}

	other := srv.URL + "/cpu-only"
	before := scrapes.Load()
	u = Target{CPU: Metrics(other), Allocs: Metrics(other)}.usage()
	if !u.cpuOK || u.cpu != 2*time.Second || u.allocsOK || scrapes.Load() != before+1 {
		t.Errorf("reading %+v from an endpoint without go_memstats_mallocs_total: want 2s, no allocations, one scrape", u)
	}
}

// An interrupted soak returns what it saw and its context's error, so that
// the command does not exit 0 as if it had held the load throughout.
func TestASoakCancelledReportsItsContextsError(t *testing.T) {
	conn := &fakeConn{}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	done := make(chan error, 1)
	var rep SoakReport
	go func() {
		var err error
		rep, err = Soak(ctx, conn, SoakConfig{Workload: runWorkload(), Rate: 1000, Duration: time.Minute, Sample: 100 * time.Millisecond})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Soak after cancel: %v, want context.Canceled", err)
		}
		if rep.Calls == 0 {
			t.Errorf("the report lost what the soak saw before it was cancelled: %+v", rep)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Soak still running 10s after its context was cancelled")
	}
}

func TestASoaksShortLastWindowStillCountsInItsTotals(t *testing.T) {
	conn := &fakeConn{}
	w := runWorkload()
	// One sample at 1 s, then 0.25 s: too short for a sample of its own.
	// The margins either side (the tick before the end; the rest under
	// half a sample) are a quarter of a second each.
	rep, err := Soak(context.Background(), conn, SoakConfig{Workload: w, Rate: 2000, Duration: 1250 * time.Millisecond, Sample: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Samples) != 1 {
		t.Fatalf("%d samples, want 1", len(rep.Samples))
	}
	// Every call the fake answered is in the total, but for those the
	// end of the soak cut short (at most one per worker).
	answered := conn.calls.Load()
	if rep.Calls > answered || rep.Calls < answered-int64(w.Concurrency) {
		t.Errorf("total %d calls, the server answered %d (sample: %d)", rep.Calls, answered, rep.Samples[0].Calls)
	}
	if rep.Calls <= rep.Samples[0].Calls {
		t.Errorf("total %d calls, no more than the one sample's %d: the last 0.25 s were dropped", rep.Calls, rep.Samples[0].Calls)
	}
}

func TestASoakRefusesABadConfigBeforeItCallsTheServer(t *testing.T) {
	conn := &fakeConn{}
	w := runWorkload()
	w.Op = OpDecrypt // preparing it encrypts a field first
	if _, err := Soak(context.Background(), conn, SoakConfig{Workload: w, Rate: 0, Duration: time.Second, Sample: time.Second}); err == nil {
		t.Fatal("a soak at rate 0 started")
	}
	if n := conn.calls.Load(); n != 0 {
		t.Errorf("%d calls made before the configuration was refused", n)
	}
}

// A metrics URL that answers with an error status (a wrong path, another
// listener) is an error, not a server that reports zeros.
func TestMetricsAnsweredWithAnErrorStatusAreAnError(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	if _, err := scrapeMetrics(srv.URL+"/metrics", cpuMetric); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("scrape of a 404: %v, want an error naming the status", err)
	}
	if _, err := scrapeProcess(srv.URL + "/metrics"); err == nil {
		t.Error("the soak's scrape of a 404 succeeded")
	}
}

// A server that stops answering fails the run StallGrace after its window
// (it held the run for ever); a slow call that ends after the window still
// counts in the latencies (it vanished from the tail).
func TestAStalledServerFailsTheRunAndASlowLastCallCounts(t *testing.T) {
	defer func(g time.Duration) { StallGrace = g }(StallGrace)
	StallGrace = 200 * time.Millisecond
	w := runWorkload()
	w.Concurrency = 1
	stalled := &fakeConn{delay: time.Hour}
	done := make(chan error, 1)
	go func() {
		_, err := Run(context.Background(), Target{Name: "stalled", Conn: stalled}, w)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, errStalled) {
			t.Fatalf("Run against a stalled server: %v, want errStalled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run against a stalled server still running after 10s")
	}

	// One call of 400 ms in a 500 ms window after a 50 ms warm-up: the
	// second starts inside the window and ends after it.
	StallGrace = 5 * time.Second
	slow := &fakeConn{delay: 400 * time.Millisecond}
	r, err := Run(context.Background(), Target{Name: "slow", Conn: slow}, w)
	if err != nil {
		t.Fatal(err)
	}
	if r.P50 < 350_000 {
		t.Fatalf("p50 %.0f µs, want the slow calls' latency counted", r.P50)
	}
}

// A Custos server as the baseline answers password hashing, so hashing
// gets its ratio against it; against the echo, which does not, it runs
// alone. The mixed profile runs against the echo too: it answers each of
// its calls.
func TestHashingRunsAgainstACustosBaselineOnly(t *testing.T) {
	for _, c := range []struct {
		op     Op
		custos bool
		want   int
	}{{OpHash, true, 1}, {OpHash, false, 0}, {OpVerify, true, 1}, {OpMixed, false, 1}} {
		w := runWorkload()
		w.Op = c.op
		cmp, err := Compare(context.Background(), Target{Name: "custos", Conn: &fakeConn{}}, &Target{Name: "baseline", Conn: &fakeConn{}, Custos: c.custos}, w, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(cmp.Baseline) != c.want || len(cmp.Throughput.Values) != c.want {
			t.Errorf("%s against a baseline (Custos: %v): %d baseline rounds, %d ratios; want %d", c.op, c.custos, len(cmp.Baseline), len(cmp.Throughput.Values), c.want)
		}
	}
}
