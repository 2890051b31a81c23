package postgres

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/custos-kms/custos/keystore/storage"
)

// notifyChannel is the channel the trigger in migrations/0002_notify.sql
// notifies.
const notifyChannel = "custos_changes"

// Watcher timing. Variables so that tests can shorten them.
var (
	// idleCheck is how long a watcher waits for a notification before it
	// pings the server, to notice a connection that died silently (a
	// network partition sends no reset).
	// With pingTimeout, it bounds how long a dead connection goes
	// unnoticed (every cached entry is dropped once listening again).
	idleCheck = 5 * time.Second
	// pingTimeout bounds that ping: long enough that a busy but healthy
	// server's stall does not cost every replica its caches.
	pingTimeout = 5 * time.Second
	// reconnectMin and reconnectMax bound the wait between attempts to
	// reconnect; it doubles from one to the other.
	reconnectMin = 50 * time.Millisecond
	reconnectMax = 2 * time.Second
)

// Watch delivers a storage.Change for every insert, update and delete that
// any process sharing the database commits, including this one, until ctx
// is done or the Store is closed; then it closes the channel.
//
// Each Watch has its own connection, outside the pool, that LISTENs. When
// Watch returns without error the connection is normally listening already,
// so every change committed after that is delivered. If the connection is
// lost, the watcher reconnects with backoff and then sends Change{Key: ""},
// since changes made meanwhile were missed. A reader that falls more than
// the channel's capacity behind misses keys and then gets Change{Key: ""}
// once it catches up; until then the watcher waits for it, so the reader
// should keep receiving.
//
// Watch fails only after Close (storage.ErrClosed) or when ctx is already
// done; an unreachable server is retried in the background. LISTEN needs a
// session of its own, so the URL must not lead through a pooler in
// transaction mode.
func (s *Store) Watch(ctx context.Context) (<-chan storage.Change, error) {
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		return nil, fmt.Errorf("postgres: watch: %w", storage.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("postgres: watch: %w", err)
	}
	s.watchers.Add(1)
	s.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	stopOnClose := context.AfterFunc(s.stop, cancel)
	// The first connection is made here, so that changes committed after
	// Watch returns are seen; if it fails, the watcher keeps trying.
	conn, err := s.listen(ctx)
	if err != nil {
		if ctx.Err() != nil {
			stopOnClose()
			cancel()
			s.watchers.Done()
			return nil, fmt.Errorf("postgres: watch: %w", s.fail(ctx, err))
		}
		s.logger.Warn("postgres: watch: cannot listen yet; retrying", "err", err)
	}
	ch := make(chan storage.Change, s.watchBuffer)
	go func() {
		defer s.watchers.Done()
		defer stopOnClose()
		defer cancel()
		defer close(ch)
		s.watch(ctx, conn, ch)
	}()
	return ch, nil
}

// watch forwards notifications from conn to ch and reconnects after losing
// conn, until ctx is done. conn may be nil: not connected yet.
func (s *Store) watch(ctx context.Context, conn *pgx.Conn, ch chan<- storage.Change) {
	missed := conn == nil // changes may have gone by unseen
	wait := reconnectMin
	var lastWarn time.Time
	for {
		if conn == nil {
			var err error
			if conn, err = s.listen(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				// Said at least every minute while it lasts: meanwhile
				// this replica hears of no other's changes, and serves
				// what it cached until its TTL.
				if time.Since(lastWarn) >= time.Minute {
					lastWarn = time.Now()
					s.logger.Warn("postgres: watch: cannot listen again; cached entries serve until their TTL, other replicas' changes unseen", "err", err)
				}
				// Full jitter over the upper half, so replicas that lost
				// the server together do not reconnect in step.
				d := wait/2 + rand.N(wait/2+1)
				wait = min(2*wait, reconnectMax)
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
				continue
			}
			wait, lastWarn = reconnectMin, time.Time{}
			if missed {
				s.logger.Info("postgres: watch: listening again; every cached entry is suspect")
			}
		}
		if missed {
			if !send(ctx, ch, storage.Change{}) {
				closeConn(conn)
				return
			}
			missed = false
		}
		err := s.forward(ctx, conn, ch)
		closeConn(conn)
		conn = nil
		if ctx.Err() != nil {
			return
		}
		s.logger.Warn("postgres: watch: connection lost; reconnecting", "err", err)
		missed = true
	}
}

// listen opens a connection and LISTENs on notifyChannel. The connect is
// bounded by the configured connect timeout, the LISTEN by pingTimeout: a
// server that stops answering in between must not hold Watch (a server's
// start) or the reconnect loop until TCP gives up.
func (s *Store) listen(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, s.connConfig)
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, pingTimeout)
	_, err = conn.Exec(lctx, "LISTEN "+notifyChannel)
	cancel()
	if err != nil {
		closeConn(conn)
		return nil, err
	}
	return conn, nil
}

// forward sends a Change to ch for each notification on conn until ctx is
// done or conn fails, and returns the error that stopped it.
func (s *Store) forward(ctx context.Context, conn *pgx.Conn, ch chan<- storage.Change) error {
	for {
		waitCtx, cancel := context.WithTimeout(ctx, idleCheck)
		n, err := conn.WaitForNotification(waitCtx)
		cancel()
		if n != nil && !deliver(ctx, ch, parsePayload(n.Payload)) {
			return ctx.Err()
		}
		switch {
		case err == nil:
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err):
			// Quiet for idleCheck: make sure the connection is still there.
			// A timed-out wait leaves it usable.
			pingCtx, cancel := context.WithTimeout(ctx, pingTimeout)
			err = conn.Ping(pingCtx)
			cancel()
			if err == nil {
				continue
			}
		}
		return err
	}
}

// deliver sends c to ch if there is room. If not, the reader is behind: c
// is dropped, and deliver waits until ch has room for Change{Key: ""},
// which tells the reader to drop everything it cached. It returns false if
// ctx is done first.
func deliver(ctx context.Context, ch chan<- storage.Change, c storage.Change) bool {
	select {
	case ch <- c:
		return true
	default:
	}
	return send(ctx, ch, storage.Change{})
}

// send sends c to ch, or returns false if ctx is done first.
func send(ctx context.Context, ch chan<- storage.Change, c storage.Change) bool {
	select {
	case ch <- c:
		return true
	case <-ctx.Done():
		return false
	}
}

// closeConn closes conn, giving up after a second on a server that does not
// answer.
func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	conn.Close(ctx)
}

// parsePayload reads a notification: "<version> <key>" (migration 0003), or
// a bare key from a server still on the older trigger (version unknown).
func parsePayload(p string) storage.Change {
	if v, key, ok := strings.Cut(p, " "); ok {
		if n, err := strconv.ParseUint(v, 10, 64); err == nil {
			return storage.Change{Key: key, Version: n}
		}
	}
	return storage.Change{Key: p}
}
