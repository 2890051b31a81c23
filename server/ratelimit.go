package server

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server/policy"
)

// defaultMaxBuckets bounds the token buckets kept (see limiter.makeRoom).
const defaultMaxBuckets = 100_000

// limiter enforces the policy's per-identity rate limits with one token
// bucket (golang.org/x/time/rate) per limit and identity, or per limit,
// identity and tenant. Buckets survive a policy reload when their limit
// does (same rule and class); only their rate and size change.
type limiter struct {
	// policy is the policy in force; the buckets follow it forward only,
	// whatever policy a call was authorized under.
	policy     PolicySource
	mu         sync.Mutex
	synced     *policy.Policy // the policy the buckets were last checked against
	buckets    map[bucketKey]*bucket
	maxBuckets int
	now        func() time.Time
	refused    *prometheus.CounterVec
}

type bucketKey struct {
	limit, identity, tenant string
}

type bucket struct {
	lim   *rate.Limiter
	limit *policy.RateLimit
}

func newLimiter(src PolicySource, refused *prometheus.CounterVec) *limiter {
	return &limiter{policy: src, buckets: make(map[bucketKey]*bucket), maxBuckets: defaultMaxBuckets, now: time.Now, refused: refused}
}

// allow takes n tokens from every bucket that limits c under the policy in
// force, or none: it fails with RESOURCE_EXHAUSTED, reason RATE_LIMITED and
// a RetryInfo saying when the call could pass (the longest wait of those
// that lack tokens, naming its rule), if any of them lacks tokens.
// The policy is read under the lock, so the buckets only ever follow a
// reload forward, even for a call authorized just before it.
func (l *limiter) allow(c *call, n int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	pol := l.policy.Current()
	if pol != l.synced {
		l.sync(pol)
	}
	now := l.now()
	var taken []*rate.Reservation
	var refusedBy *policy.RateLimit
	var wait time.Duration
	pol.RateLimits(c.identity, c.tenant, c.method.class, func(rl *policy.RateLimit) bool {
		b := l.bucket(rl, c)
		r := b.lim.ReserveN(now, n)
		if !r.OK() {
			// More tokens than the bucket holds: the call can never pass.
			refusedBy, wait = rl, -1
			return false
		}
		if d := r.DelayFrom(now); d > 0 {
			// Refused; the others are still asked, so that the retry
			// delay is the longest (the call passes only then).
			r.CancelAt(now)
			if refusedBy == nil || d > wait {
				refusedBy, wait = rl, d
			}
			return true
		}
		taken = append(taken, r)
		return true
	})
	if refusedBy == nil {
		return nil
	}
	for _, r := range taken {
		r.CancelAt(now)
	}
	l.refused.WithLabelValues(refusedBy.Rule, string(c.method.class)).Inc()
	return rateLimited(n, refusedBy, wait)
}

// bucket returns the bucket of rl for c's caller, creating it full.
func (l *limiter) bucket(rl *policy.RateLimit, c *call) *bucket {
	k := bucketKey{limit: rl.ID, identity: c.identity}
	if rl.PerTenant {
		k.tenant = c.tenant
	}
	b, ok := l.buckets[k]
	if !ok {
		if len(l.buckets) >= l.maxBuckets {
			l.makeRoom()
		}
		b = &bucket{lim: rate.NewLimiter(rate.Limit(rl.PerSecond), rl.Burst), limit: rl}
		l.buckets[k] = b
	}
	return b
}

// sync brings the buckets in line with a reloaded policy: a bucket whose
// limit is still there takes the new rate and size and keeps its tokens;
// one whose limit is gone is dropped.
func (l *limiter) sync(p *policy.Policy) {
	now := l.now()
	current := map[string]*policy.RateLimit{}
	for _, rl := range p.AllRateLimits() {
		current[rl.ID] = rl
	}
	for k, b := range l.buckets {
		rl, ok := current[k.limit]
		if !ok {
			delete(l.buckets, k)
			continue
		}
		if rl.PerSecond != b.limit.PerSecond {
			b.lim.SetLimitAt(now, rate.Limit(rl.PerSecond))
		}
		if rl.Burst != b.limit.Burst {
			b.lim.SetBurstAt(now, rl.Burst)
		}
		b.limit = rl
	}
	l.synced = p
}

// makeRoom brings the buckets down to 90% of the cap, so that the scan it
// takes runs at most once per tenth of the cap of new buckets. It drops the
// fullest buckets first: a full one is as good as a new one, and a nearly
// full one loses almost nothing. The drained buckets of callers being held
// back go last, so that naming ever new tenants under a per-tenant limit
// (each a bucket one call below full) cannot reset them.
func (l *limiter) makeRoom() {
	target := l.maxBuckets * 9 / 10
	now := l.now()
	type fill struct {
		k    bucketKey
		fill float64
	}
	var rest []fill // the buckets not full, sorted only if full ones are not enough
	for k, b := range l.buckets {
		if f := b.lim.TokensAt(now) / float64(max(b.limit.Burst, 1)); f >= 1 {
			delete(l.buckets, k)
		} else {
			rest = append(rest, fill{k, f})
		}
	}
	if len(l.buckets) <= target {
		return
	}
	slices.SortFunc(rest, func(a, b fill) int { return cmp.Compare(b.fill, a.fill) })
	for _, f := range rest[:len(l.buckets)-target] {
		delete(l.buckets, f.k)
	}
}

// rateLimited is the status of a refused call. It says nothing of other
// identities' buckets.
func rateLimited(n int, rl *policy.RateLimit, wait time.Duration) error {
	info := &errdetails.ErrorInfo{Reason: custosv1.ReasonRateLimited, Domain: custosv1.ErrorDomain, Metadata: map[string]string{"rule": rl.Rule}}
	st := status.New(codes.ResourceExhausted, "rate limit exceeded; retry later")
	details := []protoadapt.MessageV1{info, &errdetails.RetryInfo{RetryDelay: durationpb.New(wait)}}
	if wait < 0 {
		// Never passes, so no RetryInfo: the call needs more tokens than
		// the bucket holds.
		st = status.Newf(codes.ResourceExhausted, "rate limit exceeded: %d items exceed the limit's burst of %d; send smaller batches", n, rl.Burst)
		details = details[:1]
	}
	ds, err := st.WithDetails(details...)
	if err != nil {
		return st.Err()
	}
	return ds.Err()
}
