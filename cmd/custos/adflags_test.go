package main

import (
	"encoding/base64"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/custos-kms/custos/client"
)

// TestADPartsMatchTheGoClient: --ad-part encodes associated data as
// client.AssociatedData does, so values cross between a Go service and
// the CLI; --ad (the bytes as given) does not match the parts' encoding.
func TestADPartsMatchTheGoClient(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, stop := startDev(t, dir)
	defer stop()
	cli(t, dir, addr, "tenant", "create", "acme")
	cli(t, dir, addr, "key", "create", "tenants/acme/keys/pii")
	cl, err := client.New(t.Context(), client.Config{Address: addr, CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "client.pem"), KeyFile: filepath.Join(dir, "client-key.pem")})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	name := client.KeyName("acme", "pii")
	ad := client.AssociatedData("customer-42", "email")

	goCT, _, err := cl.Encrypt(t.Context(), name, []byte("alice@example.com"), ad)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString(goCT)
	if out := cli(t, dir, addr, "decrypt", name, "--ad-part", "customer-42", "--ad-part", "email", b64); strings.TrimSpace(out) != "alice@example.com" {
		t.Fatalf("decrypt --ad-part gave %q", out)
	}
	if _, code := runDev(t, dir, addr, "decrypt", name, "--ad", "customer-42/email", b64); code != exitInvalid {
		t.Fatalf("decrypt --ad customer-42/email of the Go client's ciphertext: exit %d, want %d (not authentic)", code, exitInvalid)
	}

	cliCT := strings.TrimSpace(cli(t, dir, addr, "encrypt", name, "--ad-part", "customer-42", "--ad-part", "email", "bob@example.com"))
	raw, err := base64.StdEncoding.DecodeString(cliCT)
	if err != nil {
		t.Fatal(err)
	}
	if pt, _, err := cl.Decrypt(t.Context(), name, raw, ad); err != nil || string(pt) != "bob@example.com" {
		t.Fatalf("Go Decrypt of the CLI's ciphertext: %q, %v", pt, err)
	}
	rewrapped := strings.TrimSpace(cli(t, dir, addr, "rewrap", name, "--ad-part", "customer-42", "--ad-part", "email", cliCT))
	if out := cli(t, dir, addr, "decrypt", name, "--ad-part", "customer-42", "--ad-part", "email", rewrapped); strings.TrimSpace(out) != "bob@example.com" {
		t.Fatalf("decrypt of the rewrapped ciphertext gave %q", out)
	}

	for _, args := range [][]string{
		{"encrypt", name, "--ad", "x", "--ad-part", "x", "v"},
		{"encrypt", name, "--no-ad", "--ad-part", "x", "v"},
		{"rewrap", name, "--ad", "x", "--no-ad", cliCT},
		{"datakey", "generate", name, "--ad", "x", "--ad-part", "x"},
	} {
		if _, code := runDev(t, dir, addr, args...); code != exitUsage {
			t.Errorf("%q: exit %d, want %d (usage)", args, code, exitUsage)
		}
	}
}

// Arguments swapped by mistake: the usage error shows the expected form,
// never the argument (here a plaintext).
func TestAMalformedKeyNameIsNotEchoed(t *testing.T) {
	_, errOut, err := runCLI(t, "encrypt", "alice@example.com", "tenants/acme/keys/pii", "--no-ad", "--addr", "127.0.0.1:1")
	if exitCode(err) != exitUsage {
		t.Fatalf("exit %d (%v), want %d", exitCode(err), err, exitUsage)
	}
	if strings.Contains(err.Error()+errOut, "alice@example.com") {
		t.Fatalf("the refusal printed the argument: %v\n%s", err, errOut)
	}
}

// TestREADMERotateStep runs README step 4's commands (with the test
// server's address and directory in place of the defaults), twice against
// one store as a reader running the walkthrough again would: the old
// ciphertext decrypts under the version encrypt printed, and rotate makes
// the next version primary.
func TestREADMERotateStep(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".custos-dev")
	addr, stop := startDev(t, dir)
	defer stop()
	cli(t, dir, addr, "tenant", "create", "acme")
	cli(t, dir, addr, "key", "create", "tenants/acme/keys/pii")
	conn := []string{"--addr", addr, "--dev-dir", dir}
	run := func(args ...string) (string, string) {
		t.Helper()
		out, errOut, err := runCLI(t, append(args, conn...)...)
		if err != nil {
			t.Fatalf("custos %q: %v\n%s", args, err, errOut)
		}
		return out, errOut
	}
	versionRe := regexp.MustCompile(`\(key version (\d+)\)`)
	for pass := 1; pass <= 2; pass++ {
		old, encErr := run("encrypt", "tenants/acme/keys/pii", "alice@example.com", "--ad-part", "customer-42", "--ad-part", "email")
		encV := versionRe.FindStringSubmatch(encErr)
		if encV == nil {
			t.Fatalf("pass %d: encrypt printed no key version: %q", pass, encErr)
		}
		rotated, _ := run("key", "rotate", "tenants/acme/keys/pii")
		wantPrimary := fmt.Sprintf("primary:  %d", atoi(t, encV[1])+1)
		if !strings.Contains(rotated, wantPrimary) {
			t.Fatalf("pass %d: rotate after encrypt under version %s printed %q, want %q", pass, encV[1], rotated, wantPrimary)
		}
		pt, decErr := run("decrypt", "tenants/acme/keys/pii", strings.TrimSpace(old), "--ad-part", "customer-42", "--ad-part", "email")
		if strings.TrimSpace(pt) != "alice@example.com" {
			t.Fatalf("pass %d: decrypt gave %q", pass, pt)
		}
		if decV := versionRe.FindStringSubmatch(decErr); decV == nil || decV[1] != encV[1] {
			t.Fatalf("pass %d: decrypt reported %q, want key version %s (encrypt's)", pass, decErr, encV[1])
		}
		if got, _ := run("key", "get", "tenants/acme/keys/pii"); !strings.Contains(got, wantPrimary) {
			t.Fatalf("pass %d: key get printed %q, want %q", pass, got, wantPrimary)
		}
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
