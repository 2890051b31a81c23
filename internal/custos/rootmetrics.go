package custos

import (
	"context"
	"io"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/custos-kms/custos/keystore/root"
)

// meteredRoot counts and times the calls to a root provider
// (custos_root_calls_total, custos_root_call_seconds), labelled by provider
// and operation only.
type meteredRoot struct {
	root.Root
	calls   *prometheus.CounterVec
	seconds *prometheus.HistogramVec
}

func newMeteredRoot(r root.Root, provider string) *meteredRoot {
	labels := prometheus.Labels{"provider": provider}
	return &meteredRoot{
		Root: r,
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custos_root_calls_total", Help: "Calls to the root key provider, by operation and result (ok, error).", ConstLabels: labels,
		}, []string{"op", "result"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "custos_root_call_seconds", Help: "Latency of calls to the root key provider.", ConstLabels: labels,
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"op"}),
	}
}

func (m *meteredRoot) observe(op string, start time.Time, err error) {
	m.seconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.calls.WithLabelValues(op, result).Inc()
}

// Wrap is the root's Wrap, counted.
func (m *meteredRoot) Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	start := time.Now()
	out, err := m.Root.Wrap(ctx, plaintext, aad)
	m.observe("wrap", start, err)
	return out, err
}

// Unwrap is the root's Unwrap, counted.
func (m *meteredRoot) Unwrap(ctx context.Context, wrapped, aad []byte) ([]byte, error) {
	start := time.Now()
	out, err := m.Root.Unwrap(ctx, wrapped, aad)
	m.observe("unwrap", start, err)
	return out, err
}

func (m *meteredRoot) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.calls, m.seconds}
}

// Close closes the root it wraps, if that holds anything (CloseRoot).
func (m *meteredRoot) Close() error {
	if c, ok := m.Root.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// Check passes readiness's check on to the root, if it has one.
func (m *meteredRoot) Check(ctx context.Context) error {
	if c, ok := m.Root.(root.Checker); ok {
		return c.Check(ctx)
	}
	return nil
}
