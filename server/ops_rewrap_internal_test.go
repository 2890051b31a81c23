package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
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
			s := &Server{logger: slog.New(slog.DiscardHandler), metrics: newMetrics(), storeFile: storeFile(t), rewrap: func(_ context.Context, w io.Writer) error {
				fmt.Fprintln(w, "re-wrapped tenants/acme")
				return c.err
			}}
			rec := httptest.NewRecorder()
			s.OpsHandler(false).ServeHTTP(rec, rewrapRequest(s.storeFile))
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
	s := &Server{logger: slog.New(slog.DiscardHandler), metrics: newMetrics(), storeFile: storeFile(t), rewrap: func(context.Context, io.Writer) error {
		close(started)
		<-release
		return nil
	}}
	h := s.OpsHandler(false)
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeHTTP(httptest.NewRecorder(), rewrapRequest(s.storeFile))
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the first run did not start within 10s")
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, rewrapRequest(s.storeFile))
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
	off.OpsHandler(false).ServeHTTP(rec, rewrapRequest(s.storeFile))
	if rec.Code != http.StatusNotFound {
		t.Fatalf("POST /root/rewrap without ops.root_rewrap: %d, want 404", rec.Code)
	}
}

// A request must name this server's store file: none (a web page's form
// cannot set the header) is a bad request, another file a conflict that
// does not tell this server's path; neither starts a run.
func TestARootRewrapRequestMustNameThisServersStore(t *testing.T) {
	ran := false
	s := &Server{logger: slog.New(slog.DiscardHandler), metrics: newMetrics(), storeFile: storeFile(t), rewrap: func(context.Context, io.Writer) error {
		ran = true
		return nil
	}, backup: func(context.Context, io.Writer) error {
		ran = true
		return nil
	}}
	for name, c := range map[string]struct {
		req  *http.Request
		want int
	}{
		"no header":           {opsRequest(http.MethodPost, "/root/rewrap"), http.StatusBadRequest},
		"another file":        {rewrapRequest(storeFile(t)), http.StatusConflict},
		"no file":             {rewrapRequest(filepath.Join(t.TempDir(), "none.db")), http.StatusConflict},
		"a backup, no header": {opsRequest(http.MethodGet, "/backup"), http.StatusBadRequest},
		"a backup of another": {backupRequest(storeFile(t)), http.StatusConflict},
	} {
		rec := httptest.NewRecorder()
		s.OpsHandler(false).ServeHTTP(rec, c.req)
		if rec.Code != c.want || strings.Contains(rec.Body.String(), s.storeFile) {
			t.Errorf("%s: %d %q, want %d without the server's path", name, rec.Code, rec.Body.String(), c.want)
		}
	}
	if ran {
		t.Fatal("a refused request started a run")
	}
	// The same file by another path (a symbolic link) is the same store.
	link := filepath.Join(t.TempDir(), "link.db")
	if err := os.Symlink(s.storeFile, link); err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	s.OpsHandler(false).ServeHTTP(rec, rewrapRequest(link))
	if rec.Code != http.StatusOK || !ran {
		t.Fatalf("the store by a link: %d %q, want a run", rec.Code, rec.Body.String())
	}
}

// storeFile is an empty file standing for a store.
func storeFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "custos.db")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// rewrapRequest is POST /root/rewrap naming store.
func rewrapRequest(store string) *http.Request {
	r := opsRequest(http.MethodPost, "/root/rewrap")
	r.Header.Set(StoreFileHeader, store)
	return r
}

// backupRequest is GET /backup naming store.
func backupRequest(store string) *http.Request {
	r := opsRequest(http.MethodGet, "/backup")
	r.Header.Set(StoreFileHeader, store)
	return r
}

// opsRequest is a request to the ops listener at its loopback address, as
// custos backup and custos root rewrap send them.
func opsRequest(method, path string) *http.Request {
	r := httptest.NewRequest(method, path, nil)
	r.Host = "127.0.0.1:9464"
	return r
}

// The endpoints that work on the store answer requests to the listener's
// own address (an IP address, localhost, or the host name of ops.listen)
// and refuse any other host name: a web page that rebinds its own DNS name
// to the loopback address sends that name.
func TestStoreEndpointsRefuseOtherHostNames(t *testing.T) {
	ran := false
	s := &Server{logger: slog.New(slog.DiscardHandler), metrics: newMetrics(), opsHost: "custos-ops.internal", storeFile: storeFile(t),
		rewrap: func(context.Context, io.Writer) error { ran = true; return nil },
		backup: func(context.Context, io.Writer) error { ran = true; return nil }}
	h := s.OpsHandler(false)
	for host, allowed := range map[string]bool{
		"127.0.0.1:9464": true, "[::1]:9464": true, "localhost:9464": true, "custos-ops.internal:9464": true, ":9464": true,
		"localhost.:9464": true, "custos-ops.internal.:9464": true,
		"attacker.example:9464": false, "attacker.example": false, "localhost.attacker.example:9464": false,
	} {
		for _, r := range []*http.Request{backupRequest(s.storeFile), rewrapRequest(s.storeFile)} {
			r.Host = host
			ran = false
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			if refused := rec.Code == http.StatusMisdirectedRequest; refused == allowed || ran != allowed {
				t.Errorf("%s %s to host %q: %d (ran %v), want allowed %v", r.Method, r.URL.Path, host, rec.Code, ran, allowed)
			}
		}
	}
	// /metrics and the probes answer any host, as before.
	r := opsRequest(http.MethodGet, "/healthz")
	r.Host = "attacker.example"
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	if rec.Code != http.StatusOK {
		t.Errorf("/healthz to another host name: %d", rec.Code)
	}
}

// Once the server drains, the endpoints that work on the store refuse new
// runs (503, retry against the next server): the store and the root close
// after the drain, which a run started then would outlast.
func TestStoreEndpointsRefuseNewRunsWhileDraining(t *testing.T) {
	drained, drain := context.WithCancel(context.Background())
	drain()
	ran := false
	s := &Server{logger: slog.New(slog.DiscardHandler), metrics: newMetrics(), storeFile: storeFile(t), drained: drained, rewrap: func(context.Context, io.Writer) error {
		ran = true
		return nil
	}}
	rec := httptest.NewRecorder()
	s.OpsHandler(false).ServeHTTP(rec, rewrapRequest(s.storeFile))
	if rec.Code != http.StatusServiceUnavailable || ran {
		t.Fatalf("POST /root/rewrap while draining: %d (ran: %v), want 503 and no run", rec.Code, ran)
	}
}
