package roottest

import (
	"context"
	"sync/atomic"

	"github.com/custos-kms/custos/keystore/root"
)

// Deadlines wraps a root and counts its calls, and those made without a
// deadline: work that must not hang on a root that stops answering makes
// none of the second kind.
type Deadlines struct {
	root.Root
	Calls, Unbounded atomic.Int64
}

func (d *Deadlines) note(ctx context.Context) {
	d.Calls.Add(1)
	if _, ok := ctx.Deadline(); !ok {
		d.Unbounded.Add(1)
	}
}

// Wrap counts the call and wraps with the root.
func (d *Deadlines) Wrap(ctx context.Context, pt, aad []byte) ([]byte, error) {
	d.note(ctx)
	return d.Root.Wrap(ctx, pt, aad)
}

// Unwrap counts the call and unwraps with the root.
func (d *Deadlines) Unwrap(ctx context.Context, w, aad []byte) ([]byte, error) {
	d.note(ctx)
	return d.Root.Unwrap(ctx, w, aad)
}
