// Package roottest is the conformance suite every root provider passes.
//
// Test is the contract every provider meets. TestUnavailable and
// TestUnresponsive cover the providers that talk to something that can go
// away (Vault, an HSM, a cloud KMS): an outage must be reported as
// root.ErrUnavailable, promptly, and the provider must recover by itself.
package roottest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/custos-kms/custos/keystore/root"
)

// Options tune the conformance suite for a backend that is not the real
// thing.
type Options struct {
	// Unchecked reports bytes of a wrapped blob that the backend is known
	// not to authenticate (an emulator's gap, named by the caller); the
	// tamper test does not flip them and logs how many it left.
	Unchecked func(blob []byte, i int) bool
}

// Test runs the conformance suite against the provider r.
func Test(t *testing.T, r root.Root) { TestWithOptions(t, r, Options{}) }

// TestWithOptions is Test tuned by o.
func TestWithOptions(t *testing.T, r root.Root, o Options) {
	ctx := context.Background()
	kek := bytes.Repeat([]byte{0x42}, 32)
	aad := []byte("custos:tenant:acme")

	t.Run("a wrapped key unwraps with the same associated data", func(t *testing.T) {
		w, err := r.Wrap(ctx, kek, aad)
		if err != nil {
			t.Fatalf("Wrap: %v", err)
		}
		if bytes.Contains(w, kek) {
			t.Fatal("wrapped blob contains the plaintext key")
		}
		got, err := r.Unwrap(ctx, w, aad)
		if err != nil {
			t.Fatalf("Unwrap: %v", err)
		}
		if !bytes.Equal(got, kek) {
			t.Fatal("Unwrap returned other bytes")
		}
	})
	t.Run("wrapping twice gives different blobs", func(t *testing.T) {
		a, err1 := r.Wrap(ctx, kek, aad)
		b, err2 := r.Wrap(ctx, kek, aad)
		if err1 != nil || err2 != nil {
			t.Fatalf("Wrap: %v, %v", err1, err2)
		}
		if bytes.Equal(a, b) {
			t.Fatal("two wraps are identical: no randomness")
		}
	})
	t.Run("other associated data is not authentic", func(t *testing.T) {
		w, err := r.Wrap(ctx, kek, aad)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Unwrap(ctx, w, []byte("custos:tenant:other")); !errors.Is(err, root.ErrNotAuthentic) {
			t.Fatalf("Unwrap with other AAD: got %v, want ErrNotAuthentic", err)
		}
	})
	t.Run("a tampered blob is not authentic", func(t *testing.T) {
		w, err := r.Wrap(ctx, kek, aad)
		if err != nil {
			t.Fatal(err)
		}
		skipped := 0
		for i := range w {
			if o.Unchecked != nil && o.Unchecked(w, i) {
				skipped++
				continue
			}
			bad := bytes.Clone(w)
			bad[i] ^= 0x01
			if _, err := r.Unwrap(ctx, bad, aad); !errors.Is(err, root.ErrNotAuthentic) {
				t.Fatalf("bit flip at byte %d: got %v, want ErrNotAuthentic", i, err)
			}
		}
		if skipped > 0 {
			t.Logf("%d of %d bytes not flipped: the backend does not authenticate them (Options.Unchecked)", skipped, len(w))
		}
		for _, n := range []int{0, 1, len(w) / 2, len(w) - 1} {
			if _, err := r.Unwrap(ctx, w[:n], aad); !errors.Is(err, root.ErrNotAuthentic) {
				t.Fatalf("truncated to %d bytes: got %v, want ErrNotAuthentic", n, err)
			}
		}
	})
	t.Run("a cancelled context fails", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := r.Wrap(cctx, kek, aad); err == nil {
			t.Fatal("Wrap with cancelled context succeeded")
		}
		w, err := r.Wrap(ctx, kek, aad)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Unwrap(cctx, w, aad); err == nil {
			t.Fatal("Unwrap with cancelled context succeeded")
		} else if errors.Is(err, root.ErrNotAuthentic) {
			t.Fatalf("Unwrap with cancelled context: %v; a cancelled call says nothing about the blob", err)
		}
	})
}

// TestUnavailable checks how r behaves while its backend is away. breakIt
// takes the backend away (seal Vault, stop a listener, detach a token) and
// restore brings it back; both run in the test goroutine. While broken, Wrap
// and Unwrap must fail promptly with an error wrapping root.ErrUnavailable
// and not root.ErrNotAuthentic (the keystore retries the first and never the
// second). After restore, the same r must work again without being
// recreated, and a blob wrapped before the outage must still unwrap. Recovery
// may take a moment (a Vault node becoming active), so the first call after
// restore is retried for up to 20 seconds while it reports ErrUnavailable.
func TestUnavailable(t *testing.T, r root.Root, breakIt, restore func()) {
	t.Helper()
	ctx := context.Background()
	kek := bytes.Repeat([]byte{0x24}, 32)
	aad := []byte("custos:tenant:outage")
	before, err := r.Wrap(ctx, kek, aad)
	if err != nil {
		t.Fatalf("Wrap before the outage: %v", err)
	}

	breakIt()
	restored := false
	defer func() {
		if !restored {
			restore()
		}
	}()
	unavailable := func(op string, err error) {
		t.Helper()
		switch {
		case err == nil:
			t.Fatalf("%s while the backend is away succeeded", op)
		case errors.Is(err, root.ErrNotAuthentic):
			t.Fatalf("%s while the backend is away: %v; want ErrUnavailable, not ErrNotAuthentic", op, err)
		case !errors.Is(err, root.ErrUnavailable):
			t.Fatalf("%s while the backend is away: %v; want an error wrapping ErrUnavailable", op, err)
		}
	}
	for i := range 2 { // twice: a provider must not give up or cache the failure for good
		octx, cancel := context.WithTimeout(ctx, outageDeadline)
		start := time.Now()
		_, err := r.Wrap(octx, kek, aad)
		unavailable(fmt.Sprintf("Wrap #%d", i+1), err)
		_, err = r.Unwrap(octx, before, aad)
		unavailable(fmt.Sprintf("Unwrap #%d", i+1), err)
		cancel()
		if d := time.Since(start); d > outageDeadline+time.Second {
			t.Fatalf("Wrap and Unwrap took %v during the outage; the context allowed %v", d, outageDeadline)
		}
	}

	restore()
	restored = true
	var w []byte
	deadline := time.Now().Add(20 * time.Second)
	for {
		w, err = r.Wrap(ctx, kek, aad)
		if err == nil || !errors.Is(err, root.ErrUnavailable) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Wrap after restore: %v", err)
	}
	for _, blob := range [][]byte{before, w} {
		got, err := r.Unwrap(ctx, blob, aad)
		if err != nil {
			t.Fatalf("Unwrap after restore: %v", err)
		}
		if !bytes.Equal(got, kek) {
			t.Fatal("Unwrap after restore returned other bytes")
		}
	}
}

// outageDeadline bounds each call in TestUnavailable and TestUnresponsive.
const outageDeadline = 3 * time.Second

// TestUnresponsive checks that r, whose backend accepts connections and
// never answers (or never completes a handshake), honours the context
// deadline: Wrap and Unwrap return within the deadline plus a second, with
// an error wrapping root.ErrUnavailable. wrapped is a well-formed blob from
// another instance of the same provider, so that Unwrap reaches the backend
// instead of failing the blob's own checks; nil checks Wrap only.
func TestUnresponsive(t *testing.T, r root.Root, wrapped []byte) {
	t.Helper()
	const deadline = 500 * time.Millisecond
	aad := []byte("custos:tenant:unresponsive")
	check := func(op string, call func(context.Context) error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		start := time.Now()
		err := call(ctx)
		if d := time.Since(start); d > deadline+time.Second {
			t.Fatalf("%s took %v; the context allowed %v", op, d, deadline)
		}
		if !errors.Is(err, root.ErrUnavailable) || errors.Is(err, root.ErrNotAuthentic) {
			t.Fatalf("%s against an unresponsive backend: %v; want an error wrapping ErrUnavailable", op, err)
		}
	}
	check("Wrap", func(ctx context.Context) error {
		_, err := r.Wrap(ctx, bytes.Repeat([]byte{0x17}, 32), aad)
		return err
	})
	if wrapped != nil {
		check("Unwrap", func(ctx context.Context) error {
			_, err := r.Unwrap(ctx, wrapped, aad)
			return err
		})
	}
}
