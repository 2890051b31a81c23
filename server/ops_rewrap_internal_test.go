package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/custos-kms/custos/keystore"
)

// A root rewrap's answer streams its lines and ends with one that says how
// the run ended: done, an outage (retry), or a failure whose detail stays
// in the server's log (the ops listener does not authenticate).
func TestARootRewrapAnswerEndsWithHowItEnded(t *testing.T) {
	for name, c := range map[string]struct {
		err  error
		want string
	}{
		"done":          {nil, RootRewrapDone},
		"an outage":     {fmt.Errorf(`rewrap: unwrap KEK of tenant "acme": %w: root: sealed`, keystore.ErrUnavailable), RootRewrapUnavailable},
		"anything else": {fmt.Errorf("rewrap: /secret/dir/custos.db: bad record"), RootRewrapFailed},
	} {
		t.Run(name, func(t *testing.T) {
			s := &Server{logger: slog.New(slog.DiscardHandler), metrics: newMetrics(), rewrap: func(_ context.Context, w io.Writer) error {
				fmt.Fprintln(w, "re-wrapped tenants/acme")
				return c.err
			}}
			rec := httptest.NewRecorder()
			s.OpsHandler(false).ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/root/rewrap", nil))
			lines := strings.Split(strings.TrimSpace(rec.Body.String()), "\n")
			if rec.Code != http.StatusOK || len(lines) != 2 || lines[0] != "re-wrapped tenants/acme" || lines[1] != c.want {
				t.Fatalf("POST /root/rewrap: %d %q, want 200 with the step's line, then %q", rec.Code, rec.Body.String(), c.want)
			}
			if strings.Contains(rec.Body.String(), "/secret") || strings.Contains(rec.Body.String(), "sealed") {
				t.Fatalf("the answer holds the error's detail: %q", rec.Body.String())
			}
		})
	}
}

// One run at a time; and a server without a rewrap function does not
// serve the path.
func TestOneRootRewrapAtATime(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	s := &Server{logger: slog.New(slog.DiscardHandler), metrics: newMetrics(), rewrap: func(context.Context, io.Writer) error {
		close(started)
		<-release
		return nil
	}}
	h := s.OpsHandler(false)
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/root/rewrap", nil))
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the first run did not start within 10s")
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/root/rewrap", nil))
	close(release)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the first run did not end within 10s of its release")
	}
	if rec.Code != http.StatusTooManyRequests {
		t.Fatalf("a second POST /root/rewrap during a run: %d, want 429", rec.Code)
	}
	off := &Server{logger: slog.New(slog.DiscardHandler), metrics: newMetrics()}
	rec = httptest.NewRecorder()
	off.OpsHandler(false).ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/root/rewrap", nil))
	if rec.Code != http.StatusNotFound {
		t.Fatalf("POST /root/rewrap without ops.root_rewrap: %d, want 404", rec.Code)
	}
}
