//go:build cgo

package pkcs11_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/custos-kms/custos/keystore/root/pkcs11"
)

// softHSM is a SoftHSM2 token initialised in a temporary directory.
type softHSM struct {
	module   string
	tokenDir string
	cfg      pkcs11.Config // the token, key "custos-root", PIN 1234 from a file
}

const (
	tokenLabel = "custos-test"
	userPIN    = "1234"
)

// newSoftHSM writes a softhsm2.conf in t.TempDir(), points SOFTHSM2_CONF at
// it and initialises a token there. SoftHSM reads SOFTHSM2_CONF when the
// library is initialised, which happens again for each test because every
// test closes its roots (the last Close finalises the library).
func newSoftHSM(t *testing.T) *softHSM {
	t.Helper()
	module := findSoftHSM(t)
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	writeFile(t, conf, "directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n")
	t.Setenv("SOFTHSM2_CONF", conf)
	initToken(t)
	pinFile := filepath.Join(dir, "pin")
	writeFile(t, pinFile, userPIN+"\n")
	return &softHSM{
		module:   module,
		tokenDir: tokens,
		cfg:      pkcs11.Config{Module: module, TokenLabel: tokenLabel, KeyLabel: "custos-root", PINFile: pinFile},
	}
}

// findSoftHSM returns the path of libsofthsm2.so. SoftHSM2 is a test
// dependency (`make test-deps` installs it); its absence fails the test
// rather than skipping it.
func findSoftHSM(t *testing.T) string {
	t.Helper()
	candidates := []string{"/usr/lib/softhsm/libsofthsm2.so", "/usr/local/lib/softhsm/libsofthsm2.so"}
	more, _ := filepath.Glob("/usr/lib/*/softhsm/libsofthsm2.so")
	for _, p := range append(candidates, more...) {
		if _, err := os.Stat(p); err == nil {
			if _, err := exec.LookPath("softhsm2-util"); err != nil {
				t.Fatal("softhsm2-util is not on PATH; run `make test-deps` (apt-get install softhsm2)")
			}
			return p
		}
	}
	t.Fatal("libsofthsm2.so not found; run `make test-deps` (apt-get install softhsm2)")
	return ""
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// initToken initialises a free slot of the SoftHSM2 that SOFTHSM2_CONF
// names as a token labelled tokenLabel, with userPIN.
func initToken(t *testing.T) {
	t.Helper()
	out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", tokenLabel, "--pin", userPIN, "--so-pin", "5678").CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
}
