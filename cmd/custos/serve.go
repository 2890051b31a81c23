package main

import (
	"context"
	"io"
	"net"
	"os"

	"github.com/spf13/cobra"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/custos"
)

func newServeCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "serve --config FILE",
		Short: "Serve the Custos API as configured in a YAML file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			return serve(cmd.Context(), cfg, os.Stderr, nil)
		},
	}
	cmd.Flags().StringVar(&path, "config", "custos.yaml", "configuration file")
	return cmd
}

// serve runs Custos as cfg says until ctx is done. ready, if not nil, is
// called with the bound addresses (ops is nil when the ops listener is off)
// before serving starts.
func serve(ctx context.Context, cfg *config.Config, logw io.Writer, ready func(addr, ops net.Addr)) error {
	rt, err := custos.New(ctx, cfg, custos.Options{LogWriter: logw, HandleSIGHUP: true})
	if err != nil {
		return err
	}
	if ready != nil {
		ready(rt.Addr(), rt.OpsAddr())
	}
	return rt.Run(ctx)
}
