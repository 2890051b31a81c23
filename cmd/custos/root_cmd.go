package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/custos"
	"github.com/custos-kms/custos/keystore/storage/bbolt"
	"github.com/custos-kms/custos/server"
)

// newRootAdminCmd is `custos root …`: operations on the root key that work
// directly on the configured storage and root, or through the server that
// holds a bbolt file.
func newRootAdminCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "root", Short: "Operate on the root key (re-wrap tenant KEKs after a root rotation)"}
	var path string
	rewrap := &cobra.Command{
		Use:   "rewrap --config FILE",
		Short: "Re-wrap every tenant KEK under the root key's current version",
		Long: `After rotating the root key (a new Vault Transit or KMS key version), re-wrap
every tenant KEK under the current version so older root versions can be retired.
Runs against the storage and root named in the config: on PostgreSQL while the
service keeps serving. A bbolt file is one process's at a time: while a server
holds it, the server re-wraps, asked on its ops listener (POST /root/rewrap,
which ops.root_rewrap: true turns on); with the server stopped, this command
does. Each tenant is updated atomically, so an interrupted run is simply
started again. The audit log's signing key and the page-token key are
re-wrapped too. To move to another key or provider, configure the new root
with the old one as root.previous (it only unwraps), restart the servers,
run this, then remove root.previous (docs/roots.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			if err := bboltFileExists(cfg); err != nil {
				return err
			}
			logger := custos.NewLogger(os.Stderr, cfg.Log.Level)
			if cfg.Storage.Type == "bbolt" && cfg.Ops.Listen != "off" {
				// A file a server holds is re-wrapped by that server: asked
				// before this command opens the root, whose credentials
				// its host may not have.
				s, err := custos.OpenStorageReadOnly(cmd.Context(), cfg, logger) // writes nothing
				if errors.Is(err, bbolt.ErrLocked) {
					return rewrapThroughServer(cmd, cfg)
				}
				if err != nil {
					return err
				}
				if err := s.Close(); err != nil {
					return err
				}
			}
			d, closeDirect, err := custos.OpenDirect(cmd.Context(), cfg, logger)
			if errors.Is(err, bbolt.ErrLocked) && cfg.Ops.Listen != "off" {
				return rewrapThroughServer(cmd, cfg) // a server started since the probe
			}
			if err != nil {
				return err
			}
			defer closeDirect()
			return custos.RewrapRoot(cmd.Context(), d.Store, d.Keystore, d.Root, cmd.OutOrStdout(), true)
		},
	}
	rewrap.Flags().StringVar(&path, "config", "custos.yaml", "configuration file")
	cmd.AddCommand(rewrap)
	return cmd
}

// rewrapStall is how long a server re-wrapping may send nothing before
// custos root rewrap gives up (exit 7): its root calls are bounded to 30 s
// a tenant.
var rewrapStall = 2 * time.Minute

// rewrapThroughServer asks the server holding the bbolt file of cfg to
// re-wrap (POST /root/rewrap on its ops listener) and copies its lines.
// The answer's last line says how the run ended: "done", or "failed: "
// and why, in the terms an unauthenticated caller may read (the server's
// log has the detail).
func rewrapThroughServer(cmd *cobra.Command, cfg *config.Config) error {
	ctx, cancel := context.WithCancelCause(cmd.Context())
	defer cancel(nil)
	stall := time.AfterFunc(rewrapStall, func() { cancel(errRewrapStalled) })
	defer stall.Stop()
	fmt.Fprintf(cmd.ErrOrStderr(), "the bbolt file is held by a running server: re-wrapping through its ops listener %s (it reports counts, not tenant names)\n", cfg.Ops.Listen)
	req, err := opsRequest(ctx, cfg, http.MethodPost, "/root/rewrap")
	if err != nil {
		return err
	}
	resp, err := opsClient.Do(req)
	stall.Stop() // armed again by each read of the answer
	if err != nil {
		return fmt.Errorf("root rewrap through the server: %w", opsDialErr(ctx, cfg, err))
	}
	defer resp.Body.Close()
	body := stallReader{resp.Body, stall, rewrapStall}
	if resp.StatusCode != http.StatusOK {
		return opsAnswerErr(cfg, "root rewrap", resp, body, "the server does not re-wrap on request; set ops.root_rewrap: true in its configuration and restart it, or stop it and run this again")
	}
	out := cmd.OutOrStdout()
	sc := bufio.NewScanner(body)
	last := ""
	for sc.Scan() {
		if last != "" {
			fmt.Fprintln(out, last)
		}
		last = sc.Text()
	}
	if err := sc.Err(); err != nil {
		if cause := context.Cause(ctx); cause != nil {
			return fmt.Errorf("root rewrap through the server: %w", cause) // the server's silence, or the user's interrupt
		}
		return fmt.Errorf("root rewrap through the server: the answer broke off (run it again: it resumes without loss): %w (%w)", err, errRetryLater)
	}
	switch {
	case last == server.RootRewrapDone:
		return nil
	case last == server.RootRewrapUnavailable:
		return fmt.Errorf("root rewrap through the server: %s (%w)", last, errRetryLater)
	case strings.HasPrefix(last, "failed: "):
		return fmt.Errorf("root rewrap through the server: %s", last)
	}
	if last != "" {
		fmt.Fprintln(out, last)
	}
	return fmt.Errorf("root rewrap through the server: the answer ended without saying how the run ended (run it again: it resumes without loss) (%w)", errRetryLater)
}

// errRewrapStalled is why custos root rewrap gave up on a silent server.
var errRewrapStalled = fmt.Errorf("the server sent nothing for a while: %w", errRetryLater)
