package main

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server"
)

// devConn dials addr with the dev client certificate of dir.
func devConn(t *testing.T, dir, addr string) *grpc.ClientConn {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Every call a client saw acknowledged has its audit event, even when the
// server is killed with SIGKILL under load: the event is durable before
// the answer.
func TestEveryAcknowledgedCallSurvivesKill9InTheAuditLog(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	srv, addr := startServeProcess(t, dir)
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
	_, addr = startServeProcess(t, dir)
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
	out := runMain(t, "audit", "verify", "--config", filepath.Join(dir, "custos.yaml"))
	t.Log(out)
}
