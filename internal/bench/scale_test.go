//go:build scale

package bench_test

// The scale measurement (make bench-scale), not part of make test. With
// CUSTOS_SCALE_SERVER_GOGC set, the servers run with that GOGC. A
// throwaway PostgreSQL (internal/pgtest: fsync off, fit for measurements of
// CPU, not of durability) seeded with CUSTOS_SCALE_TENANTS tenants (default
// 1,000,000) of one key each, and again with 1,000, each served by a
// custos serve process built from this tree. For each it reports the seed
// rate, the first full sweep's duration, the server's idle CPU, how soon a
// rotation that falls due is done, Encrypt at 64 in flight over a hot set of
// 1,000 tenants, and the first-call latency of cold tenants.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/custos-kms/custos/internal/bench"
	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/custos"
	"github.com/custos-kms/custos/internal/pgtest"
	"github.com/custos-kms/custos/internal/pki"
	"github.com/custos-kms/custos/internal/testkit"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/root/local"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

type scaleResult struct {
	Tenants          int       `json:"tenants"`
	SeedPerSec       float64   `json:"seed_tenants_per_sec"`
	SweepSeconds     float64   `json:"first_sweep_seconds"`
	IdleCPUmsPerSec  float64   `json:"idle_cpu_ms_per_sec"`
	DueRotationSec   float64   `json:"due_rotation_done_after_sec"`
	SchedulerSeconds float64   `json:"scheduler_interval_sec"`
	HotP99us         float64   `json:"hot_encrypt64_p99_us"`
	HotP99Ratio      float64   `json:"hot_p99_ratio_to_1000,omitempty"`
	HotP99Ratios     []float64 `json:"hot_p99_ratios,omitempty"`
	HotPerSec        float64   `json:"hot_encrypt64_per_sec"`
	ColdP50us        float64   `json:"cold_first_call_p50_us,omitempty"`
	ColdP99us        float64   `json:"cold_first_call_p99_us,omitempty"`
}

func TestScale(t *testing.T) {
	n := 1_000_000
	if v := os.Getenv("CUSTOS_SCALE_TENANTS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(t.TempDir(), "custos")
	build := testkit.GoCommand(context.Background(), "build", "-o", bin, "github.com/custos-kms/custos/cmd/custos")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// Both deployments run side by side; the hot-set rounds alternate
	// between them, so that both see the same machine, and which runs
	// first alternates too: the work a server goes on doing after its run
	// (audit integration) falls into the next run, which a fixed order
	// would always charge to the same side.
	small, smallConn := startScale(t, bin, 1000)
	big, bigConn := startScale(t, bin, n)
	ctx := context.Background()
	hot := bench.Workload{Op: bench.OpEncrypt, Concurrency: 64, PayloadBytes: 64, Warmup: 2 * time.Second, Duration: 5 * time.Second, Tenants: 1000, TenantPrefix: "s"}
	var ratios []float64
	var sp99, bp99 []float64
	run := func(conn *grpc.ClientConn, what string) bench.Result {
		r, err := bench.Run(ctx, bench.Target{Name: "custos", Conn: conn}, hot)
		if err != nil || len(r.Errors) > 0 {
			t.Fatalf("hot set on %s: %v %v", what, err, r.Errors)
		}
		return r
	}
	for round := range 5 {
		var rs, rb bench.Result
		if round%2 == 0 {
			rs, rb = run(smallConn, "1,000"), run(bigConn, strconv.Itoa(n))
		} else {
			rb, rs = run(bigConn, strconv.Itoa(n)), run(smallConn, "1,000")
		}
		sp99, bp99 = append(sp99, rs.P99), append(bp99, rb.P99)
		ratios = append(ratios, rb.P99/rs.P99)
		small.HotPerSec, big.HotPerSec = rs.OpsPerSec, rb.OpsPerSec
	}
	small.HotP99us, big.HotP99us = median(sp99), median(bp99)
	big.HotP99Ratio, big.HotP99Ratios = median(ratios), ratios
	results := []scaleResult{small, big}
	out, _ := json.MarshalIndent(results, "", "  ")
	if p := os.Getenv("CUSTOS_SCALE_OUT"); p != "" {
		if err := os.WriteFile(p, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Printf("%s\n", out)
	fmt.Printf("hot-set Encrypt@64 p99 with %d tenants / with %d: median %.2f× of %v\n", big.Tenants, small.Tenants, big.HotP99Ratio, ratios)
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	slices.Sort(s)
	return s[len(s)/2]
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startScale seeds a deployment of n tenants, serves it, and measures its
// sweep, idle CPU, a due rotation and (for large n) cold first calls; it
// returns a connection for the hot-set rounds.
func startScale(t *testing.T, bin string, n int) (scaleResult, *grpc.ClientConn) {
	ctx := context.Background()
	res := scaleResult{Tenants: n, SchedulerSeconds: 5}
	pg := pgtest.StartDedicated(t)
	dir := t.TempDir()
	files, err := pki.WriteDevFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := local.Create(filepath.Join(dir, "root.key")); err != nil {
		t.Fatal(err)
	}
	policy := "rules:\n  - identities: [\"" + pki.DevClientID + "\"]\n    tenants: [\"*\"]\n    permissions: [\"*\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, ops := freePort(t), freePort(t)
	conf := fmt.Sprintf(`listen: %s
tls: {cert_file: server.pem, key_file: server-key.pem, client_ca_file: ca.pem}
policy_file: policy.yaml
root: {type: local, local: {key_file: root.key}}
storage: {type: postgres, postgres: {url: %q, max_conns: 16}}
ops: {listen: %s}
scheduler: {interval: 5s}
audit: {spool: %q}
`, addr, pg.NewDatabase(t), ops, filepath.Join(dir, "audit.spool"))
	confPath := filepath.Join(dir, "custos.yaml")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(confPath)
	if err != nil {
		t.Fatal(err)
	}

	// Seed, in this process, straight into the storage.
	ks, closeKS, err := custos.OpenKeystore(ctx, cfg, custos.NewLogger(os.Stderr, "warn"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := bench.Seed(ctx, ks, "s", n, 16, func(done int) {
		if done%100000 == 0 {
			t.Logf("seeded %d (%.0f/s)", done, float64(done)/time.Since(start).Seconds())
		}
	}); err != nil {
		t.Fatal(err)
	}
	res.SeedPerSec = float64(n) / time.Since(start).Seconds()
	closeKS()

	// Serve it from a process of its own.
	logPath := filepath.Join(dir, "server.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	srv := exec.Command(bin, "serve", "--config", confPath)
	srv.Stderr, srv.Stdout = logf, logf
	if g := os.Getenv("CUSTOS_SCALE_SERVER_GOGC"); g != "" {
		// The servers' garbage collector only, not the load generator's.
		srv.Env = append(os.Environ(), "GOGC="+g)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Signal(os.Interrupt); _ = srv.Wait() })
	sweep := waitForLog(t, logPath, "full sweep finished", 30*time.Minute)
	res.SweepSeconds = sweep["seconds"].(float64)

	// Idle CPU after the sweep, over 30 s.
	cpu := bench.ProcCPU(srv.Process.Pid)
	c0, err := cpu.CPU()
	if err != nil {
		t.Fatalf("read the server's CPU: %v", err) // 0 ms/s would pass the target
	}
	time.Sleep(30 * time.Second)
	c1, err := cpu.CPU()
	if err != nil {
		t.Fatalf("read the server's CPU: %v", err)
	}
	res.IdleCPUmsPerSec = float64((c1 - c0).Milliseconds()) / 30

	// A rotation that falls due now: a key created on a clock two hours
	// behind, with a one-hour period, so its next rotation is an hour ago.
	past, closePast, err := openKeystoreAt(ctx, cfg, time.Now().Add(-2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	due := keystore.KeyRef{Tenant: "due-now", Key: "k"}
	if _, err := past.CreateTenant(ctx, due.Tenant); err != nil {
		t.Fatal(err)
	}
	if _, err := past.CreateKey(ctx, due, keystore.KeySpec{Purpose: keystore.PurposeEncrypt, RotationPeriod: time.Hour}); err != nil {
		t.Fatal(err)
	}
	closePast()
	conn := dialDev(t, addr, files)
	kc := custosv1.NewKeyServiceClient(conn)
	created := time.Now()
	for {
		k, err := kc.GetKey(ctx, &custosv1.GetKeyRequest{Name: due.String()})
		if err == nil && k.GetKey().GetPrimaryVersion() == 2 {
			break
		}
		if time.Since(created) > 5*time.Minute {
			t.Fatalf("the due rotation was not done within 5 minutes (%v)", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	res.DueRotationSec = time.Since(created).Seconds()

	// Cold tenants: one call at a time, each to a random tenant among all,
	// nearly all of them not cached (10,000 cached of n).
	if n > 100000 {
		cold := bench.Workload{Op: bench.OpEncrypt, Concurrency: 1, PayloadBytes: 64, Duration: 10 * time.Second, Tenants: n, TenantPrefix: "s"}
		r, err := bench.Run(ctx, bench.Target{Name: "custos", Conn: conn}, cold)
		if err != nil {
			t.Fatal(err)
		}
		res.ColdP50us, res.ColdP99us = r.P50, r.P99
	}
	return res, conn
}

func openKeystoreAt(ctx context.Context, cfg *config.Config, now time.Time) (*keystore.Service, func(), error) {
	rt, err := custos.OpenRoot(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, nil, err
	}
	store, err := custos.OpenStorage(ctx, cfg, custos.NewLogger(os.Stderr, "warn"))
	if err != nil {
		return nil, nil, err
	}
	kc := custos.KeystoreConfig(cfg, store, rt, custos.NewLogger(os.Stderr, "warn"))
	offset := time.Until(now)
	kc.Now = func() time.Time { return time.Now().Add(offset) }
	ks, err := keystore.New(kc)
	if err != nil {
		return nil, nil, err
	}
	return ks, func() { store.Close(); custos.CloseRoot(rt) }, nil
}

func dialDev(t *testing.T, addr string, files pki.DevFiles) *grpc.ClientConn {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(files.ClientCert, files.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(files.CA)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, Certificates: []tls.Certificate{pair}})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// waitForLog waits for a JSON log line whose msg contains what and returns it.
func waitForLog(t *testing.T, path, what string, timeout time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		f, err := os.Open(path)
		if err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				var m map[string]any
				if json.Unmarshal(sc.Bytes(), &m) == nil {
					if msg, _ := m["msg"].(string); strings.Contains(msg, what) {
						f.Close()
						return m
					}
				}
			}
			f.Close()
		}
		time.Sleep(500 * time.Millisecond)
	}
	b, _ := os.ReadFile(path)
	t.Fatalf("no %q in the server log within %v:\n%s", what, timeout, b)
	return nil
}
