package server

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/server/policy"
)

type fixedPolicy struct{ p *policy.Policy }

func (f *fixedPolicy) Current() *policy.Policy { return f.p }

func mustPolicy(t *testing.T, doc string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newTestLimiter(src PolicySource) *limiter {
	return newLimiter(src, prometheus.NewCounterVec(prometheus.CounterOpts{Name: "t"}, []string{"rule", "class"}))
}

// callOn is a data-plane call by identity on tenant, authorized under p.
func callOn(p *policy.Policy, identity, tenant string) *call {
	return &call{method: &method{class: policy.ClassData}, identity: identity, tenant: tenant, policy: p}
}

func TestTwoRulesWithTheSameGlobsHaveTheirOwnBuckets(t *testing.T) {
	p := mustPolicy(t, `
rules:
  - identities: [x]
    tenants: [t]
    rate_limits: [{requests_per_second: 0.001, burst: 2}]
  - identities: [x]
    tenants: [t]
    rate_limits: [{requests_per_second: 100, burst: 100}]
`)
	l := newTestLimiter(&fixedPolicy{p})
	for i := range 2 {
		if err := l.allow(callOn(p, "x", "t"), 1); err != nil {
			t.Fatalf("call %d within the strict burst: %v", i+1, err)
		}
	}
	if err := l.allow(callOn(p, "x", "t"), 1); err == nil {
		t.Fatal("the third call passed: the strict rule's limit was not enforced")
	}
}

func TestACallAuthorizedUnderAnOlderPolicyDoesNotUndoAReload(t *testing.T) {
	const doc = "rules:\n  - {name: r, identities: [x], tenants: [t], rate_limits: [{requests_per_second: %v, burst: %d}]}\n"
	a := mustPolicy(t, fmt.Sprintf(doc, 1000, 1000))
	b := mustPolicy(t, fmt.Sprintf(doc, 0.001, 1))
	src := &fixedPolicy{a}
	l := newTestLimiter(src)
	if err := l.allow(callOn(a, "x", "t"), 1); err != nil {
		t.Fatal(err)
	}
	src.p = b // reloaded: the bucket keeps its tokens, capped at B's burst of 1
	if err := l.allow(callOn(b, "x", "t"), 1); err != nil {
		t.Fatalf("the one token B's burst leaves: %v", err)
	}
	if err := l.allow(callOn(b, "x", "t"), 1); err == nil {
		t.Fatal("under B the bucket is spent, yet the call passed")
	}
	// A call that was authorized just before the reload reaches the limiter now.
	if err := l.allow(callOn(a, "x", "t"), 1); err == nil {
		t.Fatal("a call authorized under A was limited by A's rates after the reload to B")
	}
	if err := l.allow(callOn(b, "x", "t"), 1); err == nil {
		t.Fatal("B's bucket was reset by a call authorized under A")
	}
}

func TestBucketsStayBoundedWhateverTheTenantsNamed(t *testing.T) {
	p := mustPolicy(t, "rules:\n  - {identities: [x], tenants: [\"*\"], rate_limits: [{requests_per_second: 1, burst: 10, per_tenant: true}]}\n")
	l := newTestLimiter(&fixedPolicy{p})
	l.maxBuckets = 1000
	for i := range 5000 {
		// Every bucket keeps 9 of 10 tokens: none is full again, so none
		// can be dropped as equal to a new one.
		if err := l.allow(callOn(p, "x", fmt.Sprintf("t%d", i)), 1); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(l.buckets); n > l.maxBuckets {
		t.Fatalf("%d buckets for a cap of %d", n, l.maxBuckets)
	}
}

// Naming ever new tenants under a per-tenant limit fills the bucket table
// with buckets one call below full; making room drops those first, never
// a drained bucket of a caller being held back.
func TestMakingRoomNeverResetsADrainedBucket(t *testing.T) {
	p := mustPolicy(t, "rules:\n  - {identities: [x, y], tenants: [\"*\"], rate_limits: [{requests_per_second: 0.001, burst: 10, per_tenant: true}]}\n")
	l := newTestLimiter(&fixedPolicy{p})
	l.maxBuckets = 100
	for range 10 { // x drains its bucket on tenant a
		if err := l.allow(callOn(p, "x", "a"), 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.allow(callOn(p, "x", "a"), 1); err == nil {
		t.Fatal("the drained bucket let a call through")
	}
	for i := range 1000 { // y names ever new tenants
		if err := l.allow(callOn(p, "y", fmt.Sprintf("t%d", i)), 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.allow(callOn(p, "x", "a"), 1); err == nil {
		t.Fatal("x's drained bucket was dropped to make room, and its limit reset")
	}
}

// An unnamed limited rule keeps its buckets when another rule is added
// before it: its buckets are not tied to its position in the file.
func TestAReloadThatMovesAnUnnamedRuleKeepsItsBuckets(t *testing.T) {
	const limited = "  - {identities: [x], tenants: [t], rate_limits: [{requests_per_second: 0.001, burst: 2}]}\n"
	a := mustPolicy(t, "rules:\n"+limited)
	b := mustPolicy(t, "rules:\n  - {identities: [y], tenants: [u], permissions: [encrypt]}\n"+limited)
	src := &fixedPolicy{a}
	l := newTestLimiter(src)
	for i := range 2 {
		if err := l.allow(callOn(a, "x", "t"), 1); err != nil {
			t.Fatalf("call %d within the burst: %v", i+1, err)
		}
	}
	src.p = b // reloaded with a rule before the limited one
	if err := l.allow(callOn(b, "x", "t"), 1); err == nil {
		t.Fatal("the drained bucket was refilled by a reload that only moved its rule")
	}
}

// A call refused by several limits is told the longest wait, and the rule
// that sets it: the first refusing limit's shorter wait sent a client that
// obeyed it back to be refused again.
func TestARefusalByTwoLimitsGivesTheLongerWait(t *testing.T) {
	p := mustPolicy(t, `
rules:
  - name: fast
    identities: [x]
    tenants: [t]
    rate_limits: [{requests_per_second: 1, burst: 1}]
  - name: slow
    identities: [x]
    tenants: [t]
    rate_limits: [{requests_per_second: 0.01, burst: 1}]
`)
	l := newTestLimiter(&fixedPolicy{p})
	now := time.Now()
	l.now = func() time.Time { return now }
	if err := l.allow(callOn(p, "x", "t"), 1); err != nil {
		t.Fatal(err)
	}
	err := l.allow(callOn(p, "x", "t"), 1)
	st := status.Convert(err)
	var delay time.Duration
	var rule string
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.RetryInfo:
			delay = d.GetRetryDelay().AsDuration()
		case *errdetails.ErrorInfo:
			rule = d.GetMetadata()["rule"]
		}
	}
	if delay < 99*time.Second || rule != "slow" {
		t.Fatalf("the second call: retry in %v, rule %q; want about 100s, rule slow (%v)", delay, rule, err)
	}
}
