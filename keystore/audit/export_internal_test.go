package audit

import (
	"io"
	"log/slog"
	"testing"
	"time"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// Close gives up on lines it cannot write within its bound: an export to a
// standard output nobody reads held the server's stop for ever.
func TestAnExportThatCannotWriteDoesNotHoldClose(t *testing.T) {
	defer func(d time.Duration) { exportCloseTimeout = d }(exportCloseTimeout)
	exportCloseTimeout = 100 * time.Millisecond
	pr, pw := io.Pipe() // nobody reads
	defer pr.Close()
	e := startExporter(&Exporter{w: pw, logger: slog.New(slog.DiscardHandler)})
	e.Write([]*custosv1.AuditEvent{{Tenant: "a", Operation: "encrypt"}})
	done := make(chan error, 1)
	go func() { done <- e.Close() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Close with lines it could not write: nil, want an error saying so")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close still waiting 10s after its bound")
	}
}
