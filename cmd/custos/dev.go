package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"
	"github.com/spf13/cobra"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/pki"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/local"
)

// devPolicy gives the dev client every permission on every tenant.
const devPolicy = `# custos dev: the dev client may do everything on every tenant.
rules:
  - identities: ["` + pki.DevClientID + `"]
    tenants: ["*"]
    permissions: ["*"]
`

// devConfig is the configuration custos dev serves with; paths are relative
// to the directory holding it, so "custos serve --config .custos-dev/custos.yaml"
// serves the same data.
const devConfig = `# Written by custos dev. Paths are relative to this file.
listen: 127.0.0.1:8443
tls:
  cert_file: server.pem
  key_file: server-key.pem
  client_ca_file: ca.pem
policy_file: policy.yaml
root:
  type: local
  local:
    key_file: root.key
storage:
  type: bbolt
  bbolt:
    path: custos.db
ops:
  listen: 127.0.0.1:9464
  backup: true # custos backup --config custos.yaml while custos serve runs
  root_rewrap: true # custos root rewrap --config custos.yaml while custos serve runs
`

func newDevCmd() *cobra.Command {
	var dir, listen, opsListen string
	var auditOn, ephemeral bool
	cmd := &cobra.Command{
		Use:         "dev",
		Annotations: map[string]string{servesUntilStopped: "true"},
		Short:       "Serve the embedded default: dev PKI, local root and bbolt under ./.custos-dev",
		Long: `custos dev creates ./.custos-dev on first run (a dev CA, a server certificate
for localhost and 127.0.0.1, a client certificate for ` + pki.DevClientID + `,
a local root key, a bbolt file and an allow-all policy for the dev client) and
serves on 127.0.0.1:8443. Later runs reuse everything, so data written before a
restart still decrypts. Never use it in production.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// An empty address would listen on every interface (where
			// custos serve takes "" as the loopback default): the ops
			// listener, with /backup and no authentication, too.
			if listen == "" || opsListen == "" {
				return usageError{errors.New(`--listen and --ops-listen need an address (--ops-listen "off" turns the ops listener off)`)}
			}
			if ephemeral && cmd.Flags().Changed("dir") {
				return usageError{errors.New("--ephemeral keeps nothing, in a temporary directory of its own: give --dir or --ephemeral, not both")}
			}
			hup := catchSIGHUP()
			if ephemeral {
				// Nothing kept: a throwaway PKI and root in a temporary
				// directory, removed at exit, and an in-memory store.
				tmp, err := os.MkdirTemp("", "custos-dev-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(tmp)
				dir = tmp
			}
			cfg, err := prepareDev(dir)
			if err != nil {
				return err
			}
			if ephemeral {
				cfg.Storage = config.Storage{Type: "memory"}
				cfg.Audit.Spool = ""
			}
			cfg.Listen = listen
			fileOps := cfg.Ops.Listen // what custos backup and root rewrap will read
			cfg.Ops.Listen = opsListen
			// GET /backup serves bbolt files, on the ops listener.
			cfg.Ops.Backup = !ephemeral && opsListen != "off"
			// POST /root/rewrap re-wraps the bbolt file's KEKs, on the ops
			// listener too.
			cfg.Ops.RootRewrap = !ephemeral && opsListen != "off"
			cfg.Audit.Disabled = !auditOn
			if cfg.Ops.Backup && !loopbackAddr(opsListen) {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: --ops-listen %s is not a loopback address: its GET /backup and POST /root/rewrap, which have no authentication, answer on it\n", opsListen)
			}
			out := cmd.OutOrStdout()
			return serve(cmd.Context(), cfg, cmd.ErrOrStderr(), hup, func(addr, ops net.Addr) { printDevHelp(out, dir, addr, ops, fileOps) })
		},
	}
	cmd.Flags().StringVar(&dir, "dir", ".custos-dev", "directory for the dev PKI, root key, data and policy")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8443", "gRPC listen address")
	cmd.Flags().BoolVar(&auditOn, "audit", true, "record the audit trail (--audit=false only to measure its cost)")
	cmd.Flags().BoolVar(&ephemeral, "ephemeral", false, "keep nothing: an in-memory store and a throwaway PKI and root in a temporary directory, removed at exit (for quick experiments and CI)")
	cmd.Flags().StringVar(&opsListen, "ops-listen", "127.0.0.1:9464", `ops listener address (/healthz, /readyz, /metrics), or "off"`)
	return cmd
}

// prepareDev creates whatever is missing under dir and returns the config.
func prepareDev(dir string) (*config.Config, error) {
	if _, err := pki.WriteDevFiles(dir); err != nil {
		return nil, fmt.Errorf("dev PKI: %w", err)
	}
	for name, content := range map[string]string{"policy.yaml": devPolicy, "custos.yaml": devConfig} {
		if err := writeIfMissing(filepath.Join(dir, name), content); err != nil {
			return nil, err
		}
	}
	cfg, err := config.Load(filepath.Join(dir, "custos.yaml"))
	if err != nil {
		return nil, err
	}
	// A new root key only for a store without data (the paths the
	// configuration names, which its user may have changed): with data
	// there, its tenants are wrapped under the key that is missing, and a
	// new one would serve beside them, mixing two roots in one store.
	if cfg.Root.Type == "local" {
		rootPath := cfg.Root.Local.KeyFile
		where, data, err := devStoreData(cfg)
		switch {
		case err != nil:
			return nil, err
		case !data:
			_, err = local.OpenOrCreate(rootPath)
		default:
			if _, err = local.Open(rootPath); errors.Is(err, fs.ErrNotExist) {
				err = fmt.Errorf("%s may hold data but its root key %s is missing: restore the key file (or remove the whole directory to start over)", where, rootPath)
			}
		}
		if err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

// devStoreData reports whether the store cfg names may hold data, and
// names it: a bbolt file that exists; any other backend, which it cannot
// tell without opening it. An error means it cannot tell either.
func devStoreData(cfg *config.Config) (where string, data bool, err error) {
	if cfg.Storage.Type != "bbolt" {
		return "the configured store", true, nil
	}
	_, err = os.Stat(cfg.Storage.Bbolt.Path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", false, fmt.Errorf("the data file: %w", err)
	}
	return cfg.Storage.Bbolt.Path, err == nil, nil
}

// writeIfMissing creates path with content unless it exists. The file
// appears whole or not at all (renameio writes and syncs it beside, then
// renames it into place): a crash never leaves a cut file that later runs
// would keep. Two runs racing write the same bytes.
func writeIfMissing(path, content string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return renameio.WriteFile(path, []byte(content), 0o600, renameio.WithStaticPermissions(0o600))
}

func printDevHelp(w io.Writer, dir string, addr, ops net.Addr, fileOps string) {
	p := func(name string) string { return filepath.Join(dir, name) }
	grpcurl := "grpcurl"
	if _, err := os.Stat(filepath.Join(".tools", "bin", "grpcurl")); err == nil {
		grpcurl = filepath.Join(".tools", "bin", "grpcurl")
	}
	// The CLI's defaults are 127.0.0.1:8443 and ./.custos-dev: say so when
	// this server is elsewhere.
	var env, exampleFlags string
	if a := addr.String(); a != "127.0.0.1:8443" || filepath.Clean(dir) != ".custos-dev" {
		env = fmt.Sprintf("  export CUSTOS_ADDR=%s CUSTOS_CA=%s CUSTOS_CERT=%s CUSTOS_KEY=%s\n", a, p("ca.pem"), p("client.pem"), p("client-key.pem"))
		exampleFlags = fmt.Sprintf(" -addr %s -dev-dir %s", a, dir)
	}
	fmt.Fprintf(w, `
Custos dev server listening on %[1]s (mutual TLS; files in %[2]s)

Try it with grpcurl (make grpcurl installs it in .tools/bin):

  %[6]s -cacert %[3]s -cert %[4]s -key %[5]s \
    %[1]s list

Or with the CLI and the Go example:

%[7]s  go run ./cmd/custos tenant create acme
  go run ./cmd/custos key create tenants/acme/keys/pii
  go run ./cmd/custos encrypt tenants/acme/keys/pii "hello" --ad-part customer-42 --ad-part email
  go run ./examples/fieldencryption%[8]s

Ctrl-C stops the server.
`, addr, dir, p("ca.pem"), p("client.pem"), p("client-key.pem"), grpcurl, env, exampleFlags)
	if ops != nil {
		fmt.Fprintf(w, "Ops listener (/healthz, /readyz, /metrics) on %s\n", ops)
		if a := ops.String(); a != fileOps { // the file's, defaults filled in by config.Load
			// custos backup and root rewrap find the server by the file.
			fmt.Fprintf(w, "custos backup and custos root rewrap --config %s reach the server at the ops.listen written there (%s): set it to %s to use them with this server\n", p("custos.yaml"), fileOps, a)
		}
	}
}

// loopbackAddr reports whether addr (host:port) listens on loopback only.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	return err == nil && root.LoopbackHost(host)
}
