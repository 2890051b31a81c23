package custos

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-kms/custos/keystore/storage/memory"
)

// audit.sync_interval on a store other than bbolt (PostgreSQL, here the
// memory store) makes the spool lazy for the events it takes during an
// outage: the server warns at start, as it does on bbolt (audit.md).
func TestSyncIntervalIsWarnedOfOnEveryStore(t *testing.T) {
	cfg, dir, r := testRuntimeConfig(t)
	cfg.Audit.Disabled = false
	cfg.Audit.Spool = filepath.Join(dir, "spool")
	cfg.Audit.SyncInterval = 100 * time.Millisecond
	var logs bytes.Buffer
	rt, err := New(context.Background(), cfg, Options{Store: memory.New(), Root: r, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	rt.Close()
	if !strings.Contains(logs.String(), "audit.sync_interval is set") {
		t.Fatalf("no warning of audit.sync_interval on a store without the journal:\n%s", logs.String())
	}
}
