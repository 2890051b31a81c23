//go:build scale

package bench_test

// Backup and restore at scale (make bench-backup), not part of make test:
// CUSTOS_BACKUP_TENANTS tenants (default 100,000) with two keys each are
// seeded into PostgreSQL, backed up, restored into bbolt, backed up again
// and restored into a second PostgreSQL database, each step a custos
// process of its own whose time and peak RSS are reported.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/custos-kms/custos/internal/bench"
	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/custos"
	"github.com/custos-kms/custos/internal/pgtest"
	"github.com/custos-kms/custos/internal/testkit"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/root/local"
)

func TestBackupAndRestoreAtScale(t *testing.T) {
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("CUSTOS_BACKUP_TENANTS")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	dir := t.TempDir()
	bin := filepath.Join(dir, "custos")
	if out, err := testkit.GoCommand(context.Background(), "build", "-o", bin, "github.com/custos-kms/custos/cmd/custos").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if _, err := local.Create(filepath.Join(dir, "root.key")); err != nil {
		t.Fatal(err)
	}
	pg := pgtest.StartDedicated(t)
	write := func(name, storage string) string {
		path := filepath.Join(dir, name+".yaml")
		conf := fmt.Sprintf("tls: {cert_file: x, key_file: x, client_ca_file: x}\npolicy_file: x\nroot: {type: local, local: {key_file: root.key}}\nstorage: %s\naudit: {spool: %q}\n", storage, filepath.Join(dir, name+".spool"))
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	srcConf := write("source", fmt.Sprintf("{type: postgres, postgres: {url: %q}}", pg.NewDatabase(t)))
	boltConf := write("bolt", fmt.Sprintf("{type: bbolt, bbolt: {path: %q}}", filepath.Join(dir, "custos.db")))
	dstConf := write("dest", fmt.Sprintf("{type: postgres, postgres: {url: %q}}", pg.NewDatabase(t)))

	cfg, err := config.Load(srcConf)
	if err != nil {
		t.Fatal(err)
	}
	ks, closeKS, err := custos.OpenKeystore(ctx, cfg, custos.NewLogger(os.Stderr, "warn"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := bench.Seed(ctx, ks, "s", n, 16, nil); err != nil {
		t.Fatal(err)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				ref := keystore.KeyRef{Tenant: bench.SeedName("s", i), Key: "second"}
				if _, err := ks.CreateKey(ctx, ref, keystore.KeySpec{Purpose: keystore.PurposeMAC}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	closeKS()
	t.Logf("seeded %d tenants × 2 keys in %v", n, time.Since(start).Round(time.Second))

	run := func(what string, args ...string) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Dir = dir
		start := time.Now()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", what, err, out)
		}
		rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss // KiB on Linux
		t.Logf("%-32s %8v  peak RSS %4d MiB  %s", what, time.Since(start).Round(time.Millisecond), rss/1024, lastLine(out))
	}
	file1, file2 := filepath.Join(dir, "pg.backup"), filepath.Join(dir, "bolt.backup")
	run("backup (PostgreSQL)", "backup", "--config", srcConf, "--out", file1)
	run("restore (into bbolt)", "restore", "--config", boltConf, "--in", file1)
	run("backup (bbolt)", "backup", "--config", boltConf, "--out", file2)
	run("restore (into PostgreSQL)", "restore", "--config", dstConf, "--in", file2)
	run("backup verify", "backup", "verify", "--config", dstConf, "--in", file2)
	for _, f := range []string{file1, file2} {
		if fi, err := os.Stat(f); err == nil {
			t.Logf("%s: %.1f MB (%.0f bytes per tenant)", filepath.Base(f), float64(fi.Size())/1e6, float64(fi.Size())/float64(n))
		}
	}
}

func lastLine(b []byte) string {
	s := string(b)
	for len(s) > 0 && s[len(s)-1] == '\n' {
		s = s[:len(s)-1]
	}
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			return s[i+1:]
		}
	}
	return s
}
