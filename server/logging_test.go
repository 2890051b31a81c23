package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/custos"
	"github.com/custos-kms/custos/internal/pgtest"
)

// Every component logs through the configured logger: the PostgreSQL
// watcher's reconnection lines come out as JSON at the configured level,
// and nothing goes to Go's default logger.
func TestThePostgreSQLWatcherLogsThroughTheConfiguredLogger(t *testing.T) {
	var stray syncBuffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&stray, nil)))
	defer slog.SetDefault(prev)

	pg := pgtest.StartDedicated(t)
	url := pg.NewDatabase(t)
	f := newFiles(t)
	cfg := f.config(t)
	cfg.Storage = config.Storage{Type: "postgres", Postgres: config.PostgresConfig{URL: url}}
	cfg.Audit.Spool = filepath.Join(t.TempDir(), "audit.spool")
	cfg.Log.Level = "info"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	rt, err := custos.New(context.Background(), cfg, custos.Options{LogWriter: &logs, Root: f.root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(runInBackground(t, rt))
	// Wait until the watcher's LISTEN session exists, so that the kill
	// below drops an established connection.
	db, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the watcher's LISTEN session", func() bool {
		var n int
		err := db.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'listen %'`).Scan(&n)
		return err == nil && n > 0
	})
	db.Close(context.Background())

	pg.Kill(t)
	waitFor(t, 15*time.Second, "the watcher's reconnection line", func() bool {
		return bytes.Contains(logs.Bytes(), []byte("postgres: watch: connection lost"))
	})
	pg.StartAgain(t)
	for line := range strings.Lines(string(logs.Bytes())) {
		if !strings.Contains(line, "postgres: watch") {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("a watcher line is not JSON: %q", line)
		}
	}
	if strings.Contains(string(stray.Bytes()), "postgres") {
		t.Fatalf("PostgreSQL lines went to the default logger:\n%s", stray.Bytes())
	}
}
