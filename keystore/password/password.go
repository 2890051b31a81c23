// Package password hashes and verifies passwords for Custos: an HMAC-SHA256
// pepper under a PASSWORD key of the keystore, then bcrypt or argon2id as
// the key's policy says, in a bounded pool so that hashing load cannot
// starve encryption, with brute-force lockout kept in storage and shared by
// every replica (docs/passwords.md).
//
// The keystore holds the keys; this package only asks it for peppers
// through the narrow Peppers interface, which *keystore.Service implements.
// Errors are the keystore's sentinels (keystore.ErrInvalidArgument,
// ErrSubjectLocked, ErrResourceExhausted, …), so callers map them as they
// map every other keystore error.
package password

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

	"github.com/custos-kms/custos/internal/workpool"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/passhash"
	"github.com/custos-kms/custos/keystore/storage"
)

// Bounds on inputs. A hash string is at most passhash.MaxLen bytes.
const (
	MaxPasswordSize = 4096
	MaxSubjectSize  = 1024
)

// verifyHeadroom bounds how much more work than the key's policy Verify
// will spend on one hash: bcrypt at most 2 cost steps above the policy, and
// argon2id at most this factor above each of m, t and p. The base is the
// policy or the default, whichever is higher, so lowering a policy a little
// keeps older hashes verifiable while a hostile hash string cannot ask for
// gigabytes of memory or days of CPU.
const (
	verifyHeadroomBcrypt = 2
	verifyHeadroomArgon2 = 4
)

// Peppers gives password hashing the peppers of PASSWORD keys;
// *keystore.Service implements it (see keystore.Service.Pepper for the
// errors).
type Peppers interface {
	Pepper(ctx context.Context, ref keystore.KeyRef, version uint32) (*keystore.Pepper, error)
}

// Config configures a Service.
type Config struct {
	// Peppers are the keys. Required.
	Peppers Peppers
	// Store keeps the lockout state. Required.
	Store storage.Store
	// Pool runs the slow hashes. The caller owns it and may share it among
	// Services. When nil, New makes one from Workers, Queue and Nice, whose
	// threads run until Close: call it.
	Pool *workpool.Pool
	// Workers bounds concurrent hashes when Pool is nil. Default
	// DefaultWorkers(): half the CPUs Go may use, at least one.
	Workers int
	// Queue bounds hashes waiting for a worker when Pool is nil; beyond it
	// calls fail with keystore.ErrResourceExhausted. Default 64 × Workers;
	// negative means none may wait.
	Queue int
	// Nice is the scheduling niceness (1–19) of the OS threads that hash,
	// when Pool is nil: the operating system then gives the rest of the
	// process (encryption) the CPU first, and hashing what is left.
	// Default DefaultNice; negative runs hashes on the callers' goroutines
	// at normal priority.
	Nice int
	// Now is the clock of lockout windows. Default time.Now.
	Now func() time.Time
	// Rand is the source of salts. Default crypto/rand.Reader.
	Rand io.Reader
	// Logger receives failures to settle lockout state (never a password or
	// subject). Default slog.Default().
	Logger *slog.Logger
}

// DefaultNice is the niceness of hashing threads: low enough a priority that
// hashing cannot starve encryption, high enough that it still progresses
// on a busy machine (docs/passwords.md).
const DefaultNice = 10

// DefaultWorkers is half the CPUs Go may use, and at least one: hashing
// leaves at least half the cores to everything else.
func DefaultWorkers() int { return max(1, runtime.GOMAXPROCS(0)/2) }

// Service hashes and verifies passwords. It is safe for concurrent use.
type Service struct {
	peppers Peppers
	store   storage.Store
	pool    *workpool.Pool
	ownPool bool
	niced   bool
	now     func() time.Time
	rand    io.Reader
	logger  *slog.Logger

	lockouts, lockedRefusals atomic.Uint64 // Stats
}

// Stats are the hashing pool's state and the lockout counters since start,
// for metrics.
type Stats struct {
	// Running is how many hashes run now; Queued how many wait for a
	// worker.
	Running, Queued int
	// Rejected counts calls refused because the queue was full
	// (RESOURCE_EXHAUSTED).
	Rejected uint64
	// Lockouts counts subjects locked after too many failures;
	// LockedRefusals counts verifications refused because the subject was
	// locked.
	Lockouts, LockedRefusals uint64
}

// Stats returns the service's Stats.
func (s *Service) Stats() Stats {
	return Stats{
		Running: s.pool.Running(), Queued: s.pool.Waiting(), Rejected: s.pool.Rejected(),
		Lockouts: s.lockouts.Load(), LockedRefusals: s.lockedRefusals.Load(),
	}
}

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Peppers == nil || cfg.Store == nil {
		return nil, errors.New("password: Peppers and Store are required")
	}
	own := cfg.Pool == nil
	if own {
		if cfg.Workers <= 0 {
			cfg.Workers = DefaultWorkers()
		}
		switch {
		case cfg.Queue == 0:
			cfg.Queue = 64 * cfg.Workers
		case cfg.Queue < 0:
			cfg.Queue = 0
		}
		switch {
		case cfg.Nice > 19:
			return nil, fmt.Errorf("password: niceness %d is above 19", cfg.Nice)
		case cfg.Nice < 0:
			cfg.Pool = workpool.New(cfg.Workers, cfg.Queue)
		default:
			if cfg.Nice == 0 {
				cfg.Nice = DefaultNice
			}
			cfg.Pool = workpool.NewNiced(cfg.Workers, cfg.Queue, cfg.Nice)
		}
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
	niced := own && cfg.Nice > 0
	if err := cfg.Pool.NiceErr(); err != nil {
		cfg.Logger.Warn("password hashing threads run at normal priority", "error", err.Error())
		niced = false
	}
	return &Service{peppers: cfg.Peppers, store: cfg.Store, pool: cfg.Pool, ownPool: own, niced: niced, now: cfg.Now, rand: cfg.Rand, logger: cfg.Logger}, nil
}

// Niced reports whether hashes run on threads of their own at a lowered
// priority (the niceness could be set).
func (s *Service) Niced() bool { return s.niced }

// Workers is how many hashes run at once.
func (s *Service) Workers() int { return s.pool.Workers() }

// Close stops the hashing threads of a pool the Service made (waiting for
// running hashes); calls after it fail with keystore.ErrUnavailable. A pool
// given in Config is the caller's to close.
func (s *Service) Close() {
	if s.ownPool {
		s.pool.Close()
	}
}

// Hash hashes password for the caller to store: HMAC-SHA256 under the
// primary version of a PASSWORD key (the pepper), then the key policy's slow
// hash, bcrypt or argon2id. It returns one self-describing string naming the
// algorithm, its cost and the pepper version (docs/formats.md, "Password
// hashes"). When the hashing queue is full it returns
// keystore.ErrResourceExhausted at once. A key of another purpose gives
// keystore.ErrWrongPurpose; an empty or oversized password
// keystore.ErrInvalidArgument.
func (s *Service) Hash(ctx context.Context, ref keystore.KeyRef, password []byte) (string, error) {
	const op = "hash password"
	if err := checkInput(password, ""); err != nil {
		return "", err
	}
	pep, err := s.peppers.Pepper(ctx, ref, 0)
	if err != nil {
		return "", err
	}
	policy, err := pep.Policy()
	if err != nil {
		return "", err
	}
	// A key set before the deployment's limits were lowered hashes at them.
	policy = pep.Limits().Cap(policy)
	tag, err := pep.Tag(password)
	if err != nil {
		return "", err
	}
	defer clear(tag)
	v := pep.Version()
	var h passhash.Hash
	var herr error
	err = s.run(ctx, op, func() {
		switch policy.Algorithm {
		case keystore.PasswordArgon2id:
			h, herr = passhash.NewArgon2id(v, tag, passhash.Argon2Params{
				MemoryKiB:   policy.Argon2MemoryKiB,
				Iterations:  policy.Argon2Iterations,
				Parallelism: uint8(policy.Argon2Parallelism),
			}, s.rand)
			collectArgon2(policy.Argon2MemoryKiB)
		default:
			h, herr = passhash.NewBcrypt(v, tag, policy.BcryptCost)
		}
	})
	if err != nil {
		return "", err
	}
	if herr != nil {
		return "", fmt.Errorf("%s with %s: %w", op, ref, herr)
	}
	out, err := h.Encode()
	if err != nil {
		return "", fmt.Errorf("%s with %s: %w", op, ref, err)
	}
	return out, nil
}

// Verify reports whether password matches hash, a string Hash made with the
// same key, and whether the caller should replace the stored hash by Hash's
// output for this password (needsRehash, set only on a match): when the
// hash's pepper version is no longer the key's primary, its algorithm is not
// the policy's, or its cost parameters are below the policy as the
// deployment's limits cap it, or above those limits. The comparison
// is constant time. A hash made with another key or tenant does not match;
// that is not an error.
//
// Errors: a malformed hash, or one whose cost exceeds what the key verifies
// (its policy, or the default if higher, plus 2 bcrypt cost steps or 4× each
// argon2id parameter, the memory and lanes no more than the larger of the
// policy's and the deployment's limits), is keystore.ErrInvalidArgument naming
// hash, as is a
// hash naming a pepper version the key never had. A disabled, destroyed or
// too-old pepper version gives the errors Decrypt gives. A full hashing
// queue gives keystore.ErrResourceExhausted.
//
// When the key's policy enables lockout and subject is not empty, a locked
// subject gets keystore.ErrSubjectLocked without any hashing, every failed
// verification counts toward the lock, and a match resets the count. The
// state lives in storage, shared by every replica; when it cannot be read
// or updated before hashing, Verify fails (keystore.ErrUnavailable) rather
// than verify without the limit.
func (s *Service) Verify(ctx context.Context, ref keystore.KeyRef, password []byte, hash, subject string) (match, needsRehash bool, err error) {
	const op = "verify password"
	if err := checkInput(password, subject); err != nil {
		return false, false, err
	}
	if _, err := s.peppers.Pepper(ctx, ref, 0); err != nil {
		return false, false, err
	}
	h, err := passhash.Parse(hash)
	if err != nil {
		return false, false, fmt.Errorf("%w: hash: %w", keystore.ErrInvalidArgument, err)
	}
	pep, err := s.peppers.Pepper(ctx, ref, h.PepperVersion)
	if errors.Is(err, keystore.ErrInvalidCiphertext) {
		return false, false, fmt.Errorf("%w: hash names an unknown pepper version of %s", keystore.ErrInvalidArgument, ref)
	}
	if err != nil {
		return false, false, err
	}
	policy, err := pep.Policy()
	if err != nil {
		return false, false, err
	}
	if err := checkVerifyCost(h, policy, pep.Limits()); err != nil {
		return false, false, err
	}

	var lock *lockout
	var window time.Time
	if policy.LockoutMaxFailures > 0 && subject != "" {
		if lock, err = s.newLockout(pep, policy, subject); err != nil {
			return false, false, err
		}
		if window, err = lock.admit(ctx); err != nil {
			return false, false, err
		}
	}
	match, err = s.verifyPeppered(ctx, op, pep, h, password)
	if err != nil {
		if lock != nil {
			lock.abandon(ctx, window)
		}
		return false, false, err
	}
	if lock != nil {
		lock.finish(ctx, window, match)
	}
	if !match {
		return false, false, nil
	}
	return true, rehashNeeded(h, pep.Primary(), policy, pep.Limits()), nil
}

// verifyPeppered peppers password and checks it against h on the pool.
func (s *Service) verifyPeppered(ctx context.Context, op string, pep *keystore.Pepper, h passhash.Hash, password []byte) (bool, error) {
	tag, err := pep.Tag(password)
	if err != nil {
		return false, err
	}
	defer clear(tag)
	var ok bool
	var verr error
	if err := s.run(ctx, op, func() {
		ok, verr = h.Verify(tag)
		if h.Algorithm == passhash.Argon2id {
			collectArgon2(h.Argon2.MemoryKiB)
		}
	}); err != nil {
		return false, err
	}
	if verr != nil {
		return false, fmt.Errorf("%w: hash: %w", keystore.ErrInvalidArgument, verr)
	}
	return ok, nil
}

// rehashNeeded reports whether a matching hash should be replaced: an old
// pepper version, another algorithm, cost parameters below the policy (as
// the deployment's limits cap it), or above the limits.
func rehashNeeded(h passhash.Hash, primary uint32, p keystore.PasswordPolicy, l keystore.PasswordLimits) bool {
	if h.PepperVersion != primary {
		return true
	}
	p = l.Cap(p)
	switch h.Algorithm {
	case passhash.Bcrypt:
		return p.Algorithm != keystore.PasswordBcrypt || h.BcryptCost < p.BcryptCost || h.BcryptCost > l.BcryptCost
	case passhash.Argon2id:
		return p.Algorithm != keystore.PasswordArgon2id ||
			h.Argon2.MemoryKiB < p.Argon2MemoryKiB ||
			h.Argon2.Iterations < p.Argon2Iterations ||
			uint32(h.Argon2.Parallelism) < p.Argon2Parallelism ||
			h.Argon2.MemoryKiB > l.Argon2MemoryKiB ||
			h.Argon2.Iterations > l.Argon2Iterations ||
			uint32(h.Argon2.Parallelism) > l.Argon2Parallelism
	}
	return true
}

// checkVerifyCost refuses a hash that would cost more to verify than the
// key's policy allows with headroom (see verifyHeadroomBcrypt); its
// argon2id memory and lanes, past the key's own policy, no more than the
// deployment's limits (what one hashing worker holds: the server's memory
// and cores, which the pool is sized by). A hash of the other algorithm
// than the key's policy (made before the key switched) verifies up to the
// deployment's limits, which any policy may reach: switching never strands
// the hashes made before.
func checkVerifyCost(h passhash.Hash, p keystore.PasswordPolicy, l keystore.PasswordLimits) error {
	switch h.Algorithm {
	case passhash.Bcrypt:
		top := max(keystore.DefaultBcryptCost+verifyHeadroomBcrypt, l.BcryptCost)
		if p.Algorithm == keystore.PasswordBcrypt {
			top = max(keystore.DefaultBcryptCost, p.BcryptCost) + verifyHeadroomBcrypt
		}
		if h.BcryptCost > top {
			return fmt.Errorf("%w: hash: bcrypt cost %d is above the %d this key verifies", keystore.ErrInvalidArgument, h.BcryptCost, top)
		}
	case passhash.Argon2id:
		m, t, par := uint64(keystore.DefaultArgon2MemoryKiB), uint64(keystore.DefaultArgon2Iterations), uint64(keystore.DefaultArgon2Parallelism)
		// The limits are never below the default policy (PasswordLimits).
		topM, topP := uint64(l.Argon2MemoryKiB), uint64(l.Argon2Parallelism)
		topT := max(verifyHeadroomArgon2*t, uint64(l.Argon2Iterations))
		if p.Algorithm == keystore.PasswordArgon2id {
			m, t, par = max(m, uint64(p.Argon2MemoryKiB)), max(t, uint64(p.Argon2Iterations)), max(par, uint64(p.Argon2Parallelism))
			topM = min(verifyHeadroomArgon2*m, max(m, uint64(l.Argon2MemoryKiB)))
			topP = min(verifyHeadroomArgon2*par, max(par, uint64(l.Argon2Parallelism)))
			topT = verifyHeadroomArgon2 * t
		}
		if uint64(h.Argon2.MemoryKiB) > topM || uint64(h.Argon2.Iterations) > topT || uint64(h.Argon2.Parallelism) > topP {
			return fmt.Errorf("%w: hash: argon2id parameters are above the m=%d,t=%d,p=%d this key verifies",
				keystore.ErrInvalidArgument, topM, topT, topP)
		}
	}
	return nil
}

// checkInput bounds the caller's password and subject.
func checkInput(password []byte, subject string) error {
	switch {
	case len(password) == 0:
		return fmt.Errorf("%w: password must not be empty", keystore.ErrInvalidArgument)
	case len(password) > MaxPasswordSize:
		return fmt.Errorf("%w: password is longer than %d bytes", keystore.ErrInvalidArgument, MaxPasswordSize)
	case len(subject) > MaxSubjectSize:
		return fmt.Errorf("%w: subject is longer than %d bytes", keystore.ErrInvalidArgument, MaxSubjectSize)
	}
	return nil
}

// run runs f on the hashing pool, mapping the pool's refusals to keystore
// errors.
func (s *Service) run(ctx context.Context, op string, f func()) error {
	err := s.pool.Do(ctx, f)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, workpool.ErrFull):
		return fmt.Errorf("%s: %w", op, keystore.ErrResourceExhausted)
	case errors.Is(err, workpool.ErrClosed):
		return fmt.Errorf("%s: %w: hashing pool is closed", op, keystore.ErrUnavailable)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// collectArgon2 returns an argon2id hash's memory (memKiB) to the heap at
// once, when it is large. Each hash allocates its own (x/crypto/argon2),
// and with the server's GC target (gc_percent, 400 by default) the heap may
// grow to five times what was live at the last collection, which a hash
// itself had made large: finished hashes' memory would pile up to several
// times the workers' max_argon2_memory_kib before the collector ran, past
// what passwords.md prices (one hash's memory per worker). A collection
// marks what is live (mostly the key cache) at normal priority: on a full
// cache about as much CPU as a 32 MiB hash, a small part of one from
// collectArgon2KiB up, which also bounds what a verifier can make the
// server hold with hashes it supplies.
func collectArgon2(memKiB uint32) {
	if memKiB >= collectArgon2KiB {
		runtime.GC()
	}
}

// collectArgon2KiB is the argon2id memory from which collectArgon2
// collects: 64 MiB. Smaller hashes (the default policy's is 19 MiB,
// OWASP's other 46 MiB) may leave up to gc_percent's multiple of it each
// before the collector runs (GOMEMLIMIT bounds that; passwords.md).
const collectArgon2KiB = 64 << 10
