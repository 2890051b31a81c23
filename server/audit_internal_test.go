package server

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/custos-kms/custos/keystore/audit"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// The event's time and duration are set in place (one allocation with the
// event): the time must be what timestamppb.New gives, the duration a
// valid one (normalized as durationpb.New's) of the call's length.
func TestAnEventsTimeAndDurationAreTheWellKnownTypes(t *testing.T) {
	start := time.Now().Add(-1500 * time.Millisecond)
	before := time.Since(start)
	ev := auditEvent(context.Background(), "rid-1", "/custos.v1.CryptoService/Encrypt", &call{}, start,
		&custosv1.EncryptRequest{}, &custosv1.EncryptResponse{KeyVersion: 3}, nil)
	after := time.Since(start)
	if !proto.Equal(ev.GetTime(), timestamppb.New(start)) {
		t.Errorf("time %v, want %v", ev.GetTime(), timestamppb.New(start))
	}
	if err := ev.GetDuration().CheckValid(); err != nil {
		t.Fatalf("duration %v: %v", ev.GetDuration(), err)
	}
	if d := ev.GetDuration().AsDuration(); d < before || d > after {
		t.Errorf("duration %v, want between %v and %v", d, before, after)
	}
	if !slices.Equal(ev.GetKeyVersions(), []uint32{3}) || ev.GetRequestId() != "rid-1" {
		t.Errorf("event %v", ev)
	}
}

func TestUsageReadsVersionsAndItemCounts(t *testing.T) {
	failed := &statuspb.Status{Code: int32(codes.InvalidArgument)}
	result := func(v uint32, st *statuspb.Status) *custosv1.EncryptBatchResponse_Result {
		return &custosv1.EncryptBatchResponse_Result{KeyVersion: v, Status: st}
	}
	for _, tc := range []struct {
		name         string
		req, resp    any
		versions     []uint32
		ok, failures uint32
	}{
		{"single call", &custosv1.EncryptRequest{}, &custosv1.EncryptResponse{KeyVersion: 7}, []uint32{7}, 0, 0},
		{"no version", &custosv1.CreateTenantRequest{}, &custosv1.CreateTenantResponse{}, nil, 0, 0},
		{"version in the request", &custosv1.DisableKeyVersionRequest{Version: 4}, &custosv1.DisableKeyVersionResponse{}, []uint32{4}, 0, 0},
		{"batch: deduplicated, sorted, failures counted", &custosv1.EncryptBatchRequest{},
			&custosv1.EncryptBatchResponse{Results: []*custosv1.EncryptBatchResponse_Result{
				result(3, okStatus), result(1, okStatus), result(3, okStatus), result(0, failed),
			}}, []uint32{1, 3}, 3, 1},
		{"more versions than the event's room", &custosv1.EncryptBatchRequest{},
			&custosv1.EncryptBatchResponse{Results: []*custosv1.EncryptBatchResponse_Result{
				result(5, okStatus), result(2, okStatus), result(9, okStatus), result(1, okStatus),
			}}, []uint32{1, 2, 5, 9}, 4, 0},
		{"blind index entries", &custosv1.BlindIndexRequest{},
			&custosv1.BlindIndexResponse{Entries: []*custosv1.BlindIndexResponse_Entry{{KeyVersion: 2}, {KeyVersion: 1}, {KeyVersion: 2}}}, []uint32{1, 2}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var room [2]uint32
			versions, ok, failures := usage(tc.req, tc.resp, room[:0])
			if !slices.Equal(versions, tc.versions) || (versions == nil) != (tc.versions == nil) || ok != tc.ok || failures != tc.failures {
				t.Errorf("usage = %v, %d ok, %d failed; want %v, %d, %d", versions, ok, failures, tc.versions, tc.ok, tc.failures)
			}
		})
	}
}

// Identities are recorded whole up to the longest SPIFFE ID (2048 bytes):
// two that differ only past their first kilobyte stay two.
func TestAnEventRecordsTheLongestSPIFFEIDWhole(t *testing.T) {
	long := "spiffe://example.org/" + strings.Repeat("a", 2048-len("spiffe://example.org/"))
	ev := auditEvent(context.Background(), "rid", "/custos.v1.CryptoService/Encrypt", &call{identity: long}, time.Now(),
		&custosv1.EncryptRequest{}, &custosv1.EncryptResponse{}, nil)
	if ev.GetIdentity() != long {
		t.Fatalf("identity recorded as %d bytes, want all %d", len(ev.GetIdentity()), len(long))
	}
}

// An identity is recorded as valid UTF-8 whatever its length or bytes: a
// long common name cut inside a character, or one that is not UTF-8, would
// make an event protobuf cannot encode, and so a call that cannot be
// answered.
func TestAnEventsIdentityIsAlwaysValidUTF8(t *testing.T) {
	for name, id := range map[string]string{
		"cut inside a character": strings.Repeat("a", maxEventField-1) + "é",
		"not UTF-8":              "cn-\xff\xfe",
	} {
		ev := auditEvent(context.Background(), "rid", "/custos.v1.CryptoService/Encrypt", &call{identity: id}, time.Now(),
			&custosv1.EncryptRequest{}, &custosv1.EncryptResponse{}, nil)
		if !utf8.ValidString(ev.GetIdentity()) || len(ev.GetIdentity()) > maxEventField {
			t.Errorf("%s: identity of %d bytes, valid UTF-8 %v", name, len(ev.GetIdentity()), utf8.ValidString(ev.GetIdentity()))
		}
		if _, err := proto.Marshal(ev); err != nil {
			t.Errorf("%s: the event does not encode: %v", name, err)
		}
	}
}

// FuzzAuditPageToken: arbitrary page tokens never panic; one accepted names
// the query it was made for, and the token the server makes for the index
// it names reads back as that index.
func FuzzAuditPageToken(f *testing.F) {
	q := audit.Query{Tenant: "acme", Operation: "encrypt"}
	f.Add(encodeAuditToken(queryDigest(q), 42), "acme")
	f.Add("YTI6", "acme")
	f.Add("", "b")
	f.Fuzz(func(t *testing.T, tok, tenant string) {
		q := audit.Query{Tenant: tenant, Operation: "encrypt"}
		next, err := decodeAuditToken(tok, q)
		if err != nil || tok == "" {
			return
		}
		if again, err := decodeAuditToken(encodeAuditToken(queryDigest(q), next), q); err != nil || again != next {
			t.Fatalf("token %q names index %d, which reads back as %d, %v", tok, next, again, err)
		}
	})
}

// An audit log read cut by the caller's cancellation is CANCELLED, as the
// caller did it, not an INTERNAL failure logged at error level; the same
// error with the caller still there (the store's own cancellation) is.
func TestAnAuditReadTheCallerCancelledIsCancelled(t *testing.T) {
	a := auditService{Server: &Server{logger: slog.New(slog.DiscardHandler)}}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := fmt.Errorf("audit: read tree node 0/0: %w", context.Canceled)
	if got := status.Code(a.logError(ctx, err)); got != codes.Canceled {
		t.Errorf("a read the caller cancelled: %v, want CANCELLED", got)
	}
	if got := status.Code(a.logError(context.Background(), err)); got != codes.Internal {
		t.Errorf("a cancellation not the caller's: %v, want INTERNAL", got)
	}
	// The caller's own deadline is DEADLINE_EXCEEDED, not an outage to
	// retry; a timeout inside the server is UNAVAILABLE.
	expired, cancel2 := context.WithTimeout(context.Background(), 0)
	defer cancel2()
	late := fmt.Errorf("audit: read tree node 0/0: %w", context.DeadlineExceeded)
	if got := status.Code(a.logError(expired, late)); got != codes.DeadlineExceeded {
		t.Errorf("a read past the caller's deadline: %v, want DEADLINE_EXCEEDED", got)
	}
	if got := status.Code(a.logError(context.Background(), late)); got != codes.Unavailable {
		t.Errorf("a timeout inside the server: %v, want UNAVAILABLE", got)
	}
}

// A batch whose items used more key versions than an event lists (a
// DecryptBatch of 10,000 items of a key rotated hourly for a year, and a
// long identity) still makes an event that can be recorded: its versions
// made it larger than a leaf may be, which failed the call.
func TestABatchOfManyVersionsMakesAnEventThatCanBeRecorded(t *testing.T) {
	resp := &custosv1.DecryptBatchResponse{}
	for v := range uint32(10_000) {
		resp.Results = append(resp.Results, &custosv1.DecryptBatchResponse_Result{KeyVersion: v + 1, Status: okStatus})
	}
	c := &call{identity: "spiffe://custos.test/" + strings.Repeat("x", 2000)}
	ev := auditEvent(context.Background(), "rid-1", custosv1.CryptoService_DecryptBatch_FullMethodName, c, time.Now(), &custosv1.DecryptBatchRequest{}, resp, nil)
	if _, err := audit.Marshal(ev); err != nil {
		t.Fatalf("the event of a batch of 10,000 versions cannot be recorded: %v", err)
	}
	if n := len(ev.GetKeyVersions()); n != maxEventVersions || ev.GetItemsOk() != 10_000 {
		t.Fatalf("the event lists %d versions and %d items; want %d and 10000", n, ev.GetItemsOk(), maxEventVersions)
	}
}
