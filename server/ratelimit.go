package server

import (
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server/policy"
)

// maxBuckets bounds the token buckets kept; past it, full buckets (which a
// new bucket would equal) are dropped.
const maxBuckets = 100_000

// limiter enforces the policy's per-identity rate limits with one token
// bucket (golang.org/x/time/rate) per limit and identity, or per limit,
// identity and tenant. Buckets survive a policy reload when their limit
// does (same rule and class); only their rate and size change.
type limiter struct {
	mu      sync.Mutex
	synced  *policy.Policy // the policy the buckets were last checked against
	buckets map[bucketKey]*bucket
	now     func() time.Time
	refused *prometheus.CounterVec
}

type bucketKey struct {
	limit, identity, tenant string
}

type bucket struct {
	lim   *rate.Limiter
	limit *policy.RateLimit
}

func newLimiter(refused *prometheus.CounterVec) *limiter {
	return &limiter{buckets: make(map[bucketKey]*bucket), now: time.Now, refused: refused}
}

// allow takes n tokens from every bucket that limits c, or none: it fails
// with RESOURCE_EXHAUSTED, reason RATE_LIMITED and a RetryInfo saying when
// the call could pass, if any of them lacks tokens.
func (l *limiter) allow(c *call, n int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.policy != l.synced {
		l.sync(c.policy)
	}
	now := l.now()
	var taken []*rate.Reservation
	var refusedBy *policy.RateLimit
	var wait time.Duration
	c.policy.RateLimits(c.identity, c.tenant, c.method.class, func(rl *policy.RateLimit) bool {
		b := l.bucket(rl, c)
		r := b.lim.ReserveN(now, n)
		if !r.OK() {
			// More tokens than the bucket holds: the call can never pass.
			refusedBy, wait = rl, -1
			return false
		}
		if d := r.DelayFrom(now); d > 0 {
			r.CancelAt(now)
			refusedBy, wait = rl, d
			return false
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
		if len(l.buckets) >= maxBuckets {
			l.dropFull()
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

// dropFull drops the buckets that are full again: a new one would be the same.
func (l *limiter) dropFull() {
	now := l.now()
	for k, b := range l.buckets {
		if b.lim.TokensAt(now) >= float64(b.limit.Burst) {
			delete(l.buckets, k)
		}
	}
}

// rateLimited is the status of a refused call. It says nothing of other
// identities' buckets.
func rateLimited(n int, rl *policy.RateLimit, wait time.Duration) error {
	msg := "rate limit exceeded; retry later"
	if wait < 0 {
		// Never passes: the call needs more tokens than the bucket holds.
		wait = time.Duration(math.Ceil(float64(n) / rl.PerSecond * float64(time.Second)))
		msg = fmt.Sprintf("rate limit exceeded: %d items exceed the limit's burst of %d; send smaller batches", n, rl.Burst)
	}
	st := status.New(codes.ResourceExhausted, msg)
	ds, err := st.WithDetails(
		&errdetails.ErrorInfo{Reason: custosv1.ReasonRateLimited, Domain: custosv1.ErrorDomain, Metadata: map[string]string{"rule": rl.Rule}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(wait)},
	)
	if err != nil {
		return st.Err()
	}
	return ds.Err()
}
