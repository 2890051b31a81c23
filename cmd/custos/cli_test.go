package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runDev runs a command with the dev client files of dir against addr and
// returns its output and exit code.
func runDev(t *testing.T, dir, addr string, args ...string) (string, int) {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&bytes.Buffer{})
	conn := []string{"--addr", addr, "--ca", filepath.Join(dir, "ca.pem"), "--cert", filepath.Join(dir, "client.pem"), "--key", filepath.Join(dir, "client-key.pem")}
	cmd.SetArgs(append(args, conn...))
	if err := cmd.ExecuteContext(t.Context()); err != nil {
		return out.String(), exitCode(err)
	}
	return out.String(), 0
}

func TestExitCodesByClass(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, stop := startDev(t, dir)
	defer stop()
	cli(t, dir, addr, "tenant", "create", "acme")
	cli(t, dir, addr, "key", "create", "tenants/acme/keys/pii")
	ct := strings.TrimSpace(cli(t, dir, addr, "encrypt", "tenants/acme/keys/pii", "--ad", "r1/email", "x"))
	for _, c := range []struct {
		what string
		args []string
		want int
	}{
		{"an unknown flag", []string{"tenant", "get", "acme", "--bogus"}, exitUsage},
		{"a missing argument", []string{"tenant", "get"}, exitUsage},
		{"a mistyped subcommand", []string{"key", "rotat", "tenants/acme/keys/pii"}, exitUsage},
		{"a mistyped subcommand two levels down", []string{"key", "version", "disabel", "tenants/acme/keys/pii", "1"}, exitUsage},
		{"encrypt without --ad", []string{"encrypt", "tenants/acme/keys/pii", "v"}, exitUsage},
		{"a ciphertext that is not base64", []string{"decrypt", "tenants/acme/keys/pii", "--no-ad", "!!"}, exitUsage},
		{"a tenant that does not exist", []string{"tenant", "get", "nobody"}, exitNotFound},
		{"wrong associated data", []string{"decrypt", "tenants/acme/keys/pii", "--ad", "r1/iban", ct}, exitInvalid},
		{"an existing tenant", []string{"tenant", "create", "acme"}, exitPrecondition},
		// A valid uint32 the server refuses (above the primary), not a
		// usage error.
		{"a minimum decryption version past 2^31", []string{"key", "update", "tenants/acme/keys/pii", "--min-decryption-version", "3000000000"}, exitInvalid},
		{"a minimum decryption version past uint32", []string{"key", "update", "tenants/acme/keys/pii", "--min-decryption-version", "4294967296"}, exitUsage},
	} {
		if _, code := runDev(t, dir, addr, c.args...); code != c.want {
			t.Errorf("%s: exit %d, want %d", c.what, code, c.want)
		}
	}
	// Byte-exact plaintexts: --raw writes the bytes; binary is base64 by
	// default, text is printed with a newline.
	bin := []byte{0x00, 0xff, 0x0a, 0x01}
	enc := base64.StdEncoding.EncodeToString(bin)
	cmd := newRootCmd()
	cmd.SetIn(bytes.NewReader(bin))
	var encOut bytes.Buffer
	cmd.SetOut(&encOut)
	cmd.SetErr(&bytes.Buffer{})
	cmd.SetArgs([]string{"encrypt", "tenants/acme/keys/pii", "--no-ad", "-", "--addr", addr, "--ca", filepath.Join(dir, "ca.pem"), "--cert", filepath.Join(dir, "client.pem"), "--key", filepath.Join(dir, "client-key.pem")})
	if err := cmd.ExecuteContext(t.Context()); err != nil {
		t.Fatal(err)
	}
	bct := strings.TrimSpace(encOut.String())
	if out, _ := runDev(t, dir, addr, "decrypt", "tenants/acme/keys/pii", "--no-ad", "--raw", bct); out != string(bin) {
		t.Fatalf("--raw gave %q, want the bytes %q", out, bin)
	}
	if out, _ := runDev(t, dir, addr, "decrypt", "tenants/acme/keys/pii", "--no-ad", bct); strings.TrimSpace(out) != enc {
		t.Fatalf("binary plaintext printed as %q, want base64 %q", out, enc)
	}
	if out, _ := runDev(t, dir, addr, "decrypt", "tenants/acme/keys/pii", "--ad", "r1/email", ct); out != "x\n" {
		t.Fatalf("text plaintext printed as %q", out)
	}
}

// A listener that never answers: the command gives up after --timeout with
// the unavailable code, instead of hanging.
func TestTimeoutOnASilentListener(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	if _, err := prepareDev(dir); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	start := time.Now()
	_, code := runDev(t, dir, l.Addr().String(), "tenant", "get", "acme", "--timeout", "500ms")
	if code != exitUnavailable || time.Since(start) > 5*time.Second {
		t.Fatalf("exit %d after %v, want %d within the timeout", code, time.Since(start), exitUnavailable)
	}
}

func TestVersion(t *testing.T) {
	if out := runMain(t, "--version"); !strings.HasPrefix(out, "custos version ") {
		t.Fatalf("--version printed %q", out)
	}
}

// Every command group answers, with -o json parsed.
func TestEveryCommandGroupWithJSON(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, stop := startDev(t, dir)
	defer stop()
	cli(t, dir, addr, "tenant", "create", "acme")
	for _, k := range []string{"enc:encrypt", "idx:mac", "pw:password", "det:encrypt-deterministic"} {
		name, purpose, _ := strings.Cut(k, ":")
		cli(t, dir, addr, "key", "create", "tenants/acme/keys/"+name, "--purpose", purpose)
	}
	js := func(args ...string) map[string]any {
		t.Helper()
		out, code := runDev(t, dir, addr, append(args, "-o", "json")...)
		if code != 0 {
			t.Fatalf("custos %v: exit %d\n%s", args, code, out)
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("custos %v: not JSON: %v\n%s", args, err, out)
		}
		return v
	}
	// key list -o json: one key object per line.
	out, code := runDev(t, dir, addr, "key", "list", "tenants/acme", "-o", "json")
	if code != 0 {
		t.Fatalf("key list -o json: exit %d\n%s", code, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("key list -o json printed %d lines, want 4:\n%s", len(lines), out)
	}
	for _, l := range lines {
		var k map[string]any
		if err := json.Unmarshal([]byte(l), &k); err != nil || k["name"] == nil || k["versions"] == nil {
			t.Fatalf("key list -o json line %q: %v", l, err)
		}
	}
	// -o table: one row per version, for key list as for key get.
	listTable, _ := runDev(t, dir, addr, "key", "list", "tenants/acme", "-o", "table")
	getTable, _ := runDev(t, dir, addr, "key", "get", "tenants/acme/keys/enc", "-o", "table")
	lh, _, _ := strings.Cut(listTable, "\n")
	gh, _, _ := strings.Cut(getTable, "\n")
	if strings.Join(strings.Fields(lh), " ") != strings.Join(strings.Fields(gh), " ") || strings.Count(listTable, "\n") != 5 {
		t.Fatalf("key list -o table:\n%s\nkey get -o table:\n%s", listTable, getTable)
	}
	m := js("mac", "compute", "tenants/acme/keys/idx", "hello")
	js("mac", "verify", "tenants/acme/keys/idx", "hello", m["mac"].(string))
	if _, code := runDev(t, dir, addr, "mac", "verify", "tenants/acme/keys/idx", "other", m["mac"].(string)); code != exitInvalid {
		t.Fatalf("a MAC that does not match: exit %d, want %d", code, exitInvalid)
	}
	if bi := js("mac", "blind-index", "tenants/acme/keys/idx", "alice@example.com"); len(bi["query"].([]any)) != 1 {
		t.Fatalf("blind index: %v", bi)
	}
	dk := js("datakey", "generate", "tenants/acme/keys/enc", "--ad", "object-7")
	if back := js("datakey", "decrypt", "tenants/acme/keys/enc", dk["wrapped"].(string), "--ad", "object-7"); back["plaintext"] != dk["plaintext"] {
		t.Fatal("the unwrapped data key differs")
	}
	ct := strings.TrimSpace(cli(t, dir, addr, "encrypt", "tenants/acme/keys/enc", "--ad", "r1", "x"))
	if k := js("key", "rotate", "tenants/acme/keys/enc"); k == nil {
		t.Fatal("rotate")
	}
	if rw := js("rewrap", "tenants/acme/keys/enc", ct, "--ad", "r1"); rw["key_version"].(float64) != 2 {
		t.Fatalf("rewrap: %v", rw)
	}
	// rewrap's text output is the bare ciphertext, as encrypt's: it feeds
	// straight into decrypt.
	rct := strings.TrimSpace(cli(t, dir, addr, "rewrap", "tenants/acme/keys/enc", ct, "--ad", "r1"))
	if pt := strings.TrimSpace(cli(t, dir, addr, "decrypt", "tenants/acme/keys/enc", rct, "--ad", "r1")); pt != "x" {
		t.Fatalf("decrypt of rewrap's output: %q, want x", pt)
	}
	// What update and destroy change shows in the key they print.
	if k := js("key", "update", "tenants/acme/keys/enc", "--min-decryption-version", "2"); k["primary_version"].(float64) != 2 || k["min_decryption_version"].(float64) != 2 {
		t.Fatalf("update: %v", k)
	}
	js("key", "update", "tenants/acme/keys/enc", "--min-decryption-version", "0")
	js("key", "version", "disable", "tenants/acme/keys/enc", "1")
	js("key", "version", "enable", "tenants/acme/keys/enc", "1")
	if k := js("key", "version", "destroy", "tenants/acme/keys/enc", "1"); k["versions"].([]any)[0].(map[string]any)["destroy_time"] == nil {
		t.Fatalf("destroy: %v, want version 1's destroy_time", k)
	}
	js("key", "version", "restore", "tenants/acme/keys/enc", "1")
	// Passwords come on standard input.
	pw := func(args ...string) (map[string]any, int) {
		cmd := newRootCmd()
		cmd.SetIn(strings.NewReader("correct horse\n"))
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&bytes.Buffer{})
		// A hash of the in-process server (built with -race, its pool at
		// half the cores and niced) can take more than the default 10 s
		// on a loaded machine.
		cmd.SetArgs(append(args, "-o", "json", "--timeout", "60s", "--addr", addr, "--ca", filepath.Join(dir, "ca.pem"), "--cert", filepath.Join(dir, "client.pem"), "--key", filepath.Join(dir, "client-key.pem")))
		code := 0
		if err := cmd.ExecuteContext(t.Context()); err != nil {
			code = exitCode(err)
		}
		var v map[string]any
		_ = json.Unmarshal(out.Bytes(), &v)
		return v, code
	}
	h, code := pw("password", "hash", "tenants/acme/keys/pw")
	if code != 0 || !strings.HasPrefix(h["hash"].(string), "$custos-") {
		t.Fatalf("password hash: %v exit %d", h, code)
	}
	if v, code := pw("password", "verify", "tenants/acme/keys/pw", h["hash"].(string)); code != 0 || v["match"] != true {
		t.Fatalf("password verify: %v exit %d", v, code)
	}
	// From a pipe (not a terminal, where a person types:
	// password_tty_linux_test), --timeout bounds the read too: a password
	// that comes after it is not waited for.
	{
		cmd := newRootCmd()
		cmd.SetIn(&slowReader{delay: 400 * time.Millisecond, data: []byte("correct horse\n")})
		cmd.SetOut(&bytes.Buffer{})
		var errOut bytes.Buffer
		cmd.SetErr(&errOut)
		cmd.SetArgs([]string{"password", "hash", "tenants/acme/keys/pw", "--timeout", "100ms", "--addr", addr, "--ca", filepath.Join(dir, "ca.pem"), "--cert", filepath.Join(dir, "client.pem"), "--key", filepath.Join(dir, "client-key.pem")})
		begin := time.Now()
		err := cmd.ExecuteContext(t.Context())
		if took := time.Since(begin); took >= 400*time.Millisecond || exitCode(err) != exitUnavailable {
			t.Fatalf("password hash from a slow pipe: %v (exit %d) after %v; want exit %d at the 100ms timeout", err, exitCode(err), took, exitUnavailable)
		}
	}
	if d := js("tenant", "delete", "acme", "--waiting", "48h"); d["state"] != "DELETE_SCHEDULED" {
		t.Fatalf("tenant delete: %v", d)
	}
	if u := js("tenant", "undelete", "acme"); u["state"] != "ACTIVE" {
		t.Fatalf("tenant undelete: %v", u)
	}
	// A malformed key name shows the expected form, with the usage code.
	if _, code := runDev(t, dir, addr, "key", "update", "acme/enc", "--rotation-period", "1h"); code != exitUsage {
		t.Fatalf("a malformed key name: exit %d, want %d", code, exitUsage)
	}

	// encrypt and decrypt speak JSON too; bytes are base64.
	enc := js("encrypt", "tenants/acme/keys/enc", "--ad", "r2", "secret")
	dec := js("decrypt", "tenants/acme/keys/enc", enc["ciphertext"].(string), "--ad", "r2")
	if dec["plaintext"] != base64.StdEncoding.EncodeToString([]byte("secret")) || dec["key_version"] != enc["key_version"] {
		t.Fatalf("encrypt %v, decrypt %v", enc, dec)
	}

	// -o table: a header row, then one row per item.
	table := func(args ...string) [][]string {
		t.Helper()
		out, code := runDev(t, dir, addr, append(args, "-o", "table")...)
		if code != 0 {
			t.Fatalf("custos %v -o table: exit %d\n%s", args, code, out)
		}
		var rows [][]string
		for line := range strings.Lines(out) {
			rows = append(rows, strings.Fields(line))
		}
		return rows
	}
	if rows := table("key", "get", "tenants/acme/keys/enc"); len(rows) != 3 || rows[0][0] != "NAME" || rows[1][0] != "tenants/acme/keys/enc" {
		t.Fatalf("key get -o table: %q", rows)
	}
	if rows := table("mac", "compute", "tenants/acme/keys/idx", "hello"); len(rows) != 2 || strings.Join(rows[0], " ") != "MAC KEY_VERSION" || rows[1][0] != m["mac"] {
		t.Fatalf("mac compute -o table: %q", rows)
	}
	if rows := table("tenant", "list"); len(rows) != 2 || rows[0][0] != "NAME" || rows[1][0] != "tenants/acme" {
		t.Fatalf("tenant list -o table: %q", rows)
	}
	// Every row of a table has the header's columns (awk reads them so),
	// an audit event of several key versions included.
	for _, args := range [][]string{{"tenant", "list"}, {"audit", "list", "--tenant", "acme", "--operation", "rewrap"}} {
		rows := table(args...)
		for deadline := time.Now().Add(10 * time.Second); len(rows) < 2 && time.Now().Before(deadline); rows = table(args...) {
			time.Sleep(100 * time.Millisecond) // events are listed once the log signs them
		}
		if len(rows) < 2 {
			t.Fatalf("%v -o table: %q, want a header and rows", args, rows)
		}
		for _, r := range rows[1:] {
			if len(r) != len(rows[0]) {
				t.Fatalf("%v -o table: row %q has %d columns, the header %d", args, r, len(r), len(rows[0]))
			}
		}
	}
	// Every tenant command prints the same tenant fields.
	cli(t, dir, addr, "tenant", "create", "gone")
	for _, args := range [][]string{{"tenant", "delete", "gone"}, {"tenant", "undelete", "gone"}} {
		if v := js(args...); v["name"] != "tenants/gone" || v["state"] == nil || v["create_time"] == nil {
			t.Fatalf("%v -o json: %v, want name, state and create_time", args, v)
		}
	}
	if out := cli(t, dir, addr, "tenant", "get", "gone"); !strings.Contains(out, "name: tenants/gone\n") || !strings.Contains(out, "create_time: 20") {
		t.Fatalf("tenant get prints %q, want label: value lines with RFC 3339 times", out)
	}
	if _, code := runDev(t, dir, addr, "tenant", "list", "-o", "yaml"); code != exitUsage {
		t.Fatalf("-o yaml: exit %d, want %d", code, exitUsage)
	}
}

// custos dev --ephemeral keeps nothing; its banner tells the CLI where it
// is, and --dev-dir works from any directory.
func TestEphemeralDevAndItsBanner(t *testing.T) {
	t.Setenv("CUSTOS_TEST_RUN_MAIN", "1")
	c, m, err := startChild(t.Context(), []string{"dev", "--ephemeral", "--listen", "127.0.0.1:0", "--ops-listen", "off"},
		filepath.Join(t.TempDir(), "server.log"), regexp.MustCompile(`listening on (\S+) \(mutual TLS; files in (\S+)\)`))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.stop)
	addr, dir := m[1], m[2]
	// From another directory, with --dev-dir only.
	t.Chdir(t.TempDir())
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&bytes.Buffer{})
	cmd.SetArgs([]string{"tenant", "create", "acme", "--addr", addr, "--dev-dir", dir, "-o", "json"})
	if err := cmd.ExecuteContext(t.Context()); err != nil {
		t.Fatalf("tenant create with --dev-dir: %v", err)
	}
	if !strings.Contains(out.String(), `"name":"tenants/acme"`) {
		t.Fatalf("tenant create printed %q", out.String())
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitExit(t, c)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the ephemeral directory %s is still there (%v)", dir, err)
	}
}

func TestDevBannerForANonDefaultAddress(t *testing.T) {
	var b bytes.Buffer
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 18443} // printed, never bound
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	ops := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 19465} // printed, never bound
	printDevHelp(&b, dir, addr, ops, "127.0.0.1:9464")
	s := b.String()
	for _, want := range []string{"export CUSTOS_ADDR=" + addr.String() + " CUSTOS_CA=" + filepath.Join(dir, "ca.pem"), "go run ./cmd/custos tenant create acme\n  go run ./cmd/custos key create", "-addr " + addr.String() + " -dev-dir " + dir,
		// custos backup and root rewrap read ops.listen from the file.
		"set it to 127.0.0.1:19465",
		// A call that changes nothing: the README's step 2 creates the
		// tenant after it.
		"-key " + filepath.Join(dir, "client-key.pem") + " \\\n    " + addr.String() + " list\n"} {
		if !strings.Contains(s, want) {
			t.Errorf("banner lacks %q:\n%s", want, s)
		}
	}
}

// The note on ops.listen compares with what the config file says, not
// with the default: a file already naming the bound address needs none,
// and one naming another gets it.
func TestDevBannerNotesAnOpsAddressTheConfigDoesNotName(t *testing.T) {
	ops := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9464} // printed, never bound
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8443}
	for file, note := range map[string]bool{"127.0.0.1:9464": false, "127.0.0.1:19464": true} {
		var b bytes.Buffer
		printDevHelp(&b, ".custos-dev", addr, ops, file)
		if got := strings.Contains(b.String(), "set it to 127.0.0.1:9464"); got != note {
			t.Errorf("config naming %s: note %v, want %v:\n%s", file, got, note, b.String())
		}
	}
}

// slowReader yields data after delay, as a person typing does.
type slowReader struct {
	delay time.Duration
	data  []byte
	done  bool
}

func (r *slowReader) Read(p []byte) (int, error) {
	if r.done {
		return 0, io.EOF
	}
	time.Sleep(r.delay)
	r.done = true
	return copy(p, r.data), nil
}
