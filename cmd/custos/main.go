// Command custos is the Custos key-management service and its admin CLI.
//
//	custos dev                      the embedded default: dev PKI, local root, bbolt, on 127.0.0.1:8443
//	custos serve --config FILE      the server from a YAML config
//	custos tenant|key|encrypt|…     admin commands through the Go client
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "serve" || os.Args[1] == "dev") {
		// A server reloads its policy on SIGHUP; from the first instruction
		// on, a SIGHUP is caught, never fatal (serve and dev take it up).
		earlySIGHUP = catchSIGHUP()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The first SIGINT or SIGTERM starts a graceful stop; once it has, the
	// signals are no longer caught, so a second one ends the process at
	// once (a drain can last shutdown_timeout).
	context.AfterFunc(ctx, stop)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		msg := err.Error()
		if !strings.HasPrefix(msg, "custos") {
			msg = "custos: " + msg
		}
		fmt.Fprintln(os.Stderr, msg)
		os.Exit(exitCode(err))
	}
}
