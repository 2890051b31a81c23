package server

import (
	"context"
	"errors"
	"log/slog"
	"regexp"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/protoadapt"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/keystore"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// errorKind says how a domain error reaches the caller.
type errorKind struct {
	err    error
	code   codes.Code
	reason string
	// internal errors are logged with detail and returned with a bland
	// message; user errors return their own (secret-free) message.
	internal bool
	// bland replaces the code's bland message for an internal error.
	bland string
}

// errorTable is the one mapping from domain errors to gRPC codes (DESIGN.md,
// "Errors"). The first entry that matches wins.
var errorTable = []errorKind{
	{err: keystore.ErrInvalidCiphertext, code: codes.InvalidArgument, reason: custosv1.ReasonCiphertextNotAuthentic},
	{err: keystore.ErrInvalidArgument, code: codes.InvalidArgument, reason: custosv1.ReasonInvalidArgument},
	{err: keystore.ErrNotFound, code: codes.NotFound, reason: custosv1.ReasonNotFound},
	{err: keystore.ErrAlreadyExists, code: codes.AlreadyExists, reason: custosv1.ReasonAlreadyExists},
	{err: keystore.ErrTenantDeleted, code: codes.FailedPrecondition, reason: custosv1.ReasonTenantDeleted},
	{err: keystore.ErrKeyVersionDisabled, code: codes.FailedPrecondition, reason: custosv1.ReasonKeyVersionDisabled},
	{err: keystore.ErrKeyVersionDestroyed, code: codes.FailedPrecondition, reason: custosv1.ReasonKeyVersionDestroyed},
	{err: keystore.ErrKeyVersionTooOld, code: codes.FailedPrecondition, reason: custosv1.ReasonKeyVersionTooOld},
	{err: keystore.ErrWrongPurpose, code: codes.FailedPrecondition, reason: custosv1.ReasonWrongPurpose},
	{err: keystore.ErrPrimaryVersion, code: codes.FailedPrecondition, reason: custosv1.ReasonPrimaryVersion},
	{err: keystore.ErrWrongState, code: codes.FailedPrecondition, reason: custosv1.ReasonWrongState},
	{err: keystore.ErrResourceExhausted, code: codes.ResourceExhausted, reason: custosv1.ReasonHashQueueFull},
	{err: keystore.ErrSubjectLocked, code: codes.ResourceExhausted, reason: custosv1.ReasonSubjectLocked},
	{err: keystore.ErrStorageFull, code: codes.Unavailable, internal: true, reason: custosv1.ReasonStorageFull,
		bland: "the storage is full (no space left): writes fail until an operator frees space; retry later"},
	{err: keystore.ErrUnavailable, code: codes.Unavailable, internal: true, reason: custosv1.ReasonDependencyUnavailable},
	{err: keystore.ErrAborted, code: codes.Aborted, reason: custosv1.ReasonConflict},
	{err: keystore.ErrIntegrity, code: codes.Internal, internal: true, reason: custosv1.ReasonInternal},
	{err: context.Canceled, code: codes.Canceled},
	{err: context.DeadlineExceeded, code: codes.DeadlineExceeded},
}

// blandMessages are what callers see for internal failures.
var blandMessages = map[codes.Code]string{
	codes.Unavailable: "a root key provider or the storage is unavailable; retry later",
	codes.Internal:    "internal error",
}

// itemStatuses gives a batch's items their statuses. Internal failures
// are logged when the batch ends, one line for each distinct failure (at
// most maxFailureLines) with the number of items that met it and the
// call's request id: a batch of 10,000 items that meets one outage is one
// line, not 10,000. Use one per call, and call done at its end.
type itemStatuses struct {
	s      *Server
	ctx    context.Context        // the call's
	failed []itemFailure          // internal failures, in order of first occurrence
	index  map[itemFailureKey]int // into failed
}

// newItemStatuses returns the item statuses of the batch call of ctx.
func newItemStatuses(ctx context.Context, s *Server) *itemStatuses {
	return &itemStatuses{s: s, ctx: ctx}
}

// itemFailureKey identifies one distinct internal failure of a batch's
// items; itemFailure counts its items.
type itemFailureKey struct {
	code   codes.Code
	detail string
}

type itemFailure struct {
	itemFailureKey
	items int
}

// maxFailureLines bounds the lines one batch logs; the items of further
// distinct failures are counted on one more.
const maxFailureLines = 10

// of is an item's status for err, with the details a whole call's refusal
// of the same error carries (withInvalidDetails).
func (b *itemStatuses) of(err error) *spb.Status {
	st, internal, _ := statusIn(b.ctx, err)
	if internal != "" {
		b.note(st.Code(), internal)
	}
	if st.Code() != codes.InvalidArgument {
		return st.Proto()
	}
	return status.Convert(withInvalidDetails(st.Err())).Proto()
}

// note counts an item's internal failure.
func (b *itemStatuses) note(code codes.Code, detail string) {
	k := itemFailureKey{code, detail}
	if i, ok := b.index[k]; ok {
		b.failed[i].items++
		return
	}
	if b.index == nil {
		b.index = make(map[itemFailureKey]int)
	}
	b.index[k] = len(b.failed)
	b.failed = append(b.failed, itemFailure{itemFailureKey: k, items: 1})
}

// done logs the batch's internal failures, if any: at WARN those its
// caller's deadline cut short (statusIn), else at ERROR.
func (b *itemStatuses) done() {
	if len(b.failed) == 0 {
		return
	}
	ctx := b.ctx
	c := callOf(ctx)
	others := 0
	for i, f := range b.failed {
		if i >= maxFailureLines {
			others += f.items
			continue
		}
		level := slog.LevelError
		if f.code == codes.DeadlineExceeded || f.code == codes.Canceled {
			level = slog.LevelWarn
		}
		b.s.logger.LogAttrs(ctx, level, "batch items failed",
			append(failureAttrs(ctx, f.code, f.detail), slog.String("key", c.key.String()), slog.Int("items", f.items))...)
	}
	if others > 0 {
		b.s.logger.LogAttrs(ctx, slog.LevelError, "batch items failed in other ways",
			append(callIDAttrs(ctx), slog.String("key", c.key.String()), slog.Int("items", others))...)
	}
}

// toStatus converts a handler error to a gRPC status, logging internal
// failures. Errors that already are statuses pass through.
func (s *Server) toStatus(ctx context.Context, err error) *status.Status {
	st, internal, cut := statusIn(ctx, err)
	switch {
	case cut:
		s.logger.LogAttrs(ctx, slog.LevelWarn, "the caller's deadline ended a wait on a dependency", failureAttrs(ctx, st.Code(), internal)...)
	case internal != "":
		s.logger.LogAttrs(ctx, slog.LevelError, "request failed", failureAttrs(ctx, st.Code(), internal)...)
	}
	return st
}

// failureAttrs are the attributes of a failure's log line: the call's ids
// (callIDAttrs), the code and the detail.
func failureAttrs(ctx context.Context, code codes.Code, detail string) []slog.Attr {
	return append(callIDAttrs(ctx), slog.String("code", code.String()), slog.String("error", detail))
}

// callIDAttrs are the call's request id and, for a traced call, its trace
// id, as its call log line has them, so that the two can be joined. There
// is room for four more attributes.
func callIDAttrs(ctx context.Context) []slog.Attr {
	attrs := make([]slog.Attr, 0, 6)
	if c, _ := ctx.Value(callKey{}).(*call); c != nil && c.rid != "" {
		attrs = append(attrs, slog.String("request_id", c.rid))
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() && !sc.IsRemote() {
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()))
	}
	return attrs
}

// statusIn is statusOf for an error a call met. An outage met because the
// caller's own deadline or cancellation ended what the call waited on (a
// store read, the root) is the caller's code: not an outage to count or
// retry, and not an ERROR; cut is then true and internal the outage's
// detail, for a warning. A full store stays what it is.
func statusIn(ctx context.Context, err error) (st *status.Status, internal string, cut bool) {
	if cerr := ctx.Err(); cerr != nil && errors.Is(err, keystore.ErrUnavailable) && !errors.Is(err, keystore.ErrStorageFull) {
		st, _ = statusOf(cerr)
		return st, err.Error(), true
	}
	st, internal = statusOf(err)
	return st, internal, false
}

// statusOf converts a handler error to a gRPC status. For an internal
// failure, whose caller gets a bland message, it also returns the detail to
// log; else "".
func statusOf(err error) (*status.Status, string) {
	// Only an error that is itself a status (made by a handler) passes
	// through: a status wrapped deeper (say a cloud KMS's gRPC error inside
	// a root error) is an internal detail and goes through the table.
	if se, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return se.GRPCStatus(), ""
	}
	for _, k := range errorTable {
		if !errors.Is(err, k.err) {
			continue
		}
		msg, internal := err.Error(), ""
		if k.internal {
			internal = msg
			msg = blandMessages[k.code]
			if k.bland != "" {
				msg = k.bland
			}
		}
		if k.err == keystore.ErrInvalidCiphertext {
			msg = keystore.ErrInvalidCiphertext.Error() // one generic message, no oracle
		}
		st := status.New(k.code, msg)
		if k.reason != "" {
			if ds, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: k.reason, Domain: custosv1.ErrorDomain}); derr == nil {
				return ds, internal
			}
		}
		return st, internal
	}
	st := status.New(codes.Internal, blandMessages[codes.Internal])
	if ds, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: custosv1.ReasonInternal, Domain: custosv1.ErrorDomain}); derr == nil {
		return ds, err.Error()
	}
	return st, err.Error()
}

// toError is toStatus as an error.
func (s *Server) toError(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	return s.toStatus(ctx, err).Err()
}

// fieldPath is a request field's path: "items[3].plaintext".
const fieldPath = `([a-z][a-z0-9_]*(?:\[[0-9]+\])?(?:\.[a-z][a-z0-9_]*(?:\[[0-9]+\])?)*)[: ]`

// fieldPrefix finds the field at fault in hand-written INVALID_ARGUMENT
// messages: after the keystore's "invalid argument: " when it made the
// error, behind its operation's context ("update key tenants/a/keys/k:
// invalid argument: key.min_decryption_version …") but never inside a
// quoted value a caller chose; else at the start ("page_size 0 must …").
var fieldPrefix = regexp.MustCompile(`^(?:[^"]*?invalid argument: )?` + fieldPath)

// withInvalidDetails gives an INVALID_ARGUMENT status without an ErrorInfo
// the standard details other languages read: ErrorInfo (reason
// INVALID_ARGUMENT, or the one it has) and google.rpc.BadRequest naming the
// field, from a buf.validate Violations detail or from the message. Other
// errors pass unchanged.
func withInvalidDetails(err error) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument {
		return err
	}
	var br errdetails.BadRequest
	hasInfo := false
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			hasInfo = true
		case *errdetails.BadRequest:
			return err // already complete
		case *validate.Violations:
			for _, v := range d.GetViolations() {
				br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{
					Field: protovalidate.FieldPathString(v.GetField()), Description: v.GetMessage(), Reason: v.GetRuleId(),
				})
			}
		}
	}
	if len(br.FieldViolations) == 0 {
		if m := fieldPrefix.FindStringSubmatch(st.Message()); m != nil {
			br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: m[1], Description: st.Message()})
		}
	}
	details := []protoadapt.MessageV1{}
	if !hasInfo {
		details = append(details, &errdetails.ErrorInfo{Reason: custosv1.ReasonInvalidArgument, Domain: custosv1.ErrorDomain})
	}
	if len(br.FieldViolations) > 0 {
		details = append(details, &br)
	}
	if len(details) == 0 {
		return err
	}
	ds, derr := st.WithDetails(details...)
	if derr != nil {
		return err
	}
	return ds.Err()
}
