//go:build scale

package bench_test

// The audit trail's costs (make bench-audit), not part of make test:
//   - Encrypt with the audit trail on over off, out of process, on
//     PostgreSQL (fsync on): two custos serve processes on one database,
//     alternating rounds (the bbolt figure comes from custos bench
//     --baseline audit-off, see docs/performance.md);
//   - storage per event and audit verify's time for CUSTOS_AUDIT_EVENTS
//     events (default 1,000,000), on bbolt and on PostgreSQL.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/custos-kms/custos/internal/bench"
	"github.com/custos-kms/custos/internal/pgtest"
	"github.com/custos-kms/custos/internal/pki"
	"github.com/custos-kms/custos/internal/testkit"
	"github.com/custos-kms/custos/keystore/audit"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/bbolt"
	"github.com/custos-kms/custos/keystore/storage/postgres"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

func TestAuditOverheadOnPostgreSQL(t *testing.T) {
	t.Setenv("CUSTOS_PGTEST_DURABLE", "1")
	ctx := context.Background()
	bin := filepath.Join(t.TempDir(), "custos")
	if out, err := testkit.GoCommand(context.Background(), "build", "-o", bin, "github.com/custos-kms/custos/cmd/custos").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	pg := pgtest.StartDedicated(t)
	url := pg.NewDatabase(t)
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
	start := func(name, audit string) (addr string, pid int) {
		addr = freePort(t)
		conf := fmt.Sprintf(`listen: %s
tls: {cert_file: server.pem, key_file: server-key.pem, client_ca_file: ca.pem}
policy_file: policy.yaml
root: {type: local, local: {key_file: root.key}}
storage: {type: postgres, postgres: {url: %q, max_conns: 16}}
ops: {listen: "off"}
audit: %s
`, addr, url, audit)
		path := filepath.Join(dir, name+".yaml")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { logf.Close() })
		srv := exec.Command(bin, "serve", "--config", path)
		srv.Stderr, srv.Stdout = logf, logf
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv.Process.Signal(os.Interrupt); _ = srv.Wait() })
		waitForLog(t, filepath.Join(dir, name+".log"), "custos serving", time.Minute)
		return addr, srv.Process.Pid
	}
	onAddr, onPID := start("audit-on", fmt.Sprintf("{spool: %q}", filepath.Join(dir, "spool")))
	offAddr, offPID := start("audit-off", "{disabled: true}")
	on, off := dialDev(t, onAddr, files), dialDev(t, offAddr, files)
	if err := bench.Setup(ctx, on); err != nil {
		t.Fatal(err)
	}
	for _, conc := range []int{64, 1} {
		w := bench.Workload{Op: bench.OpEncrypt, Concurrency: conc, PayloadBytes: 64, Warmup: time.Second, Duration: 3 * time.Second}
		c, err := bench.Compare(ctx, bench.Target{Name: "audit-on", Conn: on, CPU: bench.ProcCPU(onPID)}, &bench.Target{Name: "audit-off", Conn: off, CPU: bench.ProcCPU(offPID)}, w, 5)
		if err != nil {
			t.Fatal(err)
		}
		medOn, medOff := bench.MedianOf(c.Custos), bench.MedianOf(c.Baseline)
		t.Logf("PostgreSQL (fsync on), encrypt@%d: audit on/off throughput %.2f× (%.2f–%.2f), p50 %.2f× (on %.0f µs, off %.0f µs, medians of the rounds; %.0f vs %.0f calls/s)",
			conc, c.Throughput.Median, c.Throughput.Min, c.Throughput.Max, c.P50.Median, medOn.P50, medOff.P50, medOn.ItemsPerSec, medOff.ItemsPerSec)
	}
}

func auditEvents() int {
	if n, err := strconv.Atoi(os.Getenv("CUSTOS_AUDIT_EVENTS")); err == nil && n > 0 {
		return n
	}
	return 1_000_000
}

// fillLog queues n typical events (as a busy server would: batches of
// 4096) and integrates them, then verifies the log.
func fillLog(t *testing.T, store storage.Store, n int) (integrate, verify time.Duration) {
	ctx := context.Background()
	r, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.Open(ctx, audit.Config{Store: store, Root: r})
	if err != nil {
		t.Fatal(err)
	}
	w, err := audit.NewWriter(audit.WriterConfig{Store: store, SpoolPath: filepath.Join(t.TempDir(), "spool"), JournalFirst: true, CommitDelay: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	start := time.Now()
	id := make([]byte, 16)
	now := time.Now()
	for i := 0; i < n; i++ {
		rand.Read(id)
		ev := &custosv1.AuditEvent{
			Time: timestamppb.New(now.Add(time.Duration(i) * time.Microsecond)), RequestId: hex.EncodeToString(id),
			Identity: "spiffe://example.org/ns/payments/sa/billing", Peer: "10.1.2.3:51234", Tenant: fmt.Sprintf("t%03d", i%100), Key: "pii",
			KeyVersions: []uint32{3}, Operation: "encrypt", Method: "/custos.v1.CryptoService/Encrypt", Code: "OK", Duration: durationpb.New(183 * time.Microsecond),
		}
		// Record in parallel groups: the writer group-commits them.
		if err := recordAsync(w, ev, i == n-1); err != nil {
			t.Fatal(err)
		}
		if i%200_000 == 199_999 {
			if err := w.ShipOnce(ctx); err != nil {
				t.Fatal(err)
			}
			if err := l.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			t.Logf("%d events in the log (%.0f/s)", i+1, float64(i+1)/time.Since(start).Seconds())
		}
	}
	if err := w.ShipOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	integrate = time.Since(start)
	v, err := audit.VerifierOf(ctx, store, r)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	rep, err := audit.Verify(ctx, store, v)
	if err != nil {
		t.Fatal(err)
	}
	verify = time.Since(start)
	if len(rep.Findings) != 0 || rep.Events != uint64(n) {
		t.Fatalf("verify: %d events, findings %v", rep.Events, rep.Findings)
	}
	return integrate, verify
}

// recordAsync records ev from one of 256 goroutines, so that group commit
// batches them; last waits for all.
var pending = make(chan struct{}, 256)
var errs = make(chan error, 1)

func recordAsync(w *audit.Writer, ev *custosv1.AuditEvent, last bool) error {
	pending <- struct{}{}
	go func() {
		if err := w.Record(ev); err != nil {
			select {
			case errs <- err:
			default:
			}
		}
		<-pending
	}()
	if last {
		for range cap(pending) {
			pending <- struct{}{}
		}
		for range cap(pending) {
			<-pending
		}
	}
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

func TestAuditStorageAndVerifyAtAMillionEvents(t *testing.T) {
	n := auditEvents()
	t.Run("bbolt", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "custos.db")
		s, err := bbolt.Open(path, bbolt.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		fi0, _ := os.Stat(path)
		integ, ver := fillLog(t, s, n)
		fi, _ := os.Stat(path)
		t.Logf("bbolt: %d events recorded and integrated in %v; file grew %d bytes: %.0f bytes/event; audit verify %v", n, integ.Round(time.Millisecond), fi.Size()-fi0.Size(), float64(fi.Size()-fi0.Size())/float64(n), ver.Round(time.Millisecond))
	})
	t.Run("postgres", func(t *testing.T) {
		ctx := context.Background()
		url := pgtest.Start(t).NewDatabase(t)
		s, err := postgres.Open(ctx, postgres.Config{URL: url})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		integ, ver := fillLog(t, s, n)
		size, err := postgres.TableBytes(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("postgres: %d events recorded and integrated in %v; custos_records %d bytes (with indexes and TOAST): %.0f bytes/event; audit verify %v", n, integ.Round(time.Millisecond), size, float64(size)/float64(n), ver.Round(time.Millisecond))
	})
}
