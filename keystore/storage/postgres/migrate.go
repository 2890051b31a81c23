package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrationFiles holds the schema, one numbered file per change: NNNN_name.sql,
// numbered from 1 without gaps. A released file is never edited; a change
// is a new file. Each must keep working with the previous release's code,
// since replicas are upgraded one at a time.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrationLock is the key of the transaction-scoped advisory lock that
// serialises migrations between replicas opening at once. Any constant
// works; this is "custos" in ASCII.
const migrationLock int64 = 0x637573746f73

// migration is one schema change.
type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations returns the embedded migrations in order, or an error if
// a file is misnamed or the numbers have a gap.
func loadMigrations(fsys fs.FS) ([]migration, error) {
	names, err := fs.Glob(fsys, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, name := range names { // fs.Glob returns sorted names
		base := path.Base(name)
		num, rest, ok := strings.Cut(strings.TrimSuffix(base, ".sql"), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || len(num) != 4 || rest == "" {
			return nil, fmt.Errorf("migration file %s: name is not NNNN_name.sql", base)
		}
		if v != len(ms)+1 {
			return nil, fmt.Errorf("migration file %s: number %d, want %d", base, v, len(ms)+1)
		}
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: base, sql: string(b)})
	}
	if len(ms) == 0 {
		return nil, errors.New("no migration files")
	}
	return ms, nil
}

// migrate applies the migrations the database lacks, in one transaction
// that holds migrationLock, and records each in custos_schema_migrations.
// Replicas opening at once wait for each other, and the later ones find
// nothing left to do. A database that a newer release has migrated further
// is accepted.
//
// While another session holds the lock (a replica migrating, or one hung
// with its transaction open), it logs through logger every
// migrationLockWait that it is waiting, and waits on until ctx ends.
func migrate(ctx context.Context, pool *pgxpool.Pool, ms []migration, logger *slog.Logger) error {
	for waited := time.Duration(0); ; waited += migrationLockWait {
		err := migrateOnce(ctx, pool, ms)
		var pgErr *pgconn.PgError // 55P03: lock_not_available, the lock_timeout
		if !errors.As(err, &pgErr) || pgErr.Code != "55P03" || ctx.Err() != nil {
			return err
		}
		if logger != nil {
			logger.Warn("postgres: waiting for the schema migration lock, which another session holds (a replica migrating, or one whose transaction hangs open)", "waited", (waited + migrationLockWait).String())
		}
	}
}

// migrationLockWait is how long one try waits for the migration lock.
var migrationLockWait = 10 * time.Second

func migrateOnce(ctx context.Context, pool *pgxpool.Pool, ms []migration) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", migrationLockWait.Milliseconds())); err != nil {
			return fmt.Errorf("set lock_timeout: %w", err)
		}
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
			return fmt.Errorf("take migration lock: %w", err)
		}
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = 0"); err != nil {
			return fmt.Errorf("set lock_timeout: %w", err)
		}
		// Created under the lock: two concurrent CREATE TABLE IF NOT
		// EXISTS can both try to create it and one fail.
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS custos_schema_migrations (
			version    integer PRIMARY KEY,
			name       text NOT NULL,
			applied_at timestamptz NOT NULL DEFAULT now()
		)`); err != nil {
			return fmt.Errorf("create custos_schema_migrations: %w", err)
		}
		rows, err := tx.Query(ctx, "SELECT version FROM custos_schema_migrations")
		if err != nil {
			return fmt.Errorf("read applied migrations: %w", err)
		}
		applied, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			return fmt.Errorf("read applied migrations: %w", err)
		}
		done := make(map[int]bool, len(applied))
		for _, v := range applied {
			done[int(v)] = true
		}
		for _, m := range ms {
			if done[m.version] {
				continue
			}
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return fmt.Errorf("apply migration %s: %w", m.name, err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO custos_schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name); err != nil {
				return fmt.Errorf("record migration %s: %w", m.name, err)
			}
		}
		return nil
	})
}
