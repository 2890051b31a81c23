package main

import (
	"errors"
	"fmt"
	"runtime/debug"
	"strings"

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
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{flagError(err)} })
	root.AddCommand(newServeCmd(), newDevCmd(), newRootAdminCmd(), newBenchCmd(), newAuditCmd(), newBackupCmd(), newRestoreCmd())
	addAdminCommands(root)
	root.InitDefaultCompletionCmd() // cobra would add it at Execute, after the walk below
	refuseUnknownSubcommands(root)
	return root
}

// refuseUnknownSubcommands makes every command group (tenant, key, key
// version, audit…) refuse a word that is none of its subcommands with the
// usage code: cobra checks only the top level, and a group would print its
// help and exit 0, so that `custos key rotat …` looked like a success.
func refuseUnknownSubcommands(cmd *cobra.Command) {
	for _, sub := range cmd.Commands() {
		refuseUnknownSubcommands(sub)
	}
	if !cmd.HasParent() || !cmd.HasSubCommands() || cmd.Runnable() {
		return
	}
	cmd.SuggestionsMinimumDistance = 2 // cobra sets it for the top level only
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			msg := fmt.Sprintf("unknown command %q for %q", args[0], c.CommandPath())
			if s := c.SuggestionsFor(args[0]); len(s) > 0 {
				msg += "; did you mean " + strings.Join(s, " or ") + "?"
			}
			return usageError{errors.New(msg)}
		}
		return c.Help()
	}
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

// flagError is a flag parsing error that repeats no argument: a value that
// starts with "-" (a token, a plaintext) is read as flags, and pflag's
// message would quote it.
func flagError(err error) error {
	msg := err.Error()
	for _, p := range []string{"unknown shorthand flag", "unknown flag", "bad flag syntax"} {
		if strings.HasPrefix(msg, p) {
			return errors.New("an argument that starts with '-' is no flag of this command (--help lists its flags; a value that starts with '-' goes after --)")
		}
	}
	return err
}
