package postgres

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/custos-kms/custos/keystore/storage"
)

func TestClassify(t *testing.T) {
	live := context.Background()
	cancelled, cancel := context.WithCancel(live)
	cancel()
	expired, cancel2 := context.WithTimeout(live, 0)
	defer cancel2()

	pgErr := func(code string) error { return fmt.Errorf("query: %w", &pgconn.PgError{Code: code}) }
	for _, c := range []struct {
		name    string
		ctx     context.Context
		err     error
		want    []error
		notWant []error
	}{
		{"connection refused", live, &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, []error{storage.ErrUnavailable}, nil},
		{"connection reset", live, fmt.Errorf("read: %w", syscall.ECONNRESET), []error{storage.ErrUnavailable}, nil},
		{"unexpected EOF", live, fmt.Errorf("receive message: %w", io.ErrUnexpectedEOF), []error{storage.ErrUnavailable}, nil},
		{"a closed connection", live, pgconn.ErrConnClosed, []error{storage.ErrUnavailable}, nil},
		{"admin_shutdown", live, pgErr("57P01"), []error{storage.ErrUnavailable}, nil},
		{"cannot_connect_now", live, pgErr("57P03"), []error{storage.ErrUnavailable}, nil},
		{"connection_failure", live, pgErr("08006"), []error{storage.ErrUnavailable}, nil},
		{"too_many_connections", live, pgErr("53300"), []error{storage.ErrUnavailable}, nil},
		{"read_only_sql_transaction", live, pgErr("25006"), []error{storage.ErrUnavailable}, nil},
		{"serialization_failure", live, pgErr("40001"), []error{storage.ErrUnavailable}, nil},
		{"deadlock_detected", live, pgErr("40P01"), []error{storage.ErrUnavailable}, nil},
		{"statement_timeout", live, pgErr("57014"), []error{storage.ErrUnavailable}, nil},
		{"lock_timeout", live, pgErr("55P03"), []error{storage.ErrUnavailable}, nil},
		{"invalid_password is configuration, not an outage", live, pgErr("28P01"), nil, []error{storage.ErrUnavailable}},
		{"a missing database is configuration, not an outage", live, pgErr("3D000"), nil, []error{storage.ErrUnavailable}},
		{"a syntax error", live, pgErr("42601"), nil, []error{storage.ErrUnavailable}},
		{"not UTF-8", live, pgErr("22021"), []error{storage.ErrInvalid}, []error{storage.ErrUnavailable}},
		{"cancelled", cancelled, context.Canceled, []error{context.Canceled}, []error{storage.ErrUnavailable}},
		{"cancelled mid-statement", cancelled, errors.New("conn closed"), []error{context.Canceled}, []error{storage.ErrUnavailable}},
		{"deadline passed", expired, fmt.Errorf("timeout: %w", context.DeadlineExceeded), []error{context.DeadlineExceeded, storage.ErrUnavailable}, nil},
		{"deadline passed while connecting", expired, &net.OpError{Op: "dial", Err: errors.New("i/o timeout")}, []error{context.DeadlineExceeded, storage.ErrUnavailable}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := classify(c.ctx, c.err)
			if !errors.Is(got, c.err) {
				t.Errorf("classify = %v, which does not wrap the original error", got)
			}
			for _, w := range c.want {
				if !errors.Is(got, w) {
					t.Errorf("classify = %v, want it to wrap %v", got, w)
				}
			}
			for _, w := range c.notWant {
				if errors.Is(got, w) {
					t.Errorf("classify = %v, want it not to wrap %v", got, w)
				}
			}
		})
	}
}

// A server short of resources is up: its connections are kept (dropping
// them all would send each back into the queue for the scarce slots), as
// they are when one statement was rolled back for a passing reason (a
// timeout the operator set, a deadlock); one that went away is not.
func TestOnlyAServerThatWentAwayCostsThePool(t *testing.T) {
	for code, sound := range map[string]bool{"53300": true, "53200": true, "40001": true, "40P01": true, "57014": true, "55P03": true,
		"08006": false, "57P01": false, "25006": false} {
		err := fmt.Errorf("query: %w", &pgconn.PgError{Code: code})
		if got := connectionsSound(err); got != sound {
			t.Errorf("SQLSTATE %s: connections sound %v, want %v", code, got, sound)
		}
		if !unavailable(err) {
			t.Errorf("SQLSTATE %s is not an outage to the caller", code)
		}
	}
}

// Once open, a TLS refusal (a certificate expired, a failover to another
// host name) is an outage like any connect failure: classify keeps it
// unavailable, so cached keys keep serving; only Open takes it as
// configuration.
func TestATLSRefusalAfterOpenIsAnOutage(t *testing.T) {
	refused := &net.OpError{Op: "remote error", Err: x509.UnknownAuthorityError{}}
	if err := classify(context.Background(), refused); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("classify of a TLS refusal on a running store: %v, want unavailable", err)
	}
	if err := openError(context.Background(), refused); errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("openError of a TLS refusal: %v, want a configuration error", err)
	}
}
