package keystore

import (
	"fmt"
	"time"
)

// PasswordAlgorithm is the slow hash a PASSWORD key applies after the pepper.
type PasswordAlgorithm int

// Password algorithms.
const (
	PasswordBcrypt PasswordAlgorithm = iota + 1
	PasswordArgon2id
)

// String returns the algorithm's name.
func (a PasswordAlgorithm) String() string {
	switch a {
	case PasswordBcrypt:
		return "BCRYPT"
	case PasswordArgon2id:
		return "ARGON2ID"
	}
	return fmt.Sprintf("PasswordAlgorithm(%d)", int(a))
}

// Password hashing defaults and bounds. bcrypt's default cost is 12 and its
// floor 10; argon2id defaults follow OWASP's cheat sheet (m=19 MiB, t=2, p=1).
const (
	DefaultBcryptCost        = 12
	MinBcryptCost            = 10
	MaxBcryptCost            = 31
	DefaultArgon2MemoryKiB   = 19456
	DefaultArgon2Iterations  = 2
	DefaultArgon2Parallelism = 1
	MinArgon2MemoryKiB       = 8192
	MaxArgon2MemoryKiB       = 4 << 20 // 4 GiB
	MaxArgon2Iterations      = 64
	MaxArgon2Parallelism     = 64
	DefaultLockoutWindow     = 15 * time.Minute
	DefaultLockoutDuration   = 15 * time.Minute
)

// PasswordLimits caps the policies of every PASSWORD key of a deployment.
// The hashing pool is shared by all tenants: one tenant's policy at the
// absolute maxima (bcrypt cost 31: days per hash; argon2id 4 GiB per hash)
// would take it for everyone, or exhaust the server's memory.
type PasswordLimits struct {
	BcryptCost        int
	Argon2MemoryKiB   uint32
	Argon2Iterations  uint32
	Argon2Parallelism uint32
}

// DefaultPasswordLimits: bcrypt cost 16 (about 16 times the default's
// time), argon2id 256 MiB, 16 passes, 4 lanes: well above OWASP's and RFC
// 9106's second recommendations, far below the formats' maxima.
var DefaultPasswordLimits = PasswordLimits{BcryptCost: 16, Argon2MemoryKiB: 256 << 10, Argon2Iterations: 16, Argon2Parallelism: 4}

// WithDefaults fills zero fields from DefaultPasswordLimits and checks the
// rest: at least the default policy (which every key without a policy
// uses), at most the formats' bounds.
func (l PasswordLimits) WithDefaults() (PasswordLimits, error) {
	d := DefaultPasswordLimits
	if l.BcryptCost == 0 {
		l.BcryptCost = d.BcryptCost
	}
	if l.Argon2MemoryKiB == 0 {
		l.Argon2MemoryKiB = d.Argon2MemoryKiB
	}
	if l.Argon2Iterations == 0 {
		l.Argon2Iterations = d.Argon2Iterations
	}
	if l.Argon2Parallelism == 0 {
		l.Argon2Parallelism = d.Argon2Parallelism
	}
	switch {
	case l.BcryptCost < DefaultBcryptCost || l.BcryptCost > MaxBcryptCost:
		return l, fmt.Errorf("keystore: password limit bcrypt cost %d is not %d (the default policy) to %d", l.BcryptCost, DefaultBcryptCost, MaxBcryptCost)
	case l.Argon2MemoryKiB < DefaultArgon2MemoryKiB || l.Argon2MemoryKiB > MaxArgon2MemoryKiB:
		return l, fmt.Errorf("keystore: password limit argon2 memory %d KiB is not %d (the default policy) to %d", l.Argon2MemoryKiB, DefaultArgon2MemoryKiB, MaxArgon2MemoryKiB)
	case l.Argon2Iterations < DefaultArgon2Iterations || l.Argon2Iterations > MaxArgon2Iterations:
		return l, fmt.Errorf("keystore: password limit argon2 iterations %d is not %d (the default policy) to %d", l.Argon2Iterations, DefaultArgon2Iterations, MaxArgon2Iterations)
	case l.Argon2Parallelism > MaxArgon2Parallelism:
		return l, fmt.Errorf("keystore: password limit argon2 parallelism %d is above %d", l.Argon2Parallelism, MaxArgon2Parallelism)
	}
	return l, nil
}

// Cap returns p with each cost lowered to l's: the policy new hashes
// follow.
func (l PasswordLimits) Cap(p PasswordPolicy) PasswordPolicy {
	p.BcryptCost = min(p.BcryptCost, l.BcryptCost)
	p.Argon2MemoryKiB = min(p.Argon2MemoryKiB, l.Argon2MemoryKiB)
	p.Argon2Iterations = min(p.Argon2Iterations, l.Argon2Iterations)
	p.Argon2Parallelism = min(p.Argon2Parallelism, l.Argon2Parallelism)
	return p
}

// exceeded names what of p (normalized) is above l, or is "".
func (l PasswordLimits) exceeded(p PasswordPolicy) string {
	switch {
	case p.Algorithm == PasswordBcrypt && p.BcryptCost > l.BcryptCost:
		return fmt.Sprintf("bcrypt_cost %d is above this deployment's limit of %d (passwords.max_bcrypt_cost)", p.BcryptCost, l.BcryptCost)
	case p.Algorithm == PasswordArgon2id && p.Argon2MemoryKiB > l.Argon2MemoryKiB:
		return fmt.Sprintf("argon2_memory_kib %d is above this deployment's limit of %d (passwords.max_argon2_memory_kib)", p.Argon2MemoryKiB, l.Argon2MemoryKiB)
	case p.Algorithm == PasswordArgon2id && p.Argon2Iterations > l.Argon2Iterations:
		return fmt.Sprintf("argon2_iterations %d is above this deployment's limit of %d (passwords.max_argon2_iterations)", p.Argon2Iterations, l.Argon2Iterations)
	case p.Algorithm == PasswordArgon2id && p.Argon2Parallelism > l.Argon2Parallelism:
		return fmt.Sprintf("argon2_parallelism %d is above this deployment's limit of %d (passwords.max_argon2_parallelism)", p.Argon2Parallelism, l.Argon2Parallelism)
	}
	return ""
}

// checkPasswordPolicy normalizes a policy a caller sets and refuses one
// above the deployment's limits.
func (s *Service) checkPasswordPolicy(p PasswordPolicy) (PasswordPolicy, error) {
	p, err := normalizePasswordPolicy(p)
	if err != nil {
		return PasswordPolicy{}, err
	}
	if why := s.pwLimits.exceeded(p); why != "" {
		return PasswordPolicy{}, fmt.Errorf("%w: key.password_policy.%s", ErrInvalidArgument, why)
	}
	return p, nil
}

// PasswordPolicy is how a PASSWORD key hashes, and its optional brute-force
// lockout. Zero fields take the defaults above.
type PasswordPolicy struct {
	Algorithm         PasswordAlgorithm
	BcryptCost        int
	Argon2MemoryKiB   uint32
	Argon2Iterations  uint32
	Argon2Parallelism uint32
	// LockoutMaxFailures > 0 locks a subject after that many failed
	// verifications within LockoutWindow, for LockoutDuration.
	LockoutMaxFailures uint32
	LockoutWindow      time.Duration
	LockoutDuration    time.Duration
}

// normalizePasswordPolicy fills defaults and checks bounds; the error names
// the offending field (as key.password_policy.<field>).
func normalizePasswordPolicy(p PasswordPolicy) (PasswordPolicy, error) {
	bad := func(field, why string) (PasswordPolicy, error) {
		return PasswordPolicy{}, fmt.Errorf("%w: key.password_policy.%s %s", ErrInvalidArgument, field, why)
	}
	if p.Algorithm == 0 {
		p.Algorithm = PasswordBcrypt
	}
	switch p.Algorithm {
	case PasswordBcrypt:
		if p.BcryptCost == 0 {
			p.BcryptCost = DefaultBcryptCost
		}
		if p.BcryptCost < MinBcryptCost || p.BcryptCost > MaxBcryptCost {
			return bad("bcrypt_cost", fmt.Sprintf("must be %d to %d", MinBcryptCost, MaxBcryptCost))
		}
	case PasswordArgon2id:
		if p.Argon2MemoryKiB == 0 {
			p.Argon2MemoryKiB = DefaultArgon2MemoryKiB
		}
		if p.Argon2Iterations == 0 {
			p.Argon2Iterations = DefaultArgon2Iterations
		}
		if p.Argon2Parallelism == 0 {
			p.Argon2Parallelism = DefaultArgon2Parallelism
		}
		if p.Argon2MemoryKiB < MinArgon2MemoryKiB || p.Argon2MemoryKiB > MaxArgon2MemoryKiB {
			return bad("argon2_memory_kib", fmt.Sprintf("must be %d to %d", MinArgon2MemoryKiB, MaxArgon2MemoryKiB))
		}
		if p.Argon2Iterations > MaxArgon2Iterations {
			return bad("argon2_iterations", fmt.Sprintf("must be 1 to %d", MaxArgon2Iterations))
		}
		if p.Argon2Parallelism > MaxArgon2Parallelism {
			return bad("argon2_parallelism", fmt.Sprintf("must be 1 to %d", MaxArgon2Parallelism))
		}
	default:
		return bad("algorithm", "is not supported")
	}
	if p.LockoutMaxFailures > 0 {
		if p.LockoutWindow == 0 {
			p.LockoutWindow = DefaultLockoutWindow
		}
		if p.LockoutDuration == 0 {
			p.LockoutDuration = DefaultLockoutDuration
		}
		if p.LockoutWindow < time.Second || p.LockoutDuration < time.Second {
			return bad("lockout_window", "and lockout_duration must be at least 1s")
		}
	}
	return p, nil
}
