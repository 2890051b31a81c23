// Package node_test runs the Node.js example (index.js) against a real
// Custos in make test: `npm ci` from the lockfile, then node, with nothing
// but the protos in proto/.
package node_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/custos-kms/custos/client/clienttest"
	"github.com/custos-kms/custos/internal/testkit"
)

func TestNodeExample(t *testing.T) {
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: scripts/test-deps.sh (run by make test) installs it", tool)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	npm := exec.CommandContext(ctx, "npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error") // no package's install script runs
	if out, err := npm.CombinedOutput(); err != nil {
		t.Fatalf("npm ci: %v\n%s", err, out)
	}
	srv := clienttest.Start(t)
	node := exec.CommandContext(ctx, "node", "--no-deprecation", "index.js", srv.Addr, srv.Dir)
	out, err := node.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "every call answered as expected") || !strings.Contains(string(out), "rehashed") {
		t.Fatalf("node index.js: %v\n%s", err, out)
	}
	testkit.CrossCheck(t, srv.Client(t), string(out))
	t.Logf("%s", out)
}
