package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/testkit"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// fill writes a file into dir until the filesystem is full.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", dir, err)
			}
			return p
		}
	}
}

// readyz returns /readyz's status code and its storage field.
func readyz(t *testing.T, ops string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + ops + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var r struct{ Storage string }
	_ = json.Unmarshal(b, &r)
	return resp.StatusCode, r.Storage
}

// With the bbolt file on a full filesystem, writes fail with UNAVAILABLE
// STORAGE_FULL and a message saying so, reads and encryption go on,
// readiness says the storage is full; once space is freed, readiness and
// writes recover without a restart.
func TestDiskFullIsRetryableAndReportedAndRecovers(t *testing.T) {
	fs := testkit.MountTmpfs(t, 4<<20)
	f := newFiles(t)
	f.dbPath = filepath.Join(fs, "custos.db")
	ts := start(t, f, options{configure: func(c *config.Config) {
		c.Storage.Bbolt.Path = f.dbPath
		c.Audit.Spool = filepath.Join(t.TempDir(), "spool") // the audit journal on another disk
		c.Ops.Listen = "127.0.0.1:0"
		c.Ops.ProbeInterval = 50 * time.Millisecond
	}})
	setup(t, ts, "a")
	ctx := testContext(t)
	c := ts.clients(t, idAdmin)
	ops := ts.rt.OpsAddr().String()
	filler := fill(t, fs)

	// bbolt reuses free pages first: write until a write needs new ones.
	var werr error
	for i := 0; werr == nil; i++ {
		if i == 2000 {
			t.Fatal("2000 key creations on a full filesystem all succeeded")
		}
		_, werr = c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/a", KeyId: fmt.Sprintf("k%d", i), Key: &custosv1.Key{Purpose: custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT}})
	}
	st := status.Convert(werr)
	if st.Code() != codes.Unavailable || errorInfo(st).GetReason() != custosv1.ReasonStorageFull || !strings.Contains(st.Message(), "storage is full") {
		t.Fatalf("a write on a full disk: %v (reason %v); want UNAVAILABLE STORAGE_FULL saying the storage is full", werr, errorInfo(st))
	}
	// Every write that fails says so (none is INTERNAL); bbolt may still
	// fit a few into pages it frees.
	for range 20 {
		_, err := c.keys.RotateKey(ctx, &custosv1.RotateKeyRequest{Name: "tenants/a/keys/k"})
		if st := status.Convert(err); err != nil && (st.Code() != codes.Unavailable || errorInfo(st).GetReason() != custosv1.ReasonStorageFull) {
			t.Fatalf("RotateKey on a full disk: %v", err)
		}
	}
	// Reads and the data plane of cached keys go on.
	if _, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: "tenants/a/keys/k", Plaintext: []byte("x")}); err != nil {
		t.Fatalf("Encrypt on a full disk: %v", err)
	}
	if _, err := c.keys.GetKey(ctx, &custosv1.GetKeyRequest{Name: "tenants/a/keys/k"}); err != nil {
		t.Fatalf("GetKey on a full disk: %v", err)
	}
	waitFor(t, 10*time.Second, "readiness to report the storage full", func() bool {
		code, s := readyz(t, ops)
		return code == http.StatusServiceUnavailable && s == "full"
	})
	// And it stays so while the disk is full: the probe's own small write
	// fitting into bbolt's free pages does not make it flap to "ok".
	for i := range 30 {
		if code, s := readyz(t, ops); code != http.StatusServiceUnavailable || s != "full" {
			t.Fatalf("readiness check %d with the disk still full: %d %q", i, code, s)
		}
		time.Sleep(25 * time.Millisecond)
	}

	// Space comes back: readiness and writes recover, no restart.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "readiness to recover", func() bool {
		code, s := readyz(t, ops)
		return code == http.StatusOK && s == "ok"
	})
	if _, err := c.keys.RotateKey(ctx, &custosv1.RotateKeyRequest{Name: "tenants/a/keys/k"}); err != nil {
		t.Fatalf("RotateKey after space was freed: %v", err)
	}
}

// A local root key file deleted under a running server: it keeps serving
// with the key it loaded and stays ready, but readiness, a metric and a
// loud log line say that a restart would fail; restoring the file clears
// it.
func TestReadinessReportsALocalRootKeyFileThatWouldNotSurviveARestart(t *testing.T) {
	f := newFiles(t)
	logs := &syncBuffer{}
	ts := start(t, f, options{logger: slog.New(slog.NewJSONHandler(logs, nil)), configure: func(c *config.Config) {
		c.Ops.Listen = "127.0.0.1:0"
		c.Ops.ProbeInterval = 50 * time.Millisecond
	}})
	setup(t, ts, "a")
	ops := ts.rt.OpsAddr().String()
	rootOf := func() (int, string) {
		resp, err := http.Get("http://" + ops + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r struct{ Root string }
		_ = json.NewDecoder(resp.Body).Decode(&r)
		return resp.StatusCode, r.Root
	}
	orig, err := os.ReadFile(f.rootPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(f.rootPath); err != nil {
		t.Fatal(err)
	}
	// Still ready (the key works; taking every replica out for a risk that
	// bites at the next restart would be an outage now), but said loudly.
	waitFor(t, 10*time.Second, "readiness to report the root at risk", func() bool {
		code, r := rootOf()
		return code == http.StatusOK && r == "at_risk"
	})
	if v := metric(t, ops, "custos_root_at_risk"); v != 1 {
		t.Errorf("custos_root_at_risk = %v, want 1", v)
	}
	if !strings.Contains(string(logs.Bytes()), "ROOT KEY AT RISK") {
		t.Fatalf("no loud log line:\n%s", logs.Bytes())
	}
	// Still serving with the loaded key.
	c := ts.clients(t, idAdmin)
	if _, err := c.crypto.Encrypt(testContext(t), &custosv1.EncryptRequest{Name: "tenants/a/keys/k", Plaintext: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.rootPath, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "readiness to recover", func() bool {
		code, r := rootOf()
		return code == http.StatusOK && r == "ok"
	})
	if v := metric(t, ops, "custos_root_at_risk"); v != 0 {
		t.Errorf("custos_root_at_risk = %v after the file was restored, want 0", v)
	}
}

// With the audit journal on the full disk too (the default: beside the
// bbolt file), calls fail closed with UNAVAILABLE saying the storage is
// full — no call is acknowledged without its event — and recover when
// space returns, without a restart.
func TestDiskFullWithTheAuditJournalOnItFailsClosedSayingSo(t *testing.T) {
	fs := testkit.MountTmpfs(t, 24<<20) // room for the journal's first 8 MiB segment
	f := newFiles(t)
	f.dbPath = filepath.Join(fs, "custos.db")
	ts := start(t, f, options{configure: func(c *config.Config) {
		c.Storage.Bbolt.Path = f.dbPath
		c.Audit.Spool = "" // the default, beside the bbolt file
		c.Audit.FailOpen = false
	}})
	setup(t, ts, "a")
	ctx := testContext(t)
	c := ts.clients(t, idAdmin)
	filler := fill(t, fs)
	var err error
	n := 0
	for ; n < 200000 && err == nil; n++ {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = c.crypto.Encrypt(cctx, &custosv1.EncryptRequest{Name: "tenants/a/keys/k", Plaintext: []byte("x")})
		cancel()
	}
	st := status.Convert(err)
	if err == nil || st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "storage is full") {
		t.Fatalf("after %d encryptions on a full disk: %v; want UNAVAILABLE saying the storage is full", n, err)
	}
	t.Logf("%d encryptions acknowledged on the full disk before the first refusal: %v", n-1, err)
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "encryption to recover once space returned", func() bool {
		_, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: "tenants/a/keys/k", Plaintext: []byte("x")})
		return err == nil
	})
}
