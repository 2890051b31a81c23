package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/custos"
	"github.com/custos-kms/custos/internal/pgtest"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/backup"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/bbolt"
	"github.com/custos-kms/custos/keystore/storage/memory"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// startDevWithOps serves dir like custos dev, on free ports, and returns
// the gRPC and ops addresses.
func startDevWithOps(t *testing.T, dir string) (addr, ops string, stop func()) {
	t.Helper()
	return startDevWithOpsConfig(t, dir, nil)
}

// startDevWithOpsConfig is startDevWithOps with configure applied to the
// configuration first.
func startDevWithOpsConfig(t *testing.T, dir string, configure func(*config.Config)) (addr, ops string, stop func()) {
	t.Helper()
	cfg, err := prepareDev(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listen, cfg.Ops.Listen = "127.0.0.1:0", "127.0.0.1:0"
	if configure != nil {
		configure(cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan [2]string, 1)
	done := make(chan error, 1)
	var logs syncBuffer
	go func() {
		done <- serve(ctx, cfg, &logs, nil, func(a, o net.Addr) { ready <- [2]string{a.String(), o.String()} })
	}()
	select {
	case a := <-ready:
		return a[0], a[1], func() {
			cancel()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Errorf("serve did not stop; logs:\n%s", logs.String())
			}
		}
	case err := <-done:
		cancel()
		t.Fatalf("serve: %v\n%s", err, logs.String())
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("serve did not start within 30s")
	}
	return "", "", nil
}

// The migration: a backup of a running bbolt deployment (taken through
// its server), verified, restored into PostgreSQL, served from there.
func TestBackupOfARunningServerRestoresIntoPostgreSQL(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, ops, stop := startDevWithOps(t, dir)
	cli(t, dir, addr, "tenant", "create", "acme")
	cli(t, dir, addr, "key", "create", "tenants/acme/keys/pii")
	ct := strings.TrimSpace(cli(t, dir, addr, "encrypt", "tenants/acme/keys/pii", "--no-ad", "before the backup"))

	// The config the CLI reads, with the server's real ops address.
	live := liveConfig(t, dir, ops)
	conf, err := os.ReadFile(filepath.Join(dir, "custos.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "custos.backup")
	out := runMain(t, "backup", "--config", live, "--out", file)
	if !strings.Contains(out, "through its ops listener") || !strings.Contains(out, "records") {
		t.Fatalf("backup said:\n%s", out)
	}
	cli(t, dir, addr, "key", "rotate", "tenants/acme/keys/pii") // after the snapshot
	stop()
	if out := runMain(t, "backup", "verify", "--config", live, "--in", file); !strings.Contains(out, "whole and authentic") {
		t.Fatalf("backup verify:\n%s", out)
	}

	// Restore into PostgreSQL: the same root and PKI, another store.
	url := pgtest.Start(t).NewDatabase(t)
	pgConf := filepath.Join(dir, "pg.yaml")
	pg := onPostgres(t, string(conf), url)
	pg += "audit:\n  spool: " + filepath.Join(t.TempDir(), "spool") + "\n"
	if err := os.WriteFile(pgConf, []byte(pg), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := config.Load(pgConf); err != nil {
		t.Fatal(err)
	}
	// From standard input (copied to an unnamed file for its two passes).
	in, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	restore := newRootCmd()
	var restored bytes.Buffer
	restore.SetIn(in)
	restore.SetOut(&restored)
	restore.SetErr(&restored)
	restore.SetArgs([]string{"restore", "--config", pgConf, "--in", "-"})
	if err := restore.ExecuteContext(t.Context()); err != nil || !strings.Contains(restored.String(), "records written") {
		t.Fatalf("restore --in -: %v\n%s", err, restored.String())
	}
	// A second restore into the now full store is refused.
	if out, err := runMainErr(t, "restore", "--config", pgConf, "--in", file); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("restore into a full store: %v\n%s", err, out)
	}
	// Served from PostgreSQL: the old ciphertext decrypts; the rotation
	// after the snapshot is not there.
	cfg, err := config.Load(pgConf)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listen, cfg.Ops.Listen = "127.0.0.1:0", "off"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, &syncBuffer{}, nil, func(a, _ net.Addr) { ready <- a.String() }) }()
	var pgAddr string
	select {
	case pgAddr = <-ready:
	case err := <-done:
		t.Fatal(err)
	case <-time.After(30 * time.Second):
		t.Fatal("the PostgreSQL server did not start")
	}
	if pt := cli(t, dir, pgAddr, "decrypt", "tenants/acme/keys/pii", "--no-ad", ct); !strings.Contains(pt, "before the backup") {
		t.Fatalf("decrypt after the migration: %q", pt)
	}
	if k := cli(t, dir, pgAddr, "key", "get", "tenants/acme/keys/pii"); !strings.Contains(k, "primary:  1\n") {
		t.Fatalf("the rotation after the snapshot is in the restore:\n%s", k)
	}
	cancel()
	<-done
}

// A server does not start on a store whose restore did not finish.
func TestAServerRefusesAHalfRestoredStore(t *testing.T) {
	_, cfg := halfRestoredDev(t)
	cfg.Listen, cfg.Ops.Listen = "127.0.0.1:0", "off"
	err := serve(t.Context(), cfg, &syncBuffer{}, nil, func(net.Addr, net.Addr) {})
	if err == nil || !strings.Contains(err.Error(), "unfinished restore") {
		t.Fatalf("serve on a half-restored store: %v", err)
	}
}

// markerUnreadable is a store that cannot be read for the restore marker
// (the database blinked just after the migration).
type markerUnreadable struct{ *memory.Store }

func (m markerUnreadable) Get(ctx context.Context, key string) (storage.Record, error) {
	if key == backup.MarkerKey {
		return storage.Record{}, fmt.Errorf("test: %w", storage.ErrUnavailable)
	}
	return m.Store.Get(ctx, key)
}

// A server does not start on a store it could not check for an unfinished
// restore: it would serve half a backup once the store answers again.
func TestAServerDoesNotStartWithoutCheckingForAnUnfinishedRestore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	cfg, err := prepareDev(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listen, cfg.Ops.Listen = "127.0.0.1:0", "off"
	rt, err := custos.New(t.Context(), cfg, custos.Options{Store: markerUnreadable{memory.New()}, LogWriter: io.Discard})
	if err == nil {
		rt.Close()
		t.Fatal("a server started on a store it could not check for an unfinished restore")
	}
	if !errors.Is(err, storage.ErrUnavailable) || !strings.Contains(err.Error(), "unfinished restore") {
		t.Fatalf("the start failed with %v, want the store's unavailability while checking for a restore", err)
	}
}

// --tombstones-from reads the other store without writing to it: a bbolt
// file read-only, refused (saying why) while a process holds it, and never
// created when the path is wrong.
func TestTombstonesFromReadsAnotherStoreReadOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db := filepath.Join(dir, "live.db")
	conf := filepath.Join(dir, "live.yaml")
	if err := os.WriteFile(conf, []byte("tls:\n  cert_file: s.pem\n  key_file: s.key\n  client_ca_file: ca.pem\nstorage:\n  type: bbolt\n  bbolt:\n    path: live.db\nroot:\n  type: local\n  local:\n    key_file: root.key\npolicy_file: policy.yaml\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tombstonesFrom(ctx, conf); err == nil {
		t.Fatal("a missing bbolt file was opened (or created)")
	}
	if _, err := os.Stat(db); !os.IsNotExist(err) {
		t.Fatalf("the missing bbolt file exists now: %v", err)
	}
	s, err := bbolt.Open(db, bbolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, keystore.TombstonePrefix+"gone", []byte(`{"tenant":"gone","create_time":"2026-01-01T00:00:00Z","shred_time":"2026-02-01T00:00:00Z"}`), 0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tombstonesFrom(ctx, conf); err == nil || !strings.Contains(err.Error(), "stop its server first") {
		t.Fatalf("while another process holds the file: %v, want an error saying to stop its server", err)
	}
	s.Close()
	tombs, _, err := tombstonesFrom(ctx, conf)
	if err != nil || len(tombs) != 1 || tombs[0].Tenant != "gone" {
		t.Fatalf("tombstones %+v, %v; want tenant gone", tombs, err)
	}
}

// custos root rewrap re-wraps every tenant KEK, the audit signing key and
// the page-token key, on a bbolt store whose server is stopped, and the
// server then serves every tenant as before.
func TestRootRewrapOnAStoppedBboltServer(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, stop := startDev(t, dir)
	cli(t, dir, addr, "tenant", "create", "acme")
	cli(t, dir, addr, "tenant", "create", "beta")
	cli(t, dir, addr, "key", "create", "tenants/acme/keys/pii")
	ct := strings.TrimSpace(cli(t, dir, addr, "encrypt", "tenants/acme/keys/pii", "--no-ad", "hello"))
	// A page of one tenant: its token makes the page-token key.
	page, err := custosv1.NewKeyServiceClient(devConn(t, dir, addr)).ListTenants(t.Context(), &custosv1.ListTenantsRequest{PageSize: 1})
	if err != nil || page.GetNextPageToken() == "" {
		t.Fatalf("a page of one tenant: %v, %v", page, err)
	}
	stop()
	out := runMain(t, "root", "rewrap", "--config", filepath.Join(dir, "custos.yaml"))
	for _, want := range []string{"re-wrapped tenants/acme", "2 tenant KEKs re-wrapped", "audit signing key re-wrapped", "page-token key re-wrapped"} {
		if !strings.Contains(out, want) {
			t.Fatalf("root rewrap printed:\n%s\nwant %q", out, want)
		}
	}
	addr, stop = startDev(t, dir)
	defer stop()
	if pt := strings.TrimSpace(cli(t, dir, addr, "decrypt", "tenants/acme/keys/pii", "--no-ad", ct)); pt != "hello" {
		t.Fatalf("decrypt after the rewrap: %q", pt)
	}
	// The token from before the rewrap still opens: the key was re-wrapped, not replaced.
	next, err := custosv1.NewKeyServiceClient(devConn(t, dir, addr)).ListTenants(t.Context(), &custosv1.ListTenantsRequest{PageSize: 1, PageToken: page.GetNextPageToken()})
	if err != nil || len(next.GetTenants()) != 1 || next.GetTenants()[0].GetName() != "tenants/beta" {
		t.Fatalf("the second page with the token from before the rewrap: %v, %v", next, err)
	}
}

// heldDevDir prepares a custos dev directory whose bbolt file is held
// until the test ends, as a running server holds it.
func heldDevDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	if _, err := prepareDev(dir); err != nil {
		t.Fatal(err)
	}
	held, err := bbolt.Open(filepath.Join(dir, "custos.db"), bbolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { held.Close() })
	return dir
}

// A backup through a server that answers "retry later" (503: its root is
// down; 429: a backup is already being taken) exits 7 with the server's
// message; any other failure exits 1.
func TestABackupThroughTheServerSaysWhenToRetry(t *testing.T) {
	dir := heldDevDir(t)
	for code, want := range map[int]int{http.StatusServiceUnavailable: exitUnavailable, http.StatusTooManyRequests: exitUnavailable, http.StatusInternalServerError: exitOther, http.StatusNotFound: exitOther} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "the server's own reason", code)
		}))
		cfgPath := filepath.Join(dir, fmt.Sprintf("custos-%d.yaml", code))
		if err := os.WriteFile(cfgPath, []byte(replaceOnce(t, devConfig, "  listen: 127.0.0.1:9464", "  listen: "+strings.TrimPrefix(srv.URL, "http://"))), 0o600); err != nil {
			t.Fatal(err)
		}
		_, errOut, err := runCLI(t, "backup", "--config", cfgPath, "--out", filepath.Join(t.TempDir(), "b"))
		srv.Close()
		if got := exitCode(err); got != want || !strings.Contains(err.Error(), "the server's own reason") || strings.Contains(err.Error(), "storage: unavailable") {
			t.Errorf("server answering %d: exit %d (%v)\n%s; want exit %d with the server's message", code, got, err, errOut, want)
		}
		if code == http.StatusNotFound && (err == nil || !strings.Contains(err.Error(), "ops.backup: true")) {
			t.Errorf("a server without the backup endpoint: %v; want the setting named", err)
		}
	}
}

// A server that stops sending (before its answer, or midway) fails custos
// backup with exit 7 once nothing came for backupStall: it waited for ever.
func TestABackupFromAServerThatStopsSendingFails(t *testing.T) {
	defer func(d time.Duration) { backupStall = d }(backupStall)
	backupStall = 100 * time.Millisecond
	for name, handler := range map[string]http.HandlerFunc{
		"before its answer": func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() },
		"midway": func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write([]byte("CUSTOS-BACKUP"))
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		},
	} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(handler)
			defer srv.Close()
			key := filepath.Join(t.TempDir(), "root.key")
			if _, err := local.Create(key); err != nil {
				t.Fatal(err)
			}
			cfg := &config.Config{Ops: config.Ops{Listen: strings.TrimPrefix(srv.URL, "http://")}, Root: config.Root{Type: "local", Local: config.LocalRoot{KeyFile: key}}}
			cmd := &cobra.Command{}
			cmd.SetContext(t.Context())
			cmd.SetErr(io.Discard)
			done := make(chan error, 1)
			go func() {
				_, err := backupFromServer(cmd, cfg, io.Discard, nil, newProgress(io.Discard, "backup"))
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, errRetryLater) || exitCode(err) != 7 {
					t.Fatalf("%v (exit %d), want a stall, exit 7", err, exitCode(err))
				}
			case <-time.After(10 * time.Second):
				t.Fatal("custos backup still waiting 10s after the server stopped sending")
			}
		})
	}
}

// restore --in - stops reading standard input when its context ends, and
// its temporary copy is removed: the read of a pipe that never closed
// ignored Ctrl-C, and a second Ctrl-C left the copy behind.
func TestARestoreFromStandardInputStopsWithTheCommand(t *testing.T) {
	tmpdir := t.TempDir()
	t.Setenv("TMPDIR", tmpdir)
	pr, pw := io.Pipe() // never closed: a producer that stalls
	defer pw.Close()
	read := make(chan struct{})
	go func() {
		_, _ = pw.Write([]byte("CUSTOS-BACKUP partial"))
		close(read)
	}()
	cmd := newRootCmd()
	cmd.SetIn(pr)
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	cmd.SetArgs([]string{"restore", "--in", "-", "--config", filepath.Join(tmpdir, "none.yaml")})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	select {
	case <-read:
	case <-time.After(10 * time.Second):
		t.Fatal("restore --in - did not read standard input within 10s")
	}
	// What it copied so far has no name: a restore killed now (kill -9,
	// out of memory) leaves no copy of the store behind.
	if left, _ := filepath.Glob(filepath.Join(tmpdir, "custos-restore-*")); len(left) != 0 {
		t.Fatalf("a named copy of standard input while the restore reads it: %v", left)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("restore --in - after Ctrl-C: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("restore --in - still reading 10s after its context ended")
	}
	if left, _ := filepath.Glob(filepath.Join(tmpdir, "custos-restore-*")); len(left) != 0 {
		t.Fatalf("temporary copies left: %v", left)
	}
}

// custos root rewrap refuses a store whose restore did not finish (exit
// 6): running the restore again would put the backup's wrappings, under
// the older root version, back over what it re-wrapped.
func TestRootRewrapRefusesAHalfRestoredStore(t *testing.T) {
	dir, _ := halfRestoredDev(t)
	out, err := runMainErr(t, "root", "rewrap", "--config", filepath.Join(dir, "custos.yaml"))
	if err == nil {
		t.Fatalf("root rewrap of a half-restored store succeeded:\n%s", out)
	}
	if !errors.Is(err, backup.ErrRestoring) || exitCode(err) != exitPrecondition || strings.Contains(out, "re-wrapped") {
		t.Fatalf("root rewrap of a half-restored store: %v (exit %d)\n%s", err, exitCode(err), out)
	}
}

// A PostgreSQL server with no state directory for its default audit spool
// (and none configured) does not start: the spool is never defaulted into
// the shared temporary directory, nor silently turned off.
func TestAPostgresServerWithoutASpoolDirectoryDoesNotStart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	cfg, err := prepareDev(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listen, cfg.Ops.Listen = "127.0.0.1:0", "off"
	cfg.Storage.Type, cfg.Audit.Spool = "postgres", ""
	rt, err := custos.New(t.Context(), cfg, custos.Options{Store: memory.New(), LogWriter: io.Discard})
	if err == nil {
		rt.Close()
		t.Fatal("a PostgreSQL server started without an audit spool")
	}
	if !strings.Contains(err.Error(), "audit.spool") {
		t.Fatalf("the start failed with %v, want an error naming audit.spool", err)
	}
}

// halfRestoredDev prepares a custos dev directory whose bbolt store holds
// an unfinished restore's marker.
func halfRestoredDev(t *testing.T) (dir string, cfg *config.Config) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), ".custos-dev")
	cfg, err := prepareDev(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := bbolt.Open(cfg.Storage.Bbolt.Path, bbolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(t.Context(), backup.MarkerKey, []byte("0123"), 0); err != nil {
		t.Fatal(err)
	}
	s.Close()
	return dir, cfg
}

// The root is opened before the server is asked: a root that does not open
// fails the command without a backup taken for nothing (holding the
// server's one backup slot), and one slow to open (a Vault login retried)
// cannot make the server give up a stream it bounds per write.
func TestABackupThroughTheServerOpensTheRootFirst(t *testing.T) {
	var asked atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		asked.Store(true)
		http.Error(w, "not this time", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	missing := filepath.Join(t.TempDir(), "root.key") // never created
	cfg := &config.Config{Ops: config.Ops{Listen: strings.TrimPrefix(srv.URL, "http://")}, Root: config.Root{Type: "local", Local: config.LocalRoot{KeyFile: missing}}}
	cmd := &cobra.Command{}
	cmd.SetContext(t.Context())
	cmd.SetErr(io.Discard)
	_, err := backupFromServer(cmd, cfg, io.Discard, nil, newProgress(io.Discard, "backup"))
	if err == nil || !strings.Contains(err.Error(), "root.key") {
		t.Fatalf("a root key file that is missing: %v, want it named", err)
	}
	if asked.Load() {
		t.Fatal("the server was asked for a backup before the root was opened")
	}
}

// While a backup is being received it has no name beside --out (Linux): a
// command killed midway leaves no partial copy of the store behind.
func TestABackupBeingWrittenHasNoName(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("unnamed files (O_TMPFILE) are Linux's; elsewhere a partial file is removed only by a command that ends")
	}
	dir := heldDevDir(t)
	sent, release := make(chan struct{}), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("CUSTOS-BACKUP a first part"))
		w.(http.Flusher).Flush()
		close(sent)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	cfgPath := liveConfig(t, dir, strings.TrimPrefix(srv.URL, "http://"))
	outDir := t.TempDir()
	done := make(chan error, 1)
	go func() {
		_, _, err := runCLI(t, "backup", "--config", cfgPath, "--out", filepath.Join(outDir, "b.backup"))
		done <- err
	}()
	select {
	case <-sent:
	case <-time.After(30 * time.Second):
		t.Fatal("the command did not ask the server within 30s")
	}
	// The part sent may still be on its way to the file: what matters is
	// that no name appears for it.
	time.Sleep(100 * time.Millisecond)
	if des, err := os.ReadDir(outDir); err != nil || len(des) != 0 {
		t.Errorf("while the backup is received, %s holds %v (%v); want nothing named", outDir, des, err)
	}
	close(release)
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a backup cut short succeeded")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the command did not end within 30s of the server's answer ending")
	}
	if des, _ := os.ReadDir(outDir); len(des) != 0 {
		t.Fatalf("a failed backup left %v", des)
	}
}

// A restore authenticates the backup before it opens the target: a backup
// it refuses leaves the target as it was, here no bbolt file created (on
// PostgreSQL, no schema migrated).
func TestARefusedRestoreDoesNotTouchTheTarget(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	cfg, err := prepareDev(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cfg.Storage.Bbolt.Path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the target's bbolt file before the restore: %v; want none", err)
	}
	damaged := filepath.Join(t.TempDir(), "damaged.backup")
	if err := os.WriteFile(damaged, []byte("not a backup at all"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runMainErr(t, "restore", "--config", filepath.Join(dir, "custos.yaml"), "--in", damaged)
	if err == nil {
		t.Fatalf("restore of a damaged backup succeeded:\n%s", out)
	}
	if _, err := os.Stat(cfg.Storage.Bbolt.Path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the target's bbolt file after a refused restore: %v; want none", err)
	}
}

// A backup or a saved checkpoint is never written over a file the
// configuration names: renamed over the bbolt file, a backup replaced the
// live store (and over the root's key file, it would leave every backup
// unreadable). A symbolic link to one is refused too.
func TestOutputOverAConfiguredFileIsRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	_, ops, stop := startDevWithOps(t, dir)
	defer stop()
	live := liveConfig(t, dir, ops)
	link := filepath.Join(t.TempDir(), "looks-new.db")
	if err := os.Symlink(filepath.Join(dir, "custos.db"), link); err != nil {
		t.Fatal(err)
	}
	hard := filepath.Join(dir, "root-copy.key")
	if err := os.Link(filepath.Join(dir, "root.key"), hard); err != nil {
		t.Fatal(err)
	}
	before := map[string][]byte{}
	for _, f := range []string{"root.key", "custos.yaml"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		before[f] = b
	}
	for _, args := range [][]string{
		{"backup", "--config", live, "--out", filepath.Join(dir, "custos.db")},
		{"backup", "--config", live, "--out", filepath.Join(dir, ".", "root.key")},
		{"backup", "--config", live, "--out", live},
		{"backup", "--config", live, "--out", link},
		{"audit", "verify", "--config", live, "--save-checkpoint", filepath.Join(dir, "root.key")},
		// Files the server makes beside the ones named: a spool segment.
		{"backup", "--config", live, "--out", filepath.Join(dir, "custos.db.audit-spool.0000000000000001")},
		{"backup", "--config", live, "--out", hard},
	} {
		out, err := runMainErr(t, args...)
		if err == nil || exitCode(err) != exitUsage || !strings.Contains(err.Error(), "which the configuration uses") {
			t.Errorf("%q: %v (exit %d), want a usage error\n%s", args, err, exitCode(err), out)
		}
	}
	for f, b := range before {
		if now, err := os.ReadFile(filepath.Join(dir, f)); err != nil || !bytes.Equal(now, b) {
			t.Errorf("%s changed: %v", f, err)
		}
	}
	if fi, err := os.Lstat(filepath.Join(dir, "custos.db")); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("the store file: %v, %v", fi, err)
	}
}
