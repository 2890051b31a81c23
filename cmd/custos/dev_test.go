package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-kms/custos/internal/config"
)

// startDev prepares dir like `custos dev` and serves it on a free port until
// the returned stop function is called (a graceful stop, as on SIGINT).
func startDev(t *testing.T, dir string) (addr string, stop func()) {
	t.Helper()
	addr, stopServer, _ := startDevServer(t, dir, nil)
	return addr, func() {
		if err := stopServer(); err != nil {
			t.Errorf("graceful stop: %v", err)
		}
	}
}

// cli runs a custos admin command against addr with the dev client files.
func cli(t *testing.T, dir, addr string, args ...string) string {
	t.Helper()
	cmd := newRootCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	conn := []string{"--addr", addr, "--ca", filepath.Join(dir, "ca.pem"), "--cert", filepath.Join(dir, "client.pem"), "--key", filepath.Join(dir, "client-key.pem")}
	cmd.SetArgs(append(args, conn...))
	if err := cmd.ExecuteContext(t.Context()); err != nil {
		t.Fatalf("custos %s: %v (%s)", strings.Join(args, " "), err, errOut.String())
	}
	return out.String()
}

func TestDevServesAndKeepsDataAcrossARestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, stop := startDev(t, dir)
	cli(t, dir, addr, "tenant", "create", "acme")
	cli(t, dir, addr, "key", "create", "tenants/acme/keys/pii")
	ct := strings.TrimSpace(cli(t, dir, addr, "encrypt", "tenants/acme/keys/pii", "alice@example.com", "--ad", "customer-42/email"))
	if out := cli(t, dir, addr, "key", "rotate", "tenants/acme/keys/pii"); !strings.Contains(out, "primary:  2") {
		t.Fatalf("rotate output:\n%s", out)
	}
	stop()

	for _, f := range []string{"ca.pem", "client.pem", "client-key.pem", "server.pem", "root.key", "custos.db", "policy.yaml", "custos.yaml"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("dev file %s: %v", f, err)
		}
	}
	rootKey, _ := os.ReadFile(filepath.Join(dir, "root.key"))
	// custos serve --config on the dev files serves what custos dev
	// serves, backups of the running server included.
	if cfg, err := config.Load(filepath.Join(dir, "custos.yaml")); err != nil || !cfg.Ops.Backup || !cfg.Ops.RootRewrap {
		t.Errorf("the dev config: %v, ops.backup and ops.root_rewrap %v; want it to load with both on", err, cfg != nil && cfg.Ops.Backup && cfg.Ops.RootRewrap)
	}

	addr, stop = startDev(t, dir) // second run reuses everything
	defer stop()
	if again, _ := os.ReadFile(filepath.Join(dir, "root.key")); !bytes.Equal(again, rootKey) {
		t.Fatal("the second run replaced the root key")
	}
	if out := cli(t, dir, addr, "decrypt", "tenants/acme/keys/pii", ct, "--ad", "customer-42/email"); strings.TrimSpace(out) != "alice@example.com" {
		t.Fatalf("decrypt after restart: %q", out)
	}
	if out := cli(t, dir, addr, "tenant", "list"); !strings.Contains(out, "tenants/acme") {
		t.Fatalf("tenant list: %q", out)
	}
}

func TestEncryptRequiresAnExplicitAssociatedDataChoice(t *testing.T) {
	cmd := newRootCmd()
	cmd.SetArgs([]string{"encrypt", "tenants/a/keys/k", "x", "--addr", "127.0.0.1:1"})
	cmd.SetOut(&bytes.Buffer{})
	err := cmd.ExecuteContext(t.Context())
	if err == nil || !strings.Contains(err.Error(), "--ad") {
		t.Fatalf("got %v, want an error asking for --ad or --no-ad", err)
	}
}

// writeIfMissing keeps what is there, leaves no temporary file behind, and
// gives the file the owner's permissions only.
func TestWriteIfMissingCreatesOnceAndWhole(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "custos.yaml")
	if err := writeIfMissing(path, "first\n"); err != nil {
		t.Fatal(err)
	}
	if err := writeIfMissing(path, "second\n"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "first\n" {
		t.Fatalf("%q, %v; want the first content kept", b, err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("%d entries in the directory, want the file alone", len(entries))
	}
}

// A dev directory whose data is there but whose root key is gone is
// refused: a new key would serve beside the tenants wrapped under the old
// one, mixing two roots in one store. Without data, the key is made.
func TestDevRefusesDataWhoseRootKeyIsMissing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	if _, err := prepareDev(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "root.key")); err != nil {
		t.Fatal(err)
	}
	if _, err := prepareDev(dir); err != nil {
		t.Fatalf("a directory without data and without a root key: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "custos.db"), []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "root.key")); err != nil {
		t.Fatal(err)
	}
	_, err := prepareDev(dir)
	if err == nil || !strings.Contains(err.Error(), "root key") {
		t.Fatalf("a directory with data but no root key: %v, want it refused", err)
	}
	if _, serr := os.Stat(filepath.Join(dir, "root.key")); !errors.Is(serr, os.ErrNotExist) {
		t.Fatalf("a new root key was made beside the data: %v", serr)
	}
}

// The same at the paths the configuration names (another data file), and
// for a store it cannot look into (another backend): a missing root key is
// refused there, never made anew.
func TestDevRefusesAMissingRootKeyWhereverTheDataMayBe(t *testing.T) {
	for name, c := range map[string]struct {
		from, to, data string
	}{
		"another data file": {"path: custos.db", "path: data.db", "data.db"},
		"another backend":   {"  type: bbolt\n  bbolt:\n    path: custos.db\n", "  type: postgres\n  postgres:\n    url: postgres://custos@127.0.0.1:1/custos\n", ""},
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), ".custos-dev")
			if _, err := prepareDev(dir); err != nil {
				t.Fatal(err)
			}
			conf := filepath.Join(dir, "custos.yaml")
			b, err := os.ReadFile(conf)
			if err != nil {
				t.Fatal(err)
			}
			edited := strings.Replace(string(b), c.from, c.to, 1)
			if edited == string(b) {
				t.Fatal("the dev configuration changed; update this test")
			}
			if err := os.WriteFile(conf, []byte(edited), 0o600); err != nil {
				t.Fatal(err)
			}
			if c.data != "" {
				if err := os.WriteFile(filepath.Join(dir, c.data), []byte("data"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Remove(filepath.Join(dir, "root.key")); err != nil {
				t.Fatal(err)
			}
			if _, err := prepareDev(dir); err == nil || !strings.Contains(err.Error(), "root key") {
				t.Fatalf("no root key: %v, want it refused", err)
			}
			if _, err := os.Stat(filepath.Join(dir, "root.key")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a root key was made: %v", err)
			}
		})
	}
}

// An empty address is refused before anything starts: it would have
// bound every interface, the unauthenticated ops listener's /backup too.
func TestDevRefusesAnEmptyAddress(t *testing.T) {
	for _, flag := range []string{"--listen=", "--ops-listen="} {
		_, _, err := runCLI(t, "dev", "--ephemeral", "--listen", "127.0.0.1:0", flag)
		var u usageError
		if !errors.As(err, &u) || !strings.Contains(err.Error(), "need an address") {
			t.Errorf("%s: %v, want a usage error", flag, err)
		}
	}
}

// --ephemeral keeps its PKI and root in a temporary directory of its own:
// a --dir beside it was silently ignored, and is refused now.
func TestDevRefusesADirWithEphemeral(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "kept")
	cmd := newRootCmd()
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	cmd.SetArgs([]string{"dev", "--ephemeral", "--dir", dir, "--listen", "127.0.0.1:0", "--ops-listen", "off"})
	// Bounded: a dev server that starts instead serves until this ends.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	if err == nil || exitCode(err) != exitUsage || !strings.Contains(err.Error(), "not both") {
		t.Fatalf("dev --ephemeral --dir: %v (exit %d), want a usage error", err, exitCode(err))
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the --dir given: %v; want it not created", err)
	}
}

// custos dev warns when its ops listener, which serves /backup and
// /root/rewrap without authentication, is not on loopback.
func TestLoopbackAddr(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:9464": true, "[::1]:9464": true, "localhost:9464": true,
		"0.0.0.0:9464": false, ":9464": false, "10.0.0.5:9464": false, "ops.lan:9464": false,
	} {
		if got := loopbackAddr(addr); got != want {
			t.Errorf("loopbackAddr(%q) = %v, want %v", addr, got, want)
		}
	}
}
