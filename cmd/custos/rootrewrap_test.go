package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/server"
)

// liveConfig writes the dev config of dir with the running server's ops
// address, as the CLI on the same host would read it.
func liveConfig(t *testing.T, dir, ops string) string {
	t.Helper()
	conf, err := os.ReadFile(filepath.Join(dir, "custos.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	live := filepath.Join(dir, "live.yaml")
	if err := os.WriteFile(live, []byte(replaceOnce(t, string(conf), "  listen: 127.0.0.1:9464", "  listen: "+ops)), 0o600); err != nil {
		t.Fatal(err)
	}
	return live
}

// On bbolt, whose file the server holds, custos root rewrap has the
// running server re-wrap (root rotation without downtime) every tenant KEK
// while it goes on serving, and reports counts, never tenant names (the
// ops listener authenticates nobody); what it wrote serves after a
// restart, from the store.
func TestRootRewrapOfARunningBboltServer(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, ops, stop := startDevWithOps(t, dir)
	for _, tenant := range []string{"acme", "beta"} {
		cli(t, dir, addr, "tenant", "create", tenant)
		cli(t, dir, addr, "key", "create", "tenants/"+tenant+"/keys/pii")
	}
	ct := strings.TrimSpace(cli(t, dir, addr, "encrypt", "tenants/acme/keys/pii", "--no-ad", "before the rewrap"))

	out := runMain(t, "root", "rewrap", "--config", liveConfig(t, dir, ops))
	for _, want := range []string{"through its ops listener", "2 tenant KEKs re-wrapped"} {
		if !strings.Contains(out, want) {
			t.Fatalf("root rewrap said:\n%s\nwant %q", out, want)
		}
	}
	if strings.Contains(out, "acme") || strings.Contains(out, "beta") || strings.Contains(out, "done") {
		t.Errorf("root rewrap printed tenant names or the server's last line:\n%s", out)
	}
	if pt := cli(t, dir, addr, "decrypt", "tenants/acme/keys/pii", "--no-ad", ct); !strings.Contains(pt, "before the rewrap") {
		t.Fatalf("decrypt after the rewrap: %q", pt)
	}
	stop()

	// A new server unwraps the re-wrapped KEK from the store.
	addr, _, stop = startDevWithOps(t, dir)
	defer stop()
	if pt := cli(t, dir, addr, "decrypt", "tenants/acme/keys/pii", "--no-ad", ct); !strings.Contains(pt, "before the rewrap") {
		t.Fatalf("decrypt after a restart: %q", pt)
	}
}

// A server that does not re-wrap on request (ops.root_rewrap off) is
// named as the reason, with what to do.
func TestRootRewrapOfAServerThatDoesNotServeIt(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	_, ops, stop := startDevWithOpsConfig(t, dir, func(cfg *config.Config) { cfg.Ops.RootRewrap = false })
	defer stop()
	out, err := runMainErr(t, "root", "rewrap", "--config", liveConfig(t, dir, ops))
	if err == nil || !strings.Contains(err.Error(), "ops.root_rewrap: true") || exitCode(err) != exitOther {
		t.Fatalf("root rewrap of a server without ops.root_rewrap: %v (exit %d)\n%s", err, exitCode(err), out)
	}
}

// How the server's run ended decides the exit code: done 0, an outage 7
// (run it again), a failure 1; an answer cut before its last line is 7
// too. The server's lines are printed, its last one not.
func TestRootRewrapThroughAServerExitsAsItsRunEnded(t *testing.T) {
	for name, c := range map[string]struct {
		body string
		want int
	}{
		"done":             {"re-wrapped tenants/acme\n" + server.RootRewrapDone + "\n", 0},
		"an outage":        {"re-wrapped tenants/acme\n" + server.RootRewrapUnavailable + "\n", exitUnavailable},
		"a failure":        {"re-wrapped tenants/acme\n" + server.RootRewrapFailed + "\n", exitOther},
		"cut short":        {"re-wrapped tenants/acme\n", exitUnavailable},
		"no answer at all": {"", exitUnavailable},
	} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodPost || r.URL.Path != "/root/rewrap" {
					http.NotFound(w, r)
					return
				}
				io.WriteString(w, c.body)
			}))
			defer srv.Close()
			cmd := newRootCmd()
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(io.Discard)
			cmd.SetContext(t.Context())
			err := rewrapThroughServer(cmd, &config.Config{Ops: config.Ops{Listen: strings.TrimPrefix(srv.URL, "http://")}})
			got := 0
			if err != nil {
				got = exitCode(err)
			}
			if got != c.want {
				t.Fatalf("%v: exit %d, want %d", err, got, c.want)
			}
			if c.body != "" && !strings.Contains(out.String(), "re-wrapped tenants/acme") || strings.Contains(out.String(), "failed:") || strings.Contains(out.String(), "done") {
				t.Errorf("printed %q", out.String())
			}
		})
	}
}

// A configuration whose ops.listen reaches a server holding another bbolt
// file is refused, instead of that server re-wrapping its own and the
// command reporting success for this one.
func TestRootRewrapRefusesAServerHoldingAnotherFile(t *testing.T) {
	dirA := filepath.Join(t.TempDir(), ".custos-dev")
	_, opsA, stopA := startDevWithOps(t, dirA)
	defer stopA()
	dirB := filepath.Join(t.TempDir(), ".custos-dev")
	_, _, stopB := startDevWithOps(t, dirB) // holds B's file
	defer stopB()
	out, err := runMainErr(t, "root", "rewrap", "--config", liveConfig(t, dirB, opsA))
	if err == nil || !strings.Contains(err.Error(), "check ops.listen") {
		t.Fatalf("root rewrap of B through A: %v\n%s", err, out)
	}
	if strings.Contains(err.Error(), dirA) {
		t.Errorf("the refusal tells A's path: %v", err)
	}
}

// A bbolt path that names no file fails, and creates none: it was a new,
// empty store "re-wrapped" with success.
func TestRootRewrapOfAMissingBboltFileFails(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	if _, err := prepareDev(dir); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "custos.db")
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Fatalf("the dev store exists before any server: %v", err)
	}
	if out, err := runMainErr(t, "root", "rewrap", "--config", filepath.Join(dir, "custos.yaml")); err == nil {
		t.Fatalf("root rewrap of a missing file succeeded:\n%s", out)
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Fatalf("root rewrap created the store: %v", err)
	}
}

// The store is named by its absolute path: the server resolves a relative
// one in its own working directory, which is not the command's.
func TestRootRewrapNamesTheStoreAbsolutely(t *testing.T) {
	got := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get(server.StoreFileHeader)
		io.WriteString(w, server.RootRewrapDone+"\n")
	}))
	defer srv.Close()
	t.Chdir(t.TempDir())
	cmd := newRootCmd()
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	cmd.SetContext(t.Context())
	cfg := &config.Config{Ops: config.Ops{Listen: strings.TrimPrefix(srv.URL, "http://")}}
	cfg.Storage.Bbolt.Path = "custos.db"
	if err := rewrapThroughServer(cmd, cfg); err != nil {
		t.Fatal(err)
	}
	if name := <-got; !filepath.IsAbs(name) || filepath.Base(name) != "custos.db" {
		t.Fatalf("the request named %q, want the absolute path of custos.db", name)
	}
}

// Whatever answers on ops.listen and then goes silent (a proxy, another
// service) fails the command with exit 7 once the stall bound passes, even
// in the middle of an error answer.
func TestRootRewrapGivesUpOnASilentAnswer(t *testing.T) {
	old := rewrapStall
	rewrapStall = 200 * time.Millisecond
	defer func() { rewrapStall = old }()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	cmd := newRootCmd()
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	cmd.SetContext(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- rewrapThroughServer(cmd, &config.Config{Ops: config.Ops{Listen: strings.TrimPrefix(srv.URL, "http://")}})
	}()
	select {
	case err := <-done:
		if exitCode(err) != exitUnavailable {
			t.Fatalf("%v: exit %d, want %d", err, exitCode(err), exitUnavailable)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("root rewrap waited for a silent answer past its stall bound")
	}
}

// custos backup through a server holding another file is refused too: it
// took that server's whole store, which checked out under a shared root.
func TestBackupRefusesAServerHoldingAnotherFile(t *testing.T) {
	dirA := filepath.Join(t.TempDir(), ".custos-dev")
	_, opsA, stopA := startDevWithOps(t, dirA)
	defer stopA()
	dirB := filepath.Join(t.TempDir(), ".custos-dev")
	_, _, stopB := startDevWithOps(t, dirB)
	defer stopB()
	out, err := runMainErr(t, "backup", "--config", liveConfig(t, dirB, opsA), "--out", filepath.Join(t.TempDir(), "b.backup"))
	if err == nil || !strings.Contains(err.Error(), "check ops.listen") {
		t.Fatalf("backup of B through A: %v\n%s", err, out)
	}
}

// A locked file with nothing answering on ops.listen (a server without an
// ops listener, one shutting down, another command) is exit 7, retry
// later, for backup and root rewrap alike.
func TestALockedFileWithNoListenerIsRetryLater(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close() // nothing answers there now
	cmd := newRootCmd()
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	cmd.SetContext(t.Context())
	key := filepath.Join(t.TempDir(), "root.key") // backup opens the root before it asks
	if _, err := local.Create(key); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{Ops: config.Ops{Listen: closed}, Root: config.Root{Type: "local", Local: config.LocalRoot{KeyFile: key}}}
	cfg.Storage.Bbolt.Path = filepath.Join(t.TempDir(), "custos.db")
	if err := rewrapThroughServer(cmd, cfg); exitCode(err) != exitUnavailable || !strings.Contains(err.Error(), "nothing answers") {
		t.Errorf("root rewrap: %v (exit %d), want exit %d", err, exitCode(err), exitUnavailable)
	}
	if _, err := backupFromServer(cmd, cfg, io.Discard, nil, &progress{}); exitCode(err) != exitUnavailable {
		t.Errorf("backup: %v (exit %d), want exit %d", err, exitCode(err), exitUnavailable)
	}
	// A name that does not resolve is a mistake to fix, not an outage to
	// wait out.
	cfg.Ops.Listen = "custos-ops.invalid:9464"
	if err := rewrapThroughServer(cmd, cfg); err == nil || exitCode(err) == exitUnavailable {
		t.Errorf("root rewrap to a name that does not resolve: %v (exit %d), want an exit other than %d", err, exitCode(err), exitUnavailable)
	}
}

// An ops.listen with an IPv6 zone makes a request (its "%" escaped in the
// URL), where it failed to parse.
func TestAnOpsRequestToAZonedAddress(t *testing.T) {
	cfg := &config.Config{Ops: config.Ops{Listen: "[fe80::1%eth0]:9464"}}
	cfg.Storage.Bbolt.Path = "custos.db"
	req, err := opsRequest(t.Context(), cfg, http.MethodGet, "/backup")
	if err != nil {
		t.Fatal(err)
	}
	if req.URL.Host != "[fe80::1%eth0]:9464" {
		t.Fatalf("request to host %q", req.URL.Host)
	}
}

// Moving to another root (here a new local key; another provider alike):
// a server given the new root with the old one as root.previous serves
// every tenant, custos root rewrap re-wraps them all under the new one
// while it serves, and then the new root alone serves them. The docs told
// PKCS#11 and local users to move keys this way; root rewrap had only the
// one root to unwrap and wrap with.
func TestMovingToAnotherRootWithoutDowntime(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, _, stop := startDevWithOps(t, dir)
	cli(t, dir, addr, "tenant", "create", "acme")
	cli(t, dir, addr, "key", "create", "tenants/acme/keys/pii")
	ct := strings.TrimSpace(cli(t, dir, addr, "encrypt", "tenants/acme/keys/pii", "--no-ad", "under the old root"))
	stop()

	var oldRoot config.Root
	newKey := filepath.Join(dir, "root-new.key")
	if _, err := local.Create(newKey); err != nil {
		t.Fatal(err)
	}
	both := func(c *config.Config) {
		oldRoot = c.Root
		c.Root = config.Root{Type: "local", Local: config.LocalRoot{KeyFile: newKey}, Previous: &oldRoot}
	}
	addr, ops, stop := startDevWithOpsConfig(t, dir, both)
	if pt := cli(t, dir, addr, "decrypt", "tenants/acme/keys/pii", "--no-ad", ct); !strings.Contains(pt, "under the old root") {
		t.Fatalf("decrypt with the old root as previous: %q", pt)
	}
	if out := runMain(t, "root", "rewrap", "--config", liveConfig(t, dir, ops)); !strings.Contains(out, "1 tenant KEK") {
		t.Fatalf("root rewrap said:\n%s", out)
	}
	stop()

	// The new root alone: everything was moved to it.
	addr, _, stop = startDevWithOpsConfig(t, dir, func(c *config.Config) { c.Root = config.Root{Type: "local", Local: config.LocalRoot{KeyFile: newKey}} })
	defer stop()
	if pt := cli(t, dir, addr, "decrypt", "tenants/acme/keys/pii", "--no-ad", ct); !strings.Contains(pt, "under the old root") {
		t.Fatalf("decrypt with the new root alone after the rewrap: %q", pt)
	}
	if _, err := os.Stat(oldRoot.Local.KeyFile); err != nil {
		t.Fatalf("the old root's key file: %v", err)
	}
}
