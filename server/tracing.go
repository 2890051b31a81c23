package server

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/custos-kms/custos/keystore"
)

// annotateSpan adds to the call's span, when one is recorded (tracing on,
// operations.md), what the request path resolved: the request id, the
// caller's identity and the tenant and key named, when well formed. Names,
// never data: otelgrpc records no messages.
func annotateSpan(ctx context.Context, rid string, c *call) {
	sp := trace.SpanFromContext(ctx)
	if !sp.IsRecording() {
		return
	}
	attrs := make([]attribute.KeyValue, 0, 4)
	attrs = append(attrs, attribute.String("custos.request_id", rid))
	if c.identity != "" {
		attrs = append(attrs, attribute.String("custos.identity", c.identity))
	}
	if keystore.ValidID(c.tenant) {
		attrs = append(attrs, attribute.String("custos.tenant", c.tenant))
		if keystore.ValidID(c.key.Key) {
			attrs = append(attrs, attribute.String("custos.key", c.key.Key))
		}
	}
	sp.SetAttributes(attrs...)
}
