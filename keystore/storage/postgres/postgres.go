// Package postgres is a storage.Store in PostgreSQL, built on pgx, that any
// number of Custos replicas share. Every update is a compare-and-swap in one
// statement; versions come from a sequence, so they are unique and never
// reused. Open applies the embedded schema migrations. Watch tells a replica
// about every change any replica commits, through LISTEN/NOTIFY.
//
// Keys are stored as text in the "C" collation, so they sort byte-wise
// whatever the database's default collation. PostgreSQL text cannot hold
// NUL or invalid UTF-8, so such keys are rejected with storage.ErrInvalid.
//
// A server that cannot be reached, drops the connection, or is shutting
// down or starting up makes calls fail with storage.ErrUnavailable. So does
// a context whose deadline passes (the error wraps context.DeadlineExceeded
// too): either way the storage did not answer in time. A cancelled context
// gives context.Canceled alone. The pool reconnects by itself and replaces
// connections the server has closed before using them, so once the server
// is back the same Store works again, from the first call.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/internal/validate"
)

var (
	_ storage.Store   = (*Store)(nil)
	_ storage.Watcher = (*Store)(nil)
)

// Defaults for Config fields left zero.
const (
	DefaultConnectTimeout = 5 * time.Second
	DefaultWatchBuffer    = 256
)

// Config configures Open.
type Config struct {
	// URL is the server's connection string, as libpq takes it: a
	// postgres:// URL or key=value pairs. Parameters it leaves out come from
	// the PG* environment variables. Required.
	URL string

	// MaxConns is the most connections the pool opens. Zero means pgx's
	// default, the greater of 4 and the number of CPUs. Each Watch uses one
	// more connection, outside the pool.
	MaxConns int32

	// ConnectTimeout bounds each attempt to open a connection, so that an
	// unresponsive server makes calls fail with storage.ErrUnavailable
	// rather than hang when their context has no deadline. Zero means the
	// URL's connect_timeout, or DefaultConnectTimeout if it has none.
	ConnectTimeout time.Duration

	// WatchBuffer is the capacity of each channel Watch returns. Zero means
	// DefaultWatchBuffer.
	WatchBuffer int

	// NoMigrate opens a database without applying migrations (a read-only
	// look at another deployment's store); it must be migrated already.
	NoMigrate bool
	// Logger receives the watchers' connection losses and reconnections.
	// Nil means slog.Default().
	Logger *slog.Logger
}

// Store is a storage.Store in a PostgreSQL database. Create one with Open.
// It is safe for concurrent use.
type Store struct {
	pool        *pgxpool.Pool
	connConfig  *pgx.ConnConfig // for Watch's own connections
	watchBuffer int
	logger      *slog.Logger

	// mu orders Watch's registration against Close.
	mu       sync.Mutex
	closed   atomic.Bool
	stop     context.Context // done once Close is called
	stopAll  context.CancelFunc
	watchers sync.WaitGroup

	full storage.FullTracker // WriteHealth: the last write and lack of space
}

// WriteHealth reports, wrapping storage.ErrFull, that the last write
// failed because the database server has no space left (SQLSTATE 53100);
// nil once a write succeeded.
func (s *Store) WriteHealth() error { return s.full.WriteHealth() }

var _ storage.WriteProber = (*Store)(nil)

// ProbeWrite writes one small record (health/probe), whatever is there: a
// success clears the full state.
func (s *Store) ProbeWrite(ctx context.Context) error {
	return s.Apply(ctx, []storage.Op{{Key: storage.ProbeKey, Value: []byte(time.Now().UTC().Format(time.RFC3339)), Expect: storage.AnyVersion}})
}

// Open connects to the database at cfg.URL and brings its schema up to date.
// Replicas may open the same database at once. If the server cannot be
// reached, the error wraps storage.ErrUnavailable.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.URL == "" {
		return nil, errors.New("postgres: open: Config.URL is empty")
	}
	pcfg, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		// pgx's message quotes the string, which may hold a password.
		return nil, errors.New("postgres: open: Config.URL is not a valid connection string")
	}
	if cfg.MaxConns > 0 {
		pcfg.MaxConns = cfg.MaxConns
	}
	if cfg.ConnectTimeout > 0 {
		pcfg.ConnConfig.ConnectTimeout = cfg.ConnectTimeout
	} else if pcfg.ConnConfig.ConnectTimeout == 0 {
		pcfg.ConnConfig.ConnectTimeout = DefaultConnectTimeout
	}
	switch {
	case strings.Contains(cfg.URL, "target_session_attrs") || os.Getenv("PGTARGETSESSIONATTRS") != "":
		// The operator chose.
	case cfg.NoMigrate:
		// A read-only look (a restore's tombstones) must be current: the
		// primary, not a standby's lagging copy; it may use a role whose
		// transactions are read-only.
		pcfg.ConnConfig.ValidateConnect = pgconn.ValidateConnectTargetSessionAttrsPrimary
	default:
		// Custos writes: a server that takes no writes (a hot standby
		// after a failover, reached through a multi-host URL or stale DNS)
		// is skipped for the next host, as libpq's
		// target_session_attrs=read-write does, instead of serving stale
		// records and failing every write. The watcher's connections too.
		pcfg.ConnConfig.ValidateConnect = pgconn.ValidateConnectTargetSessionAttrsReadWrite
	}
	// Compare-and-swap relies on READ COMMITTED: a write that lost a race
	// matches no row (ErrConflict, retried). Under a stricter default set
	// for the role or database it would fail with a serialization error.
	// Set on each new connection, not in the startup packet, which a
	// connection pooler (PgBouncer) refuses with parameters it does not
	// know.
	pcfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, "SET default_transaction_isolation = 'read committed'")
		return err
	}
	// The pool pings a connection idle for a second before handing it
	// out, with the caller's context: without a bound, one to a server
	// gone silent (a failover without a reset) held a caller that has no
	// deadline (the scheduler) until TCP gave up, some 15 minutes.
	pcfg.PingTimeout = pingTimeout
	// And in the middle of a statement: the kernel gives a connection up
	// when what was sent stays unacknowledged for userTimeout (Linux).
	// Otherwise pgconn's own dialer: Go's keep-alive defaults (a probe
	// after 15 s idle, which also keeps NAT entries open).
	dialer := &net.Dialer{Control: setUserTimeout}
	pcfg.ConnConfig.DialFunc = dialer.DialContext
	pcfg.PrepareConn = func(_ context.Context, c *pgx.Conn) (bool, error) {
		// false: the pool destroys the connection and takes another.
		return connAlive(c.PgConn().Conn()), nil
	}
	ms, err := loadMigrations(migrationFiles)
	if err != nil {
		return nil, fmt.Errorf("postgres: open: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: open: %w", openError(ctx, err))
	}
	// NoMigrate writes nothing; a database never migrated fails at the
	// first read.
	if !cfg.NoMigrate {
		if err := migrate(ctx, pool, ms, cfg.Logger); err != nil {
			pool.Close()
			return nil, fmt.Errorf("postgres: open: migrate: %w", openError(ctx, err))
		}
	}
	s := &Store{
		pool:        pool,
		connConfig:  pcfg.ConnConfig,
		watchBuffer: cfg.WatchBuffer,
		logger:      cfg.Logger,
	}
	if s.watchBuffer <= 0 {
		s.watchBuffer = DefaultWatchBuffer
	}
	if s.logger == nil {
		s.logger = slog.Default()
	}
	s.stop, s.stopAll = context.WithCancel(context.Background())
	return s, nil
}

// Now returns the database server's clock (storage.Clock).
func (s *Store) Now(ctx context.Context) (time.Time, error) {
	if err := s.ready(ctx); err != nil {
		return time.Time{}, fmt.Errorf("postgres: now: %w", err)
	}
	var t time.Time
	if err := s.pool.QueryRow(ctx, `SELECT now()`).Scan(&t); err != nil {
		return time.Time{}, fmt.Errorf("postgres: now: %w", s.fail(ctx, err))
	}
	return t, nil
}

// Get returns the record stored under key, or an error wrapping
// storage.ErrNotFound.
func (s *Store) Get(ctx context.Context, key string) (storage.Record, error) {
	if err := validate.Key(key); err != nil {
		return storage.Record{}, fmt.Errorf("postgres: get: %w", err)
	}
	if err := s.ready(ctx); err != nil {
		return storage.Record{}, fmt.Errorf("postgres: get %q: %w", key, err)
	}
	rec := storage.Record{Key: key}
	var version int64
	err := s.pool.QueryRow(ctx, `SELECT value, version FROM custos_records WHERE key = $1`, key).
		Scan(&rec.Value, &version)
	if errors.Is(err, pgx.ErrNoRows) {
		return storage.Record{}, fmt.Errorf("postgres: get %q: %w", key, storage.ErrNotFound)
	}
	if err != nil {
		return storage.Record{}, fmt.Errorf("postgres: get %q: %w", key, s.fail(ctx, err))
	}
	rec.Version = uint64(version)
	return rec, nil
}

// Put stores value under key if the stored version equals expect (0: the key
// must not exist) and returns the new version; otherwise it returns an error
// wrapping storage.ErrConflict. A Put that fails with storage.ErrUnavailable
// may or may not have been stored; retrying it with the same expect is safe.
func (s *Store) Put(ctx context.Context, key string, value []byte, expect uint64) (uint64, error) {
	if err := validate.Key(key); err != nil {
		return 0, fmt.Errorf("postgres: put: %w", err)
	}
	if err := validate.Value(value); err != nil {
		return 0, fmt.Errorf("postgres: put %q: %w", key, err)
	}
	if err := s.ready(ctx); err != nil {
		return 0, fmt.Errorf("postgres: put %q: %w", key, err)
	}
	if value == nil {
		value = []byte{} // pgx sends a nil slice as NULL
	}
	var (
		version int64
		err     error
	)
	if expect == 0 {
		err = s.pool.QueryRow(ctx, `
			INSERT INTO custos_records (key, value, version)
			VALUES ($1, $2, nextval('custos_record_version'))
			ON CONFLICT (key) DO NOTHING
			RETURNING version`, key, value).Scan(&version)
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, fmt.Errorf("postgres: put %q: expected no record, found one: %w", key, storage.ErrConflict)
		}
	} else {
		err = s.pool.QueryRow(ctx, `
			UPDATE custos_records SET value = $2, version = nextval('custos_record_version')
			WHERE key = $1 AND version = $3
			RETURNING version`, key, value, dbVersion(expect)).Scan(&version)
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, fmt.Errorf("postgres: put %q: expected version %d, found another or none: %w", key, expect, storage.ErrConflict)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("postgres: put %q: %w", key, s.fail(ctx, err))
	}
	s.full.Note(nil)
	return uint64(version), nil
}

// Delete removes the record under key if its version equals expect. It
// returns an error wrapping storage.ErrNotFound if there is no record and
// storage.ErrConflict if the version differs.
func (s *Store) Delete(ctx context.Context, key string, expect uint64) error {
	if err := validate.Key(key); err != nil {
		return fmt.Errorf("postgres: delete: %w", err)
	}
	if err := s.ready(ctx); err != nil {
		return fmt.Errorf("postgres: delete %q: %w", key, err)
	}
	for {
		tag, err := s.pool.Exec(ctx, `DELETE FROM custos_records WHERE key = $1 AND version = $2`, key, dbVersion(expect))
		if err != nil {
			return fmt.Errorf("postgres: delete %q: %w", key, s.fail(ctx, err))
		}
		if tag.RowsAffected() == 1 {
			return nil
		}
		// Nothing deleted: tell a missing record from a changed one.
		var found int64
		err = s.pool.QueryRow(ctx, `SELECT version FROM custos_records WHERE key = $1`, key).Scan(&found)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return fmt.Errorf("postgres: delete %q: %w", key, storage.ErrNotFound)
		case err != nil:
			return fmt.Errorf("postgres: delete %q: %w", key, s.fail(ctx, err))
		case uint64(found) != expect:
			return fmt.Errorf("postgres: delete %q: expected version %d, found %d: %w", key, expect, found, storage.ErrConflict)
		}
		// The record with the expected version was committed after the
		// DELETE took its snapshot: the DELETE will see it now.
	}
}

// List returns at most limit records whose keys start with prefix and sort
// strictly after after, in ascending byte-wise key order.
func (s *Store) List(ctx context.Context, prefix, after string, limit int) ([]storage.Record, error) {
	if err := validate.Limit(limit); err != nil {
		return nil, fmt.Errorf("postgres: list %q: %w", prefix, err)
	}
	if err := s.ready(ctx); err != nil {
		return nil, fmt.Errorf("postgres: list %q: %w", prefix, err)
	}
	lo, hi, hasHi, ok := listRange(prefix, after)
	if !ok {
		return nil, nil
	}
	var (
		rows pgx.Rows
		err  error
	)
	if hasHi {
		rows, err = s.pool.Query(ctx, listBounded, lo, hi, limit)
	} else {
		rows, err = s.pool.Query(ctx, listUnbounded, lo, limit)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: list %q: %w", prefix, s.fail(ctx, err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (storage.Record, error) {
		var (
			r storage.Record
			v int64
		)
		err := row.Scan(&r.Key, &r.Value, &v)
		r.Version = uint64(v)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: list %q: %w", prefix, s.fail(ctx, err))
	}
	return out, nil
}

// List's queries. The explicit COLLATE "C" keeps the order byte-wise even
// if the column's collation were changed; as it is the column's own, the
// primary key's index serves both the range and the order.
const (
	listBounded = `SELECT key, value, version FROM custos_records
		WHERE key >= $1 COLLATE "C" AND key < $2 COLLATE "C"
		ORDER BY key COLLATE "C" LIMIT $3`
	listUnbounded = `SELECT key, value, version FROM custos_records
		WHERE key >= $1 COLLATE "C"
		ORDER BY key COLLATE "C" LIMIT $2`
)

// Close stops every watcher, waits for calls in flight and closes the
// pool. Every later call, including Close, returns an error wrapping
// storage.ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		return fmt.Errorf("postgres: close: %w", storage.ErrClosed)
	}
	s.closed.Store(true)
	s.mu.Unlock()
	s.stopAll()
	s.watchers.Wait()
	s.pool.Close()
	return nil
}

// ready reports storage.ErrClosed after Close, or the context's error.
func (s *Store) ready(ctx context.Context) error {
	if s.closed.Load() {
		return storage.ErrClosed
	}
	return ctx.Err()
}

// fail classifies an error from the pool; after Close, whatever the pool
// said, it is storage.ErrClosed.
func (s *Store) fail(ctx context.Context, err error) error {
	if s.closed.Load() {
		return fmt.Errorf("%w: %w", storage.ErrClosed, err)
	}
	sound := connectionsSound(err)
	err = classify(ctx, err)
	if errors.Is(err, storage.ErrFull) {
		// The server is up, its disk full: keep the connections.
		s.full.Note(err)
		return err
	}
	if ctx.Err() == nil && errors.Is(err, storage.ErrUnavailable) && !sound {
		// The server went away, or is going: its other connections are
		// most likely dead too. Drop them all, so that the first calls
		// once it is back do not meet them.
		s.pool.Reset()
	}
	return err
}

// dbVersion returns expect as the bigint the version column holds. Versions
// above math.MaxInt64 were never handed out, so they become -1, which
// matches no record.
func dbVersion(expect uint64) int64 {
	if expect > math.MaxInt64 {
		return -1
	}
	return int64(expect)
}

var _ storage.Applier = (*Store)(nil)

// Apply makes every write of ops in one transaction, sent as one pipelined
// batch, or, if a version check fails, none.
func (s *Store) Apply(ctx context.Context, ops []storage.Op) error {
	if err := validate.Ops(ops); err != nil {
		return fmt.Errorf("postgres: apply: %w", err)
	}
	if err := s.ready(ctx); err != nil {
		return fmt.Errorf("postgres: apply: %w", err)
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var b pgx.Batch
		for _, op := range ops {
			value := op.Value
			if value == nil {
				value = []byte{}
			}
			switch {
			case op.Delete && op.Expect == storage.AnyVersion:
				b.Queue(`DELETE FROM custos_records WHERE key = $1`, op.Key)
			case op.Delete:
				b.Queue(`DELETE FROM custos_records WHERE key = $1 AND version = $2`, op.Key, dbVersion(op.Expect))
			case op.Expect == storage.AnyVersion:
				// The version is drawn after the row lock on an update,
				// so a key's versions only grow, even when a
				// compare-and-swap writer committed in between.
				b.Queue(`
					INSERT INTO custos_records (key, value, version)
					VALUES ($1, $2, nextval('custos_record_version'))
					ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, version = nextval('custos_record_version')`, op.Key, value)
			case op.Expect == 0:
				b.Queue(`
					INSERT INTO custos_records (key, value, version)
					VALUES ($1, $2, nextval('custos_record_version'))
					ON CONFLICT (key) DO NOTHING`, op.Key, value)
			default:
				b.Queue(`
					UPDATE custos_records SET value = $2, version = nextval('custos_record_version')
					WHERE key = $1 AND version = $3`, op.Key, value, dbVersion(op.Expect))
			}
		}
		br := tx.SendBatch(ctx, &b)
		var conflict error
		for _, op := range ops {
			tag, err := br.Exec()
			if err != nil {
				br.Close()
				return err
			}
			if op.Expect != storage.AnyVersion && tag.RowsAffected() != 1 && conflict == nil {
				conflict = fmt.Errorf("%q: expected version %d, found another or none: %w", op.Key, op.Expect, storage.ErrConflict)
			}
		}
		if err := br.Close(); err != nil {
			return err
		}
		return conflict // rolls the transaction back
	})
	switch {
	case errors.Is(err, storage.ErrConflict):
		return fmt.Errorf("postgres: apply: %w", err)
	case err != nil:
		return fmt.Errorf("postgres: apply: %w", s.fail(ctx, err))
	}
	s.full.Note(nil)
	return nil
}

// TableBytes is the size of the records table with its indexes and TOAST
// (pg_total_relation_size), for sizing measurements.
func TableBytes(ctx context.Context, s *Store) (int64, error) {
	var n int64
	if err := s.pool.QueryRow(ctx, `SELECT pg_total_relation_size('custos_records')`).Scan(&n); err != nil {
		return 0, fmt.Errorf("postgres: table size: %w", err)
	}
	return n, nil
}

var _ storage.Snapshotter = (*Store)(nil)

// Snapshot calls fn for every record, in key order, from one read-only
// REPEATABLE READ transaction: a consistent view while writers carry on.
// Rows are streamed, never all held.
func (s *Store) Snapshot(ctx context.Context, fn func(storage.Record) error) error {
	if err := s.ready(ctx); err != nil {
		return fmt.Errorf("postgres: snapshot: %w", err)
	}
	var fnErr error
	err := pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT key, value, version FROM custos_records ORDER BY key COLLATE "C"`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				r storage.Record
				v int64
			)
			if err := rows.Scan(&r.Key, &r.Value, &v); err != nil {
				return err
			}
			r.Version = uint64(v)
			if fnErr = fn(r); fnErr != nil {
				return fnErr
			}
		}
		return rows.Err()
	})
	switch {
	case fnErr != nil:
		return fnErr
	case err != nil:
		return fmt.Errorf("postgres: snapshot: %w", s.fail(ctx, err))
	}
	return nil
}
