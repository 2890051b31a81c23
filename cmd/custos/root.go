package main

import (
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
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
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{flagError(c, err)} })
	root.AddCommand(newServeCmd(), newDevCmd(), newRootAdminCmd(), newBenchCmd(), newAuditCmd(), newBackupCmd(), newRestoreCmd())
	addAdminCommands(root)
	root.InitDefaultCompletionCmd() // cobra would add it at Execute, after the walk below
	refuseUnknownSubcommands(root)
	checkOutputWrites(root)
	return root
}

// servesUntilStopped marks a command that serves until it is stopped
// (serve, dev): what it prints is a banner, and a failed write of it must
// not turn an intended stop, days later, into exit 1.
const servesUntilStopped = "serves-until-stopped"

// checkOutputWrites makes every command that runs fail when its standard
// output could not be written (outputWriter), instead of exiting 0 with
// what it printed cut short; servers (servesUntilStopped) excepted.
func checkOutputWrites(cmd *cobra.Command) {
	for _, sub := range cmd.Commands() {
		checkOutputWrites(sub)
	}
	run := cmd.RunE
	if run == nil || cmd.Annotations[servesUntilStopped] != "" {
		return
	}
	cmd.RunE = func(c *cobra.Command, args []string) error {
		out := &outputWriter{w: c.OutOrStdout()}
		c.SetOut(out)
		if err := run(c, args); err != nil {
			return err
		}
		return out.err
	}
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
// message would quote it. For a mistyped long flag it names the flags of c
// the argument is close to, which are c's words, not the caller's.
func flagError(c *cobra.Command, err error) error {
	msg := err.Error()
	for _, p := range []string{"unknown shorthand flag", "unknown flag", "bad flag syntax"} {
		if strings.HasPrefix(msg, p) {
			hint := "--help lists its flags"
			if name, ok := strings.CutPrefix(msg, "unknown flag: --"); ok && c != nil {
				if s := flagSuggestions(c, name); len(s) > 0 {
					hint = "did you mean " + strings.Join(s, " or ") + "?"
				}
			}
			return errors.New("an argument that starts with '-' is no flag of this command (" + hint + "; a value that starts with '-' goes after --)")
		}
	}
	return err
}

// flagSuggestions are c's flags (its own and inherited) within two edits of
// name (one for a name under five characters), as "--flag", in order. A
// suggestion tells that the argument was close to a flag's name, so only
// a name that looks like one (lower-case letters, digits and hyphens) gets
// any: not a token or a password that happens to start with "--".
func flagSuggestions(c *cobra.Command, name string) []string {
	if !flagLike(name) {
		return nil
	}
	within := 2
	if len(name) < 5 {
		within = 1
	}
	var out []string
	visit := func(f *pflag.Flag) {
		if !f.Hidden && !slices.Contains(out, "--"+f.Name) && editDistance(name, f.Name) <= within {
			out = append(out, "--"+f.Name)
		}
	}
	c.Flags().VisitAll(visit)
	c.InheritedFlags().VisitAll(visit)
	slices.Sort(out)
	return out
}

// flagLike reports whether name could be a mistyped flag name.
func flagLike(name string) bool {
	if name == "" || len(name) > 40 {
		return false
	}
	for _, r := range name {
		if !('a' <= r && r <= 'z' || '0' <= r && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// editDistance is the Levenshtein distance between a and b, in bytes; it
// gives up (returning a large value) for a name far longer than any flag's.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return len(a) + len(b)
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
