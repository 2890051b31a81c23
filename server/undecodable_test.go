package server_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/keystore/audit"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server"
)

// rawCodec sends a request's bytes as they are, so a test can send a
// message that does not decode.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// Calls that gRPC refuses before Custos's interceptor sees them — a
// request that does not decode, one larger than the message limit, a
// method no service has — are audited and counted like every other call:
// one event each, with the code the caller saw, and a call log line.
func TestCallsRefusedBeforeTheInterceptorAreAudited(t *testing.T) {
	logs := &syncBuffer{}
	ts := start(t, newFiles(t), options{limits: server.Limits{MaxPlaintextBytes: 1 << 10, MaxMessageBytes: 72 << 10}, logger: slog.New(slog.NewJSONHandler(logs, nil)), configure: func(c *config.Config) {
		c.Ops.Listen = "127.0.0.1:0"
	}})
	setup(t, ts, "a")
	ctx := testContext(t)
	conn := ts.conn(t, idAdmin)
	big := make([]byte, 80<<10) // above the 72 KiB message limit
	cases := []struct {
		name, method string
		body         []byte
		code         codes.Code
		op           string
	}{
		// Field 1 (name) as a string holding invalid UTF-8.
		{"undecodable", custosv1.CryptoService_Encrypt_FullMethodName, []byte{0x0a, 0x02, 0xff, 0xfe}, codes.Internal, "encrypt"},
		{"truncated", custosv1.KeyService_ListTenants_FullMethodName, []byte{0x0a, 0x10, 'a'}, codes.Internal, "list_tenants"},
		{"too large", custosv1.CryptoService_Encrypt_FullMethodName, append([]byte{0x12, 0x80, 0x80, 0x05}, big...), codes.ResourceExhausted, "encrypt"},
		{"unknown method", "/custos.v1.CryptoService/NoSuchMethod", nil, codes.Unimplemented, "unknown"},
		{"unknown service", "/no.such.Service/Call", nil, codes.Unimplemented, "unknown"},
	}
	rids := map[string]int{}
	for i, c := range cases {
		rid := "undecodable-" + strings.ReplaceAll(c.name, " ", "-")
		cctx := metadata.AppendToOutgoingContext(ctx, server.RequestIDHeader, rid)
		var out []byte
		var hdr metadata.MD
		err := conn.Invoke(cctx, c.method, c.body, &out, grpc.ForceCodec(rawCodec{}), grpc.Header(&hdr))
		if status.Code(err) != c.code {
			t.Fatalf("%s: %v, want %s", c.name, err, c.code)
		}
		// An unknown method is answered by the request path, with its
		// request id; a request that does not decode is answered by gRPC
		// as it reads it, before (audit.md: no x-request-id back).
		if got := hdr.Get(server.RequestIDHeader); c.op == "unknown" && (len(got) != 1 || got[0] != rid) || c.op != "unknown" && len(got) != 0 {
			t.Errorf("%s: x-request-id %q (the caller's was %q)", c.name, got, rid)
		}
		rids[rid] = i
	}
	found := map[string]int{}
	waitFor(t, 10*time.Second, "an event for each refused call", func() bool {
		clear(found)
		for _, r := range events(t, ts) {
			if _, ok := rids[r.Event.GetRequestId()]; ok {
				found[r.Event.GetRequestId()]++
			}
		}
		return len(found) == len(rids)
	})
	for _, r := range events(t, ts) {
		i, ok := rids[r.Event.GetRequestId()]
		if !ok {
			continue
		}
		c, ev := cases[i], r.Event
		if found[ev.GetRequestId()] != 1 {
			t.Errorf("%s: %d events, want 1", c.name, found[ev.GetRequestId()])
		}
		if ev.GetCode() != audit.CodeName(c.code) {
			t.Errorf("%s: event code %s, want %s", c.name, ev.GetCode(), c.code)
		}
		if ev.GetOperation() != c.op || ev.GetMethod() != c.method || ev.GetIdentity() != idAdmin || ev.GetTenant() != "" {
			t.Errorf("%s: event operation %q method %q identity %q tenant %q", c.name, ev.GetOperation(), ev.GetMethod(), ev.GetIdentity(), ev.GetTenant())
		}
	}
	// "unknown" is an operation a listing may filter on (tenant a's events
	// hold none: such calls name no tenant).
	resp, err := custosv1.NewAuditServiceClient(conn).ListAuditEvents(ctx, &custosv1.ListAuditEventsRequest{Parent: "tenants/a", Operation: "unknown"})
	if err != nil || len(resp.GetRecords()) != 0 {
		t.Fatalf("ListAuditEvents with operation unknown: %d records, %v; want none and no error", len(resp.GetRecords()), err)
	}

	// Each has its call log line, request id included.
	for rid := range rids {
		if !strings.Contains(logs.String(), `"request_id":"`+rid+`"`) {
			t.Errorf("no log line for the call %s", rid)
		}
	}

	// The metrics count them too, unknown methods under one series.
	ops := ts.rt.OpsAddr().String()
	for name, want := range map[string]float64{
		`grpc_server_handled_total\{grpc_code="Internal",grpc_method="Encrypt",grpc_service="custos.v1.CryptoService",grpc_type="unary"\}`:          1,
		`grpc_server_handled_total\{grpc_code="ResourceExhausted",grpc_method="Encrypt",grpc_service="custos.v1.CryptoService",grpc_type="unary"\}`: 1,
		`grpc_server_handled_total\{grpc_code="Unimplemented",grpc_method="unknown",grpc_service="unknown",grpc_type="bidi_stream"\}`:               2,
	} {
		if got := metric(t, ops, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}
