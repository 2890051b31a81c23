package bench

import (
	"strings"
	"testing"
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
