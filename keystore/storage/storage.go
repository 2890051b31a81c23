// Package storage defines the one small interface every Custos storage backend
// implements: a key-value store whose updates are compare-and-swap on a record
// version, so that two replicas changing the same key at once never lose a write.
//
// Backends live in sibling packages (memory, bbolt, postgres) and all pass the
// conformance suite in storagetest.
package storage

import (
	"context"
	"errors"
)

// Sentinel errors. Backends wrap them with context; callers test with errors.Is.
var (
	// ErrNotFound is returned when no record is stored under a key.
	ErrNotFound = errors.New("storage: not found")
	// ErrConflict is returned when a compare-and-swap finds a version other
	// than the one expected (including "must not exist" finding a record).
	ErrConflict = errors.New("storage: version conflict")
	// ErrUnavailable is returned when the backend cannot be reached; the
	// operation may be retried.
	ErrUnavailable = errors.New("storage: unavailable")
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("storage: closed")
)

// Record is one stored value and the version compare-and-swap compares.
type Record struct {
	// Key is the record's key.
	Key string
	// Value is the stored bytes. Callers must not modify it.
	Value []byte
	// Version is greater than zero for a stored record. Versions are opaque,
	// strictly increasing across the whole store and never reused, so a record
	// that is deleted and created again never repeats an old version.
	Version uint64
}

// Store is a key-value store with compare-and-swap updates.
//
// Keys are non-empty UTF-8 strings of at most MaxKeyLen bytes; values are at
// most MaxValueLen bytes. All methods are safe for concurrent use.
type Store interface {
	// Get returns the record stored under key, or ErrNotFound.
	Get(ctx context.Context, key string) (Record, error)

	// Put stores value under key if the stored version equals expect, and
	// returns the record's new version. expect == 0 means the key must not
	// exist. Otherwise it returns ErrConflict and stores nothing.
	Put(ctx context.Context, key string, value []byte, expect uint64) (uint64, error)

	// Delete removes the record under key if its version equals expect.
	// It returns ErrNotFound if there is no record and ErrConflict if the
	// version differs.
	Delete(ctx context.Context, key string, expect uint64) error

	// List returns at most limit records whose keys start with prefix and
	// sort strictly after the key after (byte-wise), in ascending key order.
	// after == "" starts at the first key with the prefix. limit must be > 0.
	List(ctx context.Context, prefix, after string, limit int) ([]Record, error)

	// Close releases the store. Methods called after Close return ErrClosed.
	Close() error
}

// Limits every backend enforces; larger keys or values are rejected with an
// error wrapping ErrInvalid.
const (
	MaxKeyLen   = 512
	MaxValueLen = 16 << 20
)

// ErrInvalid is returned for an empty or oversized key, an oversized value, or
// a non-positive List limit.
var ErrInvalid = errors.New("storage: invalid argument")
