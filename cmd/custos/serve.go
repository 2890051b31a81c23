package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/awskms"
	"github.com/custos-kms/custos/keystore/root/gcpkms"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/root/pkcs11"
	vaultroot "github.com/custos-kms/custos/keystore/root/vault"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/bbolt"
	"github.com/custos-kms/custos/keystore/storage/memory"
	"github.com/custos-kms/custos/keystore/storage/postgres"
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

// openRoot is the composition root's choice of root provider. Vault and
// PKCS#11 check their key before returning (within a minute); the cloud KMS
// clients are built without a call. pkcs11 and gcpkms roots hold resources
// released by their Close method (io.Closer).
func openRoot(cfg *config.Config) (root.Root, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rc := cfg.Root
	switch rc.Type {
	case "local":
		return local.Open(rc.Local.KeyFile)
	case "vault":
		v := rc.Vault
		token, err := v.Auth.EnvToken()
		if err != nil {
			return nil, err
		}
		auth := vaultroot.Auth{Token: token, TokenFile: v.Auth.TokenFile}
		if a := v.Auth.AppRole; a != nil {
			secretID, err := a.EnvSecretID()
			if err != nil {
				return nil, err
			}
			auth.AppRole = &vaultroot.AppRole{Mount: a.Mount, RoleID: a.RoleID, SecretID: secretID, SecretIDFile: a.SecretIDFile}
		}
		if c := v.Auth.Cert; c != nil {
			auth.Cert = &vaultroot.Cert{Mount: c.Mount, Role: c.Role, CertFile: c.CertFile, KeyFile: c.KeyFile}
		}
		return vaultroot.New(ctx, vaultroot.Config{
			Address:    v.Address,
			Namespace:  v.Namespace,
			Mount:      v.Mount,
			KeyName:    v.KeyName,
			CACertFile: v.CACertFile,
			Auth:       auth,
			Timeout:    v.Timeout,
			MaxRetries: v.MaxRetries,
		})
	case "pkcs11":
		p := rc.PKCS11
		return pkcs11.New(ctx, pkcs11.Config{
			Module:      p.Module,
			TokenLabel:  p.TokenLabel,
			KeyLabel:    p.KeyLabel,
			PINFile:     p.PINFile,
			PINEnv:      p.PINEnv,
			MaxSessions: p.MaxSessions,
		})
	case "awskms":
		a := rc.AWSKMS
		return awskms.New(ctx, awskms.Config{KeyID: a.KeyID, Region: a.Region, Profile: a.Profile, Endpoint: a.Endpoint, MaxAttempts: a.MaxAttempts})
	case "gcpkms":
		g := rc.GCPKMS
		// The client keeps the context for its lifetime (credential refresh).
		return gcpkms.New(context.Background(), gcpkms.Config{KeyName: g.KeyName, CredentialsFile: g.CredentialsFile, Endpoint: g.Endpoint})
	}
	return nil, fmt.Errorf("root type %q is not supported", rc.Type)
}

// openStorage is the composition root's choice of storage backend.
func openStorage(ctx context.Context, cfg *config.Config) (storage.Store, error) {
	switch cfg.Storage.Type {
	case "bbolt":
		return bbolt.Open(cfg.Storage.Bbolt.Path, bbolt.Options{})
	case "postgres":
		url, err := cfg.Storage.Postgres.PostgresURL()
		if err != nil {
			return nil, err
		}
		return postgres.Open(ctx, postgres.Config{URL: url, MaxConns: cfg.Storage.Postgres.MaxConns})
	case "memory":
		return memory.New(), nil
	}
	return nil, fmt.Errorf("storage type %q is not supported", cfg.Storage.Type)
}

// openKeystore opens the configured root and storage and builds the keystore.
// The caller calls the returned close function when done: it closes the
// store and the root (an HSM session pool, a KMS connection).
func openKeystore(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*keystore.Service, func(), error) {
	rt, err := openRoot(cfg)
	if err != nil {
		return nil, nil, err
	}
	store, err := openStorage(ctx, cfg)
	if err != nil {
		closeRoot(rt)
		return nil, nil, err
	}
	ks, err := keystore.New(keystore.Config{
		Storage:   store,
		Root:      rt,
		CacheSize: cfg.Cache.Size,
		CacheTTL:  cfg.Cache.TTL,
		Logger:    logger,
	})
	if err != nil {
		store.Close()
		closeRoot(rt)
		return nil, nil, err
	}
	return ks, func() { store.Close(); closeRoot(rt) }, nil
}

// serve runs the server until ctx is done, then stops gracefully. ready, if
// not nil, receives the bound address once the server is listening.
func serve(ctx context.Context, cfg *config.Config, logw io.Writer, ready func(addr net.Addr)) error {
	logger := newLogger(logw, cfg.Log.Level)
	ks, closeKeystore, err := openKeystore(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer closeKeystore()
	pol, err := policy.NewHolder(cfg.PolicyFile)
	if err != nil {
		return err
	}
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
	var ops *http.Server
	if cfg.Ops.Listen != "off" {
		opsLis, err := net.Listen("tcp", cfg.Ops.Listen)
		if err != nil {
			lis.Close()
			return fmt.Errorf("ops listen: %w", err)
		}
		ops = &http.Server{Handler: srv.OpsHandler(), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := ops.Serve(opsLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				logger.Error("ops listener stopped", "error", err.Error())
			}
		}()
	}

	// Background work runs on a context of its own, stopped only after the
	// last call has drained: change notices keep reaching the cache while
	// calls finish, and the final flush counts every encryption served.
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	stopBackground := func() { stopBG(); wg.Wait() }
	defer stopBackground()
	pol.WatchSIGHUP(bg, logger)
	wg.Go(func() {
		if err := ks.Watch(bg); err != nil {
			logger.Error("storage change watch stopped; caches expire by TTL only", "error", err.Error())
		}
	})
	wg.Go(func() { srv.WatchDependencies(bg, ks, cfg.Ops.ProbeInterval) })
	wg.Go(func() {
		// Every replica flushes its encryption counts; with the scheduler
		// disabled it never takes the lease.
		err := ks.RunScheduler(bg, keystore.SchedulerConfig{
			Interval:  cfg.Scheduler.Interval,
			HolderID:  schedulerHolderID(lis.Addr()),
			FlushOnly: cfg.Scheduler.Disabled,
		})
		if err != nil && !errors.Is(err, context.Canceled) {
			logger.Error("scheduler stopped", "error", err.Error())
		}
	})
	shutdownOps := func() {
		if ops != nil {
			sctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = ops.Shutdown(sctx)
			cancel()
		}
	}

	logger.Info("custos serving", "addr", lis.Addr().String(), "ops", cfg.Ops.Listen, "root", cfg.Root.Type, "storage", cfg.Storage.Type)
	if ready != nil {
		ready(lis.Addr())
	}
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	select {
	case err := <-errc:
		srv.Shutdown()
		shutdownOps()
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
	stopBackground()
	shutdownOps()
	if err := <-errc; err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// schedulerHolderID names this replica in the scheduler's lease.
func schedulerHolderID(addr net.Addr) string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), addr)
}

func closeRoot(r root.Root) {
	if c, ok := r.(io.Closer); ok {
		_ = c.Close()
	}
}
