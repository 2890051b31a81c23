//go:build cgo

package pkcs11

import (
	"context"
	"errors"
	"fmt"

	p11 "github.com/miekg/pkcs11"

	"github.com/custos-kms/custos/keystore/root"
)

// staleCodes mean the device, slot, session, login or object handle the
// provider holds went away: reset and find everything again.
var staleCodes = []uint{
	p11.CKR_CRYPTOKI_NOT_INITIALIZED,
	p11.CKR_DEVICE_ERROR,
	p11.CKR_DEVICE_MEMORY,
	p11.CKR_DEVICE_REMOVED,
	p11.CKR_TOKEN_NOT_PRESENT,
	p11.CKR_TOKEN_NOT_RECOGNIZED,
	p11.CKR_SLOT_ID_INVALID,
	p11.CKR_SESSION_CLOSED,
	p11.CKR_SESSION_HANDLE_INVALID,
	p11.CKR_SESSION_COUNT,
	p11.CKR_USER_NOT_LOGGED_IN,
	p11.CKR_KEY_HANDLE_INVALID,
	p11.CKR_OBJECT_HANDLE_INVALID,
	p11.CKR_GENERAL_ERROR,
	p11.CKR_FUNCTION_CANCELED,
	p11.CKR_HOST_MEMORY,
}

// notAuthenticCodes are a token's ways of refusing a GCM ciphertext.
var notAuthenticCodes = []uint{
	p11.CKR_ENCRYPTED_DATA_INVALID,
	p11.CKR_ENCRYPTED_DATA_LEN_RANGE,
	p11.CKR_DATA_INVALID,
	p11.CKR_DATA_LEN_RANGE,
}

// pinCodes mean the token refused the PIN: a misconfiguration.
var pinCodes = []uint{
	p11.CKR_PIN_INCORRECT,
	p11.CKR_PIN_INVALID,
	p11.CKR_PIN_LEN_RANGE,
	p11.CKR_PIN_EXPIRED,
	p11.CKR_PIN_LOCKED,
	p11.CKR_USER_PIN_NOT_INITIALIZED,
}

func hasCode(err error, codes []uint) bool {
	var e p11.Error
	if !errors.As(err, &e) {
		return false
	}
	for _, c := range codes {
		if uint(e) == c {
			return true
		}
	}
	return false
}

func isStale(err error) bool {
	var nf errTokenNotFound
	return hasCode(err, staleCodes) || errors.As(err, &nf)
}

func isNotAuthentic(err error) bool { return hasCode(err, notAuthenticCodes) }

// isAmbiguous reports codes a token may give for a failed GCM tag or for a
// fault; the caller probes the token to tell which.
func isAmbiguous(err error) bool {
	return hasCode(err, []uint{p11.CKR_GENERAL_ERROR, p11.CKR_FUNCTION_FAILED})
}

// classify maps what an operation returned to the root sentinels.
func classify(what string, err error) error {
	switch {
	case errors.Is(err, root.ErrNotAuthentic), errors.Is(err, errClosed):
		return err
	case isStale(err):
		return fmt.Errorf("pkcs11 root: %s: %w: %w", what, root.ErrUnavailable, err)
	case hasCode(err, pinCodes):
		return fmt.Errorf("pkcs11 root: %s: the token refused the PIN (check the PIN file or variable): %w", what, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return ctxError(what, err)
	case isAmbiguous(err):
		// An unwrap has told a failed tag from a fault by now (probe);
		// anywhere else (a wrap, the probe itself) no blob is to blame.
		return fmt.Errorf("pkcs11 root: %s: %w: %w", what, root.ErrUnavailable, err)
	}
	return fmt.Errorf("pkcs11 root: %s: %w", what, err)
}

// ctxError reports a context that ended first: a deadline is retryable
// (the token did not answer in time), a cancellation is the caller's.
func ctxError(what string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("pkcs11 root: %s: %w: %w", what, root.ErrUnavailable, err)
	}
	return fmt.Errorf("pkcs11 root: %s: %w", what, err)
}
