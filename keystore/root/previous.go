package root

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
)

// WithPrevious is cur, which also unwraps what prev wrapped: a deployment
// moving to another root (another provider, or a new key of one without
// versions) runs with both until custos root rewrap has re-wrapped every
// tenant KEK under cur. Wrap uses cur only. Unwrap tries cur first and
// prev only when cur finds the blob not authentic (not its own): an
// outage of cur is an outage, never a reason to try prev, and a blob
// neither opens is cur's refusal.
func WithPrevious(cur, prev Root) Root { return &withPrevious{cur: cur, prev: prev} }

type withPrevious struct{ cur, prev Root }

func (w *withPrevious) Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	return w.cur.Wrap(ctx, plaintext, aad)
}

func (w *withPrevious) Unwrap(ctx context.Context, wrapped, aad []byte) ([]byte, error) {
	pt, err := w.cur.Unwrap(ctx, wrapped, aad)
	if !errors.Is(err, ErrNotAuthentic) {
		return pt, err
	}
	pt, perr := w.prev.Unwrap(ctx, wrapped, aad)
	switch {
	case perr == nil:
		return pt, nil
	case errors.Is(perr, ErrNotAuthentic):
		return nil, err
	}
	return nil, perr // the previous root out: the blob may be its
}

// Check checks both roots, where they can be checked (either lost at a
// restart loses tenants: those not yet re-wrapped need the previous one),
// and that the previous root answers an unwrap (readiness probes the
// current one with a wrap; the previous one may be allowed to decrypt
// only): tenants not yet re-wrapped fail while it does not. An outage
// outranks a root at risk, which counts as ready.
func (w *withPrevious) Check(ctx context.Context) error {
	var atRisk error
	for _, r := range []Root{w.cur, w.prev} {
		if c, ok := r.(Checker); ok {
			if err := c.Check(ctx); errors.Is(err, ErrAtRisk) {
				atRisk = cmp.Or(atRisk, err)
			} else if err != nil {
				return err
			}
		}
	}
	// A blob no root made: "not authentic" is the answer of a root that
	// can be reached.
	if _, err := w.prev.Unwrap(ctx, probeBlob, []byte("custos:probe")); err != nil && !errors.Is(err, ErrNotAuthentic) {
		return fmt.Errorf("root.previous: %w", err)
	}
	return atRisk
}

// probeBlob is shaped like a wrapped key (a format byte of 1, a Transit
// key version of 1, then a nonce's and a tag's worth of zeros and more),
// so that each provider asks its backend rather than refusing it unread.
var probeBlob = append([]byte{1, 0, 0, 0, 1}, make([]byte, 56)...)

// Close closes both roots, where they hold anything.
func (w *withPrevious) Close() error {
	var errs []error
	for _, r := range []Root{w.cur, w.prev} {
		if c, ok := r.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}
