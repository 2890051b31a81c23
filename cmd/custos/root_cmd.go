package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/custos"
	"github.com/custos-kms/custos/keystore/audit"
	"github.com/custos-kms/custos/keystore/backup"
)

// newRootAdminCmd is `custos root …`: operations on the root key that work
// directly on the configured storage and root, with no running server needed.
func newRootAdminCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "root", Short: "Operate on the root key (re-wrap tenant KEKs after a root rotation)"}
	var path string
	rewrap := &cobra.Command{
		Use:   "rewrap --config FILE",
		Short: "Re-wrap every tenant KEK under the root key's current version",
		Long: `After rotating the root key (a new Vault Transit or KMS key version), re-wrap
every tenant KEK under the current version so older root versions can be retired.
Runs against the storage and root named in the config: on PostgreSQL while the
service keeps serving; on bbolt, whose file one process holds at a time, with
the server stopped. Each tenant is updated atomically, so an interrupted run is
simply started again. The audit log's signing key and the page-token key are
re-wrapped too.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			logger := custos.NewLogger(os.Stderr, cfg.Log.Level)
			d, closeDirect, err := custos.OpenDirect(cmd.Context(), cfg, logger)
			if err != nil {
				return err
			}
			defer closeDirect()
			if err := backup.Unfinished(cmd.Context(), d.Store); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			n, err := d.Keystore.RewrapTenantKEKs(cmd.Context(), func(tenant string) { fmt.Fprintf(out, "re-wrapped tenants/%s\n", tenant) })
			fmt.Fprintf(out, "%d tenant KEKs re-wrapped\n", n)
			if err != nil {
				return err
			}
			if err := audit.RewrapSigningKey(cmd.Context(), d.Store, d.Root); err != nil {
				return err
			}
			fmt.Fprintln(out, "audit signing key re-wrapped")
			found, replaced, err := d.Keystore.RewrapPageTokenKey(cmd.Context())
			switch {
			case err != nil:
				return err
			case replaced:
				fmt.Fprintln(out, "page-token key replaced (the root no longer opened it): ListTenants page tokens out now are void; restart the servers")
			case found:
				fmt.Fprintln(out, "page-token key re-wrapped")
			}
			return nil
		},
	}
	rewrap.Flags().StringVar(&path, "config", "custos.yaml", "configuration file")
	cmd.AddCommand(rewrap)
	return cmd
}
