package main

import (
	"runtime/debug"

	"github.com/spf13/cobra"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "custos",
		Short:         "Custos: key management and field encryption over mutual-TLS gRPC",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.Version = buildVersion()
	// Flag errors (unknown, malformed) exit with the usage code.
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newServeCmd(), newDevCmd(), newRootAdminCmd(), newBenchCmd(), newAuditCmd(), newBackupCmd(), newRestoreCmd())
	addAdminCommands(root)
	return root
}

// buildVersion is the module version and VCS revision the binary was built
// from (custos --version).
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v += " " + s.Value
		case "vcs.modified":
			if s.Value == "true" {
				v += " (modified)"
			}
		}
	}
	return v
}
