package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/custos-kms/custos/internal/bench"
)

// newBenchSoakCmd is `custos bench soak`: a mixed load held at a fraction
// of the measured peak for a long time, sampled for drift.
func newBenchSoakCmd() *cobra.Command {
	var (
		c                        conn
		op, metrics              string
		concurrency              int
		fraction                 float64
		peak, duration, sampleEv time.Duration
		spawnDevFlag             bool
	)
	cmd := &cobra.Command{
		Use:   "soak",
		Short: "Hold a mixed load at a fraction of the measured peak and report errors, RSS, goroutines and latency drift",
		Long: `custos bench soak first measures the peak throughput of --op at
--concurrency (closed loop, --peak long), then holds --fraction of it
(paced by a token bucket, at most --concurrency in flight) for --duration,
taking a sample every --sample: calls, errors, p50/p99 latency and, from the
server's /metrics, its resident memory and goroutines. The summary compares
the first quarter of the samples with the last: a healthy server stays flat.
With --spawn-dev it starts a throwaway custos dev in its own process.
See docs/operations.md for this machine's figures.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			o, err := bench.ParseOp(op)
			if err != nil {
				return usageErr(cmd, err)
			}
			if fraction <= 0 || fraction > 1 {
				return usageErr(cmd, fmt.Errorf("--fraction %v: want (0, 1]", fraction))
			}
			// Checked before the peak is measured, not after.
			switch {
			case concurrency < 1 || concurrency > maxConcurrency:
				return usageErr(cmd, fmt.Errorf("--concurrency %d: want 1 to %d", concurrency, maxConcurrency))
			case peak <= 0:
				return usageErr(cmd, fmt.Errorf("--peak %v: want a positive duration", peak))
			case duration <= 0:
				return usageErr(cmd, fmt.Errorf("--duration %v: want a positive duration", duration))
			case sampleEv <= 0 || sampleEv > duration:
				return usageErr(cmd, fmt.Errorf("--sample %v: want a positive duration no longer than --duration (%v)", sampleEv, duration))
			}
			if c.output != "text" && c.output != "json" {
				return usageErr(cmd, errors.New("-o: want text or json"))
			}
			progress := cmd.ErrOrStderr()
			c.applyDevDir(cmd)
			if spawnDevFlag {
				dev, err := spawnDev(ctx)
				if err != nil {
					return err
				}
				defer dev.stop()
				c.addr, metrics = dev.addr, "http://"+dev.ops+"/metrics"
				c.ca, c.cert, c.key = dev.clientFiles()
				fmt.Fprintf(progress, "custos dev (pid %d) on %s\n", dev.cmd.Process.Pid, c.addr)
			}
			cc, err := dialBench(c.addr, c.ca, c.cert, c.key)
			if err != nil {
				return err
			}
			defer cc.Close()
			if err := setupBench(ctx, cc); err != nil {
				return err
			}
			w := bench.Workload{Op: o, Concurrency: concurrency, BatchSize: 100, PayloadBytes: 64, Warmup: time.Second, Duration: peak}
			fmt.Fprintf(progress, "measuring the peak of %s@%d for %v\n", o, concurrency, peak)
			p, err := bench.Run(ctx, bench.Target{Name: "custos", Conn: cc}, w)
			if err != nil {
				return err
			}
			if p.OpsPerSec == 0 {
				return fmt.Errorf("no %s call succeeded while measuring the peak for %v (errors: %v); nothing to hold", o, peak, p.Errors)
			}
			target := p.OpsPerSec * fraction
			fmt.Fprintf(progress, "peak %.0f calls/s; holding %.0f calls/s (%.0f%%) for %v\n", p.OpsPerSec, target, fraction*100, duration)
			// Interrupted, a soak still reports what it saw, and then fails
			// with the interruption: a cut-short soak is no pass.
			rep, soakErr := bench.Soak(ctx, cc, bench.SoakConfig{Workload: w, Rate: target, Duration: duration, Sample: sampleEv, Metrics: metrics})
			if soakErr != nil && rep.Calls == 0 {
				return soakErr
			}
			out := cmd.OutOrStdout()
			if c.output == "json" {
				if err := json.NewEncoder(out).Encode(struct {
					Peak float64 `json:"peak_ops_per_sec"`
					bench.SoakReport
				}{p.OpsPerSec, rep}); err != nil {
					return err
				}
				return soakErr
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "at s\tcalls\terrors\tcalls/s\tp50 µs\tp99 µs\tRSS MiB\theap MiB\tgoroutines\t")
			for _, s := range rep.Samples {
				fmt.Fprintf(tw, "%.0f\t%d\t%d\t%.0f\t%.0f\t%.0f\t%.1f\t%.1f\t%d\t\n", s.AtSeconds, s.Calls, s.Errors, s.OpsPerSec, s.P50, s.P99, s.RSSMiB, s.HeapMiB, s.Goroutines)
			}
			tw.Flush()
			fmt.Fprintf(out, "\n%s@%d at %.0f%% of a %.0f calls/s peak for %.0f s: %d calls, errors %v\n", o, concurrency, fraction*100, p.OpsPerSec, rep.Seconds, rep.Calls, rep.Errors)
			names := make([]string, 0, len(rep.Trend))
			for k := range rep.Trend {
				names = append(names, k)
			}
			sort.Strings(names)
			for _, k := range names {
				fmt.Fprintf(out, "  %-12s first quarter -> last quarter: %s\n", k, rep.Trend[k])
			}
			return soakErr
		},
	}
	c.flags(cmd)
	_ = cmd.PersistentFlags().MarkHidden("timeout") // a soak ends with --duration
	fl := cmd.Flags()
	fl.StringVar(&op, "op", "mixed", "operation: "+opNames())
	fl.IntVar(&concurrency, "concurrency", 64, "most calls in flight")
	fl.Float64Var(&fraction, "fraction", 0.7, "share of the measured peak to hold")
	fl.DurationVar(&peak, "peak", 5*time.Second, "how long to measure the peak")
	fl.DurationVar(&duration, "duration", 8*time.Minute, "how long to hold the load")
	fl.DurationVar(&sampleEv, "sample", 15*time.Second, "sample interval (at most --duration)")
	fl.StringVar(&metrics, "server-metrics", "", "the server's /metrics URL, for RSS and goroutines (set by --spawn-dev)")
	fl.BoolVar(&spawnDevFlag, "spawn-dev", false, "start a throwaway custos dev in its own process and soak it")
	return cmd
}
