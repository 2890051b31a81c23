package policy

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/custos-kms/custos/internal/testkit"
)

const (
	policyA = "rules:\n  - {identities: [svc], tenants: [a], permissions: [encrypt]}\n"
	policyB = "rules:\n  - {identities: [svc], tenants: [b], permissions: [encrypt]}\n"
	invalid = "rules:\n  - {identities: [svc], tenants: [b], permissions: [encrypt, launch-missiles]}\n"
)

// writePolicy replaces the policy file atomically, as an operator's
// deployment tool should, so a reload never reads half a file.
func writePolicy(t *testing.T, path, doc string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func newTestHolder(t *testing.T, doc string) (*Holder, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writePolicy(t, path, doc)
	h, err := NewHolder(path)
	if err != nil {
		t.Fatalf("NewHolder: %v", err)
	}
	return h, path
}

func TestNewHolderRejectsInvalidFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writePolicy(t, path, invalid)
	if _, err := NewHolder(path); err == nil || !strings.Contains(err.Error(), "launch-missiles") {
		t.Errorf("NewHolder error = %v", err)
	}
	if _, err := NewHolder(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Error("NewHolder succeeded on a missing file")
	}
}

func TestReloadSwapsPolicy(t *testing.T) {
	h, path := newTestHolder(t, policyA)
	old := h.Current()
	if !old.Allowed("svc", "a", Encrypt) || old.Allowed("svc", "b", Encrypt) {
		t.Fatal("initial policy wrong")
	}

	writePolicy(t, path, policyB)
	if err := h.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if p := h.Current(); p.Allowed("svc", "a", Encrypt) || !p.Allowed("svc", "b", Encrypt) {
		t.Error("reloaded policy not in force")
	}
	// A Policy obtained before the reload is unchanged.
	if !old.Allowed("svc", "a", Encrypt) {
		t.Error("old Policy value changed under its holder")
	}
}

func TestReloadKeepsOldPolicyOnInvalidFile(t *testing.T) {
	h, path := newTestHolder(t, policyA)
	before := h.Current()
	for name, doc := range map[string]string{
		"unknown permission": invalid,
		"empty file":         "",
		"truncated file":     policyA[:20],
	} {
		t.Run(name, func(t *testing.T) {
			writePolicy(t, path, doc)
			if err := h.Reload(); err == nil {
				t.Fatal("Reload succeeded on an invalid file")
			}
			if h.Current() != before {
				t.Error("invalid file replaced the policy")
			}
		})
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := h.Reload(); err == nil || h.Current() != before {
		t.Errorf("missing file: err = %v, policy replaced = %v", err, h.Current() != before)
	}
}

// TestAllowedDuringReload checks under -race that calls keep being answered
// by one complete policy or the other while reloads happen.
func TestAllowedDuringReload(t *testing.T) {
	h, path := newTestHolder(t, policyA)
	pathB := path + ".b"
	if err := os.WriteFile(pathB, []byte(policyB), 0o600); err != nil {
		t.Fatal(err)
	}

	var stop atomic.Bool
	var checks atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				p := h.Current()
				a, b := p.Allowed("svc", "a", Encrypt), p.Allowed("svc", "b", Encrypt)
				if a == b {
					t.Errorf("saw a mixed policy: a=%v b=%v", a, b)
					return
				}
				if p.Allowed("svc", "c", Encrypt) {
					t.Error("tenant c allowed")
					return
				}
				checks.Add(1)
			}
		}()
	}
	for i := range 200 {
		doc := policyA
		if i%2 == 0 {
			doc = policyB
		}
		if i%10 == 9 {
			doc = invalid
		}
		writePolicy(t, path, doc)
		err := h.Reload()
		if (doc == invalid) != (err != nil) {
			t.Errorf("reload %d: err = %v", i, err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if checks.Load() == 0 {
		t.Error("no checks ran")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 5s waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWatchReloadsOnSIGHUP(t *testing.T) {
	h, path := newTestHolder(t, policyA)
	var logs syncBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() { defer close(done); h.ReloadOn(ctx, hup, logger) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("ReloadOn did not return within 10s of its context ending")
		}
	})

	writePolicy(t, path, policyB)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the SIGHUP reload", func() bool { return h.Current().Allowed("svc", "b", Encrypt) })
	waitFor(t, "the reload log line", func() bool { return strings.Contains(logs.String(), `"msg":"policy reloaded"`) })

	// An invalid file is logged and the policy in force stays.
	before := h.Current()
	writePolicy(t, path, invalid)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the failure log line", func() bool { return strings.Contains(logs.String(), "policy reload failed") })
	if h.Current() != before {
		t.Error("invalid file replaced the policy")
	}
	if strings.Contains(logs.String(), "identities:") {
		t.Error("log contains the policy file's contents")
	}
}

// syncBuffer collects logs safely across goroutines.
type syncBuffer = testkit.SyncBuffer
