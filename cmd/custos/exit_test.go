package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/backup"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/bbolt"
	"github.com/custos-kms/custos/keystore/storage/memory"
)

// Commands that work on the store directly (backup, restore, root rewrap,
// audit verify) meet the root's and the store's own errors, not a
// server's status.
func TestExitCodesOfCommandsOnTheStoreDirectly(t *testing.T) {
	for err, want := range map[error]int{
		fmt.Errorf("backup: unwrap: %w", root.ErrUnavailable):      exitUnavailable,
		fmt.Errorf("backup: snapshot: %w", storage.ErrUnavailable): exitUnavailable,
		fmt.Errorf("backup: %w", backup.ErrDamaged):                exitInvalid,
		backup.ErrRestoring: exitPrecondition,
		fmt.Errorf("restore: %w", backup.ErrTargetNotEmpty): exitPrecondition,
		fmt.Errorf("restore: %w", backup.ErrTooOld):         exitPrecondition,
		fmt.Errorf("restore: %w", backup.ErrServersRunning): exitPrecondition,
		fmt.Errorf("restore: %w", backup.ErrUnknownFormat):  exitInvalid,
		// The target's bbolt file held by a running server (stop it).
		fmt.Errorf("open: %w", bbolt.ErrLocked): exitPrecondition,
		// The user's interrupt, during a read of standard input or a call,
		// is no outage a script should retry.
		context.Canceled:                    exitOther,
		&client.Error{Code: codes.Canceled}: exitOther,
		// A change that lost to concurrent ones too often: retry it.
		&client.Error{Code: codes.Aborted}: exitUnavailable,
		fmt.Errorf("backup through the server: 429 Too Many Requests: a backup is already being taken (%w)", errRetryLater): exitUnavailable,
	} {
		if got := exitCode(err); got != want {
			t.Errorf("exit code of %q: %d, want %d", err, got, want)
		}
	}
}

// custos root rewrap meets the keystore's errors, which carry a root's or
// a store's outage as keystore.ErrUnavailable: exit 7, so that a script
// retries, as for the other commands on the store.
func TestARootOutageDuringRootRewrapExitsUnavailable(t *testing.T) {
	lr, err := local.OpenOrCreate(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	r := &switchableRoot{Root: lr}
	ks, err := keystore.New(keystore.Config{Storage: memory.New(), Root: r, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.CreateTenant(t.Context(), "acme"); err != nil {
		t.Fatal(err)
	}
	r.down.Store(true)
	_, err = ks.RewrapTenantKEKs(t.Context(), func(string) {})
	if got := exitCode(err); err == nil || got != exitUnavailable {
		t.Fatalf("root rewrap with the root down: %v, exit %d; want exit %d", err, got, exitUnavailable)
	}
	if got := exitCode(fmt.Errorf("rewrap: %w", keystore.ErrStorageFull)); got != exitUnavailable {
		t.Errorf("a full store: exit %d, want %d", got, exitUnavailable)
	}
}

// switchableRoot is a real root that can be made unavailable.
type switchableRoot struct {
	root.Root
	down atomic.Bool
}

func (r *switchableRoot) Unwrap(ctx context.Context, wrapped, aad []byte) ([]byte, error) {
	if r.down.Load() {
		return nil, fmt.Errorf("test root: %w", root.ErrUnavailable)
	}
	return r.Root.Unwrap(ctx, wrapped, aad)
}

// A command waiting on standard input stops when its context ends (Ctrl-C
// is caught by main's signal context, so the read must watch it).
func TestAReadFromStandardInputStopsWithTheCommand(t *testing.T) {
	pr, pw := io.Pipe() // input that never comes
	defer pw.Close()
	cmd := newRootCmd()
	cmd.SetIn(pr)
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	dir := t.TempDir()
	if _, err := prepareDev(dir); err != nil { // client files; nothing listens at --addr
		t.Fatal(err)
	}
	cmd.SetArgs([]string{"password", "hash", "tenants/acme/keys/pw", "--addr", "127.0.0.1:1", "--dev-dir", dir})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("password hash with no input, its context ended: %v, want the context's error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("password hash kept waiting for standard input after its context ended")
	}
}

// audit list and audit tail each keep their own --since default: list reads
// every event unless told otherwise (the two once shared one variable, and
// list took tail's ten minutes).
func TestAuditListAndTailKeepTheirOwnSince(t *testing.T) {
	audit := newAuditCmd()
	for name, want := range map[string]string{"list": "0s", "tail": "10m0s"} {
		sub, _, err := audit.Find([]string{name})
		if err != nil {
			t.Fatal(err)
		}
		if got := sub.Flags().Lookup("since").Value.String(); got != want {
			t.Errorf("audit %s --since defaults to %s, want %s", name, got, want)
		}
	}
}

// A zero or negative --interval or --limit is a usage error, not a panic or
// an empty success.
func TestAuditRefusesNonPositiveIntervalAndLimit(t *testing.T) {
	for _, args := range [][]string{
		{"audit", "tail", "--tenant", "a", "--interval", "0"},
		{"audit", "tail", "--tenant", "a", "--interval", "-1s"},
		{"audit", "list", "--tenant", "a", "--limit", "0"},
		{"audit", "list", "--tenant", "a", "--limit", "-1"},
	} {
		_, stderr, err := runCLI(t, append(args, "--addr", "127.0.0.1:1")...)
		var ue usageError
		if !errors.As(err, &ue) || strings.Contains(stderr, "goroutine") {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
}

// Every command that takes a key name refuses a malformed one as a usage
// error showing the expected form, before anything is dialled.
func TestMalformedKeyNamesAreUsageErrors(t *testing.T) {
	for _, name := range []string{"acme/pii", "tenants/acme/keys/", "tenants/a/b/keys/c", "tenants/Acme/keys/pii"} {
		for _, args := range [][]string{
			{"key", "get", name},
			{"key", "rotate", name},
			{"key", "update", name, "--rotation-period", "24h"},
			{"encrypt", name, "x", "--no-ad"},
			{"decrypt", name, "eA==", "--no-ad"},
			{"mac", "compute", name, "x"},
			{"mac", "verify", name, "x", "eA=="},
			{"mac", "blind-index", name, "x"},
			{"password", "hash", name},
			{"password", "verify", name, "h"},
			{"datakey", "generate", name},
			{"datakey", "decrypt", name, "eA=="},
			{"rewrap", name, "eA=="},
		} {
			_, _, err := runCLI(t, append(args, "--addr", "127.0.0.1:1")...)
			var ue usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), "tenants/{tenant}/keys/{key}") {
				t.Errorf("%v: %v, want a usage error showing tenants/{tenant}/keys/{key}", args, err)
			}
		}
	}
}

// Durations the service would refuse are usage errors, named, before
// anything is dialled.
func TestDurationsOutOfRangeAreUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"tenant", "delete", "acme", "--waiting", "1h"},
		{"tenant", "delete", "acme", "--waiting", "9000h"},
		{"key", "version", "destroy", "tenants/acme/keys/k", "1", "--waiting", "-1s"},
		{"key", "create", "tenants/acme/keys/k", "--rotation-period", "-1h"},
		{"key", "create", "tenants/acme/keys/k", "--rotation-period", "30m"},
		{"key", "update", "tenants/acme/keys/k", "--rotation-period", "10m"},
	} {
		_, _, err := runCLI(t, append(args, "--addr", "127.0.0.1:1")...)
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "--") {
			t.Errorf("%v: %v, want a usage error naming the flag", args, err)
		}
	}
}

// A malformed CUSTOS_TIMEOUT is a usage error, not silently the default.
func TestAMalformedCUSTOSTIMEOUTIsAUsageError(t *testing.T) {
	t.Setenv("CUSTOS_TIMEOUT", "bogus")
	_, _, err := runCLI(t, "tenant", "get", "acme", "--addr", "127.0.0.1:1")
	var ue usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "CUSTOS_TIMEOUT") {
		t.Fatalf("CUSTOS_TIMEOUT=bogus: %v, want a usage error naming it", err)
	}
}

// CUSTOS_DEV_DIR fills in only the client files given neither as flags
// nor in their own variables.
func TestCUSTOSDEVDIRYieldsToCUSTOSCA(t *testing.T) {
	t.Setenv("CUSTOS_CA", "/elsewhere/ca.pem")
	var c conn
	cmd := &cobra.Command{Use: "x"}
	c.flags(cmd)
	c.devDir = "/dev-dir"
	c.applyDevDir(cmd)
	if c.ca != "/elsewhere/ca.pem" || c.cert != filepath.Join("/dev-dir", "client.pem") {
		t.Fatalf("ca %q, cert %q: want CUSTOS_CA's and the dev dir's", c.ca, c.cert)
	}
}

// A server certificate the client cannot verify ends the TLS handshake:
// exit 4 (not authenticated), not 7 (unavailable: retry later).
func TestAServerCertificateTheClientCannotVerifyIsNotAuthenticated(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, stop := startDev(t, dir)
	defer stop()
	other := filepath.Join(t.TempDir(), ".custos-dev")
	if _, err := prepareDev(other); err != nil {
		t.Fatal(err)
	}
	_, _, err := runCLI(t, "tenant", "list", "--addr", addr, "--ca", filepath.Join(other, "ca.pem"), "--cert", filepath.Join(dir, "client.pem"), "--key", filepath.Join(dir, "client-key.pem"), "--timeout", "5s")
	if code := exitCode(err); code != exitPermission {
		t.Errorf("a server certificate of another CA: exit %d (%v), want %d", code, err, exitPermission)
	}
}

// A negative --timeout is refused (exit 2): it meant "never", which only 0
// says.
func TestANegativeTimeoutIsAUsageError(t *testing.T) {
	_, _, err := runCLI(t, "tenant", "list", "--addr", "127.0.0.1:1", "--timeout", "-5s")
	var u usageError
	if !errors.As(err, &u) || exitCode(err) != 2 {
		t.Fatalf("%v (exit %d), want a usage error", err, exitCode(err))
	}
}

// A kept checkpoint is read no further than its bound: /dev/zero is too
// large at once, not read until memory runs out.
func TestAKeptCheckpointIsReadBounded(t *testing.T) {
	b, err := readBounded("/dev/zero", maxKeptCheckpoint)
	if err != nil || len(b) != maxKeptCheckpoint+1 {
		t.Fatalf("read %d bytes, %v; want %d", len(b), err, maxKeptCheckpoint+1)
	}
}

// An argument that starts with "-" (a token, a plaintext) is read as
// flags; the usage error that follows does not repeat it, nor the value
// of a "-oVALUE" it set.
func TestAFlagErrorDoesNotRepeatTheArgument(t *testing.T) {
	for _, args := range [][]string{
		{"encrypt", "tenants/a/keys/k", "-Zs3cretvalue", "--no-ad"},
		{"encrypt", "tenants/a/keys/k", "--s3cretvalue", "--no-ad"},
		{"encrypt", "tenants/a/keys/k", "-os3cretvalue", "--no-ad", "--addr", "127.0.0.1:1"},
		{"encrypt", "tenants/a/keys/k", "-----BEGIN s3cret-----", "--no-ad"},
		{"encrypt", "tenants/a/keys/k", "--=s3cretvalue", "--no-ad"},
	} {
		out, errOut, err := runCLI(t, args...)
		if err == nil || exitCode(err) != exitUsage {
			t.Fatalf("custos %v: %v (exit %d), want a usage error", args, err, exitCode(err))
		}
		if strings.Contains(err.Error()+out+errOut, "s3cret") {
			t.Errorf("custos %v: the error repeats the argument: %v", args, err)
		}
	}
}

// A mistyped long flag is answered with the flags it is close to, which
// are the command's words, never the caller's.
func TestAMistypedFlagNamesTheFlagsItIsCloseTo(t *testing.T) {
	_, _, err := runCLI(t, "audit", "list", "--tenat", "acme")
	if err == nil || exitCode(err) != exitUsage {
		t.Fatalf("audit list --tenat: %v (exit %d), want a usage error", err, exitCode(err))
	}
	if !strings.Contains(err.Error(), "did you mean --tenant?") || strings.Contains(err.Error(), "tenat") {
		t.Errorf("audit list --tenat: %v, want a suggestion of --tenant that does not repeat the argument", err)
	}
	// Far from every flag, or unlike a flag's name (a secret that starts
	// with "--"): no suggestion.
	for _, arg := range []string{"--zzzzzzzz", "--Tenant", "--tenant!"} {
		_, _, err = runCLI(t, "audit", "list", arg)
		if err == nil || strings.Contains(err.Error(), "did you mean") || !strings.Contains(err.Error(), "--help lists its flags") {
			t.Errorf("audit list %s: %v, want no suggestion", arg, err)
		}
	}
}

// audit list --public-key checks with the key it pins, as --verify does:
// a key that is no key fails, where it was ignored without --verify.
func TestAPinnedAuditKeyImpliesVerify(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, stop := startDev(t, dir)
	defer stop()
	cli(t, dir, addr, "tenant", "create", "acme")
	_, _, err := runCLI(t, "audit", "list", "--tenant", "acme", "--public-key", "not-a-key", "--addr", addr,
		"--ca", filepath.Join(dir, "ca.pem"), "--cert", filepath.Join(dir, "client.pem"), "--key", filepath.Join(dir, "client-key.pem"))
	if err == nil || !strings.Contains(err.Error(), "--public-key") {
		t.Fatalf("audit list with a malformed pinned key and no --verify: %v, want it refused", err)
	}
}

// password hash reading a pipe that never closes (a stdin inherited from a
// script) gives up at --timeout with exit 7: the timeout waits only for a
// person typing at a terminal.
func TestPasswordFromAPipeThatNeverClosesTimesOut(t *testing.T) {
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	if _, err := prepareDev(dir); err != nil {
		t.Fatal(err)
	}
	cmd := newRootCmd()
	cmd.SetIn(pr)
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	cmd.SetArgs([]string{"password", "hash", "tenants/a/keys/pw", "--timeout", "200ms", "--addr", "127.0.0.1:1", "--dev-dir", dir})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(t.Context()) }()
	select {
	case err := <-done:
		if code := exitCode(err); code != exitUnavailable {
			t.Fatalf("%v (exit %d), want exit %d", err, code, exitUnavailable)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("password hash waited for a pipe that never closes past --timeout")
	}
}

// audit verify of a bbolt path that names no file fails and creates none.
func TestAuditVerifyOfAMissingBboltFileFails(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	if _, err := prepareDev(dir); err != nil {
		t.Fatal(err)
	}
	if out, err := runMainErr(t, "audit", "verify", "--config", filepath.Join(dir, "custos.yaml")); err == nil {
		t.Fatalf("audit verify of a missing file succeeded:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "custos.db")); !os.IsNotExist(err) {
		t.Fatalf("audit verify created the store: %v", err)
	}
}

// audit list and tail check -o and --public-key before they dial: a
// usage error (exit 2) even where no connection files are.
func TestAuditFlagsAreCheckedBeforeDialling(t *testing.T) {
	t.Chdir(t.TempDir()) // no .custos-dev here
	for _, args := range [][]string{
		{"audit", "list", "--tenant", "acme", "-o", "yaml"},
		{"audit", "tail", "--tenant", "acme", "-o", "yaml"},
		{"audit", "list", "--tenant", "acme", "--public-key", "not-a-key"},
		{"audit", "tail", "--tenant", "acme", "--public-key", "not-a-key"},
		{"audit", "verify", "--config", "missing.yaml", "--public-key", "not-a-key"},
	} {
		if _, _, err := runCLI(t, args...); exitCode(err) != exitUsage {
			t.Errorf("custos %v: %v (exit %d), want exit %d", args, err, exitCode(err), exitUsage)
		}
	}
}
