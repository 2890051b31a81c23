package testkit

import (
	"context"
	"os"
	"os/exec"
	"strings"
)

// GoCommand is the go command tests build binaries with: $GO when set
// (make exports it; it may be several words, such as "env
// GOTOOLCHAIN=go1.26.0 go"), else go, with args.
func GoCommand(ctx context.Context, args ...string) *exec.Cmd {
	goCmd := strings.Fields(os.Getenv("GO"))
	if len(goCmd) == 0 {
		goCmd = []string{"go"}
	}
	return exec.CommandContext(ctx, goCmd[0], append(goCmd[1:], args...)...)
}
