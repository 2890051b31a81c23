package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

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
			s := &Server{logger: slog.New(slog.DiscardHandler), metrics: newMetrics(), backup: func(context.Context, io.Writer) error { return c.err }}
			rec := httptest.NewRecorder()
			s.OpsHandler(false).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/backup", nil))
			if rec.Code != c.want {
				t.Fatalf("GET /backup: %d, want %d", rec.Code, c.want)
			}
		})
	}
}
