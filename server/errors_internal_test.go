package server

import (
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The BadRequest detail names the field at fault, wherever the keystore's
// "invalid argument: " stands in the message.
func TestInvalidArgumentDetailsNameTheField(t *testing.T) {
	for msg, want := range map[string]string{
		"update key tenants/a/keys/k: invalid argument: key.min_decryption_version 9 is above the primary version 2": "key.min_decryption_version",
		"invalid argument: key.password_policy applies to PASSWORD keys only":                                        "key.password_policy",
		"page_size 0 must be between 1 and 1000":                                                                     "page_size",
		"items[3].plaintext: empty":                                                                                  "items[3].plaintext",
		`update_mask: path "invalid argument: evil x" is not updatable`:                                              "update_mask",
	} {
		st, _ := status.FromError(withInvalidDetails(status.Error(codes.InvalidArgument, msg)))
		var got string
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
				got = br.GetFieldViolations()[0].GetField()
			}
		}
		if got != want {
			t.Errorf("%q: BadRequest field %q, want %q", msg, got, want)
		}
	}
}
