package server

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/custos-kms/custos/keystore"

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

// A batch whose items meet one outage logs it once, with a count of the
// other items, not once per item; another failure is logged on its own.
func TestABatchLogsAnInternalFailureOncePerCall(t *testing.T) {
	var buf bytes.Buffer
	s := &Server{logger: slog.New(slog.NewJSONHandler(&buf, nil))}
	ctx := context.Background()
	statuses := itemStatuses{s: s}
	outage := fmt.Errorf("reload key tenants/a/keys/k: %w", keystore.ErrUnavailable)
	for range 1000 {
		if st := statuses.of(ctx, outage); codes.Code(st.GetCode()) != codes.Unavailable || strings.Contains(st.GetMessage(), "reload") {
			t.Fatalf("item status %v, want a bland UNAVAILABLE", st)
		}
	}
	other := fmt.Errorf("read key tenants/a/keys/k: %w", keystore.ErrUnavailable)
	statuses.of(ctx, other)
	statuses.of(ctx, keystore.ErrInvalidCiphertext) // a caller's error: not logged
	statuses.done(ctx)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d log lines, want 3 (each failure once, then the count):\n%s", len(lines), buf.String())
	}
	if !strings.Contains(lines[0], "reload key") || !strings.Contains(lines[1], "read key") || !strings.Contains(lines[2], `"items":999`) {
		t.Errorf("log lines:\n%s", buf.String())
	}
}
