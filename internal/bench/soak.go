package bench

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// SoakConfig is a soak run: Workload's calls paced at Rate per second for
// Duration, with a sample every Sample.
type SoakConfig struct {
	// Workload gives the operation and the most calls in flight
	// (Concurrency); its Warmup and Duration are not used.
	Workload Workload
	// Rate is the calls per second to hold, e.g. 70% of a measured peak.
	Rate float64
	// Duration is how long to run; Sample how often to take a sample.
	Duration, Sample time.Duration
	// Metrics is the server's /metrics URL, for its RSS and goroutines;
	// empty skips them.
	Metrics string
}

// SoakSample is one sample window. Latencies are in microseconds.
type SoakSample struct {
	AtSeconds float64 `json:"at_s"`
	Calls     int64   `json:"calls"`
	Errors    int64   `json:"errors"`
	OpsPerSec float64 `json:"ops_per_sec"`
	P50       float64 `json:"p50_us"`
	P99       float64 `json:"p99_us"`
	RSSMiB    float64 `json:"rss_mib,omitempty"`
	// HeapMiB is the Go heap in use: RSS also counts the pages of a
	// mapped bbolt file, which come and go with the OS's page cache.
	HeapMiB    float64 `json:"heap_mib,omitempty"`
	Goroutines int     `json:"goroutines,omitempty"`
}

// SoakReport is what a soak run saw: the samples and their trends.
type SoakReport struct {
	Op          Op                `json:"op"`
	Rate        float64           `json:"target_rate"`
	Concurrency int               `json:"concurrency"`
	Seconds     float64           `json:"seconds"`
	Calls       int64             `json:"calls"`
	Errors      map[string]int64  `json:"errors,omitempty"`
	Samples     []SoakSample      `json:"samples"`
	Trend       map[string]string `json:"trend"`
}

// Soak runs cfg against conn and reports every sample. The pace is held
// by a token bucket (x/time/rate); at most Concurrency calls are in flight,
// so a server that slows down shows as a rate below the target and a
// latency drift, not as an unbounded queue in the client. Cancelled, it
// returns what it saw so far with ctx's error: an interrupted soak is no
// pass.
func Soak(ctx context.Context, conn grpc.ClientConnInterface, cfg SoakConfig) (SoakReport, error) {
	w := cfg.Workload
	if cfg.Rate <= 0 || cfg.Duration <= 0 || cfg.Sample <= 0 {
		return SoakReport{}, fmt.Errorf("soak: rate, duration and sample must be positive")
	}
	mk, err := prepare(ctx, conn, w)
	if err != nil {
		return SoakReport{}, err
	}
	workers := max(w.Concurrency, 1)
	lim := rate.NewLimiter(rate.Limit(cfg.Rate), workers)
	rep := SoakReport{Op: w.Op, Rate: cfg.Rate, Concurrency: workers, Errors: map[string]int64{}}

	var (
		mu     sync.Mutex
		lat    []time.Duration // this window's successful calls
		errs   int64
		allErr = map[string]int64{}
	)
	rctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	var wg sync.WaitGroup
	for i := range workers {
		c := mk(i)
		wg.Go(func() {
			for {
				if err := lim.Wait(rctx); err != nil {
					return
				}
				t0 := time.Now()
				_, err := c(rctx)
				d := time.Since(t0)
				if rctx.Err() != nil {
					return
				}
				mu.Lock()
				if err != nil {
					errs++
					allErr[status.Code(err).String()]++
				} else {
					lat = append(lat, d)
				}
				mu.Unlock()
			}
		})
	}
	start := time.Now()
	tick := time.NewTicker(cfg.Sample)
	defer tick.Stop()
	last := start
	take := func(now time.Time) {
		mu.Lock()
		l, e := lat, errs
		lat, errs = make([]time.Duration, 0, len(l)), 0
		mu.Unlock()
		slices.Sort(l)
		s := SoakSample{
			AtSeconds: now.Sub(start).Seconds(), Calls: int64(len(l)) + e, Errors: e,
			OpsPerSec: float64(len(l)) / now.Sub(last).Seconds(), P50: pct(l, 50), P99: pct(l, 99),
		}
		last = now
		if cfg.Metrics != "" {
			if m, err := scrapeProcess(cfg.Metrics); err == nil {
				s.RSSMiB, s.HeapMiB, s.Goroutines = m.rss/(1<<20), m.heap/(1<<20), m.goroutines
			}
		}
		rep.Samples = append(rep.Samples, s)
	}
loop:
	for {
		select {
		case <-rctx.Done():
			break loop
		case now := <-tick.C:
			take(now)
		}
	}
	wg.Wait()
	if now := time.Now(); now.Sub(last) > cfg.Sample/2 {
		take(now)
	}
	rep.Seconds = time.Since(start).Seconds()
	mu.Lock()
	for k, v := range allErr {
		rep.Errors[k] = v
	}
	// A last window too short for a sample of its own (its rate would
	// be noise) still counts in the totals.
	rep.Calls = int64(len(lat)) + errs
	mu.Unlock()
	for _, s := range rep.Samples {
		rep.Calls += s.Calls
	}
	rep.Trend = trend(rep.Samples)
	return rep, ctx.Err()
}

// trend compares the first quarter of the samples with the last: RSS,
// goroutines, p99 and throughput. A soak passes when they stay flat.
func trend(s []SoakSample) map[string]string {
	if len(s) < 2 {
		return nil
	}
	q := max(len(s)/4, 1)
	avg := func(part []SoakSample, f func(SoakSample) float64) float64 {
		var t float64
		for _, x := range part {
			t += f(x)
		}
		return t / float64(len(part))
	}
	first, lastQ := s[:q], s[len(s)-q:]
	out := map[string]string{}
	for name, f := range map[string]func(SoakSample) float64{
		"rss_mib":     func(x SoakSample) float64 { return x.RSSMiB },
		"heap_mib":    func(x SoakSample) float64 { return x.HeapMiB },
		"goroutines":  func(x SoakSample) float64 { return float64(x.Goroutines) },
		"p99_us":      func(x SoakSample) float64 { return x.P99 },
		"p50_us":      func(x SoakSample) float64 { return x.P50 },
		"ops_per_sec": func(x SoakSample) float64 { return x.OpsPerSec },
	} {
		a, b := avg(first, f), avg(lastQ, f)
		if a == 0 && b == 0 {
			continue
		}
		ratio := "n/a"
		if a > 0 {
			ratio = fmt.Sprintf("%.2fx", b/a)
		}
		out[name] = fmt.Sprintf("%.1f -> %.1f (%s)", a, b, ratio)
	}
	return out
}

// processMetrics are the server's own figures a soak samples.
type processMetrics struct {
	rss, heap  float64 // bytes
	goroutines int
}

// scrapeProcess reads the server's resident memory, Go heap in use and
// goroutine count from its Prometheus metrics.
func scrapeProcess(url string) (processMetrics, error) {
	vals, err := scrapeMetrics(url, "process_resident_memory_bytes", "go_memstats_heap_inuse_bytes", "go_goroutines")
	if err != nil {
		return processMetrics{}, err
	}
	return processMetrics{rss: vals["process_resident_memory_bytes"], heap: vals["go_memstats_heap_inuse_bytes"], goroutines: int(vals["go_goroutines"])}, nil
}
