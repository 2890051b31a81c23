package server

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
)

// The profiles answer requests to the ops listener's own address only, as
// the endpoints that work on the store do: a web page that rebinds its
// DNS name to the listener gets 421, not the command line or a profile.
func TestProfilesAnswerTheListenersOwnAddressOnly(t *testing.T) {
	s := &Server{logger: slog.New(slog.DiscardHandler), metrics: newMetrics()}
	h := s.OpsHandler(true)
	for host, want := range map[string]int{
		"127.0.0.1:9464":  http.StatusOK,
		"localhost:9464":  http.StatusOK,
		"evil.example":    http.StatusMisdirectedRequest,
		"evil.example:80": http.StatusMisdirectedRequest,
	} {
		req := httptest.NewRequest(http.MethodGet, "/debug/pprof/cmdline", nil)
		req.Host = host
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != want {
			t.Errorf("GET /debug/pprof/cmdline with Host %s: %d, want %d", host, rec.Code, want)
		}
	}
}
