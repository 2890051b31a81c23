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

// A batch whose items meet one outage logs it once, with the number of
// items and the call's request id, not once per item; another failure gets
// its own line, and a caller's error none.
func TestABatchLogsEachInternalFailureOnce(t *testing.T) {
	var buf bytes.Buffer
	s := &Server{logger: slog.New(slog.NewJSONHandler(&buf, nil))}
	ref := keystore.KeyRef{Tenant: "a", Key: "k"}
	ctx := context.WithValue(context.Background(), callKey{}, &call{rid: "rid-1", key: ref})
	statuses := newItemStatuses(ctx, s)
	outage := fmt.Errorf("reload key tenants/a/keys/k: %w", keystore.ErrUnavailable)
	for range 1000 {
		if st := statuses.of(outage); codes.Code(st.GetCode()) != codes.Unavailable || strings.Contains(st.GetMessage(), "reload") {
			t.Fatalf("item status %v, want a bland UNAVAILABLE", st)
		}
	}
	statuses.of(fmt.Errorf("read key tenants/a/keys/k: %w", keystore.ErrUnavailable))
	statuses.of(keystore.ErrInvalidCiphertext) // a caller's error: not logged
	if buf.Len() != 0 {
		t.Fatalf("logged before the batch ended: %s", buf.String())
	}
	statuses.done()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d log lines, want 2 (each failure once):\n%s", len(lines), buf.String())
	}
	for i, want := range []string{`"items":1000`, `"items":1`} {
		if !strings.Contains(lines[i], want) || !strings.Contains(lines[i], `"request_id":"rid-1"`) || !strings.Contains(lines[i], `"key":"tenants/a/keys/k"`) {
			t.Errorf("line %d: %s; want %s, the request id and the key", i, lines[i], want)
		}
	}
}

// Past maxFailureLines distinct failures, the rest are counted on one line.
func TestABatchBoundsItsFailureLines(t *testing.T) {
	var buf bytes.Buffer
	s := &Server{logger: slog.New(slog.NewJSONHandler(&buf, nil))}
	ctx := context.WithValue(context.Background(), callKey{}, &call{rid: "rid-2"})
	statuses := newItemStatuses(ctx, s)
	for i := range 100 {
		statuses.of(fmt.Errorf("failure %d: %w", i, keystore.ErrUnavailable))
	}
	statuses.done()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != maxFailureLines+1 || !strings.Contains(lines[maxFailureLines], `"items":90`) {
		t.Fatalf("%d lines, last %s; want %d, the last counting 90 items", len(lines), lines[len(lines)-1], maxFailureLines+1)
	}
}

// An internal failure's log line, with the detail its caller does not
// see, names the call's request id, so that it can be joined with the
// call's own log line and the x-request-id a caller reports.
func TestAFailureLineNamesItsRequest(t *testing.T) {
	var buf bytes.Buffer
	s := &Server{logger: slog.New(slog.NewJSONHandler(&buf, nil))}
	ctx := context.WithValue(context.Background(), callKey{}, &call{rid: "rid-9"})
	s.toError(ctx, fmt.Errorf("unwrap tenant a: %w: MARKER", keystore.ErrUnavailable))
	if line := buf.String(); !strings.Contains(line, "MARKER") || !strings.Contains(line, `"request_id":"rid-9"`) {
		t.Fatalf("logged %s; want the detail and the request id", line)
	}
}
