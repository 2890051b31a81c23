package postgres

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/custos-kms/custos/keystore/storage"
)

// classify returns err wrapped so that callers can test it with errors.Is:
//
//   - the context's error when ctx is done, and also storage.ErrUnavailable
//     when its deadline passed: the storage did not answer in time, which a
//     caller handles as an outage (serve from cache, retry later);
//   - storage.ErrUnavailable when the server cannot be reached or dropped
//     the connection (see unavailable);
//   - storage.ErrInvalid when the server rejected a string as not UTF-8;
//   - err alone otherwise.
func classify(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		if errors.Is(ctxErr, context.DeadlineExceeded) {
			if errors.Is(err, ctxErr) {
				return fmt.Errorf("%w: %w", storage.ErrUnavailable, err)
			}
			return fmt.Errorf("%w: %w: %w", storage.ErrUnavailable, ctxErr, err)
		}
		if errors.Is(err, ctxErr) {
			return err
		}
		return fmt.Errorf("%w: %w", ctxErr, err)
	}
	var full *pgconn.PgError
	if errors.As(err, &full) && (full.Code == "53100" || storage.NoSpace(err)) { // disk_full
		return fmt.Errorf("%w: %w: %w", storage.ErrFull, storage.ErrUnavailable, err)
	}
	if unavailable(err) {
		return fmt.Errorf("%w: %w", storage.ErrUnavailable, err)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "22021" { // character_not_in_repertoire
		return fmt.Errorf("%w: %w", storage.ErrInvalid, err)
	}
	return err
}

// connectionsSound reports an error of a server that is up and whose
// connections are sound: short of resources (SQLSTATE class 53: too many
// connections, out of memory), where dropping them all would only send
// every one back into the queue for the scarce slots; or one statement
// rolled back for a passing reason (a serialization failure, a deadlock, a
// statement or lock timeout), where the next statement on the same
// connection goes through.
func connectionsSound(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch code := pgErr.Code; {
	case strings.HasPrefix(code, "53"), rolledBack(code):
		return true
	}
	return false
}

// rolledBack reports a SQLSTATE of a statement the server rolled back for
// a passing reason: serialization_failure, deadlock_detected,
// query_canceled (statement_timeout) and lock_not_available (lock_timeout).
func rolledBack(code string) bool {
	return code == "40001" || code == "40P01" || code == "57014" || code == "55P03"
}

// unavailable reports whether err means the server is down, unreachable,
// shutting down, starting up, out of connections or read-only (a standby
// after a failover), or that it rolled the statement back for a passing
// reason (a serialization failure or deadlock, a statement or lock
// timeout the operator set): a failure that a later attempt may not meet. A
// statement whose connection broke may or may not have taken effect;
// compare-and-swap makes the retry safe, as it then reports a conflict.
func unavailable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// The server answered: its SQLSTATE says whether it can serve.
		// Authentication failures (28xxx) and a missing database (3D000)
		// are configuration errors, not outages.
		code := pgErr.Code
		switch {
		case strings.HasPrefix(code, "08"): // connection_exception
			return true
		case strings.HasPrefix(code, "53"): // insufficient_resources, too_many_connections
			return true
		case strings.HasPrefix(code, "57P"): // admin_shutdown, crash_shutdown, cannot_connect_now, ...
			return true
		case code == "25006": // read_only_sql_transaction
			return true
		case rolledBack(code):
			return true
		}
		return false
	}
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return true
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case errors.As(err, &connectErr), errors.As(err, &netErr):
		return true
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, pgconn.ErrConnClosed):
		return true
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return true
	}
	return false
}

// openError classifies a failure of Open: as classify does, except that a
// connection refused over TLS settings is a configuration error, as a
// wrong password is. Once the store is open the same refusal (a database
// certificate expired, a failover to a host of another name) is an outage
// like any other connect failure: cached keys keep serving meanwhile.
func openError(ctx context.Context, err error) error {
	if ctx.Err() == nil && tlsMismatch(err) {
		return err
	}
	return classify(ctx, err)
}

// tlsMismatch reports a connection refused over TLS settings, which a
// retry does not change: a certificate the configured roots or name do
// not verify, or (sslmode=require) a server without TLS, which pgconn
// reports only in words.
func tlsMismatch(err error) bool {
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verify *tls.CertificateVerificationError
	return errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &verify) ||
		strings.Contains(err.Error(), "server refused TLS connection")
}
