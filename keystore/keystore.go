// Package keystore holds Custos's key hierarchy: tenants, their KEKs wrapped by
// the root, keys whose Tink keysets are wrapped by the tenant KEK, and the
// versions that encrypt data. It speaks native Go types; gRPC lives in server/.
//
//	root (local file, Vault Transit, KMS, HSM)
//	  └─ tenant KEK, AES-256, wrapped with AAD "custos:tenant:<tenant>"
//	       └─ key's Tink keyset, wrapped with AAD "custos:key:<tenant>/<key>\x00purpose:<n>"
//	            └─ key versions encrypt data with the caller's associated data
//
// Unwrapped material is cached (bounded size and TTL) so the root is called
// once per tenant per cache lifetime, never per request.
package keystore

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/storage"
)

// Defaults for Config.
const (
	DefaultCacheSize = 10000
	DefaultCacheTTL  = 5 * time.Minute
	// DefaultUnavailableGrace is how long cached material keeps serving past
	// its TTL while the root or the storage cannot be reached.
	DefaultUnavailableGrace = time.Hour
	// retryBackoff is how often a stale entry retries its refresh during an outage.
	retryBackoff = 5 * time.Second
	// DefaultPageSize and MaxPageSize bound List calls.
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// Config configures a Service.
type Config struct {
	// Storage persists tenants and keys. Required.
	Storage storage.Store
	// Root wraps tenant KEKs. Required.
	Root root.Root
	// CacheSize bounds the number of cached tenant KEKs and, separately, of
	// cached keys. Default DefaultCacheSize.
	CacheSize int
	// CacheTTL is how long unwrapped material stays cached. Default DefaultCacheTTL.
	CacheTTL time.Duration
	// UnavailableGrace is how long past CacheTTL cached material keeps
	// serving while the root or the storage is unreachable; tenants not in
	// the cache get ErrUnavailable meanwhile. Default DefaultUnavailableGrace;
	// negative disables it.
	UnavailableGrace time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Rand is the source of tenant KEKs. Default crypto/rand.Reader.
	Rand io.Reader
	// UsageRotateThreshold is the number of encryptions after which the
	// scheduler rotates an ENCRYPT key's primary version automatically.
	// Default DefaultUsageRotateThreshold (below 2^30; see docs/lifecycle.md).
	UsageRotateThreshold uint64
	// PasswordLimits caps the cost a PASSWORD key's policy may ask for,
	// for every tenant: the hashing pool is shared. Zero fields take
	// DefaultPasswordLimits' (docs/passwords.md).
	PasswordLimits PasswordLimits
	// Logger receives internal failures (never key material). Default slog.Default().
	Logger *slog.Logger
}

// Service is the keystore. It is safe for concurrent use.
type Service struct {
	records                               // typed storage access: s.store, s.readTenant, s.readKey, s.scan
	envRewraps *lru[rewrapKey, rewrapped] // recent envelope data-key rewraps (envelope.go)
	root       root.Root
	now        func() time.Time
	rand       io.Reader
	logger     *slog.Logger

	m    *materials      // unwrapped material: cache, loads, cross-replica coherence
	life *lifecycleState // version usage counters

	pwLimits PasswordLimits // the deployment's caps on password policies

	flushTimeout time.Duration // bounds one RunCountFlush pass (flushTimeout)

	pageToken atomic.Pointer[tink.AEAD] // seals ListTenants' page tokens (pagetoken.go)

	// Actions of the scheduler in this process (SchedulerStats).
	autoRotations, autoDestructions, autoShreds atomic.Uint64
}

// SchedulerStats counts what this process's scheduler passes did since
// start: keys rotated automatically, key versions destroyed on their date
// and tenants shredded on their deletion date.
func (s *Service) SchedulerStats() (rotations, destructions, shreds uint64) {
	return s.autoRotations.Load(), s.autoDestructions.Load(), s.autoShreds.Load()
}

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Storage == nil || cfg.Root == nil {
		return nil, errors.New("keystore: Storage and Root are required")
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = DefaultCacheSize
	}
	if cfg.CacheTTL <= 0 {
		cfg.CacheTTL = DefaultCacheTTL
	}
	switch {
	case cfg.UnavailableGrace == 0:
		cfg.UnavailableGrace = DefaultUnavailableGrace
	case cfg.UnavailableGrace < 0:
		cfg.UnavailableGrace = 0
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	recs := records{store: cfg.Storage}
	pwLimits, err := cfg.PasswordLimits.WithDefaults()
	if err != nil {
		return nil, err
	}
	return &Service{
		pwLimits:     pwLimits,
		records:      recs,
		root:         cfg.Root,
		now:          cfg.Now,
		flushTimeout: flushTimeout,
		rand:         cfg.Rand,
		logger:       cfg.Logger,
		m: &materials{
			records: recs,
			root:    cfg.Root,
			logger:  cfg.Logger,
			keks:    newLRU[string, *kekEntry](cfg.CacheSize, cfg.CacheTTL, cfg.UnavailableGrace, cfg.Now),
			failed:  newLRU[string, *failedUnwrap](cfg.CacheSize, retryBackoff, 0, cfg.Now),
			keys:    newLRU[KeyRef, *keyEntry](cfg.CacheSize, cfg.CacheTTL, cfg.UnavailableGrace, cfg.Now),
		},
		life:       newLifecycleState(cfg.UsageRotateThreshold),
		envRewraps: newLRU[rewrapKey, rewrapped](maxEnvelopeRewraps, cfg.CacheTTL, 0, cfg.Now),
	}, nil
}

// rootErr maps a root failure to a keystore error.
func rootErr(op string, err error) error {
	switch {
	case errors.Is(err, root.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w: root: %v", op, ErrUnavailable, err)
	case errors.Is(err, root.ErrNotAuthentic):
		return fmt.Errorf("%s: %w: root refused the wrapped KEK", op, ErrIntegrity)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s: root: %w", op, err)
}

// CacheStats are the key cache's counters since start: lookups served from
// the cache, lookups that loaded from storage (and the root), and entries
// evicted to make room (keys and tenant KEKs).
func (s *Service) CacheStats() (hits, misses, evictions uint64) {
	return s.m.hits.Load(), s.m.misses.Load(), s.m.keys.evictions.Load() + s.m.keks.evictions.Load()
}
