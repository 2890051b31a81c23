package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/custos"
)

func newServeCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:         "serve --config FILE",
		Short:       "Serve the Custos API as configured in a YAML file",
		Args:        cobra.NoArgs,
		Annotations: map[string]string{servesUntilStopped: "true"},
		RunE: func(cmd *cobra.Command, _ []string) error {
			hup := catchSIGHUP()
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			return serve(cmd.Context(), cfg, os.Stderr, hup, func(addr, _ net.Addr) {
				// One line for scripts and supervisors that start it on
				// port 0.
				fmt.Fprintf(out, "custos listening on %s\n", addr)
			})
		},
	}
	cmd.Flags().StringVar(&path, "config", "custos.yaml", "configuration file")
	return cmd
}

// serve runs Custos as cfg says until ctx is done. reload is the process's
// SIGHUP channel when this is the process's one server (custos serve, dev),
// which then also sizes GOMAXPROCS for the hashing threads; tests running a
// server in-process pass nil. ready, if not nil, is called with the bound
// addresses (ops is nil when the ops listener is off) before serving starts.
func serve(ctx context.Context, cfg *config.Config, logw io.Writer, reload <-chan os.Signal, ready func(addr, ops net.Addr)) error {
	rt, err := custos.New(ctx, cfg, custos.Options{LogWriter: logw, Reload: reload, TuneRuntime: reload != nil})
	if err != nil {
		return err
	}
	if ready != nil {
		ready(rt.Addr(), rt.OpsAddr())
	}
	return rt.Run(ctx)
}

// earlySIGHUP is the channel main registered before anything else, when
// the command is a server.
var earlySIGHUP <-chan os.Signal

// catchSIGHUP makes SIGHUP reload the policy instead of ending the process,
// from this moment on: custos serve and dev call it first thing. SIGHUPs
// that arrive before the server runs wait (coalesced) in the channel.
func catchSIGHUP() <-chan os.Signal {
	if earlySIGHUP != nil {
		return earlySIGHUP
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup
}
