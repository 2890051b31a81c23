package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-kms/custos/internal/bench"
	"github.com/custos-kms/custos/internal/pgtest"
	"github.com/custos-kms/custos/server"
)

// TestMain lets a test run this binary as custos itself: with
// CUSTOS_TEST_RUN_MAIN=1 the test binary is `custos`, so commands that start
// child processes (custos bench) can be tested end to end.
func TestMain(m *testing.M) {
	if os.Getenv("CUSTOS_TEST_RUN_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(pgtest.Main(m)) // stops the shared PostgreSQL the tests started
}

// runCLI runs a custos command line in-process and returns its standard
// output and error.
func runCLI(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

func parseReport(t *testing.T, out string) bench.Report {
	t.Helper()
	var rep bench.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("-o json output does not parse: %v\n%s", err, out)
	}
	return rep
}

// A bounded run of every operation against a real server and an in-process
// baseline: every workload made calls without errors, and the ones with a
// baseline have a ratio from the same run. The client files come from
// --dev-dir (bench once ignored it and looked in ./.custos-dev).
func TestBenchMeasuresEveryOperationAgainstItsBaseline(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, stop, _ := startDevServer(t, dir, nil)
	defer stop()
	tlsConf, err := server.TLSConfig(filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem"), filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- bench.ServeBaseline(ctx, lis, tlsConf, server.DefaultMaxMessageBytes) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("baseline did not stop within 10s")
		}
	}()

	ops := "encrypt,decrypt,encrypt-batch,decrypt-batch,rewrap-batch,blind-index,datakey,mixed" // hash: TestBenchSpawns…
	out, errOut, err := runCLI(t, "bench", "--addr", addr, "--dev-dir", dir,
		"--baseline", lis.Addr().String(), "--ops", ops, "--concurrency", "2", "--batch", "5",
		"--warmup", "20ms", "--duration", "150ms", "--rounds", "2", "-o", "json")
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, errOut)
	}
	rep := parseReport(t, out)
	if len(rep.Comparisons) != len(strings.Split(ops, ",")) || rep.Rounds != 2 {
		t.Fatalf("%d comparisons, %d rounds; want %d, 2", len(rep.Comparisons), rep.Rounds, len(strings.Split(ops, ",")))
	}
	// The settings say what the run was against and with which keys.
	if s := rep.Settings; s.Baseline != lis.Addr().String() || s.PasswordKey != bench.DefaultKeys.Password || s.BatchSize != 5 {
		t.Fatalf("settings %+v", s)
	}
	for _, c := range rep.Comparisons {
		if len(c.Custos) != 2 {
			t.Errorf("%s: %d Custos rounds, want 2", c.Workload, len(c.Custos))
		}
		for _, r := range append(c.Custos, c.Baseline...) {
			if r.Calls == 0 || r.OpsPerSec <= 0 || r.P50 <= 0 || r.P99 < r.P50 || len(r.Errors) != 0 {
				t.Errorf("%s on %s: %+v", c.Workload, r.Target, r)
			}
			if r.Op.Batch() && r.Items != 5*r.Calls {
				t.Errorf("%s: %d items in %d calls of 5", c.Workload, r.Items, r.Calls)
			}
		}
		op := c.Custos[0].Op
		if op.HasBaseline() != (len(c.Baseline) == 2) {
			t.Errorf("%s: %d baseline rounds", c.Workload, len(c.Baseline))
		}
		if op.HasBaseline() && (c.Throughput.Median <= 0 || len(c.Throughput.Values) != 2 || c.Throughput.Min > c.Throughput.Max) {
			t.Errorf("%s: throughput ratio %+v", c.Workload, c.Throughput)
		}
	}
}

// The whole tool as users run it: it starts custos dev and the baseline in
// processes of their own, measures server CPU per call from /proc and
// allocations per call from each server's metrics, and runs
// the hashing contention scenario.
func TestBenchSpawnsTheServerAndTheBaselineInTheirOwnProcesses(t *testing.T) {
	t.Setenv("CUSTOS_TEST_RUN_MAIN", "1")
	// Enough calls in the window for allocations per call to be reported
	// (bench.minCallsForAllocs), with the race detector on and a slow disk
	// under the audit trail's group commit: many calls share each sync.
	out, errOut, err := runCLI(t, "bench", "--spawn-dev", "--ops", "encrypt", "--concurrency", "32",
		"--warmup", "50ms", "--duration", "1s", "--rounds", "1",
		// The background is any workload: a bcrypt hash of the race-built
		// child can outlast a short window on a loaded machine, a blind
		// index cannot.
		"--contention", "--contention-op", "encrypt@4", "--contention-background", "blind-index@2", "-o", "json")
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, errOut)
	}
	for _, want := range []string{"custos dev (pid ", "baseline (pid "} {
		if !strings.Contains(errOut, want) {
			t.Errorf("progress lacks %q:\n%s", want, errOut)
		}
	}
	rep := parseReport(t, out)
	if len(rep.Comparisons) != 1 || len(rep.Contention) != 1 {
		t.Fatalf("report: %d comparisons, %d contention runs", len(rep.Comparisons), len(rep.Contention))
	}
	c := rep.Comparisons[0]
	if c.Custos[0].ServerCPUPerCall <= 0 || c.Baseline[0].ServerCPUPerCall <= 0 {
		t.Errorf("server CPU per call not measured: custos %v, baseline %v", c.Custos[0].ServerCPUPerCall, c.Baseline[0].ServerCPUPerCall)
	}
	// Both servers' allocations come from their own metrics endpoints:
	// Custos's ops listener and the baseline's; a gRPC call allocates.
	t.Logf("calls in the window: custos %d, baseline %d", c.Custos[0].Calls, c.Baseline[0].Calls)
	if c.Custos[0].ServerAllocsPerCall < 1 || c.Baseline[0].ServerAllocsPerCall < 1 {
		t.Errorf("server allocations per call not measured: custos %v, baseline %v", c.Custos[0].ServerAllocsPerCall, c.Baseline[0].ServerAllocsPerCall)
	}
	// This process's own CPU per call, and the machine's idle share, in
	// each paired run.
	for _, r := range []bench.Result{c.Custos[0], c.Baseline[0]} {
		if r.ClientCPUPerCall <= 0 || r.IdleShare == nil || *r.IdleShare < 0 || *r.IdleShare > 1 {
			t.Errorf("%s: client CPU per call %v, idle share %v", r.Target, r.ClientCPUPerCall, r.IdleShare)
		}
	}
	k := rep.Contention[0]
	if len(k.Loaded) != 1 || k.Loaded[0].Background == nil || k.Loaded[0].Background.Calls == 0 || k.Throughput.Median <= 0 {
		t.Errorf("contention: %+v", k)
	}
	// Beside the background load, this process's CPU is not the measured
	// calls' alone: not reported.
	if l := k.Loaded[0]; l.ClientCPUPerCall != 0 || l.IdleShare != nil {
		t.Errorf("loaded contention run reports client CPU %v, idle share %v", l.ClientCPUPerCall, l.IdleShare)
	}
}

func TestBenchRefusesBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "--ops", "encrypt,nope"},
		{"bench", "--concurrency", "0"},
		{"bench", "--concurrency", "x"},
		{"bench", "-o", "yaml"},
		{"bench", "--duration", "0"},
		{"bench", "--warmup", "-1s"},
		{"bench", "--rounds", "0"},
		{"bench", "--batch", "0"},
		{"bench", "--payload", "2000000"},
		{"bench", "--password-algorithm", "scrypt"},
	} {
		// Refused as a bad flag before anything is dialled or run.
		_, _, err := runCLI(t, append(args, "--addr", "127.0.0.1:1", "--setup=false", "--baseline", "off")...)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
}

// Flags of the contention run and --baseline audit-off without
// --spawn-dev are refused before anything is measured: the contention
// workloads were parsed after minutes of comparisons, and audit-off took
// any server's ratio to a throwaway custos dev's for the trail's cost.
func TestBenchRefusesBadFlagsBeforeMeasuring(t *testing.T) {
	for _, args := range [][]string{
		{"--baseline", "audit-off"},
		{"--baseline", "off", "--contention", "--contention-op", "encrypt@0"},
		{"--baseline", "off", "--contention", "--contention-background", "nope@4"},
	} {
		_, _, err := runCLI(t, append([]string{"bench", "--addr", "127.0.0.1:1", "--setup=false"}, args...)...)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
}

// Bad soak flags are refused before anything is dialled or measured
// (the peak alone takes seconds), each error naming its flag.
func TestBenchSoakRefusesBadFlagsFirst(t *testing.T) {
	for _, c := range []struct {
		flag string
		args []string
	}{
		{"--concurrency", []string{"--concurrency", "0"}},
		{"--concurrency", []string{"--concurrency", "100000000"}},
		{"--peak", []string{"--peak", "0s"}},
		{"--duration", []string{"--duration", "-1s"}},
		{"--sample", []string{"--sample", "10m", "--duration", "1m"}},
		{"--fraction", []string{"--fraction", "1.5"}},
	} {
		_, _, err := runCLI(t, append([]string{"bench", "soak", "--addr", "127.0.0.1:1"}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.flag) {
			t.Errorf("%v: %v, want an error naming %s", c.args, err, c.flag)
		}
	}
}

// A peak of no successful call leaves nothing to hold: the soak says so
// rather than failing on a zero rate.
func TestBenchSoakSaysSoWhenNoCallSucceededAtThePeak(t *testing.T) {
	t.Setenv("CUSTOS_TEST_RUN_MAIN", "1")
	// A window of a nanosecond holds no whole call.
	_, errOut, err := runCLI(t, "bench", "soak", "--spawn-dev", "--concurrency", "2", "--peak", "1ns", "--duration", "1s", "--sample", "1s")
	if err == nil || !strings.Contains(err.Error(), "no mixed call succeeded while measuring the peak") {
		t.Fatalf("soak with no call at the peak: %v\n%s", err, errOut)
	}
}

// signalWriter collects a command's progress and closes seen once it has
// written want.
type signalWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
	once sync.Once
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return n, err
}

// A soak interrupted while it holds its load prints what it saw and fails
// with the interruption (Ctrl-C on a long soak keeps its samples).
func TestAnInterruptedSoakPrintsItsSamplesAndFails(t *testing.T) {
	t.Setenv("CUSTOS_TEST_RUN_MAIN", "1")
	cmd := newRootCmd()
	var out bytes.Buffer
	progress := &signalWriter{want: "holding", seen: make(chan struct{})}
	cmd.SetOut(&out)
	cmd.SetErr(progress)
	cmd.SetArgs([]string{"bench", "soak", "--spawn-dev", "--concurrency", "2", "--peak", "300ms",
		"--fraction", "0.5", "--duration", "10m", "--sample", "300ms"})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	select {
	case <-progress.seen:
	case err := <-done:
		t.Fatalf("soak ended before holding its load: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("soak did not start holding its load within 2 minutes")
	}
	time.Sleep(1500 * time.Millisecond) // a few samples
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("interrupted soak: %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("soak still running 30 s after it was interrupted")
	}
	if !strings.Contains(out.String(), "at s") || !strings.Contains(out.String(), "first quarter -> last quarter") {
		t.Errorf("interrupted soak printed no samples:\n%s", out.String())
	}
}

func TestBenchSoakHoldsAFractionOfThePeakAndSamplesTheServer(t *testing.T) {
	t.Setenv("CUSTOS_TEST_RUN_MAIN", "1")
	out, errOut, err := runCLI(t, "bench", "soak", "--spawn-dev", "--concurrency", "4", "--peak", "300ms",
		"--fraction", "0.5", "--duration", "2s", "--sample", "500ms", "-o", "json")
	if err != nil {
		t.Fatalf("soak: %v\n%s", err, errOut)
	}
	var rep struct {
		Peak    float64 `json:"peak_ops_per_sec"`
		Rate    float64 `json:"target_rate"`
		Calls   int64   `json:"calls"`
		Samples []struct {
			Calls      int64   `json:"calls"`
			RSSMiB     float64 `json:"rss_mib"`
			Goroutines int     `json:"goroutines"`
		} `json:"samples"`
		Trend map[string]string `json:"trend"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if rep.Peak <= 0 || rep.Rate != rep.Peak*0.5 || rep.Calls == 0 || len(rep.Samples) < 3 {
		t.Fatalf("soak report: %+v", rep)
	}
	for _, s := range rep.Samples {
		if s.RSSMiB <= 0 || s.Goroutines <= 0 {
			t.Fatalf("a sample without the server's RSS or goroutines: %+v", s)
		}
	}
	for _, k := range []string{"rss_mib", "heap_mib", "goroutines", "p99_us", "ops_per_sec"} {
		if rep.Trend[k] == "" {
			t.Errorf("trend lacks %s: %v", k, rep.Trend)
		}
	}
}

// Batch items the server fails one by one (here fields over its 64 KiB
// limit) are errors of the run, with their code, not items done.
func TestBenchCountsFailedBatchItemsAsErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, stop, _ := startDevServer(t, dir, nil)
	defer stop()
	out, errOut, err := runCLI(t, "bench", "--addr", addr, "--dev-dir", dir, "--baseline", "off",
		"--ops", "encrypt-batch", "--concurrency", "1", "--batch", "2", "--payload", "70000",
		"--warmup", "10ms", "--duration", "100ms", "--rounds", "1", "-o", "json")
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, errOut)
	}
	rep := parseReport(t, out)
	if len(rep.Comparisons) != 1 || len(rep.Comparisons[0].Custos) != 1 {
		t.Fatalf("report: %+v", rep)
	}
	r := rep.Comparisons[0].Custos[0]
	if r.Items != 0 || r.Errors["InvalidArgument"] == 0 {
		t.Fatalf("batches of fields over the server's limit: %d items done, errors %v; want none done and INVALID_ARGUMENT counted", r.Items, r.Errors)
	}
}
