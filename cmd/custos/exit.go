package main

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc/codes"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/backup"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/bbolt"
)

// Exit codes by class of failure (docs/cli.md), so that scripts can tell
// them apart.
const (
	exitOther        = 1
	exitUsage        = 2 // unknown flag or command, missing or bad argument
	exitNotFound     = 3
	exitPermission   = 4 // permission denied, not authenticated
	exitInvalid      = 5 // invalid argument, ciphertext or backup not authentic
	exitPrecondition = 6 // failed precondition (a disabled version, a deleted tenant), already exists
	exitUnavailable  = 7 // unavailable, timed out, resource exhausted
)

// errRetryLater marks a failure the server says will pass (503, 429).
var errRetryLater = errors.New("retry later")

// usageError marks a usage mistake.
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// exitCode is the exit code of err (0 for none).
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var u usageError
	if errors.As(err, &u) {
		return exitUsage
	}
	if errors.Is(err, backup.ErrDamaged) || errors.Is(err, backup.ErrUnknownFormat) {
		return exitInvalid
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, root.ErrUnavailable) || errors.Is(err, storage.ErrUnavailable) ||
		errors.Is(err, keystore.ErrUnavailable) || errors.Is(err, errRetryLater) || errors.Is(err, backup.ErrRestoreRunning) {
		// A command on the store directly (the root or the store is down,
		// as the root's, the store's or the keystore's own error says), or
		// a server's "retry later".
		return exitUnavailable
	}
	if errors.Is(err, backup.ErrRestoring) || errors.Is(err, backup.ErrTargetNotEmpty) || errors.Is(err, backup.ErrTooOld) ||
		errors.Is(err, backup.ErrServersRunning) || errors.Is(err, bbolt.ErrLocked) {
		// Each says what to do first: a newer backup (or --max-age), the
		// servers (or the one holding the bbolt file) stopped.
		return exitPrecondition
	}
	if errors.Is(err, context.Canceled) {
		return exitOther // the user's own interrupt (Ctrl-C) is no outage to retry
	}
	var ce *client.Error
	if !errors.As(err, &ce) {
		if isCobraUsage(err) {
			return exitUsage
		}
		return exitOther
	}
	switch ce.Code {
	case codes.NotFound:
		return exitNotFound
	case codes.PermissionDenied, codes.Unauthenticated:
		return exitPermission
	case codes.InvalidArgument, codes.OutOfRange:
		return exitInvalid
	case codes.FailedPrecondition, codes.AlreadyExists:
		return exitPrecondition
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted:
		// ABORTED: a change that lost to concurrent ones too often; as
		// the others here, retrying may succeed.
		return exitUnavailable
	case codes.Canceled:
		return exitOther // the caller gave up: an interrupt (Ctrl-C), no outage to retry
	}
	return exitOther
}

// isCobraUsage recognises cobra's own usage errors (argument counts,
// unknown commands, required flags), which it does not type.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "accepts ", "requires at least", "requires at most", "required flag(s)"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}
