package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// Op is a kind of call the tool makes.
type Op string

// The operations. Batch operations send BatchSize items per call.
const (
	OpEncrypt      Op = "encrypt"
	OpDecrypt      Op = "decrypt"
	OpEncryptBatch Op = "encrypt-batch"
	OpDecryptBatch Op = "decrypt-batch"
	OpRewrapBatch  Op = "rewrap-batch"
	OpBlindIndex   Op = "blind-index"
	OpDataKey      Op = "datakey"
	OpHash         Op = "hash"
	OpVerify       Op = "verify"
	// OpMixed is 60% encrypt, 30% decrypt, 5% blind index, 4% encrypt
	// batches and 1% data keys.
	OpMixed Op = "mixed"
)

// Ops lists every operation.
var Ops = []Op{OpEncrypt, OpDecrypt, OpEncryptBatch, OpDecryptBatch, OpRewrapBatch, OpBlindIndex, OpDataKey, OpHash, OpVerify, OpMixed}

// HasBaseline reports whether the baseline echo server answers op, so
// that a ratio can be taken. Password hashing has none there (its cost is
// the hash); a Custos server as the baseline (Target.Custos) answers it.
func (o Op) HasBaseline() bool { return o != OpHash && o != OpVerify }

// Batch reports whether op sends batches.
func (o Op) Batch() bool { return o == OpEncryptBatch || o == OpDecryptBatch || o == OpRewrapBatch }

// ParseOp checks an operation name.
func ParseOp(s string) (Op, error) {
	for _, o := range Ops {
		if string(o) == s {
			return o, nil
		}
	}
	return "", fmt.Errorf("unknown operation %q (want one of %v)", s, Ops)
}

// Keys names the keys a run uses; Setup creates them.
type Keys struct {
	Encrypt  string // an ENCRYPT key
	MAC      string // a MAC key
	Password string // a PASSWORD key
}

// DefaultKeys are the keys of tenant "bench".
var DefaultKeys = Keys{
	Encrypt:  "tenants/bench/keys/enc",
	MAC:      "tenants/bench/keys/mac",
	Password: "tenants/bench/keys/pw",
}

// Argon2idKeys are DefaultKeys with the PASSWORD key hashing with argon2id
// (its default parameters) instead of bcrypt.
var Argon2idKeys = Keys{
	Encrypt:  DefaultKeys.Encrypt,
	MAC:      DefaultKeys.MAC,
	Password: "tenants/bench/keys/pw-argon2id",
}

// Setup creates tenant "bench" and its keys on a Custos server; existing
// ones are kept.
func Setup(ctx context.Context, conn grpc.ClientConnInterface) error {
	kc := custosv1.NewKeyServiceClient(conn)
	if _, err := kc.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: "bench"}); err != nil && status.Code(err) != codes.AlreadyExists {
		return fmt.Errorf("create tenant bench: %w", err)
	}
	argon2id := &custosv1.PasswordPolicy{Algorithm: custosv1.PasswordAlgorithm_PASSWORD_ALGORITHM_ARGON2ID}
	for id, k := range map[string]*custosv1.Key{
		"enc": {Purpose: custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT},
		"mac": {Purpose: custosv1.KeyPurpose_KEY_PURPOSE_MAC},
		"pw":  {Purpose: custosv1.KeyPurpose_KEY_PURPOSE_PASSWORD},
		// Argon2idKeys' key: argon2id with its default (OWASP) parameters.
		"pw-argon2id": {Purpose: custosv1.KeyPurpose_KEY_PURPOSE_PASSWORD, PasswordPolicy: argon2id},
	} {
		_, err := kc.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/bench", KeyId: id, Key: k})
		if err != nil && status.Code(err) != codes.AlreadyExists {
			return fmt.Errorf("create key %s: %w", id, err)
		}
	}
	return nil
}

// Workload is what one run does.
type Workload struct {
	Op Op
	// Concurrency is the number of calls in flight (closed loop: each
	// worker sends its next call when the last one returned).
	Concurrency int
	// BatchSize is the items per batch call.
	BatchSize int
	// PayloadBytes is the size of each plaintext field.
	PayloadBytes int
	// Warmup runs before the measured Duration and is not counted.
	Warmup, Duration time.Duration
	// Keys are the key names; zero means DefaultKeys.
	Keys Keys
	// Tenants, for encrypt only, spreads the calls over the keys "enc" of
	// the seeded tenants TenantPrefix0000000 … (Seed), each call picking
	// one at random, instead of Keys.Encrypt.
	Tenants      int
	TenantPrefix string
}

// keys are the key names w uses: w.Keys, or DefaultKeys if unset.
func (w Workload) keys() Keys {
	if w.Keys == (Keys{}) {
		return DefaultKeys
	}
	return w.Keys
}

func (w Workload) label() string {
	if w.Op.Batch() {
		return fmt.Sprintf("%s(%d)@%d", w.Op, w.BatchSize, w.Concurrency)
	}
	return fmt.Sprintf("%s@%d", w.Op, w.Concurrency)
}

// Result is what one run measured. Latencies are in microseconds.
type Result struct {
	Target      string           `json:"target"`
	Op          Op               `json:"op"`
	Concurrency int              `json:"concurrency"`
	BatchSize   int              `json:"batch_size,omitempty"`
	Calls       int64            `json:"calls"`
	Items       int64            `json:"items"`
	Seconds     float64          `json:"seconds"`
	OpsPerSec   float64          `json:"ops_per_sec"`
	ItemsPerSec float64          `json:"items_per_sec"`
	P50         float64          `json:"p50_us"`
	P90         float64          `json:"p90_us"`
	P99         float64          `json:"p99_us"`
	P999        float64          `json:"p999_us"`
	Errors      map[string]int64 `json:"errors,omitempty"`
	// ServerCPUPerCall is the server's CPU time per call in microseconds,
	// when the run was told how to read it (0 otherwise).
	ServerCPUPerCall float64 `json:"server_cpu_us_per_call,omitempty"`
	// ServerAllocsPerCall is how many heap objects the server allocated
	// per call, when the run was told how to read it (0 otherwise).
	ServerAllocsPerCall float64 `json:"server_allocs_per_call,omitempty"`
	// ClientCPUPerCall is the load generator's own CPU time per call in
	// microseconds, when its target says how to read it (0 otherwise).
	// With client and server on one machine, they share its cores: the
	// client's cost per call bounds the throughput as the server's does.
	ClientCPUPerCall float64 `json:"client_cpu_us_per_call,omitempty"`
	// IdleShare is the share of this machine's CPU time that was idle
	// (or waiting for I/O) during the measured window, 0 to 1, when read
	// with the client's CPU; nil otherwise. Near 0 the run was bound by
	// CPU; well above 0 with calls still in flight, by latency (a wait
	// that holds no core, such as a disk sync).
	IdleShare *float64 `json:"machine_idle_share,omitempty"`
	// Background is what ran beside the measured calls, if anything.
	Background *Result `json:"background,omitempty"`
}

// call is one prepared request; it returns how many items it carried.
type call func(ctx context.Context) (items int, err error)

// prepare builds the calls of w against conn: one per worker, each with
// its own request so that no two workers share a message.
func prepare(ctx context.Context, conn grpc.ClientConnInterface, w Workload) (func(worker int) call, error) {
	c := custosv1.NewCryptoServiceClient(conn)
	k := w.keys()
	payload := bytes.Repeat([]byte("p"), max(w.PayloadBytes, 1))
	aad := []byte("bench/field")
	// A ciphertext of this server, for the decrypting operations.
	var ct []byte
	if w.Op == OpDecrypt || w.Op == OpDecryptBatch || w.Op == OpRewrapBatch || w.Op == OpMixed {
		r, err := c.Encrypt(ctx, &custosv1.EncryptRequest{Name: k.Encrypt, Plaintext: payload, AssociatedData: aad})
		if err != nil {
			return nil, fmt.Errorf("prepare: encrypt: %w", err)
		}
		ct = r.GetCiphertext()
	}
	var hash string
	if w.Op == OpVerify {
		r, err := c.HashPassword(ctx, &custosv1.HashPasswordRequest{Name: k.Password, Password: payload})
		if err != nil {
			return nil, fmt.Errorf("prepare: hash: %w", err)
		}
		hash = r.GetHash()
	}
	// n is each builder's own: the mixed profile's batches are of 10, and a
	// variable shared with workers already running would race.
	batchOf := func(op Op, n int) call {
		switch op {
		case OpEncryptBatch:
			req := &custosv1.EncryptBatchRequest{Name: k.Encrypt, Items: make([]*custosv1.EncryptBatchRequest_Item, n)}
			for i := range req.Items {
				req.Items[i] = &custosv1.EncryptBatchRequest_Item{Plaintext: payload, AssociatedData: aad}
			}
			return func(ctx context.Context) (int, error) {
				resp, err := c.EncryptBatch(ctx, req)
				return batchItems(n, resp.GetResults(), err)
			}
		case OpDecryptBatch:
			req := &custosv1.DecryptBatchRequest{Name: k.Encrypt, Items: make([]*custosv1.DecryptBatchRequest_Item, n)}
			for i := range req.Items {
				req.Items[i] = &custosv1.DecryptBatchRequest_Item{Ciphertext: ct, AssociatedData: aad}
			}
			return func(ctx context.Context) (int, error) {
				resp, err := c.DecryptBatch(ctx, req)
				return batchItems(n, resp.GetResults(), err)
			}
		default:
			req := &custosv1.RewrapBatchRequest{Name: k.Encrypt, Items: make([]*custosv1.RewrapBatchRequest_Item, n)}
			for i := range req.Items {
				req.Items[i] = &custosv1.RewrapBatchRequest_Item{Ciphertext: ct, AssociatedData: aad}
			}
			return func(ctx context.Context) (int, error) {
				resp, err := c.RewrapBatch(ctx, req)
				return batchItems(n, resp.GetResults(), err)
			}
		}
	}
	single := func(op Op) call {
		switch op {
		case OpEncrypt:
			if w.Tenants > 0 {
				rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
				return func(ctx context.Context) (int, error) {
					name := "tenants/" + SeedName(w.TenantPrefix, rng.IntN(w.Tenants)) + "/keys/enc"
					_, err := c.Encrypt(ctx, &custosv1.EncryptRequest{Name: name, Plaintext: payload, AssociatedData: aad})
					return 1, err
				}
			}
			req := &custosv1.EncryptRequest{Name: k.Encrypt, Plaintext: payload, AssociatedData: aad}
			return func(ctx context.Context) (int, error) { _, err := c.Encrypt(ctx, req); return 1, err }
		case OpDecrypt:
			req := &custosv1.DecryptRequest{Name: k.Encrypt, Ciphertext: ct, AssociatedData: aad}
			return func(ctx context.Context) (int, error) { _, err := c.Decrypt(ctx, req); return 1, err }
		case OpBlindIndex:
			req := &custosv1.BlindIndexRequest{Name: k.MAC, Data: payload}
			return func(ctx context.Context) (int, error) { _, err := c.BlindIndex(ctx, req); return 1, err }
		case OpDataKey:
			req := &custosv1.GenerateDataKeyRequest{Name: k.Encrypt, AssociatedData: aad}
			return func(ctx context.Context) (int, error) { _, err := c.GenerateDataKey(ctx, req); return 1, err }
		case OpHash:
			req := &custosv1.HashPasswordRequest{Name: k.Password, Password: payload}
			return func(ctx context.Context) (int, error) { _, err := c.HashPassword(ctx, req); return 1, err }
		case OpVerify:
			req := &custosv1.VerifyPasswordRequest{Name: k.Password, Password: payload, Hash: hash}
			return func(ctx context.Context) (int, error) { _, err := c.VerifyPassword(ctx, req); return 1, err }
		}
		return batchOf(op, max(w.BatchSize, 1))
	}
	return func(worker int) call {
		if w.Op != OpMixed {
			return single(w.Op)
		}
		enc, dec, bi, dk := single(OpEncrypt), single(OpDecrypt), single(OpBlindIndex), single(OpDataKey)
		batch := batchOf(OpEncryptBatch, 10)
		rng := rand.New(rand.NewPCG(uint64(worker), 42))
		return func(ctx context.Context) (int, error) {
			switch r := rng.IntN(100); {
			case r < 60:
				return enc(ctx)
			case r < 90:
				return dec(ctx)
			case r < 95:
				return bi(ctx)
			case r < 99:
				return batch(ctx)
			default:
				return dk(ctx)
			}
		}
	}, nil
}

// Run runs w against t's server: Warmup, then Duration measured, with
// w.Concurrency calls in flight, and reports what it measured, with the
// server's CPU time and allocations per call when t can read them. It
// fails if the calls cannot be prepared or ctx is done (at once, even
// during the warm-up); failed calls are counted by code.
func Run(ctx context.Context, t Target, w Workload) (Result, error) {
	mk, err := prepare(ctx, t.Conn, w)
	if err != nil {
		return Result{}, err
	}
	workers := max(w.Concurrency, 1)
	type tally struct {
		lat      []time.Duration // of calls in the window, and of those it cut
		calls    int64           // successful calls in the window
		answered int64           // calls begun in the window and answered, however
		items    int64
		errors   map[string]int64
	}
	tallies := make([]tally, workers)
	start := time.Now()
	measureFrom, measureTo := start.Add(w.Warmup), start.Add(w.Warmup+w.Duration)
	// The server is read when the measured window opens and when it
	// closes, off the workers' path (a metrics scrape takes a while).
	open := make(chan usage, 1)
	// The load generator's own reading is taken inside the server's: after
	// it when the window opens and before it when the window closes, so
	// that neither metrics scrape counts in the load generator's CPU.
	opening := time.AfterFunc(w.Warmup, func() {
		u := t.usage()
		t.readClient(&u)
		open <- u
	})
	// A server that stops answering fails the run once, after the window,
	// no call has ended for StallGrace, instead of holding it for ever.
	// (Slow calls that go on ending, such as password hashes queued 64
	// deep, are not a stall.)
	callCtx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	grace := max(StallGrace, time.Millisecond)
	// When a call last ended, as time since start, once the window is over
	// (one store per worker then, not a shared write on every call); the
	// window's end until then.
	var lastEnded atomic.Int64
	lastEnded.Store(int64(w.Warmup + w.Duration))
	go func() {
		tick := time.NewTicker(min(time.Second, grace/4))
		defer tick.Stop()
		for {
			select {
			case <-callCtx.Done():
				return
			case <-tick.C:
				if since := time.Since(start); since > w.Warmup+w.Duration && since-time.Duration(lastEnded.Load()) >= grace {
					stop(errStalled)
					return
				}
			}
		}
	}()
	var wg sync.WaitGroup
	for i := range workers {
		c := mk(i)
		tl := &tallies[i]
		tl.errors = map[string]int64{}
		wg.Go(func() {
			for callCtx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(measureTo) {
					return
				}
				n, err := c(callCtx)
				t1 := time.Now()
				if t1.After(measureTo) {
					lastEnded.Store(int64(t1.Sub(start)))
				}
				if t0.Before(measureFrom) || callCtx.Err() != nil {
					continue
				}
				tl.answered++
				if t1.After(measureTo) {
					// Started inside the window, ended after it: its
					// items are outside the window, the time base of the
					// throughput, but its latency counts, or a stall
					// at the window's end would vanish from the tail,
					// and so does its failure (a server dying as the
					// window closes).
					if err == nil {
						tl.lat = append(tl.lat, t1.Sub(t0))
					} else {
						tl.errors[status.Code(err).String()]++
					}
					continue
				}
				if err != nil {
					tl.errors[status.Code(err).String()]++
					continue
				}
				tl.lat = append(tl.lat, t1.Sub(t0))
				tl.calls++
				tl.items += int64(n)
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		opening.Stop() // a reading already under way sends into the buffer
		return Result{}, err
	}
	if err := context.Cause(callCtx); err != nil {
		opening.Stop()
		return Result{}, err
	}
	var closed usage
	t.readClient(&closed)
	server := t.usage()
	closed.cpu, closed.allocs, closed.cpuOK, closed.allocsOK = server.cpu, server.allocs, server.cpuOK, server.allocsOK
	opened := <-open
	r := Result{Target: t.Name, Op: w.Op, Concurrency: workers, Errors: map[string]int64{}}
	if w.Op.Batch() {
		r.BatchSize = max(w.BatchSize, 1)
	}
	var lat []time.Duration
	var answered int64
	for _, tl := range tallies {
		lat = append(lat, tl.lat...)
		answered += tl.answered
		r.Calls += tl.calls
		r.Items += tl.items
		for k, v := range tl.errors {
			r.Errors[k] += v
		}
	}
	if len(r.Errors) == 0 {
		r.Errors = nil
	}
	r.Seconds = w.Duration.Seconds()
	if r.Seconds > 0 {
		r.OpsPerSec = float64(r.Calls) / r.Seconds
		r.ItemsPerSec = float64(r.Items) / r.Seconds
	}
	slices.Sort(lat)
	r.P50, r.P90, r.P99, r.P999 = pct(lat, 50), pct(lat, 90), pct(lat, 99), pct(lat, 99.9)
	// Per call answered from the window's start to the reading after the
	// drain, failed ones and those ending late included: each used CPU
	// in that span (calls begun in the warm-up and ending in it are few).
	if r.Calls > 0 && opened.cpuOK && closed.cpuOK && closed.cpu >= opened.cpu {
		r.ServerCPUPerCall = float64((closed.cpu - opened.cpu).Microseconds()) / float64(answered)
	}
	if r.Calls >= minCallsForAllocs && opened.allocsOK && closed.allocsOK && closed.allocs >= opened.allocs {
		r.ServerAllocsPerCall = float64(closed.allocs-opened.allocs) / float64(answered)
	}
	if r.Calls > 0 && opened.selfOK && closed.selfOK && closed.self >= opened.self {
		r.ClientCPUPerCall = float64((closed.self - opened.self).Microseconds()) / float64(answered)
	}
	if opened.hostOK && closed.hostOK && closed.host.total > opened.host.total && closed.host.idle >= opened.host.idle {
		idle := float64(closed.host.idle-opened.host.idle) / float64(closed.host.total-opened.host.total)
		r.IdleShare = &idle
	}
	return r, nil
}

// minCallsForAllocs: with fewer calls in a window, the allocations of the
// metrics scrape that falls inside every window (a few hundred objects on
// Custos's ops listener) would be a noticeable part of the figure, so none
// is reported (password hashing: a dozen calls a window).
const minCallsForAllocs = 500

// usage is what a server process, the load generator and the machine had
// used at one moment.
type usage struct {
	cpu             time.Duration
	allocs          uint64
	self            time.Duration
	host            hostTicks
	cpuOK, allocsOK bool
	selfOK, hostOK  bool
}

// hostTicksNow reads the machine's CPU ticks (a variable so that tests can
// give Run known readings).
var hostTicksNow = readHostTicks

// readClient adds the load generator's CPU time and the machine's ticks to
// u, if t says how to read them.
func (t Target) readClient(u *usage) {
	if t.Client == nil {
		return
	}
	var err error
	u.self, err = t.Client.CPU()
	u.selfOK = err == nil
	u.host, err = hostTicksNow()
	u.hostOK = err == nil
}

// usage reads the server's CPU time and allocations, if t says how.
func (t Target) usage() usage {
	var u usage
	var err error
	// Both from one metrics endpoint: one scrape, not two.
	if m, ok := t.CPU.(Metrics); ok && t.Allocs == AllocReader(m) {
		if vals, err := scrapeMetrics(string(m), cpuMetric, allocsMetric); err == nil {
			f, cpuOK := vals[cpuMetric]
			u.cpu, u.cpuOK = seconds(f), cpuOK
			n, allocsOK := vals[allocsMetric]
			u.allocs, u.allocsOK = uint64(n), allocsOK
		}
		return u
	}
	if t.CPU != nil {
		u.cpu, err = t.CPU.CPU()
		u.cpuOK = err == nil
	}
	if t.Allocs != nil {
		u.allocs, err = t.Allocs.Allocs()
		u.allocsOK = err == nil
	}
	return u
}

// StallGrace is how long, after its measured window, a run waits with no
// call ending before it fails with errStalled.
var StallGrace = 30 * time.Second

var errStalled = errors.New("bench: calls still under way long after the measured window: the server stopped answering")

// pct is the p-th percentile of sorted latencies, in microseconds: the
// nearest-rank method, the smallest latency at least p% of the calls do
// not exceed (rank ⌈n·p/100⌉). p is taken to a tenth of a percent and the
// rank computed in integers: in floating point 41000·99.9/100 is a little
// above 40959, and its ceiling one rank too high.
func pct(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	n, permille := int64(len(sorted)), int64(math.Round(p*10))
	i := int((n*permille+999)/1000) - 1
	i = min(max(i, 0), len(sorted)-1)
	return float64(sorted[i].Nanoseconds()) / 1e3
}

// Target is one server a comparison loads.
type Target struct {
	// Name labels its results ("custos", "baseline").
	Name string
	Conn grpc.ClientConnInterface
	// CPU reads its process's CPU time; nil if unknown.
	CPU CPUReader
	// Allocs reads its process's allocation count; nil if unknown.
	Allocs AllocReader
	// Custos is set for a baseline that is a Custos server (another build,
	// or the same with the audit trail off): it answers every operation,
	// password hashing too.
	Custos bool
	// Client reads the load generator's own CPU time (ProcCPU of this
	// process); with it, a run also reports this machine's idle share.
	// nil: neither is reported (as when this process makes other calls
	// beside the measured ones, which its CPU time would include).
	Client CPUReader
}

// Comparison is the rounds of one workload against Custos and its baseline,
// run alternately, and the ratios of each round.
type Comparison struct {
	Workload string   `json:"workload"`
	Custos   []Result `json:"custos"`
	Baseline []Result `json:"baseline,omitempty"`
	// Throughput is Custos's throughput over the baseline's, per round, and
	// its median; P50 is Custos's median latency over the baseline's.
	Throughput Stat `json:"throughput_ratio"`
	P50        Stat `json:"p50_ratio"`
}

// Stat is a median and the spread of a few paired measurements.
type Stat struct {
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Values []float64 `json:"values"`
}

func newStat(v []float64) Stat {
	if len(v) == 0 {
		return Stat{Values: []float64{}} // "values": [] in JSON, not null
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Stat{Median: m, Min: s[0], Max: s[len(s)-1], Values: v}
}

// Compare runs w rounds times against custos and, when base is not nil and
// the operation has one, against the baseline, in pairs so that both see
// the same machine. The pairs alternate which runs first (baseline first
// in odd rounds, Custos first in even ones): work a server goes on doing
// after its run (Custos integrates audit events every checkpoint interval)
// falls into the next run, so a fixed order would always charge it to the
// same side.
func Compare(ctx context.Context, custos Target, base *Target, w Workload, rounds int) (Comparison, error) {
	cmp := Comparison{Workload: w.label()}
	var thr, p50 []float64
	for round := range max(rounds, 1) {
		var b, c Result
		var err error
		runBase := func() error {
			if base == nil || !(w.Op.HasBaseline() || base.Custos) {
				return nil
			}
			if b, err = Run(ctx, *base, w); err != nil {
				return err
			}
			cmp.Baseline = append(cmp.Baseline, b)
			return nil
		}
		runCustos := func() error {
			if c, err = Run(ctx, custos, w); err != nil {
				return err
			}
			cmp.Custos = append(cmp.Custos, c)
			return nil
		}
		first, second := runBase, runCustos
		if round%2 == 1 {
			first, second = runCustos, runBase
		}
		if err := first(); err != nil {
			return cmp, err
		}
		if err := second(); err != nil {
			return cmp, err
		}
		if b.ItemsPerSec > 0 && b.P50 > 0 {
			thr = append(thr, c.ItemsPerSec/b.ItemsPerSec)
			if c.P50 > 0 { // a round with no successful call has no latency, not a zero one
				p50 = append(p50, c.P50/b.P50)
			}
		}
	}
	cmp.Throughput, cmp.P50 = newStat(thr), newStat(p50)
	return cmp, nil
}

// Contention measures w against Custos alone and while bg runs beside it
// (for example HashPassword at 4 in flight beside Encrypt at 64),
// alternating, rounds times.
type Contention struct {
	Workload   string   `json:"workload"`
	Background string   `json:"background"`
	Unloaded   []Result `json:"unloaded"`
	Loaded     []Result `json:"loaded"`
	// Throughput is loaded over unloaded throughput per round; P99 is
	// loaded over unloaded p99.
	Throughput Stat `json:"throughput_ratio"`
	P99        Stat `json:"p99_ratio"`
}

// Contend runs the contention measurement.
func Contend(ctx context.Context, custos Target, w, bg Workload, rounds int) (Contention, error) {
	res := Contention{Workload: w.label(), Background: bg.label()}
	var thr, p99 []float64
	for round := range max(rounds, 1) {
		var u Result
		var err error
		// Unloaded first in odd rounds, after the loaded run in even ones,
		// so that what the background leaves behind (hashes it started
		// that outlast it) does not always fall into the unloaded run.
		unloadedFirst := round%2 == 0
		if unloadedFirst {
			if u, err = Run(ctx, custos, w); err != nil {
				return res, err
			}
		}
		// The background starts first (bg.Warmup ahead, to saturate) and
		// outlasts the measured run; all of its calls count.
		ramp := bg.Warmup
		span := bg
		// It runs a little past the measured run, which ends when its
		// last call has returned.
		span.Warmup, span.Duration = 0, ramp+w.Warmup+w.Duration+time.Second
		bgDone := make(chan Result, 1)
		bgErr := make(chan error, 1)
		go func() {
			r, err := Run(ctx, Target{Name: custos.Name, Conn: custos.Conn}, span)
			bgDone <- r
			bgErr <- err
		}()
		select {
		case <-time.After(ramp):
		case <-ctx.Done():
		}
		// The server's CPU and allocations while loaded would include the
		// background's: not read.
		l, err := Run(ctx, Target{Name: custos.Name, Conn: custos.Conn}, w)
		b := <-bgDone
		if err == nil {
			err = <-bgErr
		}
		if err != nil {
			return res, err
		}
		if !unloadedFirst {
			if u, err = Run(ctx, custos, w); err != nil {
				return res, err
			}
		}
		l.Background = &b
		res.Unloaded, res.Loaded = append(res.Unloaded, u), append(res.Loaded, l)
		if u.ItemsPerSec > 0 && u.P99 > 0 {
			thr = append(thr, l.ItemsPerSec/u.ItemsPerSec)
			if l.P99 > 0 { // a loaded run without a successful call has no p99
				p99 = append(p99, l.P99/u.P99)
			}
		}
	}
	res.Throughput, res.P99 = newStat(thr), newStat(p99)
	return res, nil
}

// batchItems is what a batch call of n items counts: n when every item
// succeeded; else the call is an error with the first failed item's code
// (a batch answers OK and fails items one by one, so the call's own
// status would count them as done).
func batchItems[T interface{ GetStatus() *statuspb.Status }](n int, results []T, err error) (int, error) {
	if err != nil {
		return 0, err
	}
	for _, r := range results {
		if st := r.GetStatus(); st.GetCode() != 0 {
			return 0, status.ErrorProto(st)
		}
	}
	if len(results) != n {
		return 0, status.Errorf(codes.Internal, "%d results for a batch of %d", len(results), n)
	}
	return n, nil
}
