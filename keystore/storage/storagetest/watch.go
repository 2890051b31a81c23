package storagetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/custos-kms/custos/keystore/storage"
)

// WatchConfig configures TestWatch.
type WatchConfig struct {
	// Open returns two new stores on the same new, empty data, as two
	// replicas would have: TestWatch writes through writer and watches
	// through watcher, which must implement storage.Watcher. A
	// single-process backend may return one store twice. TestWatch closes
	// both when the sub-test ends.
	Open func(t *testing.T) (writer, watcher storage.Store)

	// Overflow is a number of changes that overflows a watch channel's
	// buffer when nobody receives. It must be positive.
	Overflow int

	// Within is how soon a change must be delivered. Zero means 5 seconds;
	// the design's one second between replicas is measured by the
	// backend's own tests, where timing is not at the mercy of a loaded
	// test machine running the whole suite.
	Within time.Duration
}

// TestWatch runs the conformance suite for storage.Watcher.
func TestWatch(t *testing.T, cfg WatchConfig) {
	if cfg.Overflow <= 0 {
		t.Fatalf("storagetest.TestWatch: WatchConfig.Overflow must be positive")
	}
	if cfg.Within <= 0 {
		cfg.Within = 5 * time.Second
	}
	for _, c := range watchCases {
		t.Run(c.name, func(t *testing.T) {
			writer, watcher := cfg.Open(t)
			for _, s := range []storage.Store{writer, watcher} {
				t.Cleanup(func() {
					if err := s.Close(); err != nil && !errors.Is(err, storage.ErrClosed) {
						t.Errorf("Close: %v", err)
					}
				})
			}
			w, ok := watcher.(storage.Watcher)
			if !ok {
				t.Fatalf("watcher store %T does not implement storage.Watcher", watcher)
			}
			c.run(t, watchEnv{cfg: cfg, writer: writer, watcher: watcher, w: w})
		})
	}
}

type watchEnv struct {
	cfg     WatchConfig
	writer  storage.Store
	watcher storage.Store
	w       storage.Watcher
}

var watchCases = []struct {
	name string
	run  func(t *testing.T, e watchEnv)
}{
	{"a create, an update and a delete through the other store are each delivered, with the version written", testWatchWrites},
	{"keys arrive exactly as written", testWatchKeys},
	{"when a change arrives the watching store already reads the write", testWatchReadYourNotification},
	{"a reader that falls behind gets a change with an empty key", testWatchOverflow},
	{"failed compare-and-swaps deliver nothing", testWatchFailedCAS},
	{"cancelling the context closes the channel", testWatchCancel},
	{"Close closes every watch channel", testWatchClose},
	{"Watch after Close returns ErrClosed", testWatchAfterClose},
}

func (e watchEnv) watch(t *testing.T) <-chan storage.Change {
	t.Helper()
	ch, err := e.w.Watch(t.Context())
	if err != nil {
		t.Fatalf("Watch = %v", err)
	}
	return ch
}

// waitChange receives from ch until a change to key, or one with an empty
// key (anything may have changed), arrives within e.cfg.Within, and
// returns it.
func (e watchEnv) waitChange(t *testing.T, ch <-chan storage.Change, key, what string) storage.Change {
	t.Helper()
	timeout := time.After(e.cfg.Within)
	for {
		select {
		case c, ok := <-ch:
			if !ok {
				t.Fatalf("%s: channel closed while waiting for a change to %q", what, key)
			}
			if c.Key == key || c.Key == "" {
				return c
			}
		case <-timeout:
			t.Fatalf("%s: no change to %q within %v", what, key, e.cfg.Within)
			return storage.Change{}
		}
	}
}

// wantVersion fails t unless c names version, or no version (0: the backend
// cannot tell), or is a change with an empty key.
func wantVersion(t *testing.T, c storage.Change, version uint64, what string) {
	t.Helper()
	if c.Key != "" && c.Version != 0 && c.Version != version {
		t.Errorf("%s: change %+v, want version %d (or 0)", what, c, version)
	}
}

func testWatchWrites(t *testing.T, e watchEnv) {
	ch := e.watch(t)
	v := mustPut(t, e.writer, "tenants/a", "one", 0)
	wantVersion(t, e.waitChange(t, ch, "tenants/a", "create"), v, "create")
	v = mustPut(t, e.writer, "tenants/a", "two", v)
	wantVersion(t, e.waitChange(t, ch, "tenants/a", "update"), v, "update")
	if err := e.writer.Delete(t.Context(), "tenants/a", v); err != nil {
		t.Fatalf("Delete = %v", err)
	}
	wantVersion(t, e.waitChange(t, ch, "tenants/a", "delete"), 0, "delete")
}

func testWatchKeys(t *testing.T, e watchEnv) {
	ch := e.watch(t)
	keys := []string{"k", "keys/a b/c", "k/é", "k/\U0001F511", `k/%_\'"`, "k/with/more/slashes"}
	for _, k := range keys {
		mustPut(t, e.writer, k, "x", 0)
	}
	want := map[string]bool{}
	for _, k := range keys {
		want[k] = true
	}
	timeout := time.After(e.cfg.Within)
	for len(want) > 0 {
		select {
		case c, ok := <-ch:
			if !ok {
				t.Fatalf("channel closed with %d keys still to come", len(want))
			}
			if c.Key == "" {
				t.Fatalf("got a change with an empty key, want each key as written")
			}
			delete(want, c.Key)
		case <-timeout:
			t.Fatalf("keys never delivered within %v: %q", e.cfg.Within, mapKeys(want))
		}
	}
}

func testWatchReadYourNotification(t *testing.T, e watchEnv) {
	ch := e.watch(t)
	var v uint64
	for i := range 20 {
		value := fmt.Sprintf("value %d", i)
		v = mustPut(t, e.writer, "k", value, v)
		e.waitChange(t, ch, "k", fmt.Sprintf("write %d", i))
		// A reader that reloads on a change must not load what it had.
		wantRecord(t, e.watcher, "k", value, v)
	}
}

func testWatchOverflow(t *testing.T, e watchEnv) {
	ch := e.watch(t)
	written := map[string]bool{}
	for i := range e.cfg.Overflow {
		k := fmt.Sprintf("k/%05d", i)
		mustPut(t, e.writer, k, "x", 0)
		written[k] = true
	}
	// Every key is delivered, or some are missed and an empty key says so.
	timeout := time.After(e.cfg.Within + time.Duration(e.cfg.Overflow)*10*time.Millisecond)
	for len(written) > 0 {
		select {
		case c, ok := <-ch:
			if !ok {
				t.Fatalf("channel closed")
			}
			if c.Key == "" {
				return
			}
			delete(written, c.Key)
		case <-timeout:
			t.Fatalf("%d of %d keys never delivered, and no change with an empty key", len(written), e.cfg.Overflow)
		}
	}
}

func testWatchFailedCAS(t *testing.T, e watchEnv) {
	v := mustPut(t, e.writer, "k", "x", 0)
	ch := e.watch(t)
	if _, err := e.writer.Put(t.Context(), "k", []byte("y"), 0); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("Put(expect 0) of an existing key = %v, want ErrConflict", err)
	}
	if _, err := e.writer.Put(t.Context(), "k", []byte("y"), v+1000); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("Put with a wrong version = %v, want ErrConflict", err)
	}
	if err := e.writer.Delete(t.Context(), "k", v+1000); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("Delete with a wrong version = %v, want ErrConflict", err)
	}
	// A write after them, so that a notification of the failures, if any,
	// would have arrived before it.
	mustPut(t, e.writer, "marker", "x", 0)
	timeout := time.After(e.cfg.Within)
	for {
		select {
		case c, ok := <-ch:
			if !ok {
				t.Fatalf("channel closed")
			}
			switch c.Key {
			case "marker":
				return
			case "k":
				t.Fatalf("a failed compare-and-swap on %q delivered a change", c.Key)
			}
		case <-timeout:
			t.Fatalf("no change to %q within %v", "marker", e.cfg.Within)
		}
	}
}

func testWatchCancel(t *testing.T, e watchEnv) {
	ctx, cancel := context.WithCancel(t.Context())
	ch, err := e.w.Watch(ctx)
	if err != nil {
		t.Fatalf("Watch = %v", err)
	}
	other := e.watch(t)
	cancel()
	waitClosed(t, ch, e.cfg.Within, "after cancel")
	// Other watches go on.
	mustPut(t, e.writer, "k", "x", 0)
	e.waitChange(t, other, "k", "the watch that was not cancelled")
}

func testWatchClose(t *testing.T, e watchEnv) {
	a, b := e.watch(t), e.watch(t)
	if err := e.watcher.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	waitClosed(t, a, e.cfg.Within, "first watch after Close")
	waitClosed(t, b, e.cfg.Within, "second watch after Close")
}

func testWatchAfterClose(t *testing.T, e watchEnv) {
	if err := e.watcher.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	ch, err := e.w.Watch(t.Context())
	if !errors.Is(err, storage.ErrClosed) {
		t.Fatalf("Watch after Close = %v, want ErrClosed", err)
	}
	if ch != nil {
		t.Fatalf("Watch after Close returned a channel")
	}
}

// waitClosed fails t unless ch is closed within d; changes before that
// are fine.
func waitClosed(t *testing.T, ch <-chan storage.Change, d time.Duration, what string) {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatalf("%s: channel still open after %v", what, d)
		}
	}
}

func mapKeys(m map[string]bool) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
