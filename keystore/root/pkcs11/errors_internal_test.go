//go:build cgo

package pkcs11

import (
	"errors"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/custos-kms/custos/keystore/root"
)

// An unwrap whose failure was ambiguous and whose probe failed too is
// unavailable whatever the probe's code (the token is at fault, not the
// blob); a stale code still means reset and retry.
func TestAFailedProbeIsUnavailable(t *testing.T) {
	for _, code := range []uint{p11.CKR_FUNCTION_FAILED, p11.CKR_GENERAL_ERROR, p11.CKR_MECHANISM_INVALID} {
		err := classify("unwrap", probeFailed(p11.Error(code)))
		if !errors.Is(err, root.ErrUnavailable) || errors.Is(err, root.ErrNotAuthentic) {
			t.Errorf("probe failed with %v: %v, want ErrUnavailable", p11.Error(code), err)
		}
	}
	if !isStale(probeFailed(p11.Error(p11.CKR_SESSION_HANDLE_INVALID))) {
		t.Error("a probe that met a stale session is not taken as stale")
	}
}

// A wrap (or any call but an unwrap, which probes) that fails with a
// general error is the token's fault: unavailable, to retry, not a
// misconfiguration answered INTERNAL.
func TestAGeneralFailureOutsideAnUnwrapIsUnavailable(t *testing.T) {
	for _, code := range []uint{p11.CKR_FUNCTION_FAILED, p11.CKR_GENERAL_ERROR} {
		err := classify("wrap", p11.Error(code))
		if !errors.Is(err, root.ErrUnavailable) || errors.Is(err, root.ErrNotAuthentic) {
			t.Errorf("wrap failed with %v: %v, want ErrUnavailable", p11.Error(code), err)
		}
	}
	if err := classify("wrap", p11.Error(p11.CKR_KEY_FUNCTION_NOT_PERMITTED)); errors.Is(err, root.ErrUnavailable) {
		t.Errorf("a key that does not allow the operation: %v, want a misconfiguration, not unavailable", err)
	}
}
