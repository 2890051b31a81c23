package custos

import (
	"context"
	"fmt"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/stats"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/server"
)

// newTracing builds the OTLP/gRPC exporter and tracer provider cfg asks
// for and the gRPC server option that makes a span per call (otelgrpc's
// stats handler, joining the caller's W3C traceparent; no message
// events). The exporter connects lazily: a collector that is down loses
// spans, never calls.
func newTracing(ctx context.Context, cfg config.Tracing) (*sdktrace.TracerProvider, grpc.ServerOption, error) {
	opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(cfg.Endpoint)}
	switch {
	case cfg.Insecure:
		opts = append(opts, otlptracegrpc.WithInsecure())
	case cfg.CAFile != "":
		creds, err := credentials.NewClientTLSFromFile(cfg.CAFile, "")
		if err != nil {
			return nil, nil, fmt.Errorf("tracing.ca_file: %w", err)
		}
		opts = append(opts, otlptracegrpc.WithTLSCredentials(creds))
	}
	exp, err := otlptracegrpc.New(ctx, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("tracing: OTLP exporter for %s: %w", cfg.Endpoint, err)
	}
	ratio := 1.0
	if cfg.SampleRatio != nil {
		ratio = *cfg.SampleRatio
	}
	name := cfg.ServiceName
	if name == "" {
		name = "custos"
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", name))),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))),
	)
	h := otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(tp),
		otelgrpc.WithPropagators(traceparentOnly{}),
		// No WithMessageEvents: spans carry no per-message events.
		// No span for a path no service has: its name would be the
		// caller's text, as long as gRPC lets a header be, and one span
		// name per path. (Its call is still logged and audited.)
		otelgrpc.WithFilter(func(info *stats.RPCTagInfo) bool { return server.KnownMethod(info.FullMethodName) }),
	)
	return tp, grpc.StatsHandler(h), nil
}

// traceparentOnly joins the caller's trace (W3C traceparent) and passes
// on no tracestate: that is the caller's free text, which spans would
// carry to the collector.
type traceparentOnly struct{ propagation.TraceContext }

// Extract reads the traceparent, dropping the tracestate.
func (p traceparentOnly) Extract(ctx context.Context, carrier propagation.TextMapCarrier) context.Context {
	ctx = p.TraceContext.Extract(ctx, carrier)
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, sc.WithTraceState(trace.TraceState{}))
	}
	return ctx
}
