package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/internal/bench"
	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/custos"
	"github.com/custos-kms/custos/internal/tlssource"
	"github.com/custos-kms/custos/server"
)

// benchFlags are the flags of `custos bench`.
type benchFlags struct {
	conn
	ops, concurrency             string
	batch, payload, rounds       int
	warmup, duration             time.Duration
	baseline                     string
	baseCert, baseKey, baseCA    string
	serverPID                    int
	serverMetrics                string
	spawnDev, setup              bool
	contention                   bool
	contentionOp, contentionConc string
	passwordAlgorithm            string
	output                       string
	tenants                      int
	tenantPrefix                 string
	baseGC                       int
}

func newBenchCmd() *cobra.Command {
	var f benchFlags
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load a Custos server and compare it with a bare mTLS gRPC baseline in the same run",
		Long: `custos bench is a closed-loop load generator. For each operation and
concurrency it runs a bare mutual-TLS gRPC server of the same service and
message types (the baseline: single calls echo their payload, batch calls
seal each item with AES-256-GCM) in a separate process, alternates rounds
against the baseline and against Custos, and prints each figure as a ratio
to its baseline from the same run, with the spread over the rounds.

Without --spawn-dev it loads the server at --addr with the client files
given (default: ./.custos-dev, as custos dev writes them) and starts the
baseline with that directory's server certificate. --server-pid or
--server-metrics add the server's CPU time per call, and --server-metrics its
heap allocations per call (--spawn-dev reads both from the spawned server;
the spawned baseline reports its own). See docs/performance.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runBench(cmd, &f) },
	}
	f.conn.flags(cmd)
	// A run ends with its rounds (--duration × --rounds per workload); a
	// command-wide --timeout would cut a measurement short, so bench and
	// soak do not offer it.
	_ = cmd.PersistentFlags().MarkHidden("timeout")
	fl := cmd.Flags()
	fl.StringVar(&f.ops, "ops", "encrypt,decrypt,blind-index,encrypt-batch", "operations, comma-separated: "+opNames())
	fl.StringVar(&f.concurrency, "concurrency", "1,64", "calls in flight, comma-separated")
	fl.IntVar(&f.batch, "batch", 100, "items per batch call")
	fl.IntVar(&f.payload, "payload", 64, "bytes per plaintext field")
	fl.DurationVar(&f.warmup, "warmup", time.Second, "warm-up before each measured run")
	fl.DurationVar(&f.duration, "duration", 3*time.Second, "measured time of each run")
	fl.IntVar(&f.rounds, "rounds", 3, "rounds per workload, alternating baseline and Custos")
	fl.StringVar(&f.baseline, "baseline", "spawn", `"spawn" (a baseline process started here), "audit-off" (a second custos dev with --audit=false: the audit trail's cost), "off", or the host:port of a running one (any server of the same API)`)
	fl.StringVar(&f.baseCert, "baseline-cert", "", "baseline server certificate (default: server.pem beside --ca)")
	fl.StringVar(&f.baseKey, "baseline-key", "", "baseline server key (default: server-key.pem beside --ca)")
	fl.StringVar(&f.baseCA, "baseline-client-ca", "", "CA that verifies clients of the baseline (default: --ca)")
	fl.IntVar(&f.baseGC, "baseline-gc-percent", config.DefaultGCPercent, "the baseline's Go GC target: set it to the server's gc_percent")
	fl.IntVar(&f.serverPID, "server-pid", 0, "PID of the Custos server, to report its CPU time per call")
	fl.StringVar(&f.serverMetrics, "server-metrics", "", "the server's /metrics URL, to report its CPU time and heap allocations per call")
	fl.BoolVar(&f.spawnDev, "spawn-dev", false, "start a throwaway custos dev in its own process and load it")
	fl.BoolVar(&f.setup, "setup", true, "create tenant bench and its keys first")
	fl.BoolVar(&f.contention, "contention", false, "also measure --contention-op beside password hashing")
	fl.StringVar(&f.contentionOp, "contention-op", "encrypt@64", "the measured workload of --contention, op@concurrency")
	fl.StringVar(&f.contentionConc, "contention-background", "hash@4", "the background workload of --contention, op@concurrency")
	fl.StringVar(&f.passwordAlgorithm, "password-algorithm", "bcrypt", "hash and verify with a key of this algorithm (default parameters): bcrypt or argon2id")
	fl.StringVarP(&f.output, "output", "o", "text", "text or json")
	fl.IntVar(&f.tenants, "tenants", 0, "encrypt only: spread calls over this many seeded tenants (custos bench seed)")
	fl.StringVar(&f.tenantPrefix, "tenant-prefix", "s", "the seeded tenants' id prefix")
	cmd.AddCommand(newBenchBaselineCmd(), newBenchSeedCmd(), newBenchSoakCmd())
	return cmd
}

// newBenchSeedCmd bulk-creates tenants for sizing runs.
func newBenchSeedCmd() *cobra.Command {
	var path, prefix string
	var n, workers int
	cmd := &cobra.Command{
		Use:   "seed --config FILE --tenants N",
		Short: "Create N tenants with one ENCRYPT key each, directly in the configured storage",
		Long: `custos bench seed creates tenants PREFIX0000000 … each with an ENCRYPT key
"enc", through the keystore on the storage and root of the config file (no
server needed, as for custos root rewrap), for sizing runs such as
custos bench --tenants. Existing tenants are kept; an interrupted seed can be
run again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if n < 1 {
				return usageErr(cmd, errors.New("--tenants must be at least 1"))
			}
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			ks, closeKS, err := custos.OpenKeystore(cmd.Context(), cfg, custos.NewLogger(cmd.ErrOrStderr(), cfg.Log.Level))
			if err != nil {
				return err
			}
			defer closeKS()
			start := time.Now()
			err = bench.Seed(cmd.Context(), ks, prefix, n, workers, func(done int) {
				fmt.Fprintf(cmd.ErrOrStderr(), "%d tenants (%.0f/s)\n", done, float64(done)/time.Since(start).Seconds())
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d tenants with key enc in %s\n", n, time.Since(start).Round(time.Second))
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "config", "custos.yaml", "configuration file (storage and root)")
	cmd.Flags().StringVar(&prefix, "prefix", "s", "tenant id prefix")
	cmd.Flags().IntVar(&n, "tenants", 0, "how many tenants")
	cmd.Flags().IntVar(&workers, "workers", 16, "tenants created at once")
	return cmd
}

func opNames() string {
	names := make([]string, len(bench.Ops))
	for i, o := range bench.Ops {
		names[i] = string(o)
	}
	return strings.Join(names, ", ")
}

// newBenchBaselineCmd is the baseline server process that `custos bench`
// starts; it is hidden (users run `custos bench`). It serves until its
// standard input closes or it is signalled.
func newBenchBaselineCmd() *cobra.Command {
	var listen, metricsListen, cert, key, ca string
	var gcPercent int
	cmd := &cobra.Command{
		Use:    "baseline",
		Short:  "Serve the bench baseline (started by custos bench)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Getenv("GOGC") == "" {
				// The GC target custos serve runs with, so that the ratio
				// compares the work, not the collectors' settings.
				debug.SetGCPercent(gcPercent)
			}
			tlsConf, err := server.TLSConfig(cert, key, ca)
			if err != nil {
				return err
			}
			lis, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			go func() { _, _ = io.Copy(io.Discard, cmd.InOrStdin()); cancel() }()
			if metricsListen != "" {
				mlis, err := net.Listen("tcp", metricsListen)
				if err != nil {
					return err
				}
				go bench.ServeMetrics(ctx, mlis)
				fmt.Fprintf(cmd.OutOrStdout(), "baseline metrics on %s\n", mlis.Addr())
			}
			fmt.Fprintf(cmd.OutOrStdout(), "baseline listening on %s\n", lis.Addr())
			return bench.ServeBaseline(ctx, lis, tlsConf, server.DefaultMaxMessageBytes)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "listen address")
	cmd.Flags().StringVar(&metricsListen, "metrics-listen", "", "also serve the process's Go metrics (/metrics) and, unauthenticated, Go's profiles (/debug/pprof/) on this address; keep it on loopback")
	cmd.Flags().StringVar(&cert, "cert", "", "server certificate")
	cmd.Flags().StringVar(&key, "key", "", "server key")
	cmd.Flags().StringVar(&ca, "client-ca", "", "CA bundle that verifies clients")
	cmd.Flags().IntVar(&gcPercent, "gc-percent", config.DefaultGCPercent, "Go GC target (as the server's gc_percent)")
	return cmd
}

func runBench(cmd *cobra.Command, f *benchFlags) error {
	ctx := cmd.Context()
	base := bench.Workload{BatchSize: f.batch, PayloadBytes: f.payload, Warmup: f.warmup, Duration: f.duration, Tenants: f.tenants, TenantPrefix: f.tenantPrefix}
	switch f.passwordAlgorithm {
	case "bcrypt":
	case "argon2id":
		base.Keys = bench.Argon2idKeys
	default:
		return usageErr(cmd, fmt.Errorf("--password-algorithm %q: want bcrypt or argon2id", f.passwordAlgorithm))
	}
	var workloads []bench.Workload
	ops, err := splitOps(f.ops)
	if err != nil {
		return usageErr(cmd, err)
	}
	concs, err := splitInts(f.concurrency)
	if err != nil {
		return usageErr(cmd, fmt.Errorf("--concurrency: %w", err))
	}
	for _, op := range ops {
		for _, c := range concs {
			w := base
			w.Op, w.Concurrency = op, c
			workloads = append(workloads, w)
		}
	}
	if f.output != "text" && f.output != "json" {
		return usageErr(cmd, errors.New("--output: want text or json"))
	}
	switch {
	case f.duration <= 0:
		return usageErr(cmd, fmt.Errorf("--duration %v: want a positive duration", f.duration))
	case f.warmup < 0:
		return usageErr(cmd, fmt.Errorf("--warmup %v: want zero or more", f.warmup))
	case f.rounds < 1:
		return usageErr(cmd, fmt.Errorf("--rounds %d: want at least 1", f.rounds))
	case f.batch < 1 || f.batch > 10000:
		return usageErr(cmd, fmt.Errorf("--batch %d: want 1 to 10000 (the API's limit)", f.batch))
	case f.payload < 1 || f.payload > 1<<20:
		return usageErr(cmd, fmt.Errorf("--payload %d: want 1 to 1048576 bytes (the API's limit)", f.payload))
	case f.baseline == "audit-off" && !f.spawnDev:
		// The trail's cost is the same server without it: a throwaway
		// custos dev with and without, not any server against one.
		return usageErr(cmd, errors.New("--baseline audit-off needs --spawn-dev (it compares custos dev with the trail against custos dev without)"))
	}
	// The contention workloads too, before minutes of measuring.
	var contentionOp, contentionBg bench.Workload
	if f.contention {
		if contentionOp, err = parseWorkload(f.contentionOp, base); err != nil {
			return usageErr(cmd, fmt.Errorf("--contention-op: %w", err))
		}
		if contentionBg, err = parseWorkload(f.contentionConc, base); err != nil {
			return usageErr(cmd, fmt.Errorf("--contention-background: %w", err))
		}
	}
	progress := cmd.ErrOrStderr()

	var cpu bench.CPUReader
	var allocs bench.AllocReader
	switch {
	case f.serverPID > 0:
		cpu = bench.ProcCPU(f.serverPID)
	case f.serverMetrics != "":
		cpu = bench.Metrics(f.serverMetrics)
	}
	if f.serverMetrics != "" {
		allocs = bench.Metrics(f.serverMetrics)
	}
	f.applyDevDir(cmd)
	if f.spawnDev {
		dev, err := spawnDev(ctx)
		if err != nil {
			return err
		}
		defer dev.stop()
		f.addr = dev.addr
		f.ca, f.cert, f.key = dev.clientFiles()
		cpu, allocs = bench.ProcCPU(dev.cmd.Process.Pid), dev.allocs()
		fmt.Fprintf(progress, "custos dev (pid %d) on %s, ops listener (/metrics) on %s\n", dev.cmd.Process.Pid, f.addr, dev.ops)
	}
	clientCreds, err := clientCredentials(f.ca, f.cert, f.key)
	if err != nil {
		return err
	}
	custosConn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(clientCreds))
	if err != nil {
		return err
	}
	defer custosConn.Close()
	if f.setup {
		if err := setupBench(ctx, custosConn); err != nil {
			return err
		}
	}
	self := bench.ProcCPU(os.Getpid())
	custos := bench.Target{Name: "custos", Conn: custosConn, CPU: cpu, Allocs: allocs, Client: self}

	var baseline *bench.Target
	switch f.baseline {
	case "off":
	case "spawn":
		dir := filepath.Dir(f.ca)
		certF, keyF, caF := orDefault(f.baseCert, filepath.Join(dir, "server.pem")), orDefault(f.baseKey, filepath.Join(dir, "server-key.pem")), orDefault(f.baseCA, f.ca)
		child, ms, err := startChildAll(ctx, []string{"bench", "baseline", "--cert", certF, "--key", keyF, "--client-ca", caF, "--gc-percent", strconv.Itoa(f.baseGC), "--metrics-listen", "127.0.0.1:0"},
			"", regexp.MustCompile(`baseline listening on (\S+)`), regexp.MustCompile(`baseline metrics on (\S+)`))
		if err != nil {
			return fmt.Errorf("spawn the baseline: %w", err)
		}
		defer child.stop()
		addr := ms[0][1]
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(clientCreds))
		if err != nil {
			return err
		}
		defer conn.Close()
		baseline = &bench.Target{Name: "baseline", Conn: conn, CPU: bench.ProcCPU(child.cmd.Process.Pid), Allocs: bench.Metrics("http://" + ms[1][1] + "/metrics"), Client: self}
		fmt.Fprintf(progress, "baseline (pid %d) on %s, metrics and profiles on %s\n", child.cmd.Process.Pid, addr, ms[1][1])
	case "audit-off":
		dev, err := spawnDev(ctx, "--audit=false")
		if err != nil {
			return err
		}
		defer dev.stop()
		ca, cert, key := dev.clientFiles()
		conn, err := dialBench(dev.addr, ca, cert, key)
		if err != nil {
			return err
		}
		defer conn.Close()
		if err := setupBench(ctx, conn); err != nil {
			return err
		}
		baseline = &bench.Target{Name: "audit-off", Conn: conn, CPU: bench.ProcCPU(dev.cmd.Process.Pid), Allocs: dev.allocs(), Client: self, Custos: true}
		fmt.Fprintf(progress, "baseline: custos dev --audit=false (pid %d) on %s, ops listener (/metrics) on %s\n", dev.cmd.Process.Pid, dev.addr, dev.ops)
	default:
		conn, err := grpc.NewClient(f.baseline, grpc.WithTransportCredentials(clientCreds))
		if err != nil {
			return err
		}
		defer conn.Close()
		isCustos := false
		if f.setup {
			// A Custos server as the baseline (an A/B of two builds)
			// needs the bench tenant too; an echo has no KeyService.
			err := setupBench(ctx, conn)
			if err != nil && status.Code(err) != codes.Unimplemented {
				return fmt.Errorf("--baseline %s: %w", f.baseline, err)
			}
			isCustos = err == nil
		}
		baseline = &bench.Target{Name: "baseline", Conn: conn, Client: self, Custos: isCustos}
	}

	rep := bench.NewReport(f.rounds, base)
	rep.Settings.Baseline = f.baseline
	if f.baseline == "spawn" {
		rep.Settings.BaselineGCPercent = f.baseGC
	}
	for _, w := range workloads {
		fmt.Fprintf(progress, "running %s@%d %d×…\n", w.Op, w.Concurrency, f.rounds)
		c, err := bench.Compare(ctx, custos, baseline, w, f.rounds)
		if err != nil {
			return err
		}
		rep.Comparisons = append(rep.Comparisons, c)
	}
	if f.contention {
		contentionBg.Warmup = 2 * time.Second // let the background saturate the hashing pool first
		fmt.Fprintf(progress, "running %s beside %s %d×…\n", f.contentionOp, f.contentionConc, f.rounds)
		c, err := bench.Contend(ctx, custos, contentionOp, contentionBg, f.rounds)
		if err != nil {
			return err
		}
		rep.Contention = append(rep.Contention, c)
	}
	if f.output == "json" {
		return rep.WriteJSON(cmd.OutOrStdout())
	}
	return rep.WriteText(cmd.OutOrStdout())
}

func orDefault(v, def string) string {
	if v != "" {
		return v
	}
	return def
}

// usageErr marks a bad flag value; main exits with the usage code.
func usageErr(cmd *cobra.Command, err error) error {
	return usageError{fmt.Errorf("%s: %w", cmd.CommandPath(), err)}
}

func splitOps(s string) ([]bench.Op, error) {
	var out []bench.Op
	for _, p := range strings.Split(s, ",") {
		op, err := bench.ParseOp(strings.TrimSpace(p))
		if err != nil {
			return nil, err
		}
		out = append(out, op)
	}
	return out, nil
}

// maxConcurrency bounds the calls in flight a load may ask for (each is a
// goroutine of this process).
const maxConcurrency = 10000

func splitInts(s string) ([]int, error) {
	var out []int
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 1 || n > maxConcurrency {
			return nil, fmt.Errorf("%q is not a whole number from 1 to %d", p, maxConcurrency)
		}
		out = append(out, n)
	}
	return out, nil
}

// parseWorkload reads op@concurrency.
func parseWorkload(s string, base bench.Workload) (bench.Workload, error) {
	opS, cS, ok := strings.Cut(s, "@")
	if !ok {
		return base, fmt.Errorf("%q: want op@concurrency, e.g. encrypt@64", s)
	}
	op, err := bench.ParseOp(opS)
	if err != nil {
		return base, err
	}
	c, err := splitInts(cS)
	if err != nil || len(c) != 1 {
		return base, fmt.Errorf("%q: want op@concurrency, e.g. encrypt@64", s)
	}
	base.Op, base.Concurrency = op, c[0]
	return base, nil
}

// clientCredentials are mutual-TLS credentials from the client files,
// through the same loader as the client library (tlssource): the server is
// verified against the CA bundle and the host it is dialled by.
func clientCredentials(caFile, certFile, keyFile string) (credentials.TransportCredentials, error) {
	src, err := tlssource.Load(certFile, keyFile, caFile, tlssource.Options{Name: "client TLS"})
	if err != nil {
		return nil, err
	}
	return tlssource.ClientCredentials(src), nil
}

// dialBench connects to a server at addr with the client files given.
func dialBench(addr, caFile, certFile, keyFile string) (*grpc.ClientConn, error) {
	creds, err := clientCredentials(caFile, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
}

// setupBench creates the bench tenant and keys (bench.Setup), within 30 s.
func setupBench(ctx context.Context, conn grpc.ClientConnInterface) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return bench.Setup(ctx, conn)
}

// child is a process this binary started.
type child struct {
	cmd   *exec.Cmd
	stdin io.Closer
	done  chan struct{}
}

// childStartTimeout bounds how long a child may take to say where it listens.
const childStartTimeout = 60 * time.Second

// devChild is a throwaway custos dev in a process of its own, in a
// temporary directory that stop removes.
type devChild struct {
	*child
	dir  string // the dev directory: PKI, root key, store
	addr string // gRPC address
	ops  string // ops listener address (/metrics)
	tmp  string
}

// spawnDev starts `custos dev` with extra flags, its gRPC and ops
// listeners on free loopback ports.
func spawnDev(ctx context.Context, extra ...string) (*devChild, error) {
	tmp, err := os.MkdirTemp("", "custos-dev-")
	if err != nil {
		return nil, err
	}
	d := &devChild{dir: filepath.Join(tmp, "dev"), tmp: tmp}
	args := append([]string{"dev", "--dir", d.dir, "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"}, extra...)
	c, ms, err := startChildAll(ctx, args, filepath.Join(tmp, "dev.log"),
		regexp.MustCompile(`listening on (\S+)`), regexp.MustCompile(`Ops listener .* on (\S+)`))
	if err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("spawn custos %s: %w", strings.Join(args, " "), err)
	}
	d.child, d.addr, d.ops = c, ms[0][1], ms[1][1]
	return d, nil
}

// allocs reads the server's allocation count from its ops listener.
func (d *devChild) allocs() bench.AllocReader {
	return bench.Metrics("http://" + d.ops + "/metrics")
}

// clientFiles are the dev client's CA, certificate and key files.
func (d *devChild) clientFiles() (ca, cert, key string) {
	return filepath.Join(d.dir, "ca.pem"), filepath.Join(d.dir, "client.pem"), filepath.Join(d.dir, "client-key.pem")
}

// stop stops the server and removes its directory.
func (d *devChild) stop() {
	d.child.stop()
	os.RemoveAll(d.tmp)
}

// startChild runs this binary with args, waits (at most childStartTimeout)
// for a line of its standard output matching ready, and returns the match.
// Its standard error goes to logFile, or is discarded. stop closes its
// standard input (the baseline exits on that), then signals, then kills.
func startChild(ctx context.Context, args []string, logFile string, ready *regexp.Regexp) (*child, []string, error) {
	c, ms, err := startChildAll(ctx, args, logFile, ready)
	if err != nil {
		return nil, nil, err
	}
	return c, ms[0], nil
}

// startChildAll is startChild waiting for a line matching each of readies,
// in any order; it returns their matches in the same order.
func startChildAll(ctx context.Context, args []string, logFile string, readies ...*regexp.Regexp) (*child, [][]string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(exe, args...)
	cmd.SysProcAttr = childProcAttr() // the child dies with this process
	cmd.Stderr = io.Discard
	if logFile != "" {
		lf, err := os.Create(logFile)
		if err != nil {
			return nil, nil, err
		}
		defer lf.Close()
		cmd.Stderr = lf
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	c := &child{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	found := make(chan [][]string, 1)
	go func() {
		ms, left := make([][]string, len(readies)), len(readies)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			for i, re := range readies {
				if m := re.FindStringSubmatch(sc.Text()); m != nil && ms[i] == nil {
					ms[i] = m
					if left--; left == 0 {
						found <- ms
					}
				}
			}
		}
		_ = cmd.Wait()
		close(c.done)
	}()
	t := time.NewTimer(childStartTimeout)
	defer t.Stop()
	select {
	case m := <-found:
		return c, m, nil
	case <-c.done:
		return nil, nil, fmt.Errorf("%s exited before it listened (%v)", strings.Join(args[:1], " "), cmd.ProcessState)
	case <-t.C:
		c.stop()
		return nil, nil, fmt.Errorf("%s did not listen within %v", strings.Join(args[:1], " "), childStartTimeout)
	case <-ctx.Done():
		c.stop()
		return nil, nil, ctx.Err()
	}
}

func (c *child) stop() {
	c.stdin.Close()
	_ = c.cmd.Process.Signal(os.Interrupt)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}
