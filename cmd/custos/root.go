package main

import "github.com/spf13/cobra"

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "custos",
		Short:         "Custos: key management and field encryption over mutual-TLS gRPC",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCmd(), newDevCmd(), newRootAdminCmd(), newBenchCmd(), newAuditCmd(), newBackupCmd(), newRestoreCmd())
	addAdminCommands(root)
	return root
}
