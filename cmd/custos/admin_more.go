package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/custos-kms/custos/client"
)

// purposes by their CLI names.
var purposes = map[string]client.Purpose{
	"encrypt":               client.PurposeEncrypt,
	"encrypt-deterministic": client.PurposeEncryptDeterministic,
	"mac":                   client.PurposeMAC,
	"password":              client.PurposePassword,
}

func parsePurpose(s string) (client.Purpose, error) {
	if p, ok := purposes[s]; ok {
		return p, nil
	}
	return 0, usageError{fmt.Errorf("--purpose %q is not one of encrypt, encrypt-deterministic, mac, password", s)}
}

// errNotAKeyName refuses a malformed key name argument, showing the
// expected form but not the argument: swapped with a plaintext, it would
// print the plaintext.
var errNotAKeyName = usageError{errors.New("the first argument is not a key name: want tenants/{tenant}/keys/{key}")}

// maxInput bounds an argument read from standard input: above the
// largest field any call takes (the base64 of the largest ciphertext is
// about 1.42 MiB; a plaintext is at most 1 MiB).
const maxInput = 2 << 20

// input returns arg, or standard input when arg is "-". More than
// maxInput bytes is a usage error: no call could take it, and cut to the
// bound it would be sent as something else.
func input(cmd *cobra.Command, arg string) ([]byte, error) {
	if arg != "-" {
		return []byte(arg), nil
	}
	b, err := readStdin(cmd, maxInput+1)
	if err == nil && len(b) > maxInput {
		return nil, usageError{fmt.Errorf("standard input holds more than %d bytes (2 MiB): no field takes that much", maxInput)}
	}
	return b, err
}

// emit prints v as one JSON object (-o json), as a table with a header row
// (-o table), or as "label: value" lines (text, the default).
func emit(cmd *cobra.Command, output string, v map[string]any, order ...string) error {
	w := cmd.OutOrStdout()
	switch output {
	case "json":
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%s\n", b)
	case "table":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		head, row := make([]string, len(order)), make([]string, len(order))
		for i, k := range order {
			head[i], row[i] = strings.ToUpper(k), cell(v[k])
		}
		fmt.Fprintln(tw, strings.Join(head, "\t"))
		fmt.Fprintln(tw, strings.Join(row, "\t"))
		return tw.Flush()
	default:
		for _, k := range order {
			fmt.Fprintf(w, "%s: %s\n", k, cell(v[k]))
		}
	}
	return nil
}

// cell is a value as a table shows it: times in RFC 3339, lists joined
// with commas.
func cell(v any) string {
	switch x := v.(type) {
	case time.Time:
		return when(x)
	case []string:
		return strings.Join(x, ",")
	case []uint32:
		if len(x) == 0 {
			return "-"
		}
		s := make([]string, len(x))
		for i, n := range x {
			s[i] = strconv.FormatUint(uint64(n), 10)
		}
		return strings.Join(s, ",")
	}
	return fmt.Sprint(v)
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// addMoreCommands adds the commands that reach the rest of the API:
// tenant deletion, key updates and version states, MACs and blind indexes,
// password hashes, data keys and rewrap.
func addMoreCommands(root, tenant, key *cobra.Command, c, k *conn) {
	outFlag := func(cmd *cobra.Command) *cobra.Command { return cmd }
	var waiting time.Duration
	del := outFlag(&cobra.Command{
		Use: "delete TENANT_ID", Short: "Schedule a tenant for crypto-shredding after --waiting", Args: cobra.ExactArgs(1),
		PreRunE: func(*cobra.Command, []string) error { return checkWaiting(waiting) },
		RunE: c.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
			t, err := cl.DeleteTenant(cmd.Context(), tenantName(args[0]), waiting)
			if err != nil {
				return err
			}
			return c.tenant(cmd, t)
		}),
	})
	del.Flags().DurationVar(&waiting, "waiting", 0, "waiting period before the tenant is shredded (0: the server's default)")
	tenant.AddCommand(del, outFlag(&cobra.Command{
		Use: "undelete TENANT_ID", Short: "Cancel a scheduled deletion", Args: cobra.ExactArgs(1),
		RunE: c.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
			t, err := cl.UndeleteTenant(cmd.Context(), tenantName(args[0]))
			if err != nil {
				return err
			}
			return c.tenant(cmd, t)
		}),
	}))

	var rotation time.Duration
	var minVersion int64
	update := outFlag(&cobra.Command{
		Use: "update tenants/TENANT/keys/KEY", Short: "Change a key's rotation period or minimum decryption version", Args: keyArgs(1),
		PreRunE: func(*cobra.Command, []string) error { return checkRotationPeriod(rotation) },
		RunE: k.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
			name := args[0] // checked by keyArgs
			var u client.KeyUpdate
			if cmd.Flags().Changed("rotation-period") {
				u.RotationPeriod = &rotation
			}
			if cmd.Flags().Changed("min-decryption-version") {
				if minVersion < 0 || minVersion > math.MaxUint32 {
					return usageError{errors.New("--min-decryption-version is out of range")}
				}
				v := uint32(minVersion)
				u.MinDecryptionVersion = &v
			}
			if u.RotationPeriod == nil && u.MinDecryptionVersion == nil {
				return usageError{errors.New("nothing to update: give --rotation-period or --min-decryption-version")}
			}
			kk, err := cl.UpdateKey(cmd.Context(), name, u)
			if err != nil {
				return err
			}
			return emitKey(cmd, k.output, kk)
		}),
	})
	update.Flags().DurationVar(&rotation, "rotation-period", 0, "rotate automatically this often; 0 turns it off")
	update.Flags().Int64Var(&minVersion, "min-decryption-version", 0, "versions below this refuse to decrypt; 0 removes the minimum")

	version := &cobra.Command{Use: "version", Short: "Enable, disable, destroy or restore one version of a key"}
	var destroyWaiting time.Duration
	for _, op := range []string{"enable", "disable", "destroy", "restore"} {
		vc := outFlag(&cobra.Command{
			Use: op + " tenants/TENANT/keys/KEY VERSION", Short: strings.ToUpper(op[:1]) + op[1:] + " a version", Args: keyArgs(2),
			PreRunE: func(*cobra.Command, []string) error { return checkWaiting(destroyWaiting) },
			RunE: k.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
				name := args[0] // checked by keyArgs
				v, err := strconv.ParseUint(args[1], 10, 32)
				if err != nil || v == 0 {
					return usageError{fmt.Errorf("VERSION %q is not a version number", args[1])}
				}
				var kk client.Key
				switch op {
				case "enable":
					kk, err = cl.EnableKeyVersion(cmd.Context(), name, uint32(v))
				case "disable":
					kk, err = cl.DisableKeyVersion(cmd.Context(), name, uint32(v))
				case "destroy":
					kk, err = cl.DestroyKeyVersion(cmd.Context(), name, uint32(v), destroyWaiting)
				case "restore":
					kk, err = cl.RestoreKeyVersion(cmd.Context(), name, uint32(v))
				}
				if err != nil {
					return err
				}
				return emitKey(cmd, k.output, kk)
			}),
		})
		if op == "destroy" {
			vc.Flags().DurationVar(&destroyWaiting, "waiting", 0, "waiting period before the material is destroyed (0: the server's default)")
		}
		version.AddCommand(vc)
	}
	key.AddCommand(update, version)

	mac := &cobra.Command{Use: "mac", Short: "Compute and verify HMACs with a MAC key"}
	c.flags(mac)
	mac.AddCommand(outFlag(&cobra.Command{
		Use: "compute tenants/TENANT/keys/KEY DATA|-", Short: "Compute the HMAC of DATA under the primary version (base64)", Args: keyArgs(2),
		RunE: c.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
			data, err := input(cmd, args[1])
			if err != nil {
				return err
			}
			m, v, err := cl.ComputeMAC(cmd.Context(), args[0], data)
			if err != nil {
				return err
			}
			return emit(cmd, c.output, map[string]any{"mac": b64(m), "key_version": v}, "mac", "key_version")
		}),
	}), outFlag(&cobra.Command{
		Use: "verify tenants/TENANT/keys/KEY DATA|- MAC_BASE64", Short: "Check a MAC; exits 5 when it does not match", Args: keyArgs(3),
		RunE: c.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
			data, err := input(cmd, args[1])
			if err != nil {
				return err
			}
			m, err := base64.StdEncoding.DecodeString(args[2])
			if err != nil {
				return usageError{fmt.Errorf("MAC is not base64: %w", err)}
			}
			ok, err := cl.VerifyMAC(cmd.Context(), args[0], data, m)
			if err != nil {
				return err
			}
			if err := emit(cmd, c.output, map[string]any{"valid": ok}, "valid"); err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("custos: the MAC does not match: %w", client.ErrInvalidArgument)
			}
			return nil
		}),
	}), outFlag(&cobra.Command{
		Use: "blind-index tenants/TENANT/keys/KEY DATA|-", Short: "The blind index of DATA: the value to store and the values to query by (base64)", Args: keyArgs(2),
		RunE: c.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
			data, err := input(cmd, args[1])
			if err != nil {
				return err
			}
			store, query, err := cl.BlindIndexValues(cmd.Context(), args[0], data)
			if err != nil {
				return err
			}
			q := make([]string, len(query))
			for i, v := range query {
				q[i] = b64(v)
			}
			return emit(cmd, c.output, map[string]any{"store": b64(store), "query": q}, "store", "query")
		}),
	}))

	password := &cobra.Command{Use: "password", Short: "Hash and verify passwords with a PASSWORD key (the password is read from standard input)"}
	c.flags(password)
	var subject string
	pverify := outFlag(&cobra.Command{
		Use: "verify tenants/TENANT/keys/KEY HASH", Short: "Check the password on standard input against HASH; exits 5 when it does not match", Args: keyArgs(2),
		Annotations: map[string]string{ownTimeout: "true"},
		RunE: c.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
			pw, err := readPassword(cmd, c.timeout)
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd) // --timeout starts once it is typed
			defer cancel()
			match, rehash, err := cl.VerifyPassword(ctx, args[0], pw, args[1], subject)
			clear(pw)
			if err != nil {
				return err
			}
			if err := emit(cmd, c.output, map[string]any{"match": match, "needs_rehash": rehash}, "match", "needs_rehash"); err != nil {
				return err
			}
			if !match {
				return fmt.Errorf("custos: the password does not match: %w", client.ErrInvalidArgument)
			}
			return nil
		}),
	})
	pverify.Flags().StringVar(&subject, "subject", "", "the account the password belongs to (for lockout)")
	password.AddCommand(outFlag(&cobra.Command{
		Use: "hash tenants/TENANT/keys/KEY", Short: "Hash the password on standard input", Args: keyArgs(1),
		Annotations: map[string]string{ownTimeout: "true"},
		RunE: c.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
			pw, err := readPassword(cmd, c.timeout)
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd) // --timeout starts once it is typed
			defer cancel()
			h, err := cl.HashPassword(ctx, args[0], pw)
			clear(pw)
			if err != nil {
				return err
			}
			return emit(cmd, c.output, map[string]any{"hash": h}, "hash")
		}),
	}), pverify)

	var ad adFlags
	datakey := &cobra.Command{Use: "datakey", Short: "Generate and unwrap data keys of an ENCRYPT key (base64)"}
	c.flags(datakey)
	ad.add(datakey.PersistentFlags(), "the wrapped key is bound to", false)
	datakey.PersistentPreRunE = func(*cobra.Command, []string) error { return ad.check() }
	datakey.AddCommand(outFlag(&cobra.Command{
		Use: "generate tenants/TENANT/keys/KEY", Short: "A new data key: plaintext and wrapped", Args: keyArgs(1),
		RunE: c.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
			dk, err := cl.GenerateDataKey(cmd.Context(), args[0], ad.bytes())
			if err != nil {
				return err
			}
			defer clear(dk.Plaintext)
			return emit(cmd, c.output, map[string]any{"plaintext": b64(dk.Plaintext), "wrapped": b64(dk.Wrapped), "key_version": dk.Version}, "plaintext", "wrapped", "key_version")
		}),
	}), outFlag(&cobra.Command{
		Use: "decrypt tenants/TENANT/keys/KEY WRAPPED_BASE64", Short: "Unwrap a data key", Args: keyArgs(2),
		RunE: c.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
			w, err := base64.StdEncoding.DecodeString(args[1])
			if err != nil {
				return usageError{fmt.Errorf("WRAPPED is not base64: %w", err)}
			}
			pt, err := cl.DecryptDataKey(cmd.Context(), args[0], w, ad.bytes())
			if err != nil {
				return err
			}
			defer clear(pt)
			return emit(cmd, c.output, map[string]any{"plaintext": b64(pt)}, "plaintext")
		}),
	}))

	var rad adFlags
	rewrap := outFlag(&cobra.Command{
		Use: "rewrap tenants/TENANT/keys/KEY CIPHERTEXT_BASE64|-", Short: "Re-encrypt a ciphertext under the key's primary version, inside the service (base64)", Args: keyArgs(2),
		PreRunE: func(*cobra.Command, []string) error { return rad.check() },
		RunE: c.run(func(cmd *cobra.Command, cl *client.Client, args []string) error {
			in, err := input(cmd, args[1])
			if err != nil {
				return err
			}
			ct, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(in)))
			if err != nil {
				return usageError{fmt.Errorf("ciphertext is not base64: %w", err)}
			}
			out, v, err := cl.Rewrap(cmd.Context(), args[0], ct, rad.bytes())
			if err != nil {
				return err
			}
			if c.output == "text" {
				// As encrypt: stdout carries only the value, so it feeds
				// straight into decrypt.
				fmt.Fprintln(cmd.OutOrStdout(), b64(out))
				fmt.Fprintf(cmd.ErrOrStderr(), "(key version %d)\n", v)
				return nil
			}
			return emit(cmd, c.output, map[string]any{"ciphertext": b64(out), "key_version": v}, "ciphertext", "key_version")
		}),
	})
	rad.add(rewrap.Flags(), "the ciphertext was made with", true)
	c.flags(rewrap)
	root.AddCommand(mac, password, datakey, rewrap)
}

func readPassword(cmd *cobra.Command, timeout time.Duration) ([]byte, error) {
	var b []byte
	var err error
	if f, ok := cmd.InOrStdin().(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		b, err = promptPassword(cmd, int(f.Fd())) // a person types: no timeout
	} else {
		// A pipe or file: a writer that never closes it (an inherited
		// stdin) must not hold the command past --timeout.
		ctx, cancel := cmd.Context(), context.CancelFunc(func() {})
		if timeout > 0 {
			ctx, cancel = context.WithTimeout(ctx, timeout)
		}
		b, err = readStdinUntil(ctx, cmd, 4097)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no password on standard input within --timeout: %w", err)
		}
	}
	if err != nil {
		return nil, err
	}
	// Trimmed in place: a string copy could not be cleared. The caller
	// clears what it gets.
	pw := bytes.TrimRight(b, "\r\n")
	if len(pw) == 0 {
		return nil, usageError{errors.New("no password on standard input")}
	}
	return pw, nil
}

// keyTableHeader heads -o table's rows of keys, one per version (columns
// added since go last, so that scripts reading by position keep working).
const keyTableHeader = "NAME\tPURPOSE\tPRIMARY\tVERSION\tSTATE\tCREATED\tENCRYPTIONS\tDESTROY"

// keyTableRows writes k's rows, one per version.
func keyTableRows(w io.Writer, k client.Key) {
	for _, v := range k.Versions {
		fmt.Fprintf(w, "%s\t%v\t%d\t%d\t%v\t%s\t%d\t%s\n", k.Name, k.Purpose, k.PrimaryVersion, v.Version, v.State, when(v.CreateTime), v.EncryptCount, when(v.DestroyTime))
	}
}

func emitKey(cmd *cobra.Command, output string, k client.Key) error {
	switch output {
	case "json":
	case "table":
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, keyTableHeader)
		keyTableRows(tw, k)
		return tw.Flush()
	default:
		printKey(cmd.OutOrStdout(), k)
		return nil
	}
	versions := make([]map[string]any, 0, len(k.Versions))
	for _, v := range k.Versions {
		m := map[string]any{"version": v.Version, "state": v.State.String(), "create_time": v.CreateTime, "encryptions": v.EncryptCount}
		if !v.DestroyTime.IsZero() {
			m["destroy_time"] = v.DestroyTime
		}
		versions = append(versions, m)
	}
	m := map[string]any{"name": k.Name, "purpose": k.Purpose.String(), "primary_version": k.PrimaryVersion, "create_time": k.CreateTime,
		"min_decryption_version": k.MinDecryptionVersion, "versions": versions}
	if k.RotationPeriod > 0 {
		m["rotation_period"], m["next_rotation_time"] = k.RotationPeriod.String(), k.NextRotationTime
	}
	return emit(cmd, output, m)
}

// promptPassword asks for the password on the terminal fd and reads one
// line without echoing it. Ctrl-C (the command's context) ends the wait
// with the terminal's echo restored.
func promptPassword(cmd *cobra.Command, fd int) ([]byte, error) {
	state, err := term.GetState(fd)
	if err != nil {
		return nil, fmt.Errorf("read the password from the terminal: %w", err)
	}
	stderr := cmd.ErrOrStderr()
	fmt.Fprint(stderr, "Password: ")
	defer fmt.Fprintln(stderr) // the newline the terminal did not echo
	b, err := untilDone(cmd.Context(), func() ([]byte, error) { return term.ReadPassword(fd) })
	if err != nil {
		if cmd.Context().Err() != nil {
			_ = term.Restore(fd, state)
			return nil, err
		}
		return nil, fmt.Errorf("read the password from the terminal: %w", err)
	}
	return b, nil
}

// readStdin reads up to limit bytes of standard input, or stops when the
// command's context ends.
func readStdin(cmd *cobra.Command, limit int64) ([]byte, error) {
	return readStdinUntil(cmd.Context(), cmd, limit)
}

// readStdinUntil is readStdin, giving up when ctx ends.
func readStdinUntil(ctx context.Context, cmd *cobra.Command, limit int64) ([]byte, error) {
	in := cmd.InOrStdin()
	return untilDone(ctx, func() ([]byte, error) { return io.ReadAll(io.LimitReader(in, limit)) })
}

// untilDone runs f, a read of the terminal or standard input, and returns
// its result, or ctx's error as soon as ctx ends (Ctrl-C: main's signal
// context catches the signal, so a blocked read would otherwise wait for
// the end of input). f goes on until its input or the process ends.
func untilDone[T any](ctx context.Context, f func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := f()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}
