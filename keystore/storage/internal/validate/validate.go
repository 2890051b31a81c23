// Package validate checks arguments against the limits in package storage, so
// that every backend rejects the same inputs with the same errors.
package validate

import (
	"fmt"

	"github.com/custos-kms/custos/keystore/storage"
)

// Key reports an error wrapping storage.ErrInvalid if key is empty or longer
// than storage.MaxKeyLen bytes.
func Key(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("empty key: %w", storage.ErrInvalid)
	case len(key) > storage.MaxKeyLen:
		return fmt.Errorf("key is %d bytes, more than %d: %w", len(key), storage.MaxKeyLen, storage.ErrInvalid)
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
