package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/keystore"
)

// conn holds the admin commands' connection flags.
type conn struct {
	addr, ca, cert, key string
	devDir              string
	timeout             time.Duration
	output              string
	// envErr is a malformed CUSTOS_TIMEOUT, refused when a command runs.
	envErr error
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func (c *conn) flags(cmd *cobra.Command) {
	dev := func(f string) string { return filepath.Join(".custos-dev", f) }
	pf := cmd.PersistentFlags()
	pf.StringVar(&c.addr, "addr", envOr("CUSTOS_ADDR", "127.0.0.1:8443"), "server address (env CUSTOS_ADDR)")
	pf.StringVar(&c.ca, "ca", envOr("CUSTOS_CA", dev("ca.pem")), "CA bundle that verifies the server (env CUSTOS_CA)")
	pf.StringVar(&c.cert, "cert", envOr("CUSTOS_CERT", dev("client.pem")), "client certificate (env CUSTOS_CERT)")
	pf.StringVar(&c.key, "key", envOr("CUSTOS_KEY", dev("client-key.pem")), "client private key (env CUSTOS_KEY)")
	timeout, err := envDuration("CUSTOS_TIMEOUT", 10*time.Second)
	c.envErr = err
	pf.DurationVar(&c.timeout, "timeout", timeout, "give up on the command after this long (env CUSTOS_TIMEOUT; 0: never)")
	pf.StringVarP(&c.output, "output", "o", "text", "text, json (one object per line) or table")
	pf.StringVar(&c.devDir, "dev-dir", os.Getenv("CUSTOS_DEV_DIR"), "a custos dev directory: its CA and client files, from any directory (env CUSTOS_DEV_DIR; --ca/--cert/--key win)")
}

// envDuration reads the duration in the environment variable name, def
// when it is unset; a malformed one is an error (and def).
func envDuration(name string, def time.Duration) (time.Duration, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return def, usageError{fmt.Errorf("%s %q is not a duration (e.g. 30s)", name, v)}
	}
	return d, nil
}

// applyDevDir points --ca, --cert and --key, where given neither as flags
// nor in the environment (CUSTOS_CA, CUSTOS_CERT, CUSTOS_KEY), at the files
// of --dev-dir.
func (c *conn) applyDevDir(cmd *cobra.Command) {
	if c.devDir == "" {
		return
	}
	for _, f := range []struct {
		flag, env, file string
		p               *string
	}{{"ca", "CUSTOS_CA", "ca.pem", &c.ca}, {"cert", "CUSTOS_CERT", "client.pem", &c.cert}, {"key", "CUSTOS_KEY", "client-key.pem", &c.key}} {
		if !cmd.Flags().Changed(f.flag) && os.Getenv(f.env) == "" {
			*f.p = filepath.Join(c.devDir, f.file)
		}
	}
}

func (c *conn) dial(cmd *cobra.Command) (*client.Client, error) {
	c.applyDevDir(cmd)
	return client.New(cmd.Context(), client.Config{Address: c.addr, CAFile: c.ca, CertFile: c.cert, KeyFile: c.key})
}

// callContext is cmd's context bounded by --timeout from now (with
// --timeout 0, only cancellable).
func (c *conn) callContext(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	if c.timeout > 0 {
		return context.WithTimeout(cmd.Context(), c.timeout)
	}
	return context.WithCancel(cmd.Context())
}

// ownTimeout annotates a command that applies --timeout to its calls
// itself, with callContext, instead of to the whole command.
const ownTimeout = "own-timeout"

// run dials, runs f and closes the connection.
func (c *conn) run(f func(cmd *cobra.Command, cl *client.Client, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := checkOutput(c.output); err != nil {
			return err
		}
		if c.envErr != nil && !cmd.Flags().Changed("timeout") {
			return c.envErr
		}
		if c.timeout < 0 {
			return usageError{fmt.Errorf("--timeout %v (or CUSTOS_TIMEOUT): want a duration, 0 for none", c.timeout)}
		}
		// A command annotated ownTimeout bounds its calls itself
		// (callContext): audit tail each call, password hash and verify the
		// calls after a person has typed the password.
		if cmd.Annotations[ownTimeout] == "" {
			ctx, cancel := c.callContext(cmd)
			defer cancel()
			cmd.SetContext(ctx)
		}
		cl, err := c.dial(cmd)
		if err != nil {
			return err
		}
		defer cl.Close()
		return f(cmd, cl, args)
	}
}

func addAdminCommands(root *cobra.Command) {
	var c conn
	tenant := &cobra.Command{Use: "tenant", Short: "Create, show and list tenants"}
	c.flags(tenant)
	tenant.AddCommand(
		&cobra.Command{
			Use: "create TENANT_ID", Short: "Create a tenant", Args: cobra.ExactArgs(1),
			RunE: c.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
				t, err := cl.CreateTenant(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				return c.tenant(cmd, t)
			}),
		},
		&cobra.Command{
			Use: "get TENANT_ID", Short: "Show a tenant", Args: cobra.ExactArgs(1),
			RunE: c.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
				t, err := cl.GetTenant(cmd.Context(), tenantName(args[0]))
				if err != nil {
					return err
				}
				return c.tenant(cmd, t)
			}),
		},
		&cobra.Command{
			Use: "list", Short: "List the tenants you may see", Args: cobra.NoArgs,
			RunE: c.run(func(cmd *cobra.Command, cl *client.Client, _ []string) error {
				var ts []client.Tenant
				for t, err := range cl.AllTenants(cmd.Context()) {
					if err != nil {
						return err
					}
					ts = append(ts, t)
				}
				return c.tenants(cmd, ts...)
			}),
		},
	)

	var k conn
	var rotation time.Duration
	var purpose string
	key := &cobra.Command{Use: "key", Short: "Create, show, list, rotate and update keys and their versions"}
	k.flags(key)
	create := &cobra.Command{
		Use: "create tenants/TENANT/keys/KEY", Short: "Create a key (--purpose, default encrypt: AES-256-GCM)", Args: keyArgs(1),
		PreRunE: func(*cobra.Command, []string) error { return checkRotationPeriod(rotation) },
		RunE: k.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
			parent, id, _ := splitKeyName(args[0]) // checked by keyArgs
			p, err := parsePurpose(purpose)
			if err != nil {
				return err
			}
			kk, err := cl.CreateKey(cmd.Context(), parent, id, client.KeySpec{Purpose: p, RotationPeriod: rotation})
			if err != nil {
				return err
			}
			return emitKey(cmd, k.output, kk)
		}),
	}
	create.Flags().DurationVar(&rotation, "rotation-period", 0, "rotate automatically this often (e.g. 720h); 0 = never")
	create.Flags().StringVar(&purpose, "purpose", "encrypt", "encrypt, encrypt-deterministic, mac or password")
	key.AddCommand(create,
		&cobra.Command{
			Use: "get tenants/TENANT/keys/KEY", Short: "Show a key and its versions", Args: keyArgs(1),
			RunE: k.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
				kk, err := cl.GetKey(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				return emitKey(cmd, k.output, kk)
			}),
		},
		&cobra.Command{
			Use: "list tenants/TENANT", Short: "List a tenant's keys", Args: cobra.ExactArgs(1),
			RunE: k.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				switch k.output {
				case "text":
					fmt.Fprintln(w, "NAME\tPURPOSE\tPRIMARY\tVERSIONS")
				case "table": // one row per version, as key get -o table
					fmt.Fprintln(w, keyTableHeader)
				}
				for kk, err := range cl.AllKeys(cmd.Context(), tenantName(args[0])) {
					if err != nil {
						return err
					}
					switch k.output {
					case "json": // one key object per line, as key get prints it
						if err := emitKey(cmd, "json", kk); err != nil {
							return err
						}
					case "table":
						keyTableRows(w, kk)
					default:
						fmt.Fprintf(w, "%s\t%v\t%d\t%d\n", kk.Name, kk.Purpose, kk.PrimaryVersion, len(kk.Versions))
					}
				}
				return w.Flush()
			}),
		},
		&cobra.Command{
			Use: "rotate tenants/TENANT/keys/KEY", Short: "Add a new primary version; old versions still decrypt", Args: keyArgs(1),
			RunE: k.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
				kk, err := cl.RotateKey(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				return emitKey(cmd, k.output, kk)
			}),
		},
	)

	root.AddCommand(tenant, key, newCryptoCmd("encrypt"), newCryptoCmd("decrypt"))
	addMoreCommands(root, tenant, key, &c, &k)
}

// newCryptoCmd is `custos encrypt` or `custos decrypt`.
func newCryptoCmd(op string) *cobra.Command {
	var c conn
	var ad adFlags
	var raw bool
	use, short := "encrypt NAME PLAINTEXT|-", "Encrypt a field; prints the base64 ciphertext"
	if op == "decrypt" {
		use, short = "decrypt NAME CIPHERTEXT_BASE64|-", "Decrypt a base64 ciphertext; prints the plaintext"
	}
	cmd := &cobra.Command{
		Use: use, Short: short, Args: keyArgs(2),
		PreRunE: func(*cobra.Command, []string) error { return ad.check() },
		RunE: c.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
			in, err := input(cmd, args[1])
			if err != nil {
				return err
			}
			aad := ad.bytes()
			out := cmd.OutOrStdout()
			if op == "encrypt" {
				ct, v, err := cl.Encrypt(cmd.Context(), args[0], in, aad)
				if err != nil {
					return err
				}
				if c.output != "text" {
					return emit(cmd, c.output, map[string]any{"ciphertext": b64(ct), "key_version": v}, "ciphertext", "key_version")
				}
				fmt.Fprintln(out, base64.StdEncoding.EncodeToString(ct))
				fmt.Fprintf(cmd.ErrOrStderr(), "(key version %d)\n", v)
				return nil
			}
			ct, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(in)))
			if err != nil {
				return usageError{fmt.Errorf("ciphertext is not base64: %w", err)}
			}
			pt, v, err := cl.Decrypt(cmd.Context(), args[0], ct, aad)
			if err != nil {
				return err
			}
			if c.output != "text" && !raw {
				return emit(cmd, c.output, map[string]any{"plaintext": b64(pt), "key_version": v}, "plaintext", "key_version")
			}
			switch {
			case raw:
				out.Write(pt) // byte for byte, nothing added
			case printable(pt):
				fmt.Fprintf(out, "%s\n", pt)
			default:
				fmt.Fprintln(out, base64.StdEncoding.EncodeToString(pt))
				fmt.Fprintln(cmd.ErrOrStderr(), "(binary plaintext, printed in base64; --raw writes the bytes)")
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "(key version %d)\n", v)
			return nil
		}),
	}
	c.flags(cmd)
	ad.add(cmd.Flags(), "bound to the ciphertext", true)
	if op == "decrypt" {
		cmd.Flags().BoolVar(&raw, "raw", false, "write the plaintext byte for byte, with no newline")
	}
	return cmd
}

// printable reports whether b prints as text: valid UTF-8 without control
// characters other than tab and newline.
func printable(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if unicode.IsControl(r) && r != '\n' && r != '\t' {
			return false
		}
	}
	return true
}

func tenantName(s string) string {
	if strings.HasPrefix(s, "tenants/") {
		return s
	}
	return client.TenantName(s)
}

// splitKeyName splits tenants/{tenant}/keys/{key}, each id well formed.
func splitKeyName(name string) (parent, id string, ok bool) {
	ref, err := keystore.ParseKeyName(name)
	if err != nil {
		return "", "", false
	}
	return "tenants/" + ref.Tenant, ref.Key, true
}

// checkRotationPeriod refuses, before anything is dialled, a
// --rotation-period the service would: it is 0 (never) or at least 1h.
func checkRotationPeriod(d time.Duration) error {
	if d < 0 || d > 0 && d < keystore.MinRotationPeriod || d > keystore.MaxRotationPeriod {
		return usageError{fmt.Errorf("--rotation-period %v: want 0 (never), or from 1h to 876000h (100 years)", d)}
	}
	return nil
}

// checkWaiting refuses, before anything is dialled, a --waiting the
// service would: it is 0 (the service's default) or 1 to 365 days.
func checkWaiting(d time.Duration) error {
	if d != 0 && (d < keystore.MinWaitingPeriod || d > keystore.MaxWaitingPeriod) {
		return usageError{fmt.Errorf("--waiting %v: want 0 (the default) or 24h to 8760h (1 to 365 days)", d)}
	}
	return nil
}

// keyArgs accepts exactly n arguments, the first a key name; a malformed
// name is a usage error showing the expected form, before anything is
// dialled.
func keyArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(n)(cmd, args); err != nil {
			return err
		}
		if _, _, ok := splitKeyName(args[0]); !ok {
			return errNotAKeyName
		}
		return nil
	}
}

func printTenants(w io.Writer, ts ...client.Tenant) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tCREATED\tDELETE_AT")
	for _, t := range ts {
		fmt.Fprintf(tw, "%s\t%v\t%s\t%s\n", t.Name, t.State, when(t.CreateTime), when(t.DeleteTime))
	}
	tw.Flush()
}

func printKey(w io.Writer, k client.Key) {
	fmt.Fprintf(w, "name:     %s\npurpose:  %v\nprimary:  %d\ncreated:  %s\n", k.Name, k.Purpose, k.PrimaryVersion, when(k.CreateTime))
	if k.RotationPeriod > 0 {
		fmt.Fprintf(w, "rotation: every %v, next %s\n", k.RotationPeriod, when(k.NextRotationTime))
	}
	if k.MinDecryptionVersion > 0 {
		fmt.Fprintf(w, "min decryption version: %d\n", k.MinDecryptionVersion)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tSTATE\tCREATED\tENCRYPTIONS\tDESTROY")
	for _, v := range k.Versions {
		fmt.Fprintf(tw, "%d\t%v\t%s\t%d\t%s\n", v.Version, v.State, when(v.CreateTime), v.EncryptCount, when(v.DestroyTime))
	}
	tw.Flush()
}

func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// tenants prints tenants as a table (a list in text, and -o table), as
// label: value lines (one tenant in text), or as JSON lines with -o json;
// every command that shows tenants prints them so.
func (c *conn) tenants(cmd *cobra.Command, ts ...client.Tenant) error {
	return c.showTenants(cmd, false, ts...)
}

// tenant prints the one tenant a command returned.
func (c *conn) tenant(cmd *cobra.Command, t client.Tenant) error {
	return c.showTenants(cmd, true, t)
}

func (c *conn) showTenants(cmd *cobra.Command, single bool, ts ...client.Tenant) error {
	switch {
	case c.output == "table", c.output == "text" && !single:
		printTenants(cmd.OutOrStdout(), ts...)
		return nil
	case c.output == "text":
		t := ts[0]
		fmt.Fprintf(cmd.OutOrStdout(), "name: %s\nstate: %v\ncreate_time: %s\ndelete_time: %s\n", t.Name, t.State, when(t.CreateTime), when(t.DeleteTime))
		return nil
	}
	for _, t := range ts {
		v := map[string]any{"name": t.Name, "state": t.State.String(), "create_time": t.CreateTime}
		if !t.DeleteTime.IsZero() {
			v["delete_time"] = t.DeleteTime
		}
		if err := emit(cmd, "json", v); err != nil {
			return err
		}
	}
	return nil
}

// checkOutput refuses an -o value other than text, json and table, without
// repeating it: "-oVALUE" sets it, and VALUE may be a secret.
func checkOutput(o string) error {
	switch o {
	case "text", "json", "table":
		return nil
	}
	return usageError{errors.New("-o: want text, json or table")}
}
