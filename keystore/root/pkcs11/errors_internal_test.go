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
