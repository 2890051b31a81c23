// Package validate checks arguments against the limits in package storage, so
// that every backend rejects the same inputs with the same errors.
package validate

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/custos-kms/custos/keystore/storage"
)

// Key reports an error wrapping storage.ErrInvalid if key is empty, longer
// than storage.MaxKeyLen bytes, not valid UTF-8 or holds NUL (what
// PostgreSQL text cannot hold: every backend refuses it, so that a store of
// one restores into another).
func Key(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("empty key: %w", storage.ErrInvalid)
	case len(key) > storage.MaxKeyLen:
		return fmt.Errorf("key is %d bytes, more than %d: %w", len(key), storage.MaxKeyLen, storage.ErrInvalid)
	case !utf8.ValidString(key) || strings.IndexByte(key, 0) >= 0:
		return fmt.Errorf("key %q is not valid UTF-8 or holds NUL: %w", key, storage.ErrInvalid)
	}
	return nil
}

// Value reports an error wrapping storage.ErrInvalid if value is longer than
// storage.MaxValueLen bytes.
func Value(value []byte) error {
	if len(value) > storage.MaxValueLen {
		return fmt.Errorf("value is %d bytes, more than %d: %w", len(value), storage.MaxValueLen, storage.ErrInvalid)
	}
	return nil
}

// Limit reports an error wrapping storage.ErrInvalid if limit is not positive.
func Limit(limit int) error {
	if limit <= 0 {
		return fmt.Errorf("limit %d is not positive: %w", limit, storage.ErrInvalid)
	}
	return nil
}

// Ops reports an error wrapping storage.ErrInvalid if ops is empty, too
// long, names a key twice, or holds an invalid key or value.
func Ops(ops []storage.Op) error {
	if len(ops) == 0 || len(ops) > storage.MaxApplyOps {
		return fmt.Errorf("%d writes, want 1 to %d: %w", len(ops), storage.MaxApplyOps, storage.ErrInvalid)
	}
	seen := make(map[string]struct{}, len(ops))
	for _, op := range ops {
		if err := Key(op.Key); err != nil {
			return err
		}
		if err := Value(op.Value); err != nil {
			return fmt.Errorf("key %q: %w", op.Key, err)
		}
		if _, dup := seen[op.Key]; dup {
			return fmt.Errorf("key %q written twice: %w", op.Key, storage.ErrInvalid)
		}
		seen[op.Key] = struct{}{}
	}
	return nil
}
