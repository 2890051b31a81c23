// Package roottest is the conformance suite every root provider passes.
package roottest

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/custos-kms/custos/keystore/root"
)

// Test runs the conformance suite against the provider r.
func Test(t *testing.T, r root.Root) {
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
		for i := range w {
			bad := bytes.Clone(w)
			bad[i] ^= 0x01
			if _, err := r.Unwrap(ctx, bad, aad); !errors.Is(err, root.ErrNotAuthentic) {
				t.Fatalf("bit flip at byte %d: got %v, want ErrNotAuthentic", i, err)
			}
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
	})
}
