// Package keystore holds Custos's key hierarchy: tenants, their KEKs wrapped by
// the root, keys whose Tink keysets are wrapped by the tenant KEK, and the
// versions that encrypt data. It speaks native Go types; gRPC lives in server/.
//
//	root (local file, Vault Transit, KMS, HSM)
//	  └─ tenant KEK, AES-256, wrapped with AAD "custos:tenant:<tenant>"
//	       └─ key's Tink keyset, wrapped with AAD "custos:key:<tenant>/<key>"
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
	"runtime"
	"sync/atomic"
	"time"

	"github.com/tink-crypto/tink-go/v2/tink"
	"golang.org/x/sync/singleflight"

	"github.com/custos-kms/custos/internal/workpool"
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
	// Logger receives internal failures (never key material). Default slog.Default().
	Logger *slog.Logger
	// HashPool runs password hashing (bcrypt, argon2id), so hashing load
	// cannot starve encrypt and decrypt; when its queue is full, password
	// calls fail with ErrResourceExhausted. The caller owns it and closes it
	// after the Service is done; several Services may share one. When nil,
	// New makes one from HashWorkers and HashQueue; that pool holds no
	// goroutines while idle, so it needs no Close.
	HashPool *workpool.Pool
	// HashWorkers bounds concurrent hashes when HashPool is nil. Default
	// runtime.GOMAXPROCS(0).
	HashWorkers int
	// HashQueue bounds hashes waiting for a worker when HashPool is nil.
	// Default 64 × HashWorkers; negative means none may wait.
	HashQueue int
}

// Service is the keystore. It is safe for concurrent use.
type Service struct {
	store  storage.Store
	root   root.Root
	now    func() time.Time
	rand   io.Reader
	logger *slog.Logger
	hashes *workpool.Pool

	keks  *lru[string, tink.AEAD]
	keys  *lru[KeyRef, *keyEntry]
	loads singleflight.Group

	life *lifecycleState // version usage counters, invalidation generation
}

// keyEntry is a cached, unwrapped key: an immutable snapshot of its record
// and the primitives of its enabled versions.
type keyEntry struct {
	ref  KeyRef
	rec  *keyRecord
	prim primitives
	// ver and tenantVer are the storage versions of the key and tenant
	// records the entry was built from: a change notification for an older
	// or equal version (for example this replica's own write) keeps it.
	ver, tenantVer uint64
	// missed is when (unix ns) a reload last failed to find a version a
	// ciphertext named; another reload for an unknown version waits a second.
	missed atomic.Int64
}

// tombstone reports whether e only records that version ver of its key was
// written elsewhere: it never serves, and only an entry built from that
// version or a newer one replaces it.
func (e *keyEntry) tombstone() bool { return e.rec == nil }

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
	if cfg.HashPool == nil {
		if cfg.HashWorkers <= 0 {
			cfg.HashWorkers = runtime.GOMAXPROCS(0)
		}
		switch {
		case cfg.HashQueue == 0:
			cfg.HashQueue = 64 * cfg.HashWorkers
		case cfg.HashQueue < 0:
			cfg.HashQueue = 0
		}
		cfg.HashPool = workpool.New(cfg.HashWorkers, cfg.HashQueue)
	}
	return &Service{
		store:  cfg.Storage,
		root:   cfg.Root,
		now:    cfg.Now,
		rand:   cfg.Rand,
		logger: cfg.Logger,
		hashes: cfg.HashPool,
		keks:   newLRU[string, tink.AEAD](cfg.CacheSize, cfg.CacheTTL, cfg.UnavailableGrace, cfg.Now),
		keys:   newLRU[KeyRef, *keyEntry](cfg.CacheSize, cfg.CacheTTL, cfg.UnavailableGrace, cfg.Now),
		life:   newLifecycleState(cfg.UsageRotateThreshold),
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

// activeTenant returns the KEK of an active tenant, from cache or by asking
// the root once, and the storage version of the tenant record it checked.
// When the root is unreachable, a KEK cached earlier keeps serving until its
// grace runs out.
func (s *Service) activeTenant(ctx context.Context, tenant string) (tink.AEAD, uint64, error) {
	rec, tver, err := s.readTenant(ctx, tenant)
	if err != nil {
		return nil, 0, err
	}
	if rec.State != TenantActive {
		return nil, 0, fmt.Errorf("tenant %q: %w", tenant, ErrTenantDeleted)
	}
	cached, fresh, ok := s.keks.get(tenant)
	if ok && fresh {
		return cached, tver, nil
	}
	v, err := s.shared(ctx, "kek\x00"+tenant, func(ctx context.Context) (any, error) {
		if kek, fresh, ok := s.keks.get(tenant); ok && fresh {
			return kek, nil
		}
		raw, err := s.root.Unwrap(ctx, rec.WrappedKEK, tenantKEKAAD(tenant))
		if err != nil {
			return nil, rootErr(fmt.Sprintf("unwrap KEK of tenant %q", tenant), err)
		}
		kek, err := newKEKAEAD(raw)
		clear(raw)
		if err != nil {
			return nil, err
		}
		s.keks.put(tenant, kek)
		return kek, nil
	})
	if err != nil {
		if ok && errors.Is(err, ErrUnavailable) {
			s.keks.postpone(tenant, retryBackoff)
			s.logger.Warn("root unavailable; serving cached tenant KEK", "tenant", tenant)
			return cached, tver, nil
		}
		return nil, 0, err
	}
	return v.(tink.AEAD), tver, nil
}

// key returns the cached key entry, loading it on a miss. While the root or
// the storage is unreachable, an entry cached earlier keeps serving until its
// grace runs out, retrying the refresh every retryBackoff.
func (s *Service) key(ctx context.Context, ref KeyRef) (*keyEntry, error) {
	cached, fresh, ok := s.keys.get(ref)
	if ok && cached.tombstone() {
		ok = false
	}
	if ok && fresh {
		return cached, nil
	}
	e, err := s.loadKey(ctx, ref)
	if err != nil && ok && errors.Is(err, ErrUnavailable) {
		s.keys.postpone(ref, retryBackoff)
		s.logger.Warn("refresh failed; serving cached key", "key", ref.String(), "error", err.Error())
		return cached, nil
	}
	return e, err
}

// loadTimeout bounds a shared load (storage reads and a root unwrap), which
// runs detached from the callers waiting for it.
const loadTimeout = 30 * time.Second

// shared runs fn once for all concurrent callers with the same key. fn runs
// on a context detached from any one caller's cancellation (bounded by
// loadTimeout), so a caller that gives up does not fail the others; each
// caller waits only as long as its own ctx allows.
func (s *Service) shared(ctx context.Context, key string, fn func(context.Context) (any, error)) (any, error) {
	ch := s.loads.DoChan(key, func() (any, error) {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), loadTimeout)
		defer cancel()
		return fn(lctx)
	})
	select {
	case r := <-ch:
		return r.Val, r.Err
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("%w: load: %w", ErrUnavailable, ctx.Err())
		}
		return nil, ctx.Err()
	}
}

// loadKey loads a key from storage into the cache; concurrent loads of one
// key share one storage read and one unwrap.
func (s *Service) loadKey(ctx context.Context, ref KeyRef) (*keyEntry, error) {
	v, err := s.shared(ctx, "key\x00"+ref.String(), func(ctx context.Context) (any, error) {
		gen := s.life.tenantGen.Load()
		kek, tver, err := s.activeTenant(ctx, ref.Tenant)
		if err != nil {
			return nil, err
		}
		rec, ver, err := s.readKey(ctx, ref)
		if err != nil {
			return nil, err
		}
		e, err := s.newKeyEntry(ref, rec, kek)
		if err != nil {
			return nil, err
		}
		e.ver, e.tenantVer = ver, tver
		s.cacheKey(gen, e)
		return e, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*keyEntry), nil
}

func (s *Service) newKeyEntry(ref KeyRef, rec *keyRecord, kek tink.AEAD) (*keyEntry, error) {
	h, err := openKeyset(rec.Keyset, kek, ref)
	if err != nil {
		s.logger.Error("stored keyset failed authentication", "key", ref.String())
		return nil, err
	}
	prim, err := newPrimitives(rec.Purpose, h)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", ref, err)
	}
	return &keyEntry{ref: ref, rec: rec, prim: prim}, nil
}
