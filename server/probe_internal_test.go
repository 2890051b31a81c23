package server

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc/health"
)

// slowDependencies answers after delay, or with the context's error if it
// ends first (as a KMS call does).
type slowDependencies struct{ delay time.Duration }

func (d slowDependencies) Dependencies(ctx context.Context) (error, error) {
	select {
	case <-time.After(d.delay):
		return nil, nil
	case <-ctx.Done():
		return ctx.Err(), ctx.Err()
	}
}

// A probe gets at least minProbeTimeout, not just the interval: with a
// short ops.probe_interval, a root that answers in a few hundred
// milliseconds was reported unavailable at every probe.
func TestAProbeOutlastsAShortInterval(t *testing.T) {
	s := &Server{logger: slog.New(slog.DiscardHandler), metrics: newMetrics(), health: health.NewServer()}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.WatchDependencies(ctx, slowDependencies{delay: 300 * time.Millisecond}, 50*time.Millisecond)
	}()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	for s.ready.Load() == nil {
		if time.Now().After(deadline) {
			t.Fatal("no probe finished within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r := s.ready.Load(); r.Storage != "ok" || r.Root != "ok" {
		t.Fatalf("after a probe answered in 300ms with a 50ms interval: storage %q, root %q; want ok", r.Storage, r.Root)
	}
}
