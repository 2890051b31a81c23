package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/custos-kms/custos/internal/pgtest"
	"github.com/custos-kms/custos/internal/testkit"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/postgres"
	"github.com/custos-kms/custos/keystore/storage/storagetest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestConformance(t *testing.T) {
	srv := pgtest.Start(t)
	storagetest.Test(t, func(t *testing.T) storage.Store {
		return open(t, postgres.Config{URL: srv.NewDatabase(t)})
	})
}

func TestOpenTwiceAppliesEachMigrationOnce(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	first := open(t, postgres.Config{URL: url})
	v := put(t, first, "k", "one", 0)
	second := open(t, postgres.Config{URL: url})
	wantMigrations(t, url)
	// Both see the same records, and versions go on from where they were.
	r, err := second.Get(t.Context(), "k")
	if err != nil || string(r.Value) != "one" || r.Version != v {
		t.Fatalf("Get through the second Store = %+v, %v; want one, version %d", r, err, v)
	}
	if v2 := put(t, second, "k", "two", v); v2 <= v {
		t.Fatalf("update through the second Store got version %d, want > %d", v2, v)
	}
}

func TestConcurrentOpensMigrateOnce(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	const n = 8
	var wg sync.WaitGroup
	stores := make([]*postgres.Store, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { stores[i], errs[i] = postgres.Open(t.Context(), postgres.Config{URL: url}) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Errorf("Open %d = %v", i, errs[i])
			continue
		}
		stores[i].Close()
	}
	wantMigrations(t, url)
}

func TestOpenAcceptsASchemaMigratedByANewerRelease(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	open(t, postgres.Config{URL: url}).Close()
	exec(t, url, "INSERT INTO custos_schema_migrations (version, name) VALUES (9999, '9999_future.sql')")
	s := open(t, postgres.Config{URL: url})
	put(t, s, "k", "x", 0)
}

func TestOpenErrors(t *testing.T) {
	for _, c := range []struct {
		name   string
		url    string
		target error  // nil: any error
		hidden string // must not appear in the message
	}{
		{"an empty URL", "", nil, ""},
		{"an unparsable URL does not echo its password", "postgres://u:s3cret@host:notaport/db", nil, "s3cret"},
		{"a server that is not there is unavailable", "postgres://u:s3cret@127.0.0.1:1/db?sslmode=disable", storage.ErrUnavailable, "s3cret"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := postgres.Open(t.Context(), postgres.Config{URL: c.url, ConnectTimeout: 2 * time.Second})
			if err == nil {
				s.Close()
				t.Fatalf("Open succeeded")
			}
			if c.target != nil && !errors.Is(err, c.target) {
				t.Errorf("Open = %v, want an error wrapping %v", err, c.target)
			}
			if c.hidden != "" && strings.Contains(err.Error(), c.hidden) {
				t.Errorf("Open = %v: the message shows the password", err)
			}
		})
	}
}

func TestKeysPostgreSQLCannotHoldAreInvalid(t *testing.T) {
	s := open(t, postgres.Config{URL: pgtest.Start(t).NewDatabase(t)})
	for _, key := range []string{"nul\x00inside", "bad\xffutf8", "\xc3"} {
		_, err := s.Put(t.Context(), key, []byte("x"), 0)
		wantErr(t, err, storage.ErrInvalid, fmt.Sprintf("Put(%q)", key))
		_, err = s.Get(t.Context(), key)
		wantErr(t, err, storage.ErrInvalid, fmt.Sprintf("Get(%q)", key))
		err = s.Delete(t.Context(), key, 1)
		wantErr(t, err, storage.ErrInvalid, fmt.Sprintf("Delete(%q)", key))
	}
}

func TestVersionsBeyondInt64NeverMatch(t *testing.T) {
	s := open(t, postgres.Config{URL: pgtest.Start(t).NewDatabase(t)})
	put(t, s, "k", "x", 0)
	_, err := s.Put(t.Context(), "k", []byte("y"), 1<<63+1)
	wantErr(t, err, storage.ErrConflict, "Put with a version above MaxInt64")
	err = s.Delete(t.Context(), "k", ^uint64(0))
	wantErr(t, err, storage.ErrConflict, "Delete with version MaxUint64")
}

// TestCompareAndSwapAcrossReplicas runs increments through two Stores, each
// with its own pool, as two replicas would.
func TestCompareAndSwapAcrossReplicas(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	replicas := []*postgres.Store{open(t, postgres.Config{URL: url}), open(t, postgres.Config{URL: url})}
	const increments = 50
	put(t, replicas[0], "counter", "0", 0)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		versions []uint64
		retries  int
	)
	for _, s := range replicas {
		wg.Go(func() {
			for range increments {
				v, n, err := increment(t.Context(), s, "counter")
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				versions = append(versions, v)
				retries += n
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	r, err := replicas[1].Get(t.Context(), "counter")
	if err != nil {
		t.Fatal(err)
	}
	if want := strconv.Itoa(len(replicas) * increments); string(r.Value) != want {
		t.Fatalf("counter = %s, want %s", r.Value, want)
	}
	slices.Sort(versions)
	if len(slices.Compact(versions)) != len(replicas)*increments {
		t.Fatalf("successful increments returned duplicate versions")
	}
	t.Logf("%d increments through %d replicas needed %d retries after conflicts", len(replicas)*increments, len(replicas), retries)
}

// increment adds one to the counter under key, retrying on conflict, and
// returns the version it stored and how many conflicts it met.
func increment(ctx context.Context, s storage.Store, key string) (uint64, int, error) {
	for retries := 0; retries < 10000; retries++ {
		r, err := s.Get(ctx, key)
		if err != nil {
			return 0, retries, err
		}
		n, err := strconv.Atoi(string(r.Value))
		if err != nil {
			return 0, retries, err
		}
		v, err := s.Put(ctx, key, []byte(strconv.Itoa(n+1)), r.Version)
		if errors.Is(err, storage.ErrConflict) {
			continue
		}
		return v, retries, err
	}
	return 0, 10000, errors.New("still conflicting after 10000 attempts")
}

// TestServerOutage kills the server under a Store: calls fail quickly with
// ErrUnavailable, and once the server is back the same Store works.
func TestServerOutage(t *testing.T) {
	srv := pgtest.StartDedicated(t)
	s := open(t, postgres.Config{URL: srv.NewDatabase(t), ConnectTimeout: 2 * time.Second})
	v := put(t, s, "k", "before", 0)

	srv.Kill(t)
	for _, c := range outageCalls(s, v) {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		start := time.Now()
		err := c.call(ctx)
		elapsed := time.Since(start)
		cancel()
		wantErr(t, err, storage.ErrUnavailable, c.name+" while the server is down")
		if elapsed > 3500*time.Millisecond {
			t.Errorf("%s while the server is down took %v, more than its context allowed", c.name, elapsed)
		}
		t.Logf("%s while the server is down: %v after %v", c.name, err, elapsed.Round(time.Millisecond))
	}

	srv.StartAgain(t)
	r, err := s.Get(t.Context(), "k")
	if err != nil || string(r.Value) != "before" || r.Version != v {
		t.Fatalf("first Get after the server came back = %+v, %v; want before, version %d", r, err, v)
	}
	if _, err := s.Put(t.Context(), "k", []byte("after"), v); err != nil {
		t.Fatalf("Put after the server came back = %v", err)
	}
}

// TestHungServer freezes the server: calls fail with ErrUnavailable when
// their context's deadline passes, not later.
func TestHungServer(t *testing.T) {
	srv := pgtest.StartDedicated(t)
	s := open(t, postgres.Config{URL: srv.NewDatabase(t)})
	v := put(t, s, "k", "before", 0)

	srv.Freeze(t)
	const deadline = 500 * time.Millisecond
	for _, c := range outageCalls(s, v) {
		ctx, cancel := context.WithTimeout(t.Context(), deadline)
		start := time.Now()
		err := c.call(ctx)
		elapsed := time.Since(start)
		cancel()
		wantErr(t, err, storage.ErrUnavailable, c.name+" while the server hangs")
		wantErr(t, err, context.DeadlineExceeded, c.name+" while the server hangs")
		if elapsed > deadline+time.Second {
			t.Errorf("%s while the server hangs took %v, want about %v", c.name, elapsed, deadline)
		}
	}
	// Without a deadline, ConnectTimeout bounds a new connection.
	srv.Thaw(t)
	r, err := s.Get(t.Context(), "k")
	if err != nil || r.Version != v {
		t.Fatalf("Get after Thaw = %+v, %v; want version %d", r, err, v)
	}
}

type outageCall struct {
	name string
	call func(ctx context.Context) error
}

func outageCalls(s storage.Store, v uint64) []outageCall {
	return []outageCall{
		{"Get", func(ctx context.Context) error { _, err := s.Get(ctx, "k"); return err }},
		{"Put", func(ctx context.Context) error { _, err := s.Put(ctx, "k", []byte("during"), v); return err }},
		{"Put of a new key", func(ctx context.Context) error { _, err := s.Put(ctx, "new", []byte("during"), 0); return err }},
		{"Delete", func(ctx context.Context) error { return s.Delete(ctx, "k", v) }},
		{"List", func(ctx context.Context) error { _, err := s.List(ctx, "", "", 10); return err }},
	}
}

// open opens a Store and closes it when t ends.
func open(t *testing.T, cfg postgres.Config) *postgres.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s, err := postgres.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open = %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, storage.ErrClosed) {
			t.Errorf("Close = %v", err)
		}
	})
	return s
}

func put(t *testing.T, s storage.Store, key, value string, expect uint64) uint64 {
	t.Helper()
	v, err := s.Put(t.Context(), key, []byte(value), expect)
	if err != nil {
		t.Fatalf("Put(%q, expect %d) = %v", key, expect, err)
	}
	return v
}

func wantErr(t *testing.T, err, target error, what string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: error %v, want one wrapping %v", what, err, target)
	}
}

// wantMigrations fails t unless the database at url records each embedded
// migration exactly once.
func wantMigrations(t *testing.T, url string) {
	t.Helper()
	versions, names, err := postgres.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	conn := connect(t, url)
	rows, err := conn.Query(t.Context(), "SELECT version, name FROM custos_schema_migrations ORDER BY version")
	if err != nil {
		t.Fatal(err)
	}
	type applied struct {
		Version int32
		Name    string
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[applied])
	if err != nil {
		t.Fatal(err)
	}
	var want []applied
	for i := range versions {
		want = append(want, applied{int32(versions[i]), names[i]})
	}
	if !slices.Equal(got, want) {
		t.Fatalf("custos_schema_migrations = %v, want %v", got, want)
	}
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func exec(t *testing.T, url, sql string) {
	t.Helper()
	if _, err := connect(t, url).Exec(t.Context(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestListUsesThePrimaryKeyIndex guards against a collation mismatch that
// would make List scan the whole table: the range and the order must both
// come from the primary key's index.
func TestListUsesThePrimaryKeyIndex(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	open(t, postgres.Config{URL: url}).Close()
	conn := connect(t, url)
	if _, err := conn.Exec(t.Context(), "SET enable_seqscan = off; SET enable_bitmapscan = off; SET enable_sort = off"); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		postgres.ListQueryBounded,
		postgres.ListQueryUnbounded,
	} {
		rows, err := conn.Query(t.Context(), "EXPLAIN "+q, argsFor(q)...)
		if err != nil {
			t.Fatalf("EXPLAIN: %v", err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		plan := strings.Join(lines, "\n")
		if !strings.Contains(plan, "Index Scan using custos_records_pkey") || strings.Contains(plan, "Sort") {
			t.Errorf("plan for\n%s\n=\n%s\nwant an index scan on custos_records_pkey and no sort", q, plan)
		}
	}
}

func argsFor(q string) []any {
	if strings.Contains(q, "$3") {
		return []any{"a", "b", 10}
	}
	return []any{"a", 10}
}

// The probe write clears the full state once the server takes writes
// again, with or without a probe record already there.
func TestAProbeWriteClearsTheFullState(t *testing.T) {
	ctx := t.Context()
	s := open(t, postgres.Config{URL: pgtest.Start(t).NewDatabase(t)})
	for range 2 {
		postgres.NoteFull(s, fmt.Errorf("test: %w", storage.ErrFull))
		if err := s.WriteHealth(); !errors.Is(err, storage.ErrFull) {
			t.Fatalf("marked full: %v", err)
		}
		if err := s.ProbeWrite(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.WriteHealth(); err != nil {
			t.Fatalf("after the probe write: %v, want cleared", err)
		}
	}
}

// Apply's unconditional writes (AnyVersion), racing on one record, never
// leave it with a lower version than one a reader has already seen: a
// version is drawn after the row is locked, so versions only grow.
func TestConcurrentUpsertsNeverLowerTheVersion(t *testing.T) {
	s := open(t, postgres.Config{URL: pgtest.Start(t).NewDatabase(t), MaxConns: 8})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	const key = "race"
	if _, err := s.Put(ctx, key, []byte("0"), 0); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	errs := make(chan error, 4)
	var writers sync.WaitGroup
	for w := range 4 {
		writers.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := s.Apply(ctx, []storage.Op{{Key: key, Value: fmt.Appendf(nil, "%d-%d", w, i), Expect: storage.AnyVersion}}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	var last uint64
	for range 2000 {
		r, err := s.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if r.Version < last {
			close(stop)
			writers.Wait()
			t.Fatalf("version went from %d down to %d", last, r.Version)
		}
		last = r.Version
	}
	close(stop)
	writers.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
}

// An Open that waits for the migration lock says so (every try's wait):
// another session holding it (a replica hung with its transaction open)
// made every other replica's start hang without a word. It goes on once
// the lock is free.
func TestOpenWaitingForTheMigrationLockSaysSo(t *testing.T) {
	postgres.SetMigrationLockWait(t, 200*time.Millisecond)
	url := pgtest.Start(t).NewDatabase(t)
	open(t, postgres.Config{URL: url}).Close()
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", postgres.MigrationLock); err != nil {
		t.Fatal(err)
	}
	logs := &testkit.SyncBuffer{}
	opened := make(chan error, 1)
	go func() {
		s, err := postgres.Open(ctx, postgres.Config{URL: url, Logger: slog.New(slog.NewTextHandler(logs, nil))})
		if err == nil {
			s.Close()
		}
		opened <- err
	}()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), "waiting for the schema migration lock"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no log line within 10s while the migration lock was held; logs: %q", logs.String())
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-opened:
		if err != nil {
			t.Fatalf("Open once the lock was free: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Open still waiting 10s after the lock was freed")
	}
}

// A TLS setting the server cannot meet (sslmode=require on a server
// without TLS) is a configuration error, as a wrong password is: it does
// not pass with a retry, so it is not reported as an outage (exit 7,
// readiness "unavailable").
func TestATLSMismatchIsNotAnOutage(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	if strings.Contains(url, "sslmode=") {
		url = strings.NewReplacer("sslmode=disable", "sslmode=require", "sslmode=prefer", "sslmode=require").Replace(url)
	} else if strings.Contains(url, "?") {
		url += "&sslmode=require"
	} else {
		url += "?sslmode=require"
	}
	s, err := postgres.Open(t.Context(), postgres.Config{URL: url, ConnectTimeout: 5 * time.Second})
	if err == nil {
		s.Close()
		t.Fatal("the test server accepted TLS; this test needs one without")
	}
	if errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("Open with sslmode=require against a server without TLS: %v; want a configuration error, not unavailable", err)
	}
}
