package server

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

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
}

func (r *readiness) ready() bool { return r.Storage == "ok" && r.Root == "ok" }

// metrics are the server's Prometheus metrics, on a registry of its own.
type metrics struct {
	registry *prometheus.Registry
	grpc     *grpcprom.ServerMetrics
	depUp    *prometheus.GaugeVec
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		grpc: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets([]float64{.0001, .00025, .0005, .001, .0025, .005, .01, .05, .25, 1}),
		)),
		depUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "custos_dependency_up",
			Help: "1 if the dependency (storage, root) answered the last probe, else 0.",
		}, []string{"dependency"}),
	}
	m.registry.MustRegister(m.grpc, m.depUp, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// WatchDependencies probes the storage and the root every interval until ctx
// is done, updating /readyz, the custos_dependency_up metric and gRPC health:
// KeyService is NOT_SERVING while either is unreachable (it cannot write);
// CryptoService stays SERVING, because it keeps serving cached tenants for the
// keystore's grace period (uncached ones get UNAVAILABLE).
func (s *Server) WatchDependencies(ctx context.Context, dc DependencyChecker, interval time.Duration) {
	probe := func() {
		pctx, cancel := context.WithTimeout(ctx, interval)
		defer cancel()
		serr, rerr := dc.Dependencies(pctx)
		r := &readiness{Storage: "ok", Root: "ok", Checked: time.Now().UTC()}
		up := func(dep string, err error, field *string) {
			v := 1.0
			if err != nil {
				*field, v = "unavailable", 0
				s.logger.Warn("dependency unavailable", "dependency", dep, "error", err.Error())
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

// OpsHandler serves the local operations endpoints: /healthz (the process is
// up), /readyz (200 when the storage and the root answered the last probe,
// else 503, with a JSON body saying which) and /metrics (Prometheus). Serve it
// on a loopback or otherwise private address: it has no authentication.
func (s *Server) OpsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		r := s.ready.Load()
		if r == nil {
			r = &readiness{Storage: "unknown", Root: "unknown"}
		}
		w.Header().Set("Content-Type", "application/json")
		if !r.ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		if err := json.NewEncoder(w).Encode(r); err != nil {
			s.logger.Debug("write /readyz", "error", err.Error())
		}
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{}))
	return mux
}
