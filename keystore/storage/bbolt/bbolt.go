// Package bbolt is a storage.Store in a single local file, built on
// go.etcd.io/bbolt. Every write is its own transaction and is synced to disk
// before it returns. Only one Store, in one process, can have a file open.
package bbolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/internal/validate"
)

var _ storage.Store = (*Store)(nil)

// DefaultTimeout is how long Open waits for the file lock when
// Options.Timeout is not set.
const DefaultTimeout = time.Second

// ErrLocked is wrapped by the error Open returns when another process, or
// another Store in this process, holds the file's lock for longer than
// Options.Timeout.
var ErrLocked = errors.New("bbolt: database file is locked by another process")

// Options configures Open.
type Options struct {
	// Timeout is how long Open waits for another holder to release the
	// file's lock. Zero or negative means DefaultTimeout.
	Timeout time.Duration
	// ReadOnly opens an existing file for reading only (a shared lock);
	// a missing file is an error instead of a new, empty store.
	ReadOnly bool
}

// bucket holds every record. A record's value is its version as 8 bytes
// big-endian followed by the stored bytes. The bucket's sequence is the last
// version handed out, so versions are never reused, even after a Delete.
var bucket = []byte("records")

const versionLen = 8

// Store is a storage.Store backed by a bbolt file. Create one with Open.
type Store struct {
	// mu is held for reading by every operation and for writing by Close, so
	// Close waits for operations in flight and none start after it.
	mu     sync.RWMutex
	closed bool
	db     *bolt.DB
	path   string
	full   storage.FullTracker // WriteHealth: the last write and lack of space
}

// minFree is the free space on the file's filesystem at which a store
// whose writes failed for lack of space counts as writable again: enough
// for bbolt to grow the file by a step.
const minFree = 1 << 20

// WriteHealth reports, wrapping storage.ErrFull, that a write failed for
// lack of space and the file's filesystem still has less than 1 MiB free.
// A small write succeeding says nothing (bbolt reuses free pages of the
// file first); free space on the filesystem does. Where free space cannot
// be read, it is reported once.
//
// A quota refused the write: the filesystem's free space does not show
// quotas, so that lasts until a write succeeds.
func (s *Store) WriteHealth() error {
	err := s.full.WriteHealth()
	if err == nil || storage.OverQuota(err) {
		return err
	}
	free, ok := freeBytes(filepath.Dir(s.path))
	if !ok || free >= minFree {
		s.full.Note(nil)
	}
	if ok && free >= minFree {
		return nil
	}
	return err
}

var _ storage.Exclusive = (*Store)(nil)

// Exclusive reports true: bbolt locks the file for the process that opened
// it (a read-only open too, shared with other readers only), so no other
// process writes to it meanwhile.
func (s *Store) Exclusive() bool { return true }

// Open opens the store in the file at path, creating it with mode 0600 if
// it does not exist. If the file stays locked by another holder for
// opts.Timeout, Open returns an error wrapping ErrLocked.
func Open(path string, opts Options) (*Store, error) {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if opts.ReadOnly {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("bbolt: open %s: %w", path, err)
		}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout, ReadOnly: opts.ReadOnly})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("bbolt: open %s: gave up after %v: %w", path, timeout, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("bbolt: open %s: %w", path, err)
	}
	if opts.ReadOnly {
		err = db.View(func(tx *bolt.Tx) error {
			if tx.Bucket(bucket) == nil {
				return errors.New("not a Custos store (no records bucket)")
			}
			return nil
		})
	} else {
		err = db.Update(func(tx *bolt.Tx) error {
			_, err := tx.CreateBucketIfNotExists(bucket)
			return err
		})
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("bbolt: open %s: %w", path, err)
	}
	if !opts.ReadOnly {
		removeStaleSnapshots(path)
	}
	return &Store{db: db, path: path}, nil
}

// snapshotPrefix begins the names of the copies Snapshot makes beside the
// file (os.CreateTemp adds a random suffix).
func snapshotPrefix(path string) string { return filepath.Base(path) + ".snapshot-" }

// removeStaleSnapshots deletes copies a Snapshot left when its process
// died: each is a whole copy of the store, and would keep a tenant
// shredded since unwrappable. The caller holds the file's exclusive lock,
// so no other process is taking a snapshot of it. The directory is read,
// not globbed: the file's name may hold pattern characters.
func removeStaleSnapshots(path string) {
	dir, prefix := filepath.Dir(path), snapshotPrefix(path)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) && e.Type().IsRegular() {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// Get returns the record stored under key, or an error wrapping
// storage.ErrNotFound.
func (s *Store) Get(ctx context.Context, key string) (storage.Record, error) {
	if err := validate.Key(key); err != nil {
		return storage.Record{}, fmt.Errorf("bbolt: get: %w", err)
	}
	rec := storage.Record{Key: key}
	err := s.view(ctx, func(b *bolt.Bucket) error {
		raw := b.Get([]byte(key))
		if raw == nil {
			return storage.ErrNotFound
		}
		var err error
		rec.Value, rec.Version, err = decode(raw)
		return err
	})
	if err != nil {
		return storage.Record{}, fmt.Errorf("bbolt: get %q: %w", key, err)
	}
	return rec, nil
}

// Put stores value under key if the stored version equals expect (0: the key
// must not exist) and returns the new version.
func (s *Store) Put(ctx context.Context, key string, value []byte, expect uint64) (uint64, error) {
	if err := validate.Key(key); err != nil {
		return 0, fmt.Errorf("bbolt: put: %w", err)
	}
	if err := validate.Value(value); err != nil {
		return 0, fmt.Errorf("bbolt: put %q: %w", key, err)
	}
	var version uint64
	err := s.update(ctx, func(b *bolt.Bucket) error {
		if err := checkVersion(b, key, expect, false); err != nil {
			return err
		}
		var err error
		if version, err = b.NextSequence(); err != nil {
			return err
		}
		raw := make([]byte, versionLen+len(value))
		binary.BigEndian.PutUint64(raw, version)
		copy(raw[versionLen:], value)
		return b.Put([]byte(key), raw)
	})
	if err != nil {
		return 0, fmt.Errorf("bbolt: put %q: %w", key, err)
	}
	return version, nil
}

// Delete removes the record under key if its version equals expect.
func (s *Store) Delete(ctx context.Context, key string, expect uint64) error {
	if err := validate.Key(key); err != nil {
		return fmt.Errorf("bbolt: delete: %w", err)
	}
	err := s.update(ctx, func(b *bolt.Bucket) error {
		if err := checkVersion(b, key, expect, true); err != nil {
			return err
		}
		return b.Delete([]byte(key))
	})
	if err != nil {
		return fmt.Errorf("bbolt: delete %q: %w", key, err)
	}
	return nil
}

// List returns at most limit records whose keys start with prefix and sort
// strictly after after, in ascending byte-wise key order.
func (s *Store) List(ctx context.Context, prefix, after string, limit int) ([]storage.Record, error) {
	if err := validate.Limit(limit); err != nil {
		return nil, fmt.Errorf("bbolt: list %q: %w", prefix, err)
	}
	var out []storage.Record
	err := s.view(ctx, func(b *bolt.Bucket) error {
		p := []byte(prefix)
		c := b.Cursor()
		k, raw := c.Seek([]byte(max(prefix, after)))
		if string(k) == after {
			k, raw = c.Next()
		}
		for ; k != nil && bytes.HasPrefix(k, p) && len(out) < limit; k, raw = c.Next() {
			value, version, err := decode(raw)
			if err != nil {
				return fmt.Errorf("record %q: %w", k, err)
			}
			out = append(out, storage.Record{Key: string(k), Value: value, Version: version})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bbolt: list %q: %w", prefix, err)
	}
	return out, nil
}

// Close waits for operations in flight and closes the file. Every later
// call, including Close, returns an error wrapping storage.ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("bbolt: close %s: %w", s.path, storage.ErrClosed)
	}
	s.closed = true
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("bbolt: close %s: %w", s.path, err)
	}
	return nil
}

// checkVersion returns storage.ErrConflict unless the record under key has
// version expect. A missing record has version 0, unless missingIsNotFound,
// in which case it is storage.ErrNotFound.
func checkVersion(b *bolt.Bucket, key string, expect uint64, missingIsNotFound bool) error {
	var found uint64
	if raw := b.Get([]byte(key)); raw != nil {
		var err error
		if _, found, err = decode(raw); err != nil {
			return err
		}
	} else if missingIsNotFound {
		return storage.ErrNotFound
	}
	if found != expect {
		return fmt.Errorf("expected version %d, found %d: %w", expect, found, storage.ErrConflict)
	}
	return nil
}

// view runs fn on the records bucket in a read-only transaction.
func (s *Store) view(ctx context.Context, fn func(*bolt.Bucket) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return storage.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(func(tx *bolt.Tx) error { return fn(tx.Bucket(bucket)) })
}

// applyFillPercent is how full bbolt leaves the left page when it splits
// one, in Apply's transactions: they are the audit trail's shipping and
// integration, which append leaves, strips and queue records under
// increasing keys, and a restore's batches, written in key order. At bbolt's
// default of half, every page of them stayed half empty, doubling what was
// written and stored. Put and Delete, which write records under keys in no
// order (tenants, keys, the due index), keep the default: at 0.9 the pages
// of keys inserted at random end up emptier, not fuller.
const applyFillPercent = 0.9

// update runs fn on the records bucket in a read-write transaction, which
// commits if fn returns nil.
func (s *Store) update(ctx context.Context, fn func(*bolt.Bucket) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return storage.ErrClosed
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		// Checked once the write lock is held, so a caller that gave up
		// while waiting for it does not write.
		if err := ctx.Err(); err != nil {
			return err
		}
		return fn(tx.Bucket(bucket))
	})
	switch {
	case storage.NoSpace(err):
		err = fmt.Errorf("%w: %w", storage.ErrFull, err)
		s.full.Note(err)
	case err == nil && storage.OverQuota(s.full.WriteHealth()):
		s.full.Note(nil) // the quota let a write through
	}
	return err
}

// decode splits a stored record into a copy of its value and its version.
func decode(raw []byte) ([]byte, uint64, error) {
	if len(raw) < versionLen {
		return nil, 0, fmt.Errorf("corrupt record of %d bytes", len(raw))
	}
	value := make([]byte, len(raw)-versionLen)
	copy(value, raw[versionLen:])
	return value, binary.BigEndian.Uint64(raw), nil
}

var _ storage.Applier = (*Store)(nil)

// Apply makes every write of ops in one transaction, or, if a version check
// fails, none.
func (s *Store) Apply(ctx context.Context, ops []storage.Op) error {
	if err := validate.Ops(ops); err != nil {
		return fmt.Errorf("bbolt: apply: %w", err)
	}
	err := s.update(ctx, func(b *bolt.Bucket) error {
		b.FillPercent = applyFillPercent // for this transaction only
		for _, op := range ops {
			if op.Expect == storage.AnyVersion {
				continue
			}
			if err := checkVersion(b, op.Key, op.Expect, false); err != nil {
				return fmt.Errorf("%q: %w", op.Key, err)
			}
			if op.Delete && op.Expect == 0 {
				return fmt.Errorf("%q: delete expects no record: %w", op.Key, storage.ErrConflict)
			}
		}
		for _, op := range ops {
			if op.Delete {
				if err := b.Delete([]byte(op.Key)); err != nil {
					return err
				}
				continue
			}
			version, err := b.NextSequence()
			if err != nil {
				return err
			}
			raw := make([]byte, versionLen+len(op.Value))
			binary.BigEndian.PutUint64(raw, version)
			copy(raw[versionLen:], op.Value)
			if err := b.Put([]byte(op.Key), raw); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("bbolt: apply: %w", err)
	}
	return nil
}

var _ storage.Snapshotter = (*Store)(nil)

// Snapshot calls fn for every record, in key order, as of one moment. The
// read transaction that defines the moment lasts only as long as copying
// the file (tx.WriteTo, at disk speed) beside it; fn then reads the copy,
// however slowly, without holding back the live file's writers. During the
// copy, a write that must grow the file's memory map waits for it to end
// (bbolt remaps only with no reader), and reads queue behind that write.
func (s *Store) Snapshot(ctx context.Context, fn func(storage.Record) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(s.path), snapshotPrefix(s.path)+"*")
	if err != nil {
		return fmt.Errorf("bbolt: snapshot: %w", err)
	}
	defer os.Remove(tmp.Name())
	err = s.viewTx(ctx, func(tx *bolt.Tx) error {
		_, err := tx.WriteTo(tmp)
		return err
	})
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("bbolt: snapshot: copy: %w", err)
	}
	db, err := bolt.Open(tmp.Name(), 0o600, &bolt.Options{ReadOnly: true, Timeout: DefaultTimeout})
	if err != nil {
		return fmt.Errorf("bbolt: snapshot: %w", err)
	}
	defer db.Close()
	// Open, the copy needs no name: a process that dies while fn reads it
	// leaves nothing behind (and the next Open removes a copy left earlier).
	_ = os.Remove(tmp.Name())
	var fnErr error
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if b == nil {
			return errors.New("no records bucket")
		}
		c := b.Cursor()
		for k, raw := c.First(); k != nil; k, raw = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			value, version, err := decode(raw)
			if err != nil {
				return fmt.Errorf("record %q: %w", k, err)
			}
			if fnErr = fn(storage.Record{Key: string(k), Value: value, Version: version}); fnErr != nil {
				return fnErr
			}
		}
		return nil
	})
	switch {
	case fnErr != nil:
		return fnErr
	case err != nil:
		return fmt.Errorf("bbolt: snapshot: %w", err)
	}
	return nil
}

// viewTx runs fn in a read-only transaction.
func (s *Store) viewTx(ctx context.Context, fn func(*bolt.Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return storage.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(fn)
}
