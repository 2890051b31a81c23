package main

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/testkit"
)

func startDevWith(t *testing.T, dir string, schedulerDisabled bool) (string, func()) {
	t.Helper()
	addr, stop, _ := startDevServer(t, dir, func(cfg *config.Config) { cfg.Scheduler.Disabled = schedulerDisabled })
	return addr, func() {
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	}
}

// startDevServer serves the dev state in dir on 127.0.0.1:0 (ops listener
// too, so a `custos dev` on the default ports does not disturb it) with
// configure applied, and returns the address and a stop function that
// waits, up to 30s, for serve to return. It fails the test if the server
// does not start within 10s, with the error serve returned.
func startDevServer(t *testing.T, dir string, configure func(*config.Config)) (addr string, stop func() error, cancel context.CancelFunc) {
	t.Helper()
	cfg, err := prepareDev(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listen = "127.0.0.1:0"
	cfg.Ops.Listen = "127.0.0.1:0"
	if configure != nil {
		configure(cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	var logs syncBuffer
	go func() { done <- serve(ctx, cfg, &logs, nil, func(a, _ net.Addr) { ready <- a.String() }) }()
	stop = func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			return fmt.Errorf("serve did not return within 30s of its context ending; logs:\n%s", logs.String())
		}
	}
	select {
	case addr := <-ready:
		return addr, stop, cancel
	case err := <-done:
		cancel()
		t.Fatalf("serve: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatalf("server did not start within 10s; logs:\n%s", logs.String())
	}
	return "", nil, nil
}

// A replica with scheduler.disabled still persists its encryption counts, so
// usage-based rotation (before 2^30 AES-GCM encryptions) sees them.
func TestEveryReplicaFlushesItsEncryptionCounts(t *testing.T) {
	for _, disabled := range []bool{false, true} {
		dir := filepath.Join(t.TempDir(), ".custos-dev")
		addr, stop := startDevWith(t, dir, disabled)
		cli(t, dir, addr, "tenant", "create", "acme")
		cli(t, dir, addr, "key", "create", "tenants/acme/keys/pii")
		for range 3 {
			cli(t, dir, addr, "encrypt", "tenants/acme/keys/pii", "x", "--no-ad")
		}
		stop()
		addr, stop = startDevWith(t, dir, false)
		out := cli(t, dir, addr, "key", "get", "tenants/acme/keys/pii")
		stop()
		line := out[strings.Index(out, "\n1 "):]
		t.Logf("scheduler.disabled=%v: %q", disabled, strings.Fields(line)[3])
		if !strings.Contains(strings.SplitN(line[1:], "\n", 2)[0], " 3") {
			t.Errorf("scheduler.disabled=%v: encrypt_count not 3 after restart:\n%s", disabled, out)
		}
	}
}

// Encryptions served during the graceful drain (after SIGTERM) are counted:
// the final flush runs after the last call.
func TestEncryptionsServedWhileDrainingAreCounted(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, stopServer, cancel := startDevServer(t, dir, nil)
	cli(t, dir, addr, "tenant", "create", "acme")
	cli(t, dir, addr, "key", "create", "tenants/acme/keys/pii")
	cl, err := client.New(context.Background(), client.Config{Address: addr, CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client-key.pem"),
		DialOptions: []grpc.DialOption{grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64 << 20))}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	items := make([]client.EncryptItem, 1000)
	for i := range items {
		items[i] = client.EncryptItem{Plaintext: make([]byte, 8<<10)}
	}
	var ok atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				res, err := cl.EncryptBatch(context.Background(), "tenants/acme/keys/pii", items)
				if err != nil {
					return
				}
				for _, r := range res {
					if r.Err == nil {
						ok.Add(1)
					}
				}
			}
		})
	}
	time.Sleep(1500 * time.Millisecond)
	cancel()
	wg.Wait()
	if err := stopServer(); err != nil {
		t.Fatal(err)
	}
	addr, stop := startDevWith(t, dir, false)
	defer stop()
	out := cli(t, dir, addr, "key", "get", "tenants/acme/keys/pii")
	line := out[strings.Index(out, "\n1 ")+1:]
	stored := strings.Fields(line)[3]
	t.Logf("client saw %d successful encryptions; stored encrypt_count %s", ok.Load(), stored)
	if stored != fmt.Sprint(ok.Load()) {
		t.Errorf("encrypt_count %s != %d encryptions served", stored, ok.Load())
	}
}

// syncBuffer collects logs safely across goroutines.
type syncBuffer = testkit.SyncBuffer
