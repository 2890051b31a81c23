// Package memory is an in-process storage.Store for tests and single-node
// development. Nothing survives the process.
package memory

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/internal/validate"
)

var _ storage.Store = (*Store)(nil)

// Store is a storage.Store held in memory. The zero value is not usable; call
// New.
type Store struct {
	mu      sync.RWMutex
	closed  bool
	version uint64            // last version handed out, across all keys
	records map[string]record // by key
	keys    []string          // keys of records, sorted byte-wise

	// Watchers, created by the first Watch.
	watchers map[*watcher]bool
	stop     context.Context // done once Close is called
	stopAll  context.CancelFunc
	watching sync.WaitGroup
}

type record struct {
	value   []byte
	version uint64
}

// New returns an empty Store.
func New() *Store {
	return &Store{records: make(map[string]record)}
}

// Get returns a copy of the record stored under key, or an error wrapping
// storage.ErrNotFound.
func (s *Store) Get(ctx context.Context, key string) (storage.Record, error) {
	if err := validate.Key(key); err != nil {
		return storage.Record{}, fmt.Errorf("memory: get: %w", err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if err := s.ready(ctx); err != nil {
		return storage.Record{}, fmt.Errorf("memory: get %q: %w", key, err)
	}
	r, ok := s.records[key]
	if !ok {
		return storage.Record{}, fmt.Errorf("memory: get %q: %w", key, storage.ErrNotFound)
	}
	return storage.Record{Key: key, Value: slices.Clone(r.value), Version: r.version}, nil
}

// Put stores a copy of value under key if the stored version equals expect
// (0: the key must not exist) and returns the new version.
func (s *Store) Put(ctx context.Context, key string, value []byte, expect uint64) (uint64, error) {
	if err := validate.Key(key); err != nil {
		return 0, fmt.Errorf("memory: put: %w", err)
	}
	if err := validate.Value(value); err != nil {
		return 0, fmt.Errorf("memory: put %q: %w", key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ready(ctx); err != nil {
		return 0, fmt.Errorf("memory: put %q: %w", key, err)
	}
	r, exists := s.records[key]
	if r.version != expect {
		return 0, fmt.Errorf("memory: put %q: expected version %d, found %d: %w", key, expect, r.version, storage.ErrConflict)
	}
	if !exists {
		i, _ := slices.BinarySearch(s.keys, key)
		s.keys = slices.Insert(s.keys, i, key)
	}
	s.version++
	s.records[key] = record{value: slices.Clone(value), version: s.version}
	s.notify(key, s.version)
	return s.version, nil
}

// Delete removes the record under key if its version equals expect.
func (s *Store) Delete(ctx context.Context, key string, expect uint64) error {
	if err := validate.Key(key); err != nil {
		return fmt.Errorf("memory: delete: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ready(ctx); err != nil {
		return fmt.Errorf("memory: delete %q: %w", key, err)
	}
	r, ok := s.records[key]
	if !ok {
		return fmt.Errorf("memory: delete %q: %w", key, storage.ErrNotFound)
	}
	if r.version != expect {
		return fmt.Errorf("memory: delete %q: expected version %d, found %d: %w", key, expect, r.version, storage.ErrConflict)
	}
	delete(s.records, key)
	i, _ := slices.BinarySearch(s.keys, key)
	s.keys = slices.Delete(s.keys, i, i+1)
	s.notify(key, 0)
	return nil
}

// List returns copies of at most limit records whose keys start with prefix
// and sort strictly after after, in ascending byte-wise key order.
func (s *Store) List(ctx context.Context, prefix, after string, limit int) ([]storage.Record, error) {
	if err := validate.Limit(limit); err != nil {
		return nil, fmt.Errorf("memory: list %q: %w", prefix, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if err := s.ready(ctx); err != nil {
		return nil, fmt.Errorf("memory: list %q: %w", prefix, err)
	}
	i, _ := slices.BinarySearch(s.keys, max(prefix, after))
	var out []storage.Record
	for ; i < len(s.keys) && len(out) < limit; i++ {
		k := s.keys[i]
		if k == after {
			continue
		}
		if !strings.HasPrefix(k, prefix) {
			break
		}
		r := s.records[k]
		out = append(out, storage.Record{Key: k, Value: slices.Clone(r.value), Version: r.version})
	}
	return out, nil
}

// Close releases the store's records and stops its watchers, closing their
// channels. Every later call, including Close, returns an error wrapping
// storage.ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("memory: close: %w", storage.ErrClosed)
	}
	s.closed = true
	s.records, s.keys = nil, nil
	stopAll := s.stopAll
	s.mu.Unlock()
	if stopAll != nil {
		stopAll()
		s.watching.Wait() // watchers take s.mu to leave
	}
	return nil
}

// ready reports an error wrapping storage.ErrClosed after Close, or the
// context's error. s.mu must be held.
func (s *Store) ready(ctx context.Context) error {
	if s.closed {
		return storage.ErrClosed
	}
	return ctx.Err()
}

var _ storage.Applier = (*Store)(nil)

// Apply makes every write of ops or, if a version check fails, none.
func (s *Store) Apply(ctx context.Context, ops []storage.Op) error {
	if err := validate.Ops(ops); err != nil {
		return fmt.Errorf("memory: apply: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ready(ctx); err != nil {
		return fmt.Errorf("memory: apply: %w", err)
	}
	for _, op := range ops {
		r, ok := s.records[op.Key]
		if op.Expect == storage.AnyVersion || r.version == op.Expect && (ok || !op.Delete) {
			continue
		}
		return fmt.Errorf("memory: apply: %q: expected version %d, found %d: %w", op.Key, op.Expect, r.version, storage.ErrConflict)
	}
	for _, op := range ops {
		_, exists := s.records[op.Key]
		if op.Delete {
			if exists {
				delete(s.records, op.Key)
				i, _ := slices.BinarySearch(s.keys, op.Key)
				s.keys = slices.Delete(s.keys, i, i+1)
				s.notify(op.Key, 0)
			}
			continue
		}
		if !exists {
			i, _ := slices.BinarySearch(s.keys, op.Key)
			s.keys = slices.Insert(s.keys, i, op.Key)
		}
		s.version++
		s.records[op.Key] = record{value: slices.Clone(op.Value), version: s.version}
		s.notify(op.Key, s.version)
	}
	return nil
}

var _ storage.Snapshotter = (*Store)(nil)

// Snapshot calls fn for a copy of every record, in key order, as they were
// when it was called.
func (s *Store) Snapshot(ctx context.Context, fn func(storage.Record) error) error {
	s.mu.RLock()
	if err := s.ready(ctx); err != nil {
		s.mu.RUnlock()
		return fmt.Errorf("memory: snapshot: %w", err)
	}
	recs := make([]storage.Record, 0, len(s.keys))
	for _, k := range s.keys {
		r := s.records[k]
		recs = append(recs, storage.Record{Key: k, Value: slices.Clone(r.value), Version: r.version})
	}
	s.mu.RUnlock()
	for _, r := range recs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}
