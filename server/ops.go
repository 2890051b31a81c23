package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/storage"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// DependencyChecker reports whether the storage and the root answer;
// *keystore.Service is one.
type DependencyChecker interface {
	Dependencies(ctx context.Context) (storageErr, rootErr error)
}

// readiness is the outcome of the last dependency probe.
type readiness struct {
	Storage string    `json:"storage"`
	Root    string    `json:"root"`
	Checked time.Time `json:"checked"`
	// Draining is set once the server is shutting down.
	Draining bool `json:"draining,omitempty"`
}

// ready: the storage and the root answer. A root "at_risk" (it works, but
// would not survive a restart) is still ready: taking every replica out of
// service for a risk that bites only at the next restart would turn it
// into an outage now; it is reported in the body, a metric and the log.
func (r *readiness) ready() bool {
	return r.Storage == "ok" && (r.Root == "ok" || r.Root == "at_risk")
}

// metrics are the server's Prometheus metrics, on a registry of its own.
// The gRPC metrics keep go-grpc-middleware's names and labels
// (grpc_server_started_total, grpc_server_handled_total,
// grpc_server_handling_seconds), but each method's series are resolved once
// and cached, so a call costs a few atomic adds instead of label hashing.
type metrics struct {
	registry *prometheus.Registry
	started  *prometheus.CounterVec
	handled  *prometheus.CounterVec
	seconds  *prometheus.HistogramVec
	depUp    *prometheus.GaugeVec
	// rootAtRisk is 1 while the root works but would not survive a
	// restart (root.ErrAtRisk).
	rootAtRisk prometheus.Gauge
	// rateLimited counts calls refused by a rate limit, by policy rule
	// name and class: never by identity, so the label set stays bounded.
	rateLimited *prometheus.CounterVec
	// batchItems counts the items of batch calls by method and outcome
	// code (bounded: three methods, seventeen codes).
	batchItems *prometheus.CounterVec
	methods    sync.Map // full method name → *methodMetrics
}

// methodMetrics are one method's series; handled is indexed by gRPC code.
type methodMetrics struct {
	started prometheus.Counter
	seconds prometheus.Observer
	handled [17]prometheus.Counter
}

func newMetrics() *metrics {
	labels := []string{"grpc_type", "grpc_service", "grpc_method"}
	m := &metrics{
		registry: prometheus.NewRegistry(),
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_started_total", Help: "Total number of RPCs started on the server.",
		}, labels),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_handled_total", Help: "Total number of RPCs completed on the server, regardless of success or failure.",
		}, append(labels, "grpc_code")),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grpc_server_handling_seconds",
			Help:    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .05, .25, 1},
		}, labels),
		depUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "custos_dependency_up",
			Help: "1 if the dependency (storage, root) answered the last probe, else 0.",
		}, []string{"dependency"}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custos_rate_limited_total",
			Help: "Calls refused by a rate limit, by the policy rule that limited them and the call's class.",
		}, []string{"rule", "class"}),
	}
	m.batchItems = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "custos_batch_items_total", Help: "Items of batch calls, by method and outcome code.",
	}, []string{"grpc_method", "code"})
	m.rootAtRisk = prometheus.NewGauge(prometheus.GaugeOpts{Name: "custos_root_at_risk", Help: "1 while the root key works but would not come back after a restart (a local key file deleted, unreadable or replaced)."})
	m.registry.MustRegister(m.rootAtRisk, m.batchItems, m.started, m.handled, m.seconds, m.depUp, m.rateLimited, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// method returns the cached series of a method, creating them on first use.
func (m *metrics) method(fullMethod, typ string) *methodMetrics {
	if mm, ok := m.methods.Load(fullMethod); ok {
		return mm.(*methodMetrics)
	}
	service, method := splitMethod(fullMethod)
	mm := &methodMetrics{
		started: m.started.WithLabelValues(typ, service, method),
		seconds: m.seconds.WithLabelValues(typ, service, method),
	}
	for c := range mm.handled {
		mm.handled[c] = m.handled.WithLabelValues(typ, service, method, codes.Code(c).String())
	}
	actual, _ := m.methods.LoadOrStore(fullMethod, mm)
	return actual.(*methodMetrics)
}

func splitMethod(full string) (service, method string) {
	full = strings.TrimPrefix(full, "/")
	if i := strings.LastIndex(full, "/"); i >= 0 {
		return full[:i], full[i+1:]
	}
	return "unknown", full
}

func (mm *methodMetrics) done(start time.Time, err error) {
	mm.seconds.Observe(time.Since(start).Seconds())
	c := status.Code(err)
	if int(c) >= len(mm.handled) {
		c = codes.Unknown
	}
	mm.handled[c].Inc()
}

// stream counts and times streaming calls (health watches, reflection).
func (m *metrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	typ := streamType(info)
	name := info.FullMethod
	if srv == nil {
		// No service has the method: one series for all such calls, not
		// one per path a caller makes up.
		name = "/unknown/unknown"
	}
	mm := m.method(name, typ)
	mm.started.Inc()
	start := time.Now()
	err := handler(srv, ss)
	mm.done(start, err)
	return err
}

// streamType is a streaming method's type as the metrics and the call log
// name it.
func streamType(info *grpc.StreamServerInfo) string {
	switch {
	case info.IsClientStream && !info.IsServerStream:
		return "client_stream"
	case !info.IsClientStream && info.IsServerStream:
		return "server_stream"
	}
	return "bidi_stream"
}

// minProbeTimeout is the least time a dependency probe gets, whatever the
// interval: a short probe_interval must not make a KMS that answers in two
// seconds look unavailable at every probe.
const minProbeTimeout = 5 * time.Second

// WatchDependencies probes the storage and the root every interval until ctx
// is done (each probe bounded by the interval, or minProbeTimeout if longer),
// updating /readyz, the custos_dependency_up metric and gRPC health:
// KeyService is NOT_SERVING while either is unreachable (it cannot write);
// CryptoService stays SERVING, because it keeps serving cached tenants for the
// keystore's grace period (uncached ones get UNAVAILABLE).
func (s *Server) WatchDependencies(ctx context.Context, dc DependencyChecker, interval time.Duration) {
	probe := func() {
		pctx, cancel := context.WithTimeout(ctx, max(interval, minProbeTimeout))
		defer cancel()
		serr, rerr := dc.Dependencies(pctx)
		r := &readiness{Storage: "ok", Root: "ok", Checked: time.Now().UTC()}
		up := func(dep string, err error, field *string) {
			v := 1.0
			if errors.Is(err, root.ErrAtRisk) {
				*field = "at_risk"
				s.metrics.rootAtRisk.Set(1)
				err = nil
			} else if dep == "root" {
				s.metrics.rootAtRisk.Set(0)
			}
			if err != nil {
				*field, v = "unavailable", 0
				if errors.Is(err, storage.ErrFull) {
					*field = "full" // reads work, writes fail
				}
				s.logger.Warn("dependency unavailable", "dependency", dep, "state", *field, "error", err.Error())
			}
			s.metrics.depUp.WithLabelValues(dep).Set(v)
		}
		up("storage", serr, &r.Storage)
		up("root", rerr, &r.Root)
		s.ready.Store(r)
		st := healthpb.HealthCheckResponse_SERVING
		if !r.ready() {
			st = healthpb.HealthCheckResponse_NOT_SERVING
		}
		s.health.SetServingStatus(custosv1.KeyService_ServiceDesc.ServiceName, st)
	}
	probe()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			probe()
		}
	}
}

// HandlePprof serves Go's profiles under /debug/pprof/ on mux (as
// net/http/pprof does on the default mux). They have no authentication.
func HandlePprof(mux *http.ServeMux) {
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}

// OpsHandler serves the local operations endpoints: /healthz (the process is
// up), /readyz (200 when the storage and the root answered the last probe,
// else 503, with a JSON body saying which), /metrics (Prometheus) and, with
// withPprof, Go's profiles under /debug/pprof/. Serve it
// on a loopback or otherwise private address: it has no authentication.
func (s *Server) OpsHandler(withPprof bool) http.Handler {
	mux := http.NewServeMux()
	if withPprof {
		// Behind the Host check too: a page rebinding its DNS name to
		// the listener would read the command line and the goroutines'
		// stacks, or start a profile of any length.
		pp := http.NewServeMux()
		HandlePprof(pp)
		mux.Handle("/debug/pprof/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if s.opsHostAllowed(w, r) {
				pp.ServeHTTP(w, r)
			}
		}))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		r := s.ready.Load()
		if r == nil {
			r = &readiness{Storage: "unknown", Root: "unknown"}
		}
		if s.drained.Err() != nil {
			d := *r
			d.Draining = true
			r = &d
		}
		w.Header().Set("Content-Type", "application/json")
		if !r.ready() || r.Draining {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		if err := json.NewEncoder(w).Encode(r); err != nil {
			s.logger.Debug("write /readyz", "error", err.Error())
		}
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
	if s.backup != nil {
		// A backup of the whole store, taken inside the server (the one
		// process that may open a bbolt file). Its content is encrypted
		// under a key only the root unwraps. One at a time.
		mux.HandleFunc("GET /backup", s.storeEndpoint("backup", "a backup is already being taken", func(w http.ResponseWriter, r *http.Request) {
			cw := &countingWriter{w: w, rc: http.NewResponseController(w)}
			// The connection may serve other requests after this one.
			defer func() { _ = cw.rc.SetWriteDeadline(time.Time{}) }()
			w.Header().Set("Content-Type", "application/octet-stream")
			if err := s.backup(r.Context(), cw); err != nil {
				s.logger.Error("backup over the ops listener failed", "error", err.Error())
				if cw.n == 0 {
					// The error names the server's files; it is logged, and
					// the ops listener does not authenticate its callers.
					code, msg := http.StatusInternalServerError, "backup failed (the server's log says why)"
					if dependencyDown(err) {
						// A dependency is down: retry later.
						code, msg = http.StatusServiceUnavailable, "backup failed: the root or the storage is unavailable; retry later"
					}
					http.Error(w, msg, code)
					return
				}
				// Cut the response: the client sees a broken stream, not
				// a clean end.
				panic(http.ErrAbortHandler)
			}
			s.logger.Info("backup taken on the ops listener", "bytes", cw.n)
		}))
	}
	if s.rewrap != nil {
		mux.HandleFunc("POST /root/rewrap", s.storeEndpoint("root rewrap", "a root rewrap is already running", s.rootRewrap))
	}
	return mux
}

// storeEndpoint wraps the handler of an endpoint that works on the store
// (what): it answers only requests to the ops listener's own address that
// name this server's store file, one at a time (429, busy, while one runs),
// and none once the server drains (503).
func (s *Server) storeEndpoint(what, busy string, h http.HandlerFunc) http.HandlerFunc {
	var running sync.Mutex
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.opsHostAllowed(w, r) || !s.namesThisStore(w, r) {
			return
		}
		if s.drained != nil && s.drained.Err() != nil {
			// Stopping: the store and the root close once the calls
			// have drained, which this would outlast.
			http.Error(w, "the server is stopping; run it again against the next one, or once this one is back", http.StatusServiceUnavailable)
			return
		}
		if !running.TryLock() {
			http.Error(w, busy, http.StatusTooManyRequests)
			return
		}
		defer running.Unlock()
		s.logger.Info(what+" requested on the ops listener", "remote", r.RemoteAddr)
		h(w, r)
	}
}

// StoreFileHeader names, in a GET /backup or a POST /root/rewrap, the
// absolute path of the store file the caller means. Being a header no HTML
// form or image sets (and one a cross-site script may not send without
// asking), it also keeps a web page the operator has open from starting a
// backup or a run.
const StoreFileHeader = "Custos-Store"

// namesThisStore answers, and returns false, unless the request names
// this server's store file (StoreFileHeader): 400 without one, 409 for
// another, without telling this server's path, since the listener
// authenticates nobody.
func (s *Server) namesThisStore(w http.ResponseWriter, r *http.Request) bool {
	want := r.Header.Get(StoreFileHeader)
	if want == "" {
		http.Error(w, "name the store file in the "+StoreFileHeader+" header (custos backup and custos root rewrap do)", http.StatusBadRequest)
		return false
	}
	if !sameFile(want, s.storeFile) {
		http.Error(w, "this server holds another store file", http.StatusConflict)
		return false
	}
	return true
}

// The last line of an answer to POST /root/rewrap: how the run ended.
// A failure says only whether to retry; the server's log has the detail.
const (
	RootRewrapDone        = "done"
	RootRewrapUnavailable = "failed: the root or the storage is unavailable; run it again later (it resumes without loss)"
	RootRewrapFailed      = "failed: the server's log says why"
)

// rootRewrap re-wraps the store's KEKs inside the server (the one process
// that may open a bbolt file), streaming counts (never tenant names: the
// listener authenticates nobody) and then one of the RootRewrap lines. The
// run stops if the caller leaves (or the server shuts down): every step is
// a compare-and-swap, and a run cut short is only started again.
func (s *Server) rootRewrap(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	fw := &flushWriter{w: w, rc: http.NewResponseController(w)}
	err := s.rewrap(r.Context(), fw)
	if err != nil {
		s.logger.Error("root rewrap on the ops listener failed", "error", err.Error())
	} else {
		s.logger.Info("root rewrap on the ops listener finished")
	}
	last := RootRewrapDone
	switch {
	case err == nil:
	case dependencyDown(err):
		last = RootRewrapUnavailable
	default:
		last = RootRewrapFailed
	}
	fmt.Fprintln(fw, last)
}

// opsHostAllowed answers 421 Misdirected Request, and returns false, for a
// request to a host name that is not the ops listener's own (OpsHost) nor
// localhost nor an IP address: what a web page sends after rebinding its
// DNS name to the listener's address, to reach the endpoints that work on
// the store.
func (s *Server) opsHostAllowed(w http.ResponseWriter, r *http.Request) bool {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	host = strings.TrimSuffix(host, ".") // the fully qualified form of the same name
	// "" is what Go's client sends for an address without a host
	// (ops.listen ":9464"); a browser never does.
	if host == "" || net.ParseIP(host) != nil || root.LoopbackHost(host) || (s.opsHost != "" && strings.EqualFold(host, s.opsHost)) {
		return true
	}
	http.Error(w, "this endpoint answers requests to the ops listener's own address only", http.StatusMisdirectedRequest)
	return false
}

// sameFile reports whether paths a and b name one existing file.
func sameFile(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// flushWriter sends each write to the client at once, so that a long run
// shows its progress (and custos root rewrap's stall timer sees it).
type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f *flushWriter) Write(b []byte) (int, error) {
	n, err := f.w.Write(b)
	if err == nil {
		_ = f.rc.Flush()
	}
	return n, err
}

// backupWriteTimeout is how long one write of a backup (up to 1 MiB, the
// backup's buffer) may wait for its reader: a caller that stops reading
// must not hold the one backup slot. (Smaller writes would not lower the
// rate a reader needs much: a blocked write waits until the kernel has
// freed a good part of the socket's send buffer, megabytes on a fast link.)
var backupWriteTimeout = 30 * time.Second

// countingWriter counts what it passes on, each write bounded by
// backupWriteTimeout when rc can set write deadlines.
type countingWriter struct {
	w  io.Writer
	rc *http.ResponseController
	n  int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	_ = c.rc.SetWriteDeadline(time.Now().Add(backupWriteTimeout)) // not supported: unbounded, as before
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// dependencyDown reports whether err says the root or the storage is out
// of reach (directly, or through the keystore): a failure to retry later.
func dependencyDown(err error) bool {
	return errors.Is(err, keystore.ErrUnavailable) || errors.Is(err, root.ErrUnavailable) || errors.Is(err, storage.ErrUnavailable)
}
