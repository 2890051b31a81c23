package audit

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"gopkg.in/natefinch/lumberjack.v2"

	"github.com/prometheus/client_golang/prometheus"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// ExportLine is one exported event: one JSON object per line. Its field
// names are stable (docs/audit.md); new fields may be added, none renamed.
type ExportLine struct {
	Time        time.Time `json:"time"`
	RequestID   string    `json:"request_id"`
	Identity    string    `json:"identity,omitempty"`
	Peer        string    `json:"peer,omitempty"`
	Tenant      string    `json:"tenant,omitempty"`
	Key         string    `json:"key,omitempty"`
	KeyVersions []uint32  `json:"key_versions,omitempty"`
	Operation   string    `json:"operation"`
	Method      string    `json:"method"`
	Code        string    `json:"code"`
	Reason      string    `json:"reason,omitempty"`
	ItemsOK     uint32    `json:"items_ok,omitempty"`
	ItemsFailed uint32    `json:"items_failed,omitempty"`
	DurationMS  float64   `json:"duration_ms"`
}

// LineOf is ev as an export line.
func LineOf(ev *custosv1.AuditEvent) ExportLine {
	return ExportLine{
		Time: ev.GetTime().AsTime().UTC(), RequestID: ev.GetRequestId(), Identity: ev.GetIdentity(), Peer: ev.GetPeer(),
		Tenant: ev.GetTenant(), Key: ev.GetKey(), KeyVersions: ev.GetKeyVersions(), Operation: ev.GetOperation(),
		Method: ev.GetMethod(), Code: ev.GetCode(), Reason: ev.GetReason(), ItemsOK: ev.GetItemsOk(), ItemsFailed: ev.GetItemsFailed(),
		DurationMS: float64(ev.GetDuration().AsDuration().Microseconds()) / 1000,
	}
}

// Exporter writes events as JSON lines, for log shippers (Loki, Elastic,
// Splunk forwarders). Export is best effort: a failed write is logged and
// counted, never fails a call; the tree is the record.
type Exporter struct {
	w      io.Writer
	closer io.Closer
	logger *slog.Logger
	failed bool

	// The writer hands batches over; one goroutine writes them, so a slow
	// reader of the export never holds up a call. A full queue drops the
	// batch (counted in Dropped).
	queue    chan []*custosv1.AuditEvent
	done     chan struct{}
	once     sync.Once
	dropped  atomic.Uint64 // events dropped or not written
	dropping atomic.Bool   // since the last write that succeeded
}

// exportQueue is how many batches may wait for the export writer.
const exportQueue = 1024

// ExportConfig configures NewExporter.
type ExportConfig struct {
	// Path of the file, or "-" for standard output.
	Path string
	// MaxSizeMB rotates the file when it reaches this size. Default 100.
	MaxSizeMB int
	// MaxFiles is how many rotated files to keep. Default 10.
	MaxFiles int
	// Stdout is where "-" writes. Default os.Stdout.
	Stdout io.Writer
	Logger *slog.Logger
}

// NewExporter returns an exporter to a rotated file or standard output.
func NewExporter(cfg ExportConfig) *Exporter {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Path == "-" {
		if cfg.Stdout == nil {
			cfg.Stdout = os.Stdout
		}
		return startExporter(&Exporter{w: cfg.Stdout, logger: cfg.Logger})
	}
	if cfg.MaxSizeMB <= 0 {
		cfg.MaxSizeMB = 100
	}
	if cfg.MaxFiles <= 0 {
		cfg.MaxFiles = 10
	}
	lj := &lumberjack.Logger{Filename: cfg.Path, MaxSize: cfg.MaxSizeMB, MaxBackups: cfg.MaxFiles}
	return startExporter(&Exporter{w: lj, closer: lj, logger: cfg.Logger})
}

func startExporter(e *Exporter) *Exporter {
	e.queue = make(chan []*custosv1.AuditEvent, exportQueue)
	e.done = make(chan struct{})
	go func() {
		defer close(e.done)
		for batch := range e.queue {
			e.write(batch)
		}
	}()
	return e
}

// Write hands events to the export; it never blocks.
func (e *Exporter) Write(events []*custosv1.AuditEvent) {
	select {
	case e.queue <- events:
	default:
		e.dropped.Add(uint64(len(events)))
		if !e.dropping.Swap(true) { // once per episode, not per batch
			e.logger.Error("audit: the export cannot keep up; dropping lines (events stay in the log)")
		}
	}
}

// Dropped is how many events the export dropped (it could not keep up) or
// failed to write.
func (e *Exporter) Dropped() uint64 { return e.dropped.Load() }

// Collectors returns the export's metric: custos_audit_export_dropped_total.
func (e *Exporter) Collectors() []prometheus.Collector {
	return []prometheus.Collector{prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "custos_audit_export_dropped_total",
		Help: "Events the audit export dropped or failed to write (they stay in the log).",
	}, func() float64 { return float64(e.dropped.Load()) })}
}

func (e *Exporter) write(events []*custosv1.AuditEvent) {
	var buf []byte
	for _, ev := range events {
		b, err := json.Marshal(LineOf(ev))
		if err != nil {
			continue
		}
		buf = append(append(buf, b...), '\n')
	}
	if _, err := e.w.Write(buf); err != nil {
		e.dropped.Add(uint64(len(events)))
		if !e.failed {
			e.logger.Error("audit: export failed; events stay in the log", "error", err.Error())
		}
		e.failed = true
		return
	}
	e.failed = false
	if len(e.queue) == 0 {
		e.dropping.Store(false) // caught up: the next drop is a new run, logged again
	}
}

// exportCloseTimeout bounds how long Close waits for the queued lines to be
// written: a stalled standard output (a pipe nobody reads) or a hung
// filesystem must not hold the server's stop for ever.
var exportCloseTimeout = 10 * time.Second

// Close writes what is queued and closes the export file. Call it after
// the writer that feeds it is closed. If the lines cannot be written
// within exportCloseTimeout it gives up on them (they stay in the log) and
// leaves the file as it is.
func (e *Exporter) Close() error {
	e.once.Do(func() { close(e.queue) })
	select {
	case <-e.done:
	case <-time.After(exportCloseTimeout):
		n := len(e.queue)
		e.logger.Error("audit: the export did not finish writing at stop; its last lines are lost (the events stay in the log)", "batches_queued", n)
		return errors.New("audit: export: writing did not finish in time")
	}
	if e.closer != nil {
		return e.closer.Close()
	}
	return nil
}

// CodeName is a gRPC code's canonical name (OK, PERMISSION_DENIED, …), as
// events record it.
func CodeName(c codes.Code) string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "UNKNOWN"
}

var codeNames = [...]string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
	"UNAUTHENTICATED",
}

// ValidResult reports whether r is a result filter: OK, FAILED or a code's
// canonical name.
func ValidResult(r string) bool {
	if r == "FAILED" {
		return true
	}
	for _, n := range codeNames {
		if n == r {
			return true
		}
	}
	return false
}
