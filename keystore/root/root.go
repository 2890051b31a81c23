// Package root defines the interface of a root key provider: the key that wraps
// every tenant KEK and never leaves its home (a local file, Vault Transit, a
// cloud KMS or an HSM). Providers live in sibling packages (local, vault,
// pkcs11, awskms, gcpkms) and all pass the conformance suite in roottest.
package root

import (
	"context"
	"errors"
)

// Sentinel errors. Providers wrap them with context; callers test with errors.Is.
var (
	// ErrNotAuthentic is returned when a wrapped blob fails authentication:
	// tampered, truncated, made under another root, or bound to other
	// associated data. It is final: retrying will not help.
	ErrNotAuthentic = errors.New("root: wrapped key is not authentic")
	// ErrUnavailable is returned when the provider cannot be reached (network,
	// sealed Vault, HSM absent). It is retryable.
	ErrUnavailable = errors.New("root: unavailable")
	// ErrAtRisk is returned by Checker.Check: the root works now, but the
	// process would not get it back on a restart (a local key file
	// deleted or replaced). It is not an outage: keep serving, alert.
	ErrAtRisk = errors.New("root: at risk")
)

// Checker is implemented by roots that can tell, while they still work,
// that the process would not get the same root back on a restart (a local
// key file deleted, unreadable or replaced). Readiness calls it.
type Checker interface {
	Check(ctx context.Context) error
}

// Root wraps and unwraps tenant KEKs. Implementations are safe for concurrent use.
type Root interface {
	// Wrap encrypts plaintext (a tenant KEK) under the root key, binding aad.
	Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, error)
	// Unwrap reverses Wrap. It returns an error wrapping ErrNotAuthentic when
	// the blob or aad do not match, ErrUnavailable when the root cannot be
	// reached.
	Unwrap(ctx context.Context, wrapped, aad []byte) ([]byte, error)
}
