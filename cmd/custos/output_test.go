package main

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/custos-kms/custos/client"
)

// enospcWriter fails every write as a full disk does.
type enospcWriter struct {
	mu     sync.Mutex
	writes int
}

func (w *enospcWriter) Write([]byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	return 0, syscall.ENOSPC
}

func (w *enospcWriter) writesSoFar() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes
}

// A command whose standard output cannot be written fails (exit 1): it
// exited 0, so `custos rewrap … > new.ct && mv new.ct old.ct` on a full
// disk replaced the ciphertext with an empty file.
func TestAFailedWriteOfTheOutputIsAnError(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, stop := startDev(t, dir)
	defer stop()
	cli(t, dir, addr, "tenant", "create", "acme")
	cli(t, dir, addr, "key", "create", "tenants/acme/keys/pii")
	ct := strings.TrimSpace(cli(t, dir, addr, "encrypt", "tenants/acme/keys/pii", "v", "--no-ad"))
	conn := []string{"--addr", addr, "--dev-dir", dir}
	for _, args := range [][]string{
		{"encrypt", "tenants/acme/keys/pii", "v", "--no-ad"},
		{"decrypt", "tenants/acme/keys/pii", ct, "--no-ad", "--raw"},
		{"rewrap", "tenants/acme/keys/pii", ct, "--no-ad"},
		{"datakey", "generate", "tenants/acme/keys/pii", "-o", "json"},
		{"key", "get", "tenants/acme/keys/pii"},
		{"tenant", "list"},
		{"audit", "list", "--tenant", "acme"},
	} {
		cmd := newRootCmd()
		w := &enospcWriter{}
		cmd.SetOut(w)
		cmd.SetErr(&bytes.Buffer{})
		cmd.SetArgs(append(args, conn...))
		err := cmd.ExecuteContext(t.Context())
		if err == nil {
			t.Errorf("%q with a full disk for its output: no error", args)
		} else if !errors.Is(err, syscall.ENOSPC) || exitCode(err) != exitOther {
			t.Errorf("%q with a full disk for its output: %v (exit %d), want ENOSPC, exit %d", args, err, exitCode(err), exitOther)
		}
		if w.writesSoFar() == 0 {
			t.Errorf("%q wrote nothing", args)
		}
	}
}

// A tail whose output fails stops with the error instead of polling on.
func TestAuditTailStopsWhenItsOutputFails(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	r := &pollRecorder{stop: func() {}}
	call := func() (context.Context, context.CancelFunc) { return context.WithCancel(ctx) }
	p := newEventPrinter(&outputWriter{w: &enospcWriter{}}, "json")
	err := tailEvents(ctx, call, r, "tenants/acme", client.AuditFilter{PageSize: 1000}, &pageVerifier{}, p, time.Millisecond, false)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("tail with a failing output: %v, want ENOSPC", err)
	}
}

// A caller's certificate common name is taken as sent: in a text listing
// its control characters are escaped, so it cannot forge a row or send
// escape sequences to the reader's terminal.
func TestAnAuditRowCannotBeForgedByAnIdentity(t *testing.T) {
	for _, output := range []string{"text", "table"} {
		var b strings.Builder
		p := newEventPrinter(&b, output)
		p.print(client.AuditEvent{Index: 1, Identity: "a\n2\t2025-01-01T00:00:00Z\tadmin\tdelete_tenant\x1b[2J", Operation: "encrypt", Code: "OK", RequestID: "r"})
		if err := p.flush(); err != nil {
			t.Fatal(err)
		}
		got := b.String()
		if lines := strings.Count(got, "\n"); lines != 2 || strings.ContainsAny(got, "\x1b") {
			t.Errorf("-o %s: %d lines, want the header and one row:\n%s", output, lines, got)
		}
	}
}

// Standard input larger than any field is a usage error, not cut to a
// bound and sent (a 17 MiB MAC input exited 7, "retry", as the message
// limit refused its first 16 MiB).
func TestOversizedStandardInputIsAUsageError(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, stop := startDev(t, dir)
	defer stop()
	cli(t, dir, addr, "tenant", "create", "acme")
	cli(t, dir, addr, "key", "create", "tenants/acme/keys/idx", "--purpose", "mac")
	run := func(in []byte) (string, error) {
		cmd := newRootCmd()
		var out bytes.Buffer
		cmd.SetIn(bytes.NewReader(in))
		cmd.SetOut(&out)
		cmd.SetErr(&bytes.Buffer{})
		cmd.SetArgs([]string{"mac", "compute", "tenants/acme/keys/idx", "-", "--addr", addr, "--dev-dir", dir})
		err := cmd.ExecuteContext(t.Context())
		return out.String(), err
	}
	if _, err := run(make([]byte, maxInput+1)); err == nil || exitCode(err) != exitUsage || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("mac compute of %d bytes on stdin: %v, want a usage error", maxInput+1, err)
	}
	if _, err := run(make([]byte, 17<<20)); err == nil || exitCode(err) != exitUsage {
		t.Fatalf("mac compute of 17 MiB on stdin: %v, want a usage error", err)
	}
	if out, err := run([]byte("row-1")); err != nil || out == "" {
		t.Fatalf("mac compute of a small stdin: %q, %v", out, err)
	}
}

// Commands that call no server (audit verify, backup verify, root
// rewrap…) fail on a failed write of their output too.
func TestEveryCommandChecksItsOutput(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, stop := startDev(t, dir)
	cli(t, dir, addr, "tenant", "create", "acme")
	stop() // signs its last checkpoint; audit verify opens the bbolt file itself
	conf := filepath.Join(dir, "custos.yaml")
	if _, errOut, err := runCLI(t, "audit", "verify", "--config", conf); err != nil {
		t.Fatalf("audit verify of a new store: %v\n%s", err, errOut)
	}
	cmd := newRootCmd()
	cmd.SetOut(&enospcWriter{})
	cmd.SetErr(&bytes.Buffer{})
	cmd.SetArgs([]string{"audit", "verify", "--config", conf})
	if err := cmd.ExecuteContext(t.Context()); !errors.Is(err, syscall.ENOSPC) || exitCode(err) != exitOther {
		t.Fatalf("audit verify with a full disk for its output: %v, want ENOSPC, exit %d", err, exitOther)
	}
}

// A server whose banner could not be written still stops cleanly (exit 0)
// when asked to: its stdout is not its output, and a supervisor would
// record an intended stop as a failure.
func TestAServerStopsCleanlyAfterAFailedBanner(t *testing.T) {
	w := &enospcWriter{}
	cmd := newRootCmd()
	cmd.SetOut(w)
	cmd.SetErr(&bytes.Buffer{})
	cmd.SetArgs([]string{"dev", "--dir", filepath.Join(t.TempDir(), "dev"), "--listen", "127.0.0.1:0", "--ops-listen", "off"})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	// The banner is written once the server listens.
	deadline := time.After(30 * time.Second)
	for w.writesSoFar() == 0 {
		select {
		case err := <-done:
			t.Fatalf("dev ended before writing its banner: %v", err)
		case <-deadline:
			t.Fatal("dev wrote no banner within 30s")
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("dev stopped after a failed banner: %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("dev still running 30s after it was stopped")
	}
}
