package postgres

import (
	"testing"
	"time"
)

// SetWatchTiming shortens the watchers' timing until t ends. Call it before
// opening any Store in t, so that the Stores are closed, and their watchers
// stopped, before it is restored. Tests that call it must not run in
// parallel.
func SetWatchTiming(t *testing.T, idle, ping, maxBackoff time.Duration) {
	oldIdle, oldPing, oldMax := idleCheck, pingTimeout, reconnectMax
	idleCheck, pingTimeout, reconnectMax = idle, ping, maxBackoff
	t.Cleanup(func() { idleCheck, pingTimeout, reconnectMax = oldIdle, oldPing, oldMax })
}

// Migrations returns the embedded migrations' versions and file names.
func Migrations() (versions []int, names []string, err error) {
	ms, err := loadMigrations(migrationFiles)
	for _, m := range ms {
		versions = append(versions, m.version)
		names = append(names, m.name)
	}
	return versions, names, err
}

// List's queries, for EXPLAIN.
const (
	ListQueryBounded   = listBounded
	ListQueryUnbounded = listUnbounded
)

// NoteFull marks s as full, as a write that failed for lack of space does.
func NoteFull(s *Store, err error) { s.full.Note(err) }

// MigrationLock is the advisory lock's key migrations take.
const MigrationLock = migrationLock

// SetMigrationLockWait shortens how long one try waits for the migration
// lock until t ends. Tests that call it must not run in parallel.
func SetMigrationLockWait(t *testing.T, d time.Duration) {
	old := migrationLockWait
	migrationLockWait = d
	t.Cleanup(func() { migrationLockWait = old })
}
