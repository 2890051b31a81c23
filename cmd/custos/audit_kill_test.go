package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/custos-kms/custos/keystore/storage/bbolt"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server"
)

// devConn dials addr with the dev client certificate of dir.
func devConn(t *testing.T, dir, addr string) *grpc.ClientConn {
	t.Helper()
	creds, err := clientCredentials(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Every call a client saw acknowledged has its audit event, even when the
// server is killed with SIGKILL under load: the event is durable before
// the answer. With audit.sync_interval the journal is not synced before
// the answer (nor, here, at all before the kill), and the events survive
// all the same: they are in the operating system.
func TestEveryAcknowledgedCallSurvivesKill9InTheAuditLog(t *testing.T) {
	t.Run("synced before each answer", func(t *testing.T) { testAckedSurviveKill9(t, "") })
	t.Run("audit.sync_interval", func(t *testing.T) { testAckedSurviveKill9(t, "audit:\n  sync_interval: 1m\n") })
}

func testAckedSurviveKill9(t *testing.T, extraConfig string) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	if extraConfig != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "custos.yaml"), []byte(devConfig+extraConfig), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srv, addr, logPath := startServeProcessLog(t, dir)
	if extraConfig != "" {
		if logs, err := os.ReadFile(logPath); err != nil || !bytes.Contains(logs, []byte("audit.sync_interval is set")) {
			t.Fatalf("the server does not say it runs with audit.sync_interval (%v):\n%s", err, logs)
		}
	}
	ctx := t.Context()
	conn := devConn(t, dir, addr)
	keys, crypto := custosv1.NewKeyServiceClient(conn), custosv1.NewCryptoServiceClient(conn)
	if _, err := keys.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: "acme"}); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/acme", KeyId: "pii", Key: &custosv1.Key{Purpose: custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT}}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				var header metadata.MD
				_, err := crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: "tenants/acme/keys/pii", Plaintext: []byte("x")}, grpc.Header(&header))
				if err != nil {
					return // the server is gone
				}
				if v := header.Get(server.RequestIDHeader); len(v) == 1 {
					mu.Lock()
					acked = append(acked, v[0])
					mu.Unlock()
				}
			}
		})
	}
	time.Sleep(1500 * time.Millisecond)
	if err := srv.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	waitExit(t, srv)
	wg.Wait()
	if len(acked) == 0 {
		t.Fatal("no call was acknowledged before the kill")
	}

	// Restarted, the server integrates what the killed one queued.
	srv2, addr := startServeProcess(t, dir)
	srv2Stop := func(t *testing.T) {
		_ = srv2.cmd.Process.Signal(syscall.SIGTERM)
		waitExit(t, srv2)
	}
	audit := custosv1.NewAuditServiceClient(devConn(t, dir, addr))
	want := map[string]bool{}
	for _, id := range acked {
		want[id] = true
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		seen := map[string]bool{}
		tok := ""
		for {
			resp, err := audit.ListAuditEvents(ctx, &custosv1.ListAuditEventsRequest{Parent: "tenants/acme", PageSize: 1000, PageToken: tok, Operation: "encrypt"})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range resp.GetRecords() {
				seen[r.GetEvent().GetRequestId()] = true
			}
			if tok = resp.GetNextPageToken(); tok == "" {
				break
			}
		}
		missing := 0
		for id := range want {
			if !seen[id] {
				missing++
			}
		}
		if missing == 0 {
			t.Logf("all %d acknowledged calls are in the log after kill -9 (%d encrypt events)", len(want), len(seen))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged calls have no audit event after kill -9 and restart", missing, len(want))
		}
		time.Sleep(250 * time.Millisecond)
	}

	// And the store verifies clean offline.
	srv2Stop(t)
	out := runMain(t, "audit", "verify", "--config", filepath.Join(dir, "custos.yaml"))
	if !strings.Contains(out, "0 findings") {
		t.Fatalf("audit verify after kill -9 and restart:\n%s", out)
	}
}

// runMain runs a custos command in-process and returns its output.
func runMain(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runMainErr(t, args...)
	if err != nil {
		t.Fatalf("custos %v: %v\n%s", args, err, out)
	}
	return out
}

func runMainErr(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, errOut, err := runCLI(t, args...)
	return out + errOut, err
}

func TestAuditCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, stop := startDev(t, dir)
	cli(t, dir, addr, "tenant", "create", "acme")
	cli(t, dir, addr, "key", "create", "tenants/acme/keys/pii")
	cli(t, dir, addr, "encrypt", "tenants/acme/keys/pii", "--no-ad", "hello")
	var out string
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out, "encrypt") && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		out = cli(t, dir, addr, "audit", "list", "--tenant", "acme", "--verify")
	}
	// The tenant by its name verifies the same.
	if named := cli(t, dir, addr, "audit", "list", "--tenant", "tenants/acme", "--verify"); !strings.Contains(named, "encrypt") {
		t.Fatalf("audit list --tenant tenants/acme --verify:\n%s", named)
	}
	for _, want := range []string{"create_tenant", "create_key", "encrypt", "OK"} {
		if !strings.Contains(out, want) {
			t.Fatalf("audit list lacks %q:\n%s", want, out)
		}
	}
	js := cli(t, dir, addr, "audit", "list", "--tenant", "acme", "--operation", "encrypt", "-o", "json")
	// A --limit that leaves events out says so on standard error (oldest
	// first: the newest are the ones left out); one that does not, not.
	if _, errOut, err := runCLI(t, "audit", "list", "--tenant", "acme", "--limit", "1", "--addr", addr, "--dev-dir", dir); err != nil || !strings.Contains(errOut, "stopped at --limit 1") {
		t.Fatalf("audit list --limit 1: %v, stderr %q", err, errOut)
	}
	for _, args := range [][]string{
		{"audit", "list", "--tenant", "acme"},
		// Exactly as many as the limit: the full page's token is no sign
		// of more.
		{"audit", "list", "--tenant", "acme", "--operation", "create_key", "--limit", "1"},
	} {
		if _, errOut, err := runCLI(t, append(args, "--addr", addr, "--dev-dir", dir)...); err != nil || strings.Contains(errOut, "stopped at") {
			t.Fatalf("custos %v: %v, stderr %q", args, err, errOut)
		}
	}
	// tail follows: it prints what is there, then what comes, until stopped.
	tailCtx, cancelTail := context.WithTimeout(t.Context(), 4*time.Second)
	defer cancelTail()
	tailCmd := newRootCmd()
	var tailOut bytes.Buffer
	tailCmd.SetOut(&tailOut)
	tailCmd.SetErr(io.Discard)
	tailCmd.SetArgs([]string{"audit", "tail", "--tenant", "acme", "--interval", "200ms", "-o", "json", "--verify",
		"--addr", addr, "--ca", filepath.Join(dir, "ca.pem"), "--cert", filepath.Join(dir, "client.pem"), "--key", filepath.Join(dir, "client-key.pem")})
	tailDone := make(chan error, 1)
	go func() { tailDone <- tailCmd.ExecuteContext(tailCtx) }()
	time.Sleep(500 * time.Millisecond)
	cli(t, dir, addr, "key", "rotate", "tenants/acme/keys/pii")
	if err := <-tailDone; err != nil {
		t.Fatalf("audit tail: %v", err)
	}
	if !strings.Contains(tailOut.String(), `"operation":"rotate_key"`) || !strings.Contains(tailOut.String(), `"operation":"create_tenant"`) {
		t.Fatalf("audit tail printed:\n%s", tailOut.String())
	}
	if !strings.Contains(js, `"operation":"encrypt"`) || strings.Count(js, "\n") != 1 {
		t.Fatalf("audit list -o json --operation encrypt:\n%s", js)
	}
	stop()
	kept := filepath.Join(t.TempDir(), "kept.note")
	rep := runMain(t, "audit", "verify", "--config", filepath.Join(dir, "custos.yaml"), "--checkpoint", kept, "--save-checkpoint", kept)
	if !strings.Contains(rep, "0 findings") || !strings.Contains(rep, "kept the checkpoint of size") {
		t.Fatalf("audit verify of an untouched log, keeping its checkpoint:\n%s", rep)
	}
	if rep := runMain(t, "audit", "verify", "--config", filepath.Join(dir, "custos.yaml"), "--checkpoint", kept); !strings.Contains(rep, "0 findings") {
		t.Fatalf("audit verify against the kept checkpoint:\n%s", rep)
	}
	if err := os.WriteFile(kept, []byte("not a checkpoint\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if rep, err := runMainErr(t, "audit", "verify", "--config", filepath.Join(dir, "custos.yaml"), "--checkpoint", kept); err == nil || !strings.Contains(rep, "bad-checkpoint: kept checkpoint 1") {
		t.Fatalf("audit verify against a kept file that is not a checkpoint: err %v\n%s", err, rep)
	}
	// Tamper with the store and verify again: a finding and an error.
	tamperFirstEvent(t, filepath.Join(dir, "custos.db"))
	rep, err := runMainErr(t, "audit", "verify", "--config", filepath.Join(dir, "custos.yaml"))
	if err == nil || !strings.Contains(rep, "event 0: modified") {
		t.Fatalf("audit verify of a tampered log: err %v\n%s", err, rep)
	}
}

// tamperFirstEvent flips a byte of event 0 in the bbolt file.
func tamperFirstEvent(t *testing.T, path string) {
	t.Helper()
	s, err := bbolt.Open(path, bbolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r, err := s.Get(t.Context(), "audit/l/0000000000000000")
	if err != nil {
		t.Fatal(err)
	}
	r.Value[len(r.Value)-1] ^= 1
	if _, err := s.Put(t.Context(), r.Key, r.Value, r.Version); err != nil {
		t.Fatal(err)
	}
}
