package root_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/local"
)

// down is a root that is out, counting the calls it was asked.
type down struct{ calls int }

func (d *down) Wrap(context.Context, []byte, []byte) ([]byte, error) {
	d.calls++
	return nil, fmt.Errorf("test root: %w", root.ErrUnavailable)
}

func (d *down) Unwrap(context.Context, []byte, []byte) ([]byte, error) {
	d.calls++
	return nil, fmt.Errorf("test root: %w", root.ErrUnavailable)
}

func localRoot(t *testing.T) *local.Root {
	t.Helper()
	r, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A root with a previous one wraps under the current root only, unwraps
// what either wrapped, and never takes an outage for "not mine": the
// previous root is asked only when the current one finds the blob not
// authentic, a blob neither opens is not authentic, and an outage of
// either is an outage.
func TestARootWithAPreviousOne(t *testing.T) {
	ctx := context.Background()
	cur, prev, other := localRoot(t), localRoot(t), localRoot(t)
	r := root.WithPrevious(cur, prev)
	kek, aad := bytes.Repeat([]byte{7}, 32), []byte("custos:tenant:acme")

	fromPrev, err := prev.Wrap(ctx, kek, aad)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := r.Unwrap(ctx, fromPrev, aad); err != nil || !bytes.Equal(got, kek) {
		t.Fatalf("a blob of the previous root: %x, %v", got, err)
	}
	wrapped, err := r.Wrap(ctx, kek, aad)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := cur.Unwrap(ctx, wrapped, aad); err != nil || !bytes.Equal(got, kek) {
		t.Fatalf("Wrap's blob under the current root alone: %x, %v", got, err)
	}
	if _, err := prev.Unwrap(ctx, wrapped, aad); !errors.Is(err, root.ErrNotAuthentic) {
		t.Fatalf("Wrap's blob under the previous root: %v, want it not the previous root's", err)
	}
	fromOther, err := other.Wrap(ctx, kek, aad)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Unwrap(ctx, fromOther, aad); !errors.Is(err, root.ErrNotAuthentic) {
		t.Fatalf("a blob of neither: %v, want not authentic", err)
	}
	if _, err := r.Unwrap(ctx, fromPrev, []byte("custos:tenant:other")); !errors.Is(err, root.ErrNotAuthentic) {
		t.Fatalf("other associated data: %v, want not authentic", err)
	}

	// The current root out: an outage, and the previous root not asked.
	d := &down{}
	if _, err := root.WithPrevious(d, prev).Unwrap(ctx, fromPrev, aad); !errors.Is(err, root.ErrUnavailable) {
		t.Fatalf("the current root out: %v, want unavailable", err)
	}
	// The previous root out, for a blob not the current root's: an outage
	// too, never "not authentic" (which drops what is cached for good).
	d = &down{}
	if _, err := root.WithPrevious(cur, d).Unwrap(ctx, fromPrev, aad); !errors.Is(err, root.ErrUnavailable) || d.calls != 1 {
		t.Fatalf("the previous root out: %v (%d calls), want unavailable", err, d.calls)
	}
	// Readiness's check: the previous root must answer too.
	if err := root.WithPrevious(cur, prev).(root.Checker).Check(ctx); err != nil {
		t.Fatalf("Check with both roots up: %v", err)
	}
	if err := root.WithPrevious(cur, &down{}).(root.Checker).Check(ctx); !errors.Is(err, root.ErrUnavailable) {
		t.Fatalf("Check with the previous root out: %v, want unavailable", err)
	}
	// A previous key allowed to decrypt only is ready.
	if err := root.WithPrevious(cur, decryptOnly{prev}).(root.Checker).Check(ctx); err != nil {
		t.Fatalf("Check with a decrypt-only previous root: %v, want ready", err)
	}
	// The current root at risk does not hide the previous one's outage
	// (at risk counts as ready).
	if err := root.WithPrevious(atRisk{cur}, &down{}).(root.Checker).Check(ctx); !errors.Is(err, root.ErrUnavailable) {
		t.Fatalf("Check with the current root at risk and the previous out: %v, want unavailable", err)
	}
	if err := root.WithPrevious(atRisk{cur}, prev).(root.Checker).Check(ctx); !errors.Is(err, root.ErrAtRisk) {
		t.Fatalf("Check with the current root at risk: %v, want at risk", err)
	}
	// A blob of the current root never reaches the previous one.
	d = &down{}
	if got, err := root.WithPrevious(cur, d).Unwrap(ctx, wrapped, aad); err != nil || !bytes.Equal(got, kek) || d.calls != 0 {
		t.Fatalf("a current blob with the previous root out: %x, %v, %d calls to it", got, err, d.calls)
	}
}

// decryptOnly is a root whose key may unwrap but not wrap.
type decryptOnly struct{ root.Root }

func (decryptOnly) Wrap(context.Context, []byte, []byte) ([]byte, error) {
	return nil, errors.New("test root: permission denied")
}

// atRisk is a working root whose restart check finds it at risk.
type atRisk struct{ root.Root }

func (atRisk) Check(context.Context) error { return fmt.Errorf("test root: %w", root.ErrAtRisk) }
