package custos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/pki"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/backup"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/memory"
)

// A forced restore does not write under a server that has started on the
// store, even one that holds no lease yet (the scheduler and the trail
// off, or not yet at their first tick): the server's presence record
// refuses it. Once the server stops, the restore goes ahead.
func TestAForcedRestoreRefusesAServerThatHoldsNoLease(t *testing.T) {
	ctx := context.Background()
	cfg, _, r := testRuntimeConfig(t)
	store := memory.New()
	var b bytes.Buffer
	if _, err := backup.Write(ctx, &b, store, r, backup.Options{Source: "memory"}); err != nil {
		t.Fatal(err)
	}
	rt, err := New(ctx, cfg, Options{Store: store, Root: r, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close) // if the test fails first; a second Close does nothing
	restore := func() error {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		_, err := backup.Restore(rctx, bytes.NewReader(b.Bytes()), store, r, backup.RestoreOptions{Force: true})
		return err
	}
	if err := restore(); !errors.Is(err, backup.ErrServersRunning) {
		t.Fatalf("a forced restore beside a server that started: %v; want ErrServersRunning", err)
	}
	rt.Close()
	if err := restore(); err != nil {
		t.Fatalf("a forced restore once the server stopped: %v", err)
	}
}

// hookWriter calls fn at its first write.
type hookWriter struct {
	fn   func()
	done bool
}

func (h *hookWriter) Write(b []byte) (int, error) {
	if !h.done {
		h.done = true
		h.fn()
	}
	return len(b), nil
}

// custos root rewrap on the store directly holds no lease; a forced
// restore started while it runs would put the backup's wrappings, under
// the old root, back over what it re-wrapped. Its presence record refuses
// that restore.
func TestAForcedRestoreRefusesARunningRootRewrap(t *testing.T) {
	ctx := context.Background()
	r, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	store := memory.New()
	ks, err := keystore.New(keystore.Config{Storage: store, Root: r})
	if err != nil {
		t.Fatal(err)
	}
	for _, tn := range []string{"a", "b"} {
		if _, err := ks.CreateTenant(ctx, tn); err != nil {
			t.Fatal(err)
		}
	}
	var b bytes.Buffer
	if _, err := backup.Write(ctx, &b, store, r, backup.Options{Source: "memory"}); err != nil {
		t.Fatal(err)
	}
	var restoreErr error
	out := &hookWriter{fn: func() {
		_, restoreErr = backup.Restore(ctx, bytes.NewReader(b.Bytes()), store, r, backup.RestoreOptions{Force: true})
	}}
	if err := RewrapRoot(ctx, store, ks, r, out, true); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(restoreErr, backup.ErrServersRunning) {
		t.Fatalf("a forced restore while custos root rewrap ran: %v; want ErrServersRunning", restoreErr)
	}
	if recs, err := store.List(ctx, backup.PresencePrefix, "", 10); err != nil || len(recs) != 0 {
		t.Fatalf("presence records after the rewrap: %v, %v; want none", recs, err)
	}
}

// fullStore refuses every write for lack of space.
type fullStore struct{ *memory.Store }

func (fullStore) Put(context.Context, string, []byte, uint64) (uint64, error) {
	return 0, fmt.Errorf("test: %w", storage.ErrFull)
}

// testRuntimeConfig is a runtime's configuration in a directory of its
// own (returned), without the scheduler and the trail (which hold
// leases), and its local root, created.
func testRuntimeConfig(t *testing.T) (*config.Config, string, *local.Root) {
	t.Helper()
	dir := t.TempDir()
	r, err := local.Create(filepath.Join(dir, "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	files, err := pki.WriteDevFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	policyFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyFile, []byte("rules:\n  - {identities: [\"spiffe://custos.dev/dev-client\"], tenants: [\"*\"], permissions: [\"*\"]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{
		Listen:     "127.0.0.1:0",
		TLS:        config.TLS{CertFile: files.ServerCert, KeyFile: files.ServerKey, ClientCAFile: files.CA},
		PolicyFile: policyFile,
		Root:       config.Root{Type: "local", Local: config.LocalRoot{KeyFile: filepath.Join(dir, "root.key")}},
		Storage:    config.Storage{Type: "memory"},
		Ops:        config.Ops{Listen: "off"},
		Scheduler:  config.Scheduler{Disabled: true},
		Audit:      config.Audit{Disabled: true},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg, dir, r
}

// A server starts on a full store (its presence record waits for space):
// a full store serves reads, and a replica restarted during the incident
// must come back.
func TestAServerStartsOnAFullStore(t *testing.T) {
	cfg, _, r := testRuntimeConfig(t)
	rt, err := New(context.Background(), cfg, Options{Store: fullStore{memory.New()}, Root: r, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("New on a full store: %v", err)
	}
	rt.Close()
}

// A server that finds a restore writing to its store (one begun while its
// presence record had lapsed) stops, and Run says why: it must not serve a
// store half restored.
func TestAServerStopsWhenARestoreWritesToItsStore(t *testing.T) {
	t.Run("the store takes writes", func(t *testing.T) { testStopsForARestore(t, false) })
	// A full store takes no renewal, but reads: the marker is still seen.
	t.Run("the store is full", func(t *testing.T) { testStopsForARestore(t, true) })
}

func testStopsForARestore(t *testing.T, full bool) {
	cfg, _, r := testRuntimeConfig(t)
	store := memory.New()
	var served storage.Store = store
	if full {
		served = fullStore{store}
	}
	rt, err := New(context.Background(), cfg, Options{Store: served, Root: r, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	rt.presenceEvery = 50 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- rt.Run(ctx) }()
	if _, err := store.Put(ctx, backup.MarkerKey, []byte("some-backup"), 0); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, backup.ErrRestoring) {
			t.Fatalf("Run after a restore marked the store: %v, want ErrRestoring", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the server still runs 20s after a restore marked its store")
	}
}

// A configuration error found at start (a tracing CA that does not load)
// fails it before the store is opened: no bbolt file is left behind, no
// schema migrated, no audit signing key made.
func TestAStartThatFailsOnTracingLeavesNoStore(t *testing.T) {
	cfg, dir, _ := testRuntimeConfig(t)
	dbPath := filepath.Join(dir, "custos.db")
	cfg.Storage = config.Storage{Type: "bbolt", Bbolt: config.BboltConfig{Path: dbPath}}
	cfg.Audit = config.Audit{}
	cfg.Tracing = config.Tracing{Endpoint: "127.0.0.1:4317", CAFile: filepath.Join(dir, "missing-ca.pem")}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if rt, err := New(context.Background(), cfg, Options{Logger: slog.New(slog.DiscardHandler)}); err == nil {
		rt.Close()
		t.Fatal("a start with a tracing CA that does not load succeeded")
	}
	if _, err := os.Stat(dbPath); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the bbolt file after the failed start: %v; want none", err)
	}
}
