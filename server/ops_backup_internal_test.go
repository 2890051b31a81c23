package server

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-kms/custos/keystore/root"
)

// A backup that fails before its first byte because a dependency is down
// answers 503 (retry later), and 500 for anything else.
func TestABackupThatMeetsAnOutageAnswersServiceUnavailable(t *testing.T) {
	for name, c := range map[string]struct {
		err  error
		want int
	}{
		"the root unreachable": {fmt.Errorf("backup: wrap the data key: %w", root.ErrUnavailable), http.StatusServiceUnavailable},
		"anything else":        {fmt.Errorf("backup: no records bucket"), http.StatusInternalServerError},
	} {
		t.Run(name, func(t *testing.T) {
			s := &Server{logger: slog.New(slog.DiscardHandler), metrics: newMetrics(), storeFile: storeFile(t), backup: func(context.Context, io.Writer) error { return c.err }}
			rec := httptest.NewRecorder()
			s.OpsHandler(false).ServeHTTP(rec, backupRequest(s.storeFile))
			if rec.Code != c.want {
				t.Fatalf("GET /backup: %d, want %d", rec.Code, c.want)
			}
		})
	}
}

// A failed backup's answer names what kind of failure it was, never the
// error itself (paths of the server's files): the ops listener does not
// authenticate its callers.
func TestABackupFailureTellsTheCallerNoPath(t *testing.T) {
	s := &Server{logger: slog.New(slog.DiscardHandler), metrics: newMetrics(), storeFile: storeFile(t), backup: func(context.Context, io.Writer) error {
		return fmt.Errorf("bbolt: snapshot: %w", &fs.PathError{Op: "open", Path: "/secret/dir/custos.db.snapshot", Err: syscall.ENOSPC})
	}}
	rec := httptest.NewRecorder()
	s.OpsHandler(false).ServeHTTP(rec, backupRequest(s.storeFile))
	if strings.Contains(rec.Body.String(), "/secret") {
		t.Fatalf("the answer holds the server's path: %q", rec.Body.String())
	}
}

// A caller that asks for a backup and then stops reading does not hold the
// one backup slot for ever: a write that makes no progress for the write
// timeout ends the backup, and the next caller gets one.
func TestAStalledBackupReaderDoesNotBlockTheNext(t *testing.T) {
	old := backupWriteTimeout
	backupWriteTimeout = 300 * time.Millisecond
	t.Cleanup(func() { backupWriteTimeout = old })
	s := &Server{logger: slog.New(slog.DiscardHandler), metrics: newMetrics(), storeFile: storeFile(t), backup: func(ctx context.Context, w io.Writer) error {
		chunk := make([]byte, 1<<20)
		for range 64 { // 64 MiB, far more than the socket buffers hold
			if _, err := w.Write(chunk); err != nil {
				return err
			}
		}
		return nil
	}}
	srv := httptest.NewServer(s.OpsHandler(false))
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "GET /backup HTTP/1.1\r\nHost: 127.0.0.1\r\n%s: %s\r\n\r\n", StoreFileHeader, s.storeFile); err != nil {
		t.Fatal(err)
	}
	// The stalled caller reads nothing. A second one is served once the
	// first backup's write has timed out.
	client := &http.Client{Timeout: 20 * time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for {
		req, err := http.NewRequest(http.MethodGet, srv.URL+"/backup", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set(StoreFileHeader, s.storeFile)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && n == 64<<20 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the second backup still gets %d after 15s", resp.StatusCode)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
