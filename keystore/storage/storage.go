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
	"strings"
	"sync/atomic"
	"syscall"
	"time"
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
	// ErrFull is returned when a write failed because the backend has no
	// space left (disk full, quota); writes may succeed once space is freed.
	ErrFull = errors.New("storage: full")
)

// WriteHealth is implemented by backends that remember whether their last
// write failed for lack of space, so that readiness can say so: reads keep
// working on a full disk, so a read probe alone would report "ok".
type WriteHealth interface {
	// WriteHealth returns the error, wrapping ErrFull, of the last write
	// if it failed for lack of space, and nil once a write has succeeded.
	WriteHealth() error
}

// ProbeKey is the record the dependency probe reads, and writes where a
// write is its test (WriteProber).
const ProbeKey = "health/probe"

// WriteProber is implemented by stores whose full state clears only on a
// successful write (PostgreSQL): the dependency probe tries one small
// write through ProbeWrite. A store that judges fullness by its disk's
// free space (bbolt) does not implement it: a write there would take the
// last free pages and prove nothing.
type WriteProber interface {
	ProbeWrite(ctx context.Context) error
}

// FullTracker implements WriteHealth for a backend: Note each write's
// result.
type FullTracker struct{ last atomic.Pointer[error] }

// Note records a write's result: an error wrapping ErrFull is remembered,
// a success clears it, other errors leave it as it is.
func (t *FullTracker) Note(err error) {
	switch {
	case err == nil:
		if t.last.Load() != nil {
			t.last.Store(nil)
		}
	case errors.Is(err, ErrFull):
		t.last.Store(&err)
	}
}

// WriteHealth implements WriteHealth.
func (t *FullTracker) WriteHealth() error {
	if p := t.last.Load(); p != nil {
		return *p
	}
	return nil
}

// Exclusive is implemented by a store that one process at a time can open
// (a bbolt file, locked while open): while this process holds it, no other
// writes to it.
type Exclusive interface {
	Exclusive() bool
}

// NoSpace reports whether err is the operating system's "no space left on
// device" or "disk quota exceeded", also when a library flattened it into
// a message (bbolt's "file resize error").
func NoSpace(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, syscall.ENOSPC) {
		return true
	}
	return strings.Contains(err.Error(), "no space left on device") || OverQuota(err)
}

// OverQuota reports whether err is the operating system's "disk quota
// exceeded": a lack of space the filesystem's free space does not show.
func OverQuota(err error) bool {
	return err != nil && (errors.Is(err, syscall.EDQUOT) || strings.Contains(err.Error(), "disk quota exceeded"))
}

// Record is one stored value and the version compare-and-swap compares.
type Record struct {
	// Key is the record's key.
	Key string
	// Value is the stored bytes: the caller's own copy.
	Value []byte
	// Version is greater than zero for a stored record. Versions are opaque,
	// unique across the whole store, never reused, and increase with every
	// write of the same key, so a record deleted and created again never
	// repeats an old version (no ABA).
	Version uint64
}

// Store is a key-value store with compare-and-swap updates.
//
// Keys are non-empty, valid UTF-8 strings of at most MaxKeyLen bytes; values
// are at most MaxValueLen bytes. Keys sort byte-wise (SQL backends use the "C"
// collation) and prefixes match literally. Put with expect != 0 on a missing
// key, and Delete with expect == 0 on an existing key, return ErrConflict.
// All methods are safe for concurrent use.
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

// Change reports that a key was written or deleted, by this process or another
// sharing the store. Key == "" means "anything may have changed" (sent after
// the watcher reconnects and may have missed changes): drop every cache.
type Change struct {
	Key string
	// Version is the version the change wrote, or 0 when the record was
	// deleted or the backend cannot tell: caches built from a record at
	// Version or newer are still current.
	Version uint64
}

// Clock is implemented by stores with a clock of their own (PostgreSQL's
// now()). A tool that judges the leases servers write (a restore asking
// whether servers run) reads it instead of its own machine's clock, which
// may be off by more than a lease's TTL; the servers' clocks are kept in
// step with the database's (operations.md).
type Clock interface {
	Now(ctx context.Context) (time.Time, error)
}

// Watcher is implemented by stores that can tell every process sharing them
// about changes (PostgreSQL LISTEN/NOTIFY). Replicas use it to invalidate
// cached key material within a second of a change made elsewhere.
type Watcher interface {
	// Watch delivers changes until ctx is done, then closes the channel.
	// Changes may be coalesced or repeated; a slow reader may miss
	// individual keys but then receives a Change with Key == "".
	Watch(ctx context.Context) (<-chan Change, error)
}

// RetryOnConflict runs attempt, a read-modify-write that ends in a
// compare-and-swap, again while it fails with ErrConflict (another writer
// got there first), at most maxAttempts times in all. It returns attempt's
// first other result, or the last ErrConflict when every attempt conflicted.
func RetryOnConflict(maxAttempts int, attempt func() error) error {
	err := ErrConflict
	for range maxAttempts {
		if err = attempt(); !errors.Is(err, ErrConflict) {
			return err
		}
	}
	return err
}

// AnyVersion as an Op's Expect skips the version check: a Put overwrites
// or creates the record, a Delete removes it if it exists.
const AnyVersion = ^uint64(0)

// Op is one write of an Apply.
type Op struct {
	// Key is the record's key.
	Key string
	// Value is stored by a Put; ignored by a Delete.
	Value []byte
	// Expect is the version the record must have, as in Put and Delete
	// (0: must not exist), or AnyVersion.
	Expect uint64
	// Delete removes the record instead of storing Value.
	Delete bool
}

// Applier is implemented by stores that can make several writes at once,
// atomically: the audit log integrates a batch of events into its tree in
// one transaction.
type Applier interface {
	// Apply makes every write of ops or none. If any version check fails
	// it returns an error wrapping ErrConflict (a Delete of a missing
	// record with Expect other than AnyVersion is a conflict too) and
	// stores nothing. A key may appear at most once in ops.
	Apply(ctx context.Context, ops []Op) error
}

// MaxApplyOps bounds the writes of one Apply.
const MaxApplyOps = 100_000

// Snapshotter is implemented by stores that can read every record as of
// one moment while writers carry on (backups).
type Snapshotter interface {
	// Snapshot calls fn for every record, in ascending key order, as the
	// store was at one point in time; writes made meanwhile are not seen.
	// It stops at fn's first error and returns it.
	Snapshot(ctx context.Context, fn func(Record) error) error
}

// Keyless is err without its text, which may quote a storage key that must
// not reach a log (a lockout record's key holds an HMAC of its subject):
// what it is (errors.Is sees through it) and nothing more.
func Keyless(err error) error {
	if err == nil {
		return nil
	}
	return keyless{err}
}

type keyless struct{ err error }

func (k keyless) Unwrap() error { return k.err }

func (k keyless) Error() string { return "storage error (key withheld)" }
