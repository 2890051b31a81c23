package bench

import (
	"strings"
	"testing"
	"time"
)

func TestTheTextReportShowsWhereEachCallsCPUWent(t *testing.T) {
	idle := 0.15
	rep := &Report{Rounds: 1, Comparisons: []Comparison{{
		Workload: "encrypt@64",
		Custos:   []Result{{ItemsPerSec: 40000, ServerCPUPerCall: 22.1, ClientCPUPerCall: 19.6, IdleShare: &idle}},
		Baseline: []Result{{ItemsPerSec: 70000, ServerCPUPerCall: 9.8, ClientCPUPerCall: 18.2, IdleShare: new(float64)}},
	}}}
	var b strings.Builder
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	i := strings.Index(out, "CPU µs per call")
	if i < 0 {
		t.Fatalf("no CPU section:\n%s", out)
	}
	for _, want := range []string{"22.1", "19.6", "15%", "9.8", "18.2", "0%"} {
		if !strings.Contains(out[i:], want) {
			t.Errorf("CPU section lacks %q:\n%s", want, out[i:])
		}
	}

	// The client's CPU is shown even when the idle share could not be read.
	rep.Comparisons[0].Custos[0].IdleShare = nil
	b.Reset()
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	if i := strings.Index(b.String(), "CPU µs per call"); i < 0 || !strings.Contains(b.String()[i:], "19.6") {
		t.Errorf("the client's CPU is not shown without an idle share:\n%s", b.String())
	}

	// Runs that read neither print no such section.
	for _, r := range []*Result{&rep.Comparisons[0].Custos[0], &rep.Comparisons[0].Baseline[0]} {
		r.ClientCPUPerCall, r.IdleShare = 0, nil
	}
	b.Reset()
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "CPU µs per call") {
		t.Errorf("a CPU section without readings:\n%s", b.String())
	}
}

// Each figure of the text report is its own median over the rounds, not
// that of the round with the median throughput.
func TestTheReportsFiguresAreEachTheirOwnMedian(t *testing.T) {
	m := medianResult([]Result{
		{ItemsPerSec: 100, P50: 300, P99: 900, ServerCPUPerCall: 30},
		{ItemsPerSec: 200, P50: 100, P99: 5000, ServerCPUPerCall: 10},
		{ItemsPerSec: 300, P50: 200, P99: 700, ServerCPUPerCall: 0}, // CPU not read
	})
	if m.ItemsPerSec != 200 || m.P50 != 200 || m.P99 != 900 || m.ServerCPUPerCall != 20 {
		t.Fatalf("medians: %.0f items/s, p50 %.0f, p99 %.0f, cpu %.0f; want 200, 200, 900, 20", m.ItemsPerSec, m.P50, m.P99, m.ServerCPUPerCall)
	}
}

// Percentiles are nearest-rank: rank ⌈n·p/100⌉.
func TestPercentilesAreNearestRank(t *testing.T) {
	lat := func(n int) []time.Duration {
		s := make([]time.Duration, n)
		for i := range s {
			s[i] = time.Duration(i+1) * time.Microsecond
		}
		return s
	}
	for _, c := range []struct {
		n    int
		p    float64
		want float64
	}{
		{160, 99, 159}, // 158.4 → 159 (rounding to nearest took 158)
		{100, 50, 50},
		{600, 99.9, 600}, // 599.4 → 600, the largest
		{1, 99.9, 1},
		{41000, 99.9, 40959}, // 40959 exactly; in floating point 40959.00000000001
		{82000, 99.9, 81918},
	} {
		if got := pct(lat(c.n), c.p); got != c.want {
			t.Errorf("p%v of 1..%d µs = %v, want %v", c.p, c.n, got, c.want)
		}
	}
}

// A ratio no round gave (a side without a successful call) prints as "–",
// not as 0.00×; the contention line names its errors and a background that
// made no call, which left the ratio looking met while nothing contended.
func TestTheTextReportShowsWhatWasNotMeasured(t *testing.T) {
	rep := &Report{Rounds: 1,
		Comparisons: []Comparison{{
			Workload: "encrypt-batch@64",
			Custos:   []Result{{ItemsPerSec: 90000}},
			Baseline: []Result{{Errors: map[string]int64{"NotFound": 12}}},
		}},
		Contention: []Contention{{
			Workload: "encrypt@64", Background: "hash@4",
			Unloaded:   []Result{{ItemsPerSec: 40000, P99: 900}},
			Loaded:     []Result{{ItemsPerSec: 39000, P99: 950, Background: &Result{Errors: map[string]int64{"PermissionDenied": 7}}}},
			Throughput: newStat([]float64{0.975}),
			P99:        newStat([]float64{1.06}),
		}},
	}
	var b strings.Builder
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if strings.Contains(out, "0.00×") {
		t.Errorf("a ratio without values printed as 0.00×:\n%s", out)
	}
	for _, want := range []string{"7 background", "the background made no successful call"} {
		if !strings.Contains(out, want) {
			t.Errorf("the report lacks %q:\n%s", want, out)
		}
	}
}

// A statistic without values is an empty list in JSON, not null.
func TestAnEmptyStatisticIsAnEmptyList(t *testing.T) {
	var b strings.Builder
	rep := &Report{Rounds: 1, Comparisons: []Comparison{{Workload: "encrypt@1", Custos: []Result{{}}, Throughput: newStat(nil), P50: newStat(nil)}}}
	if err := rep.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), `"values": null`) {
		t.Fatalf("an empty statistic's values are null:\n%s", b.String())
	}
}
