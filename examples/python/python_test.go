// Package python_test runs the Python example (example.py) against a real
// Custos in make test: Debian's python3-grpcio and python3-grpc-tools,
// stubs generated from proto/ alone.
package python_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/custos-kms/custos/client/clienttest"
	"github.com/custos-kms/custos/internal/testkit"
)

// python is Debian's interpreter, where python3-grpcio is installed.
const python = "/usr/bin/python3"

func TestPythonExample(t *testing.T) {
	if out, err := exec.Command(python, "-c", "import grpc, grpc_tools").CombinedOutput(); err != nil {
		t.Fatalf("%s has no grpc: scripts/test-deps.sh (run by make test) installs python3-grpcio and python3-grpc-tools: %v\n%s", python, err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stubs := t.TempDir()
	protoDir := filepath.Join("..", "..", "proto")
	var files []string
	for _, g := range []string{"custos/v1/*.proto", "buf/validate/validate.proto", "google/rpc/*.proto", "grpc/health/v1/health.proto"} {
		m, err := filepath.Glob(filepath.Join(protoDir, g))
		if err != nil || len(m) == 0 {
			t.Fatalf("no %s in proto/", g)
		}
		for _, f := range m {
			rel, _ := filepath.Rel(protoDir, f)
			files = append(files, rel)
		}
	}
	// Debian's python3-grpc-tools bundles protoc 3.5, which predates proto3
	// optional fields: a copy of proto/ without that label (on the wire the
	// same field) is what it compiles.
	src := proto3WithoutOptional(t, protoDir, files)
	gen := exec.CommandContext(ctx, python, append([]string{"-m", "grpc_tools.protoc", "-I", src, "--python_out=" + stubs, "--grpc_python_out=" + stubs}, files...)...)
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("protoc: %v\n%s", err, out)
	}
	srv := clienttest.Start(t)
	run := exec.CommandContext(ctx, python, "example.py", srv.Addr, srv.Dir)
	run.Env = append(os.Environ(), "PYTHONPATH="+stubs)
	out, err := run.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "every call answered as expected") || !strings.Contains(string(out), "rehashed") {
		t.Fatalf("example.py: %v\n%s", err, out)
	}
	testkit.CrossCheck(t, srv.Client(t), string(out))
	t.Logf("%s", out)
}

// proto3WithoutOptional copies files under protoDir to a temporary
// directory, dropping the "optional" label of proto3 fields.
func proto3WithoutOptional(t *testing.T, protoDir string, files []string) string {
	t.Helper()
	dst := t.TempDir()
	opt := regexp.MustCompile(`(?m)^(\s*)optional `)
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(protoDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), `syntax = "proto3"`) {
			b = opt.ReplaceAll(b, []byte("${1}"))
		}
		if err := os.MkdirAll(filepath.Join(dst, filepath.Dir(f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}
