package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The grpcurl tour (scripts/grpcurl-tour.sh, the README's step 7: every RPC
// from outside Go) passes against a dev server, and fails when an answer
// it checks is wrong. It needs grpcurl (make grpcurl; make test installs
// it) and python3. The README's other steps are run elsewhere, with the
// test server's address and directory in place of the defaults (no test
// binds the fixed ports): step 4 by TestREADMERotateStep, the audit and
// backup commands by the audit and backup tests, the examples by their
// own main_test.go.
func TestTheGrpcurlTourPasses(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	grpcurl, err := exec.LookPath("grpcurl")
	if err != nil {
		grpcurl = filepath.Join(root, ".tools", "bin", "grpcurl")
		if _, err := exec.LookPath(grpcurl); err != nil {
			t.Skip("grpcurl is not installed (make grpcurl)")
		}
	}
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 is not installed")
	}
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, stop := startDev(t, dir)
	defer stop()
	run := func(script string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "bash", script, addr, dir)
		cmd.Dir = root
		cmd.Env = append(cmd.Environ(), "PATH="+filepath.Dir(grpcurl)+":"+pathEnv(cmd.Environ()))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	tour := filepath.Join(root, "scripts", "grpcurl-tour.sh")
	out, err := run(tour)
	if err != nil || !strings.Contains(out, "every RPC answered as expected") {
		t.Fatalf("the tour: %v\n%s", err, out)
	}
	// The same tour expecting a state no tenant has must fail there.
	b, err := os.ReadFile(tour)
	if err != nil {
		t.Fatal(err)
	}
	broken := strings.Replace(string(b), "has TENANT_STATE_ACTIVE", "has NO_SUCH_STATE", 1)
	if broken == string(b) {
		t.Fatal("the tour no longer checks GetTenant's state")
	}
	brokenPath := filepath.Join(t.TempDir(), "broken-tour.sh")
	if err := os.WriteFile(brokenPath, []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := run(brokenPath); err == nil || !strings.Contains(out, "FAIL: KeyService/GetTenant") {
		t.Fatalf("a tour expecting a wrong answer: %v\n%s", err, out)
	}
}

func pathEnv(env []string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			return v
		}
	}
	return ""
}
