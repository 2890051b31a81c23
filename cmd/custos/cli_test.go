package main

import (
	"bytes"
	"encoding/base64"
	"net"
	"path/filepath"
	"strings"
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
		{"a tenant that does not exist", []string{"tenant", "get", "nobody"}, exitNotFound},
		{"wrong associated data", []string{"decrypt", "tenants/acme/keys/pii", "--ad", "r1/iban", ct}, exitInvalid},
		{"an existing tenant", []string{"tenant", "create", "acme"}, exitPrecondition},
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
