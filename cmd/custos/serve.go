package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/bbolt"
	"github.com/custos-kms/custos/keystore/storage/memory"
	"github.com/custos-kms/custos/server"
	"github.com/custos-kms/custos/server/policy"
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

// newLogger returns a JSON slog logger at the configured level.
func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level)) // validated by config
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}

// openRoot is the composition root's choice of root provider.
func openRoot(cfg *config.Config) (root.Root, error) {
	switch cfg.Root.Type {
	case "local":
		return local.Open(cfg.Root.Local.KeyFile)
	}
	return nil, fmt.Errorf("root type %q is not supported", cfg.Root.Type)
}

// openStorage is the composition root's choice of storage backend.
func openStorage(cfg *config.Config) (storage.Store, error) {
	switch cfg.Storage.Type {
	case "bbolt":
		return bbolt.Open(cfg.Storage.Bbolt.Path, bbolt.Options{})
	case "memory":
		return memory.New(), nil
	}
	return nil, fmt.Errorf("storage type %q is not supported", cfg.Storage.Type)
}

// serve runs the server until ctx is done, then stops gracefully. ready, if
// not nil, receives the bound address once the server is listening.
func serve(ctx context.Context, cfg *config.Config, logw io.Writer, ready func(addr net.Addr)) error {
	logger := newLogger(logw, cfg.Log.Level)
	rt, err := openRoot(cfg)
	if err != nil {
		return err
	}
	store, err := openStorage(cfg)
	if err != nil {
		return err
	}
	defer store.Close()
	ks, err := keystore.New(keystore.Config{
		Storage:   store,
		Root:      rt,
		CacheSize: cfg.Cache.Size,
		CacheTTL:  cfg.Cache.TTL,
		Logger:    logger,
	})
	if err != nil {
		return err
	}
	pol, err := policy.NewHolder(cfg.PolicyFile)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pol.WatchSIGHUP(ctx, logger)

	srv, err := server.New(server.Config{
		Keystore: ks,
		Policy:   pol,
		Logger:   logger,
		Limits: server.Limits{
			MaxPlaintextBytes: cfg.Limits.MaxPlaintextBytes,
			MaxBatchItems:     cfg.Limits.MaxBatchItems,
			MaxMessageBytes:   cfg.Limits.MaxMessageBytes,
		},
	})
	if err != nil {
		return err
	}
	tlsConf, err := server.TLSConfig(cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.TLS.ClientCAFile)
	if err != nil {
		return err
	}
	gs, err := srv.NewGRPCServer(tlsConf)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	logger.Info("custos serving", "addr", lis.Addr().String(), "root", cfg.Root.Type, "storage", cfg.Storage.Type)
	if ready != nil {
		ready(lis.Addr())
	}

	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	logger.Info("custos stopping", "timeout", cfg.ShutdownTimeout.String())
	srv.Shutdown()
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(cfg.ShutdownTimeout):
		logger.Warn("graceful stop timed out; closing open calls")
		gs.Stop()
		<-stopped
	}
	if err := <-errc; err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}
