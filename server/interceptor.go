package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"buf.build/go/protovalidate"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/custos-kms/custos/keystore"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server/identity"
)

// unaryPath is Custos's one unary interceptor. In order, as the chain of
// separate interceptors it replaces did: it counts and times the call
// (metrics), turns a panic into a bland INTERNAL (recovery), derives the
// caller's identity from its verified certificate (UNAUTHENTICATED
// otherwise), validates the request (protovalidate, or the hand checks of
// validatedByHand), runs the request path (names, authorization, rate
// limits) and the handler, and logs the call when it failed or debug
// logging is on ("finished call", the fields go-grpc-middleware's logging
// wrote). One function instead of six chained interceptors saves their
// per-call closures and frames on the hottest path. Streams keep the
// middleware chain.
type unaryPath struct {
	s         *Server
	validator protovalidate.Validator
}

func (u *unaryPath) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	s := u.s
	mm := s.metrics.method(info.FullMethod, "unary")
	mm.started.Inc()
	start := time.Now()
	rid := requestIDOf(ctx)
	setRequestID(ctx, rid)
	// c collects what the request path resolves (identity, tenant, key);
	// the audit event is built from it, whatever step refused the call.
	c := &call{rid: rid}
	if s.audit != nil {
		s.audit.Begin()
	}
	defer func() {
		if p := recover(); p != nil {
			// The panic value may hold request data: log only its type and the stack.
			s.logger.LogAttrs(ctx, slog.LevelError, "panic in handler", slog.String("request_id", rid), slog.String("panic_type", fmt.Sprintf("%T", p)), slog.String("stack", string(debug.Stack())))
			resp, err = nil, status.Error(codes.Internal, "internal error")
		}
		if err != nil {
			err = withInvalidDetails(err)
		}
		if s.audit != nil {
			// Durable before the answer: a call whose event cannot be
			// recorded is not acknowledged.
			if aerr := s.recordEvent(auditEvent(ctx, rid, info.FullMethod, c, start, req, resp, err)); aerr != nil {
				resp, err = nil, aerr
			}
		}
		if err == nil {
			// Only items the caller is answered with count.
			s.countBatchItems(info.FullMethod, resp)
		}
		mm.done(start, err)
		annotateSpan(ctx, rid, c)
		s.logCall(ctx, rid, c, info.FullMethod, "unary", start, err)
	}()
	// The identity travels with the call value, not in a context value of
	// its own: one allocation less per call.
	if c.identity, err = identity.Authenticate(ctx); err != nil {
		return nil, err
	}
	if err := u.validate(req); err != nil {
		return nil, err
	}
	return s.requestPath(ctx, c, req, info, handler)
}

// validate applies protovalidate to requests that are not checked by hand,
// with the errors go-grpc-middleware's protovalidate interceptor gave.
func (u *unaryPath) validate(req any) error {
	msg, ok := req.(proto.Message)
	if !ok {
		if u, ok := req.(undecoded); ok {
			return u.err
		}
		return status.Errorf(codes.Internal, "unsupported message type: %T", req)
	}
	if handChecked[msg.ProtoReflect().Descriptor().FullName()] {
		return nil
	}
	err := u.validator.Validate(msg)
	if err == nil {
		return nil
	}
	var valErr *protovalidate.ValidationError
	if errors.As(err, &valErr) {
		st := status.New(codes.InvalidArgument, err.Error())
		if ds, derr := st.WithDetails(valErr.ToProto()); derr == nil {
			return ds.Err()
		}
		return st.Err()
	}
	return status.Error(codes.Internal, err.Error())
}

// logCall writes a call's "finished call" line: failures at info or above
// (codeToLevel), successes only at debug, so a successful call at the
// default level pays for one Enabled check.
func (s *Server) logCall(ctx context.Context, rid string, c *call, fullMethod, methodType string, start time.Time, err error) {
	code := status.Code(err)
	lvl := slog.Level(codeToLevel(code))
	if !s.logger.Enabled(ctx, lvl) {
		return
	}
	service, method := splitMethod(fullMethod)
	attrs := make([]slog.Attr, 0, 14)
	attrs = append(attrs,
		slog.String("request_id", rid),
	)
	// A span of this server's (not the caller's context alone, which a
	// call given no span, to an unknown path, still holds).
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() && !sc.IsRemote() {
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()))
	}
	attrs = append(attrs,
		slog.String("protocol", "grpc"),
		slog.String("grpc.component", "server"),
		slog.String("grpc.service", service),
		slog.String("grpc.method", method),
		slog.String("grpc.method_type", methodType),
	)
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		attrs = append(attrs, slog.String("peer.address", p.Addr.String()))
	}
	attrs = append(attrs, slog.String("grpc.start_time", start.Format(time.RFC3339)))
	if c.identity != "" {
		attrs = append(attrs, slog.String("identity", c.identity))
	}
	// The tenant and key the call named, when well formed: names, never data.
	if keystore.ValidID(c.tenant) {
		attrs = append(attrs, slog.String("tenant", c.tenant))
		if keystore.ValidID(c.key.Key) {
			attrs = append(attrs, slog.String("key", c.key.Key))
		}
	}
	attrs = append(attrs,
		slog.String("grpc.time_ms", fmt.Sprintf("%.3f", float64(time.Since(start).Microseconds())/1000)),
		slog.String("grpc.code", code.String()),
	)
	if err != nil {
		attrs = append(attrs, slog.String("grpc.error", err.Error()))
	}
	s.logger.LogAttrs(ctx, lvl, "finished call", attrs...)
}

// countBatchItems adds a batch response's item outcomes to
// custos_batch_items_total: one pass, no allocation.
func (s *Server) countBatchItems(fullMethod string, resp any) {
	var counts [codes.Unauthenticated + 1]uint32
	count := func(c int32) {
		if c < 0 || c >= int32(len(counts)) {
			c = int32(codes.Unknown)
		}
		counts[c]++
	}
	switch r := resp.(type) {
	case *custosv1.EncryptBatchResponse:
		for _, it := range r.GetResults() {
			count(it.GetStatus().GetCode())
		}
	case *custosv1.DecryptBatchResponse:
		for _, it := range r.GetResults() {
			count(it.GetStatus().GetCode())
		}
	case *custosv1.RewrapBatchResponse:
		for _, it := range r.GetResults() {
			count(it.GetStatus().GetCode())
		}
	default:
		return
	}
	_, method := splitMethod(fullMethod)
	for c, n := range counts {
		if n > 0 {
			s.metrics.batchItems.WithLabelValues(method, codes.Code(c).String()).Add(float64(n))
		}
	}
}
