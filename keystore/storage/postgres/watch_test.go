package postgres_test

import (
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/custos-kms/custos/internal/pgtest"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/postgres"
	"github.com/custos-kms/custos/keystore/storage/storagetest"
)

// quietLogger keeps the watchers' expected reconnection warnings out of
// the test output.
var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

// replicas opens two Stores, each with its own pool, on one new database:
// a writer and a watcher, as two replicas would have.
func replicas(t *testing.T, srv *pgtest.Server, watchBuffer int) (writer, watcher *postgres.Store) {
	url := srv.NewDatabase(t)
	writer = open(t, postgres.Config{URL: url, Logger: quietLogger})
	watcher = open(t, postgres.Config{URL: url, WatchBuffer: watchBuffer, Logger: quietLogger})
	return writer, watcher
}

func TestWatchConformance(t *testing.T) {
	srv := pgtest.Start(t)
	storagetest.TestWatch(t, storagetest.WatchConfig{
		Open: func(t *testing.T) (storage.Store, storage.Store) {
			return replicas(t, srv, 8)
		},
		Overflow: 64,
	})
}

// TestWatchDelay measures how long a change made through one replica takes
// to reach another's watcher. The design allows one second.
func TestWatchDelay(t *testing.T) {
	writer, watcher := replicas(t, pgtest.Start(t), 0)
	ch, err := watcher.Watch(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	var delays []time.Duration
	versions := map[string]uint64{}
	for i := range n {
		key := fmt.Sprintf("tenants/t%d", i%5)
		start := time.Now()
		versions[key] = put(t, writer, key, "x", versions[key])
		// The delay counts from the call, which includes the commit.
		if got := receive(t, ch, time.Second); got.Key != key {
			t.Fatalf("change %d: got key %q, want %q", i, got.Key, key)
		}
		delays = append(delays, time.Since(start))
	}
	slices.Sort(delays)
	t.Logf("write on one replica to change on another, %d samples: median %v, 90th percentile %v, max %v",
		n, delays[n/2].Round(10*time.Microsecond), delays[n*9/10].Round(10*time.Microsecond), delays[n-1].Round(10*time.Microsecond))
}

// TestWatchAfterRestart restarts the server under a watcher: it reconnects,
// sends a change with an empty key, and then delivers changes again.
func TestWatchAfterRestart(t *testing.T) {
	postgres.SetWatchTiming(t, 30*time.Second, 5*time.Second, 200*time.Millisecond)
	srv := pgtest.StartDedicated(t)
	writer, watcher := replicas(t, srv, 0)
	ch, err := watcher.Watch(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	put(t, writer, "before", "x", 0)
	if c := receive(t, ch, time.Second); c.Key != "before" {
		t.Fatalf("got %q, want %q", c.Key, "before")
	}

	srv.Restart(t)
	restarted := time.Now()
	if c := receive(t, ch, 10*time.Second); c.Key != "" {
		t.Fatalf("first change after the restart has key %q, want the empty key", c.Key)
	}
	t.Logf("watcher resynchronised %v after the server accepted connections again", time.Since(restarted).Round(time.Millisecond))
	// The writer's pool reconnects by itself too.
	put(t, writer, "after", "x", 0)
	if c := receive(t, ch, time.Second); c.Key != "after" {
		t.Fatalf("got %q, want %q", c.Key, "after")
	}
}

// TestWatchStartedWhileServerDown starts a watcher while the server is down:
// Watch still succeeds, and the watcher connects once the server is back.
func TestWatchStartedWhileServerDown(t *testing.T) {
	postgres.SetWatchTiming(t, 30*time.Second, 5*time.Second, 200*time.Millisecond)
	srv := pgtest.StartDedicated(t)
	writer, watcher := replicas(t, srv, 0)
	srv.Kill(t)
	ch, err := watcher.Watch(t.Context())
	if err != nil {
		t.Fatalf("Watch while the server is down = %v", err)
	}
	select {
	case c := <-ch:
		t.Fatalf("got %+v while the server is down", c)
	case <-time.After(300 * time.Millisecond):
	}
	srv.StartAgain(t)
	if c := receive(t, ch, 10*time.Second); c.Key != "" {
		t.Fatalf("first change once the server is up has key %q, want the empty key", c.Key)
	}
	put(t, writer, "k", "x", 0)
	if c := receive(t, ch, time.Second); c.Key != "k" {
		t.Fatalf("got %q, want %q", c.Key, "k")
	}
}

// TestWatchNoticesAHungServer freezes the server: no connection breaks, but
// the watcher's idle ping times out, and it reconnects once the server
// answers again.
func TestWatchNoticesAHungServer(t *testing.T) {
	postgres.SetWatchTiming(t, 300*time.Millisecond, 300*time.Millisecond, 200*time.Millisecond)
	srv := pgtest.StartDedicated(t)
	writer, watcher := replicas(t, srv, 0)
	ch, err := watcher.Watch(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// Quiet for longer than the idle check: pings keep the watch as it is.
	select {
	case c := <-ch:
		t.Fatalf("got %+v from an idle database", c)
	case <-time.After(time.Second):
	}
	srv.Freeze(t)
	time.Sleep(time.Second) // the ping times out; reconnecting hangs
	srv.Thaw(t)
	if c := receive(t, ch, 10*time.Second); c.Key != "" {
		t.Fatalf("first change after the hang has key %q, want the empty key", c.Key)
	}
	put(t, writer, "k", "x", 0)
	if c := receive(t, ch, time.Second); c.Key != "k" {
		t.Fatalf("got %q, want %q", c.Key, "k")
	}
}

// receive returns the next change on ch, failing t if none comes within d.
func receive(t *testing.T, ch <-chan storage.Change, d time.Duration) storage.Change {
	t.Helper()
	select {
	case c, ok := <-ch:
		if !ok {
			t.Fatalf("channel closed")
		}
		return c
	case <-time.After(d):
		t.Fatalf("no change within %v", d)
		return storage.Change{}
	}
}

// TestWatchCarriesTheVersionWritten: a change names the version its write
// produced, and a delete names none, so caches can keep what is current.
func TestWatchCarriesTheVersionWritten(t *testing.T) {
	writer, watcher := replicas(t, pgtest.Start(t), 0)
	ch, err := watcher.Watch(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	v1 := put(t, writer, "keys/acme/pii", "a", 0)
	if got := receive(t, ch, time.Second); got.Key != "keys/acme/pii" || got.Version != v1 {
		t.Fatalf("create: got %+v, want version %d", got, v1)
	}
	v2 := put(t, writer, "keys/acme/pii", "b", v1)
	if got := receive(t, ch, time.Second); got.Version != v2 {
		t.Fatalf("update: got %+v, want version %d", got, v2)
	}
	if err := writer.Delete(t.Context(), "keys/acme/pii", v2); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, ch, time.Second); got.Key != "keys/acme/pii" || got.Version != 0 {
		t.Fatalf("delete: got %+v, want version 0", got)
	}
}
