package memory

import (
	"context"
	"fmt"
	"sync"

	"github.com/custos-kms/custos/keystore/storage"
)

var _ storage.Watcher = (*Store)(nil)

// watchBuffer is how many changes a watcher holds for a reader that is
// behind before it drops them and owes the reader Change{Key: ""}.
const watchBuffer = 256

// watcher queues the keys written since its reader last caught up.
type watcher struct {
	mu      sync.Mutex
	pending []storage.Change
	missed  bool          // pending overflowed and was dropped
	wake    chan struct{} // signalled, without blocking, when pending grows
}

// Watch delivers a storage.Change, with the version written (0 for a
// delete), for every Put and Delete that succeeds on this Store until ctx is done or the Store is closed; then it closes the
// channel. It lets several in-process users of one Store (replicas in a
// test) invalidate their caches as PostgreSQL's watchers do. A reader more
// than 256 changes behind misses keys and gets Change{Key: ""} instead.
func (s *Store) Watch(ctx context.Context) (<-chan storage.Change, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ready(ctx); err != nil {
		return nil, fmt.Errorf("memory: watch: %w", err)
	}
	if s.watchers == nil {
		s.watchers = make(map[*watcher]bool)
		s.stop, s.stopAll = context.WithCancel(context.Background())
	}
	w := &watcher{wake: make(chan struct{}, 1)}
	s.watchers[w] = true
	s.watching.Add(1)
	ctx, cancel := context.WithCancel(ctx)
	stopOnClose := context.AfterFunc(s.stop, cancel)
	ch := make(chan storage.Change)
	go func() {
		defer s.watching.Done()
		defer close(ch)
		defer stopOnClose()
		defer cancel()
		w.run(ctx, ch)
		s.mu.Lock()
		delete(s.watchers, w)
		s.mu.Unlock()
	}()
	return ch, nil
}

// notify queues, for every watcher, a change to key that wrote version (0:
// a delete). s.mu must be held.
func (s *Store) notify(key string, version uint64) {
	for w := range s.watchers {
		w.mu.Lock()
		if len(w.pending) < watchBuffer {
			w.pending = append(w.pending, storage.Change{Key: key, Version: version})
		} else {
			w.pending, w.missed = nil, true
		}
		w.mu.Unlock()
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// run sends w's queued changes to ch until ctx is done.
func (w *watcher) run(ctx context.Context, ch chan<- storage.Change) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		}
		for c, ok := w.next(); ok; c, ok = w.next() {
			select {
			case ch <- c:
			case <-ctx.Done():
				return
			}
		}
	}
}

// next takes the next change to send, if there is one: Change{Key: ""} if
// keys were dropped, else the oldest queued key.
func (w *watcher) next() (storage.Change, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.missed:
		w.pending, w.missed = nil, false
		return storage.Change{}, true
	case len(w.pending) > 0:
		c := w.pending[0]
		w.pending = w.pending[1:]
		return c, true
	}
	return storage.Change{}, false
}
