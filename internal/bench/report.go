package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"text/tabwriter"
	"time"
)

// Report is the outcome of a `custos bench` invocation.
type Report struct {
	// Machine says where it ran: OS, architecture, CPUs.
	Machine     string        `json:"machine"`
	Started     time.Time     `json:"started"`
	Rounds      int           `json:"rounds"`
	Comparisons []Comparison  `json:"comparisons"`
	Contention  []Contention  `json:"contention,omitempty"`
	Settings    WorkloadFlags `json:"settings"`
}

// WorkloadFlags are the settings a report was made with.
type WorkloadFlags struct {
	PayloadBytes int     `json:"payload_bytes"`
	BatchSize    int     `json:"batch_size"`
	WarmupSec    float64 `json:"warmup_seconds"`
	DurationSec  float64 `json:"duration_seconds"`
	// Tenants spreads encrypt over that many seeded tenants (0: one key).
	Tenants int `json:"tenants,omitempty"`
	// PasswordKey is the key hash and verify use (bcrypt or argon2id).
	PasswordKey string `json:"password_key,omitempty"`
	// Baseline is --baseline ("spawn", "audit-off", "off", an address),
	// and BaselineGCPercent the spawned baseline's GC target.
	Baseline          string `json:"baseline,omitempty"`
	BaselineGCPercent int    `json:"baseline_gc_percent,omitempty"`
}

// NewReport starts a report.
func NewReport(rounds int, w Workload) *Report {
	return &Report{
		Machine: fmt.Sprintf("%s/%s, %d CPUs", runtime.GOOS, runtime.GOARCH, runtime.NumCPU()),
		Started: time.Now().UTC(),
		Rounds:  rounds,
		Settings: WorkloadFlags{
			PayloadBytes: w.PayloadBytes, BatchSize: w.BatchSize,
			WarmupSec: w.Warmup.Seconds(), DurationSec: w.Duration.Seconds(),
			Tenants: w.Tenants, PasswordKey: w.keys().Password,
		},
	}
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the report as tables: per workload the medians of the
// rounds, and the ratios with their spread.
func (r *Report) WriteText(w io.Writer) error {
	fmt.Fprintf(w, "custos bench: %s; %d round(s) of %.1fs after %.1fs warm-up; %d-byte fields\n\n",
		r.Machine, r.Rounds, r.Settings.DurationSec, r.Settings.WarmupSec, r.Settings.PayloadBytes)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tcustos items/s\tp50 µs\tp99 µs\tp99.9 µs\tcpu µs/call\tallocs/call\tbaseline items/s\tp50 µs\tcpu µs/call\tallocs/call\tthroughput ratio\t(min–max)\tp50 ratio\terrors\t")
	for _, c := range r.Comparisons {
		cu := medianResult(c.Custos)
		row := fmt.Sprintf("%s\t%.0f\t%.0f\t%.0f\t%.0f\t%s\t%s\t", c.Workload, cu.ItemsPerSec, cu.P50, cu.P99, cu.P999, cpu(cu), allocs(cu))
		if len(c.Baseline) > 0 {
			b := medianResult(c.Baseline)
			p50 := "–" // no Custos round had a successful call
			if len(c.P50.Values) > 0 {
				p50 = fmt.Sprintf("%.2f×", c.P50.Median)
			}
			row += fmt.Sprintf("%.0f\t%.0f\t%s\t%s\t%s\t%s\t", b.ItemsPerSec, b.P50, cpu(b), allocs(b), ratio(c.Throughput), p50)
		} else {
			row += "–\t–\t–\t–\t–\t\t–\t"
		}
		row += fmt.Sprintf("%d\t", errorCount(c.Custos)+errorCount(c.Baseline))
		fmt.Fprintln(tw, row)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if err := r.writeCPUShares(w); err != nil {
		return err
	}
	for _, c := range r.Contention {
		u, l := medianResult(c.Unloaded), medianResult(c.Loaded)
		var bgRate float64
		for _, x := range c.Loaded {
			if x.Background != nil {
				bgRate += x.Background.ItemsPerSec / float64(len(c.Loaded))
			}
		}
		var bgErrors int64
		for _, x := range c.Loaded {
			if x.Background != nil {
				bgErrors += errorCount([]Result{*x.Background})
			}
		}
		fmt.Fprintf(w, "\n%s beside %s: %.0f → %.0f items/s (%s), p99 %.0f → %.0f µs (%s); background %.1f calls/s; errors %d unloaded, %d loaded, %d background\n",
			c.Workload, c.Background, u.ItemsPerSec, l.ItemsPerSec, inlineRatio(c.Throughput),
			u.P99, l.P99, inlineRatio(c.P99), bgRate, errorCount(c.Unloaded), errorCount(c.Loaded), bgErrors)
		if bgRate == 0 {
			fmt.Fprintln(w, "  the background made no successful call: nothing contended")
		}
	}
	return nil
}

// inlineRatio is a ratio's median and spread within a sentence, or "–".
func inlineRatio(s Stat) string {
	if len(s.Values) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×, %.2f–%.2f", s.Median, s.Min, s.Max)
}

// ratio is a ratio's median and spread as two tab-separated cells, or "–"
// when no round gave one (a side without a successful call).
func ratio(s Stat) string {
	if len(s.Values) == 0 {
		return "–\t"
	}
	return fmt.Sprintf("%.2f×\t(%.2f–%.2f)", s.Median, s.Min, s.Max)
}

// writeCPUShares writes, when the runs read them, where each call's CPU
// went (server and load generator, from the median rounds above) and how
// much of the machine stayed idle: with both on one machine, they share
// its cores.
func (r *Report) writeCPUShares(w io.Writer) error {
	read := false
	for _, c := range r.Comparisons {
		for _, x := range [][]Result{c.Custos, c.Baseline} {
			m := medianResult(x)
			read = read || m.ClientCPUPerCall > 0 || m.IdleShare != nil
		}
	}
	if !read {
		return nil
	}
	fmt.Fprintln(w, "\nCPU µs per call, server and this load generator, and this machine's idle share (median rounds):")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\tcustos server\tclient\tidle\tbaseline server\tclient\tidle\t")
	for _, c := range r.Comparisons {
		cu := medianResult(c.Custos)
		row := fmt.Sprintf("%s\t%s\t%s\t%s\t", c.Workload, cpu(cu), clientCPU(cu), idleCell(cu))
		if len(c.Baseline) > 0 {
			b := medianResult(c.Baseline)
			row += fmt.Sprintf("%s\t%s\t%s\t", cpu(b), clientCPU(b), idleCell(b))
		} else {
			row += "–\t–\t–\t"
		}
		fmt.Fprintln(tw, row)
	}
	return tw.Flush()
}

func clientCPU(r Result) string {
	if r.ClientCPUPerCall == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f", r.ClientCPUPerCall)
}

func idleCell(r Result) string {
	if r.IdleShare == nil {
		return "–"
	}
	return fmt.Sprintf("%.0f%%", *r.IdleShare*100)
}

func cpu(r Result) string {
	if r.ServerCPUPerCall == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f", r.ServerCPUPerCall)
}

func allocs(r Result) string {
	if r.ServerAllocsPerCall == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f", r.ServerAllocsPerCall)
}

func errorCount(rs []Result) int64 {
	var n int64
	for _, r := range rs {
		for _, v := range r.Errors {
			n += v
		}
	}
	return n
}

// medianResult is each figure's median over the rounds, taken one figure
// at a time: the round with the median throughput need not have the median
// p99 or CPU. A figure a round did not read (zero: no successful call, no
// CPU reading) is left out of its median.
func medianResult(rs []Result) Result {
	if len(rs) == 0 {
		return Result{}
	}
	med := func(f func(Result) float64, keepZero bool) float64 {
		v := make([]float64, 0, len(rs))
		for _, r := range rs {
			if x := f(r); x != 0 || keepZero {
				v = append(v, x)
			}
		}
		return newStat(v).Median
	}
	m := rs[0]
	m.Background = nil
	m.Errors = nil
	m.Calls, m.Items, m.Seconds = 0, 0, 0
	m.OpsPerSec = med(func(r Result) float64 { return r.OpsPerSec }, true)
	m.ItemsPerSec = med(func(r Result) float64 { return r.ItemsPerSec }, true)
	m.P50 = med(func(r Result) float64 { return r.P50 }, false)
	m.P90 = med(func(r Result) float64 { return r.P90 }, false)
	m.P99 = med(func(r Result) float64 { return r.P99 }, false)
	m.P999 = med(func(r Result) float64 { return r.P999 }, false)
	m.ServerCPUPerCall = med(func(r Result) float64 { return r.ServerCPUPerCall }, false)
	m.ServerAllocsPerCall = med(func(r Result) float64 { return r.ServerAllocsPerCall }, false)
	m.ClientCPUPerCall = med(func(r Result) float64 { return r.ClientCPUPerCall }, false)
	m.IdleShare = nil
	var idle []float64
	for _, r := range rs {
		if r.IdleShare != nil {
			idle = append(idle, *r.IdleShare)
		}
	}
	if len(idle) > 0 {
		v := newStat(idle).Median
		m.IdleShare = &v
	}
	return m
}
