package postgres

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/custos-kms/custos/internal/pgtest"
	"github.com/custos-kms/custos/keystore/storage"
)

// A connection refused for want of connections (SQLSTATE class 53: here a
// role at its CONNECTION LIMIT) is an outage of that call only: the server
// is up, and the pool keeps the connections it has instead of dropping them
// all, as it does when the server went away.
func TestRunningOutOfConnectionsKeepsThePool(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	dbURL := pgtest.Start(t).NewDatabase(t)
	admin, err := Open(ctx, Config{URL: dbURL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	role := fmt.Sprintf("custos_limited_%d", time.Now().UnixNano())
	quoted := pgx.Identifier{role}.Sanitize()
	for _, q := range []string{
		`CREATE ROLE ` + quoted + ` LOGIN CONNECTION LIMIT 1`,
		`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ` + quoted,
		`GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO ` + quoted,
	} {
		if _, err := admin.pool.Exec(ctx, q); err != nil {
			skipOnExternal(t, "cannot make a role with a connection limit here: %v", err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, q := range []string{`DROP OWNED BY ` + quoted, `DROP ROLE ` + quoted} {
			if _, err := admin.pool.Exec(ctx, q); err != nil {
				t.Logf("cleanup %q: %v", q, err)
			}
		}
	})
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	s, err := Open(ctx, Config{URL: u.String(), MaxConns: 2, NoMigrate: true})
	if err != nil {
		skipOnExternal(t, "cannot connect as the limited role here: %v", err)
	}
	defer s.Close()
	if _, err := s.Put(ctx, "k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	held, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The role's one connection is held: this call needs a second one,
	// which the server refuses.
	_, err = s.Get(ctx, "k")
	if !errors.Is(err, storage.ErrUnavailable) {
		held.Release()
		t.Fatalf("a read with the role's one connection held: %v, want ErrUnavailable", err)
	}
	held.Release()
	if n := s.pool.Stat().TotalConns(); n != 1 {
		t.Fatalf("the pool has %d connections after the refusal, want its 1 kept", n)
	}
	if _, err := s.Get(ctx, "k"); err != nil {
		t.Fatalf("a read on the kept connection: %v", err)
	}
}

// A server that stops answering right after the watcher's connection is
// made (its LISTEN unanswered) does not hold Watch, and with it a server's
// start, until TCP gives up: the LISTEN has the ping deadline.
func TestAnUnansweredListenDoesNotHoldWatch(t *testing.T) {
	oldPing := pingTimeout
	pingTimeout = 500 * time.Millisecond
	t.Cleanup(func() { pingTimeout = oldPing })
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	pg := pgtest.StartDedicated(t)
	s, err := Open(ctx, Config{URL: pg.NewDatabase(t)})
	if err != nil {
		t.Fatal(err)
	}
	var frozen atomic.Bool
	t.Cleanup(func() {
		if frozen.Swap(false) {
			pg.Thaw(t)
		}
		s.Close()
	})
	s.connConfig.AfterConnect = func(context.Context, *pgconn.PgConn) error {
		if frozen.CompareAndSwap(false, true) {
			pg.Freeze(t)
		}
		return nil
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Watch(ctx)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Watch: %v; want it to return and keep trying", err)
		}
	case <-time.After(15 * time.Second):
		if frozen.Swap(false) {
			pg.Thaw(t)
		}
		t.Fatal("Watch still waits for an unanswered LISTEN after 15s")
	}
}

// A server that takes no writes (a hot standby after a failover, which a
// multi-host URL or stale DNS can still lead to) is not used: connections
// must be read-write unless the URL says otherwise, so a replica neither
// serves stale records from it nor keeps failing writes on it.
func TestAReadOnlyServerIsNotUsed(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	dbURL := pgtest.Start(t).NewDatabase(t)
	admin, err := Open(ctx, Config{URL: dbURL})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Put(ctx, "k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	var db string
	if err := admin.pool.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.pool.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" SET default_transaction_read_only = on"); err != nil {
		skipOnExternal(t, "cannot make the database read-only here: %v", err)
	}
	admin.Close()

	ro, err := Open(ctx, Config{URL: dbURL})
	if err == nil {
		defer ro.Close()
		_, err = ro.Get(ctx, "k")
	}
	if !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("opening a read-only server: %v, want ErrUnavailable", err)
	}
	// A read-only look (a restore's tombstones) needs the primary, not
	// read-write transactions: a role whose transactions are read-only
	// reads from it.
	look, err := Open(ctx, Config{URL: dbURL, NoMigrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer look.Close()
	if r, err := look.Get(ctx, "k"); err != nil || string(r.Value) != "v" {
		t.Fatalf("a read-only look at the primary with read-only transactions: %q, %v", r.Value, err)
	}
	// The URL's own choice stands.
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("target_session_attrs", "any")
	u.RawQuery = q.Encode()
	anyServer, err := Open(ctx, Config{URL: u.String(), NoMigrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer anyServer.Close()
	if r, err := anyServer.Get(ctx, "k"); err != nil || string(r.Value) != "v" {
		t.Fatalf("with target_session_attrs=any: %q, %v", r.Value, err)
	}
}

// A database (or role) whose transactions default to a stricter isolation
// level does not change compare-and-swap: racing writers of one record see
// ErrConflict, as under READ COMMITTED, never a serialization failure
// (SQLSTATE 40001) that reached callers as INTERNAL.
func TestCompareAndSwapHoldsWhateverTheDatabasesIsolationDefault(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	dbURL := pgtest.Start(t).NewDatabase(t)
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := Open(ctx, Config{URL: dbURL})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	db := pgx.Identifier{u.Path[1:]}.Sanitize()
	if _, err := admin.pool.Exec(ctx, `ALTER DATABASE `+db+` SET default_transaction_isolation = 'serializable'`); err != nil {
		skipOnExternal(t, "cannot set the database's isolation default here: %v", err)
	}
	s, err := Open(ctx, Config{URL: dbURL, MaxConns: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	var level string
	if err := s.pool.QueryRow(ctx, `SHOW transaction_isolation`).Scan(&level); err != nil || level != "read committed" {
		t.Fatalf("isolation %q, %v; want read committed", level, err)
	}
	if _, err := s.Put(ctx, "race", []byte("0"), 0); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 64)
	for range 8 {
		go func() {
			for range 8 {
				r, err := s.Get(ctx, "race")
				if err == nil {
					_, err = s.Put(ctx, "race", []byte("x"), r.Version)
				}
				if errors.Is(err, storage.ErrConflict) {
					err = nil
				}
				errs <- err
			}
		}()
	}
	for range 64 {
		if err := <-errs; err != nil {
			t.Fatalf("a racing compare-and-swap: %v", err)
		}
	}
}

// skipOnExternal skips the test on an external server (pgtest.EnvURL),
// whose role may lack what the test needs, and fails it on the throwaway
// server the tests start, where it cannot be a setup problem: a failure
// there must not pass as a skip.
func skipOnExternal(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv(pgtest.EnvURL) != "" {
		t.Skipf(format, args...)
	}
	t.Fatalf(format, args...)
}
