package server_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/internal/config"
)

// fakeCollector is an in-test OTLP/gRPC trace receiver (the part of an
// OpenTelemetry Collector the server exports to); it keeps every span.
type fakeCollector struct {
	coltracepb.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []*tracepb.Span
}

func (f *fakeCollector) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			f.spans = append(f.spans, ss.GetSpans()...)
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (f *fakeCollector) find(name string, traceID []byte) *tracepb.Span {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.spans {
		if s.GetName() == name && bytes.Equal(s.GetTraceId(), traceID) {
			return s
		}
	}
	return nil
}

func TestTracesJoinTheCallersTraceAndCarryNoData(t *testing.T) {
	col := &fakeCollector{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(gs, col)
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()

	f := newFiles(t)
	logs := &syncBuffer{}
	ts := start(t, f, options{
		logger: slog.New(slog.NewJSONHandler(logs, nil)),
		configure: func(c *config.Config) {
			c.Tracing = config.Tracing{Endpoint: lis.Addr().String(), Insecure: true}
		},
	})
	setup(t, ts, "a")

	// The caller's own tracing: a parent span, and the client's spans.
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	p := f.pki
	cp, kp, _ := issue(t, p.ca, clientReq(idAdmin))
	dir := t.TempDir()
	cCert, cKey := dir+"/c.pem", dir+"/k.pem"
	writeAtomic(t, cCert, cp)
	writeAtomic(t, cKey, kp)
	c, err := client.New(context.Background(), client.Config{Address: ts.addr, CAFile: p.caFile, CertFile: cCert, KeyFile: cKey, TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	const marker = "PLAINTEXT-MARKER-7f3a"
	ctx, parent := tp.Tracer("test").Start(testContext(t), "checkout")
	if _, _, err := c.Encrypt(ctx, "tenants/a/keys/k", []byte(marker), []byte("AD-MARKER-91c2")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Encrypt(ctx, "tenants/a/keys/missing", []byte(marker), nil); err == nil {
		t.Fatal("encrypt with a missing key succeeded")
	}
	parent.End()
	traceID := parent.SpanContext().TraceID()
	// A call to a path no service has, and a caller's tracestate: neither
	// is the caller's text to put in spans.
	md := metadata.Pairs("traceparent", "00-"+traceID.String()+"-"+parent.SpanContext().SpanID().String()+"-01", "tracestate", "k=statemarker1")
	err = ts.conn(t, idAdmin).Invoke(metadata.NewOutgoingContext(testContext(t), md), "/x.UNKNOWNMARKER/y", &emptypb.Empty{}, &emptypb.Empty{})
	wantCode(t, err, codes.Unimplemented)
	if _, err := c.GetTenant(metadata.NewOutgoingContext(testContext(t), md), "tenants/a"); err != nil {
		t.Fatal(err)
	}

	// The client's span for Encrypt is the server span's parent.
	var clientSpan sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == "custos.v1.CryptoService/Encrypt" && s.Parent().SpanID() == parent.SpanContext().SpanID() {
			clientSpan = s
			break
		}
	}
	if clientSpan == nil {
		t.Fatal("the client made no span for Encrypt under the caller's span")
	}

	ts.stop() // flushes the server's spans
	var srv *tracepb.Span
	waitFor(t, 10*time.Second, "the server's Encrypt span at the collector", func() bool {
		srv = col.find("custos.v1.CryptoService/Encrypt", traceID[:])
		return srv != nil
	})
	if got, want := hex.EncodeToString(srv.GetParentSpanId()), clientSpan.SpanContext().SpanID().String(); got != want {
		t.Errorf("server span's parent = %s, want the client span %s", got, want)
	}
	if srv.GetKind() != tracepb.Span_SPAN_KIND_SERVER {
		t.Errorf("span kind %v", srv.GetKind())
	}
	attrs := map[string]string{}
	for _, a := range srv.GetAttributes() {
		attrs[a.GetKey()] = a.GetValue().GetStringValue()
	}
	for k, want := range map[string]string{"custos.tenant": "a", "custos.key": "k", "custos.identity": idAdmin} {
		if attrs[k] != want {
			t.Errorf("span attribute %s = %q, want %q (all: %v)", k, attrs[k], want, attrs)
		}
	}
	if len(attrs["custos.request_id"]) != 32 {
		t.Errorf("custos.request_id = %q", attrs["custos.request_id"])
	}
	// Every attribute and event of every span, as the bytes it carries.
	col.mu.Lock()
	var all bytes.Buffer
	for _, sp := range col.spans {
		all.WriteString(sp.GetName())
		kvs := sp.GetAttributes()
		for _, ev := range sp.GetEvents() {
			all.WriteString(ev.GetName())
			kvs = append(kvs, ev.GetAttributes()...)
		}
		for _, kv := range kvs {
			all.WriteString(kv.GetKey())
			all.WriteString(kv.GetValue().GetStringValue())
			all.Write(kv.GetValue().GetBytesValue())
			all.WriteString(kv.GetValue().String())
		}
	}
	col.mu.Unlock()
	if bytes.Contains(all.Bytes(), []byte(marker)) || bytes.Contains(all.Bytes(), []byte("AD-MARKER")) {
		t.Fatal("a span carries the plaintext or the associated data")
	}
	if bytes.Contains(all.Bytes(), []byte("UNKNOWNMARKER")) {
		t.Fatal("a span names the caller's unknown path")
	}
	col.mu.Lock()
	for _, sp := range col.spans {
		if strings.Contains(sp.GetTraceState(), "statemarker") {
			t.Errorf("span %s carries the caller's tracestate %q", sp.GetName(), sp.GetTraceState())
		}
	}
	col.mu.Unlock()

	// The failed call's log line names the trace.
	found := false
	for line := range strings.SplitSeq(string(logs.Bytes()), "\n") {
		if strings.Contains(line, `"finished call"`) && strings.Contains(line, `"key":"missing"`) {
			found = strings.Contains(line, `"trace_id":"`+traceID.String()+`"`)
		}
	}
	if !found {
		t.Errorf("no failure log line with trace_id %s:\n%s", traceID, logs.Bytes())
	}
	// The call to an unknown path had no span: its line names no trace.
	for line := range strings.SplitSeq(string(logs.Bytes()), "\n") {
		if strings.Contains(line, "UNKNOWNMARKER") && strings.Contains(line, `"trace_id"`) {
			t.Errorf("the unknown path's log line names a trace it has no span in: %s", line)
		}
	}
}
