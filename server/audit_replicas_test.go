package server_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/pgtest"
	"github.com/custos-kms/custos/keystore/audit"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/storage/postgres"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server"
)

// acked collects the request ids of the calls a client saw succeed.
type acked struct {
	mu  sync.Mutex
	ids []string
}

func (a *acked) add(id string) { a.mu.Lock(); a.ids = append(a.ids, id); a.mu.Unlock() }
func (a *acked) all() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.ids...)
}

// encryptAcked encrypts once and, if the call succeeded, records its id.
func encryptAcked(ctx context.Context, c custosv1.CryptoServiceClient, name string, a *acked) error {
	var header metadata.MD
	_, err := c.Encrypt(ctx, &custosv1.EncryptRequest{Name: name, Plaintext: []byte("x")}, grpc.Header(&header))
	if err == nil {
		v := header.Get(server.RequestIDHeader)
		if len(v) != 1 {
			return errors.New("no request id")
		}
		a.add(v[0])
	}
	return err
}

// verifyStore opens the store at url and verifies the whole log.
func verifyStore(t *testing.T, url string, r root.Root) (*audit.Report, map[string]int) {
	t.Helper()
	ctx := testContext(t)
	s, err := postgres.Open(ctx, postgres.Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err := audit.VerifierOf(ctx, s, r)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(ctx, s, v)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	for after := ""; ; {
		recs, err := s.List(ctx, "audit/l/", after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			ev, err := audit.Unmarshal(r.Value)
			if err != nil {
				t.Fatal(err)
			}
			ids[ev.GetRequestId()]++
			after = r.Key
		}
		if len(recs) < 1000 {
			return rep, ids
		}
	}
}

// flushAll integrates everything queued, retrying while another replica's
// integrator races it.
func flushAll(t *testing.T, r *replica) {
	t.Helper()
	waitFor(t, 20*time.Second, "the log integrates everything queued", func() bool {
		err := r.rt.FlushAudit(testContext(t))
		return err == nil
	})
}

func TestTwoReplicasOnPostgreSQLWriteOneConsistentAuditLog(t *testing.T) {
	ctx := testContext(t)
	url := pgtest.Start(t).NewDatabase(t)
	p, rt := newPKI(t), sharedRoot(t)
	a, b := startReplica(t, p, url, rt), startReplica(t, p, url, rt)
	if _, err := a.c.keys.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: "acme"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/acme", KeyId: "pii", Key: &custosv1.Key{Purpose: custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT}}); err != nil {
		t.Fatal(err)
	}
	var ok acked
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for _, r := range []*replica{a, b} {
		for range 8 {
			wg.Go(func() {
				for range 60 {
					if err := encryptAcked(ctx, r.c.crypto, "tenants/acme/keys/pii", &ok); err != nil {
						errs <- err
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	flushAll(t, a)
	rep, ids := verifyStore(t, url, rt)
	if len(rep.Findings) != 0 {
		t.Fatalf("verify: %v", rep.Findings)
	}
	for _, id := range ok.all() {
		if ids[id] != 1 {
			t.Fatalf("acknowledged call %s has %d events, want 1", id, ids[id])
		}
	}
	if len(ok.all()) != 960 || rep.Size < 960 {
		t.Fatalf("%d calls acknowledged, checkpoint of %d events; want 960 and at least as many", len(ok.all()), rep.Size)
	}
}

func TestPostgreSQLOutageSpoolsEventsAndShipsThemWhenItReturns(t *testing.T) {
	ctx := testContext(t)
	pg := pgtest.StartDedicated(t)
	url := pg.NewDatabase(t)
	p, rt := newPKI(t), sharedRoot(t)
	spool := filepath.Join(t.TempDir(), "audit.spool")
	r := startReplicaWith(t, p, url, rt, func(c *config.Config) { c.Audit.Spool = spool })
	name := "tenants/acme/keys/pii"
	if _, err := r.c.keys.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: "acme"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/acme", KeyId: "pii", Key: &custosv1.Key{Purpose: custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT}}); err != nil {
		t.Fatal(err)
	}
	var ok acked
	if err := encryptAcked(ctx, r.c.crypto, name, &ok); err != nil { // warms the cache
		t.Fatal(err)
	}
	// Load on the cached tenant before, during and after the outage.
	stop := make(chan struct{})
	var failures []error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := encryptAcked(ctx, r.c.crypto, name, &ok); err != nil {
					mu.Lock()
					failures = append(failures, err)
					mu.Unlock()
				}
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	pg.Kill(t)
	time.Sleep(1500 * time.Millisecond)
	during := len(ok.all())
	pg.StartAgain(t)
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d calls on the cached tenant failed around the outage; first: %v", len(failures), failures[0])
	}
	t.Logf("%d calls acknowledged (%d by the end of the outage); %d batches spooled now", len(ok.all()), during, spooled(r))
	waitFor(t, 20*time.Second, "every spooled event is shipped", func() bool {
		return spooled(r) == 0
	})
	flushAll(t, r)
	rep, ids := verifyStore(t, url, rt)
	if len(rep.Findings) != 0 {
		t.Fatalf("verify: %v", rep.Findings)
	}
	for _, id := range ok.all() {
		if ids[id] != 1 {
			t.Fatalf("acknowledged call %s has %d events, want exactly 1", id, ids[id])
		}
	}
}

// metric reads one counter from a server's /metrics.
func metric(t *testing.T, opsAddr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + opsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("/metrics has no %s", name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestNoDurableAuditSinkFailsClosedOrOpenAsConfigured(t *testing.T) {
	ctx := testContext(t)
	pg := pgtest.StartDedicated(t)
	url := pg.NewDatabase(t)
	p, rt := newPKI(t), sharedRoot(t)
	closed := startReplicaWith(t, p, url, rt, func(c *config.Config) {
		c.Audit.Spool = filepath.Join(t.TempDir(), "spool")
		c.Ops.Listen = "127.0.0.1:0"
	})
	open := startReplicaWith(t, p, url, rt, func(c *config.Config) {
		c.Audit.Spool = filepath.Join(t.TempDir(), "spool")
		c.Audit.FailOpen = true
		c.Ops.Listen = "127.0.0.1:0"
	})
	name := "tenants/acme/keys/pii"
	if _, err := closed.c.keys.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: "acme"}); err != nil {
		t.Fatal(err)
	}
	if _, err := closed.c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/acme", KeyId: "pii", Key: &custosv1.Key{Purpose: custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT}}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*replica{closed, open} { // warm the caches
		if _, err := r.c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: name, Plaintext: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	batch := &custosv1.EncryptBatchRequest{Name: name, Items: []*custosv1.EncryptBatchRequest_Item{{Plaintext: []byte("a")}, {Plaintext: []byte("b")}}}
	if _, err := closed.c.crypto.EncryptBatch(ctx, batch); err != nil {
		t.Fatal(err)
	}
	const okItems = `custos_batch_items_total\{code="OK",grpc_method="EncryptBatch"\}`
	closedOps := closed.rt.OpsAddr().String()
	itemsBefore := metric(t, closedOps, okItems)
	opsAddr := open.rt.OpsAddr().String()
	before := metric(t, opsAddr, "custos_audit_dropped_total")
	pg.Kill(t)
	// The spools' disk is full: this process may not grow any file (the
	// PostgreSQL server is another process).
	restore := fileSizeLimit(t, 1)
	_, err := closed.c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: name, Plaintext: []byte("x")})
	st := wantCode(t, err, codes.Unavailable)
	if info := errorInfo(st); info == nil || info.GetReason() != custosv1.ReasonAuditUnavailable {
		t.Fatalf("fail-closed refusal carries %v, want reason %s", info, custosv1.ReasonAuditUnavailable)
	}
	_, err = closed.c.crypto.EncryptBatch(ctx, batch)
	wantCode(t, err, codes.Unavailable)
	if after := metric(t, closedOps, okItems); after != itemsBefore {
		t.Fatalf("a batch refused for want of its audit event counted its items as OK: %v → %v", itemsBefore, after)
	}
	if _, err := open.c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: name, Plaintext: []byte("x")}); err != nil {
		t.Fatalf("fail-open encrypt with no durable sink: %v", err)
	}
	if after := metric(t, opsAddr, "custos_audit_dropped_total"); after <= before {
		t.Fatalf("custos_audit_dropped_total %v → %v, want it to rise", before, after)
	}
	restore()
	pg.StartAgain(t) // a child process would inherit the limit
}

// fileSizeLimit makes writes of this process past limit bytes of any file
// fail with EFBIG (as on a full disk) until restore is called or the test
// ends.
func fileSizeLimit(t *testing.T, limit uint64) (restore func()) {
	t.Helper()
	signal.Ignore(syscall.SIGXFSZ)
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: limit, Max: old.Max}); err != nil {
		t.Fatal(err)
	}
	restore = sync.OnceFunc(func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
			t.Error(err)
		}
		signal.Reset(syscall.SIGXFSZ)
	})
	t.Cleanup(restore)
	return restore
}

// spooled is how many batches wait in a replica's spool.
func spooled(r *replica) int {
	n, _ := r.rt.AuditWriter().Spooled()
	return n
}

// The metrics operators need are served: the key cache, the root's calls,
// batch item outcomes.
func TestOperatorMetrics(t *testing.T) {
	ctx := testContext(t)
	url := pgtest.Start(t).NewDatabase(t)
	p, rt := newPKI(t), sharedRoot(t)
	r := startReplicaWith(t, p, url, rt, func(c *config.Config) { c.Ops.Listen = "127.0.0.1:0" })
	if _, err := r.c.keys.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: "acme"}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/acme", KeyId: "pii", Key: &custosv1.Key{Purpose: custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT}}); err != nil {
		t.Fatal(err)
	}
	name := "tenants/acme/keys/pii"
	for range 3 {
		if _, err := r.c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: name, Plaintext: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.c.crypto.DecryptBatch(ctx, &custosv1.DecryptBatchRequest{Name: name, Items: []*custosv1.DecryptBatchRequest_Item{{Ciphertext: []byte("not a ciphertext")}}}); err != nil {
		t.Fatal(err)
	}
	ops := r.rt.OpsAddr().String()
	if v := metric(t, ops, "custos_key_cache_hits_total"); v < 2 {
		t.Errorf("custos_key_cache_hits_total %v, want at least 2", v)
	}
	resp, err := http.Get("http://" + ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{`custos_root_calls_total{op="wrap",provider="local",result="ok"}`, `custos_batch_items_total{code="InvalidArgument",grpc_method="DecryptBatch"} 1`, "custos_key_cache_misses_total", "custos_root_call_seconds_bucket"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
