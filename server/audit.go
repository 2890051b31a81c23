package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/audit"
	"github.com/custos-kms/custos/keystore/storage"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// RequestIDHeader is the response header that carries a call's request id,
// the id its audit event and its log line have.
const RequestIDHeader = "x-request-id"

// AuditRecorder makes a call's audit event durable before the call is
// answered; *audit.Writer is one.
type AuditRecorder interface {
	// Begin announces a call whose event Record will get (so group commit
	// can wait for it).
	Begin()
	Record(ev *custosv1.AuditEvent) error
}

// requestIDOf is the caller's request id (x-request-id, 1 to 64
// characters of [A-Za-z0-9._-]) if it sent one, else a new one.
func requestIDOf(ctx context.Context) string {
	if v := metadata.ValueFromIncomingContext(ctx, RequestIDHeader); len(v) == 1 && validRequestID(v[0]) {
		return v[0]
	}
	return newRequestID()
}

func validRequestID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// newRequestID returns 128 random bits, hex-encoded.
func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail on Linux
	return hex.EncodeToString(b[:])
}

// unknownOperation is the operation of the events of calls to methods no
// service has.
const unknownOperation = "unknown"

// auditEvent builds the event of a finished call from what the request
// path resolved, never from payloads: no plaintext, ciphertext, associated
// data, passwords, MACs or password subjects.
func auditEvent(ctx context.Context, rid, fullMethod string, c *call, start time.Time, req, resp any, err error) *custosv1.AuditEvent {
	a := &eventAlloc{}
	a.ts.Seconds, a.ts.Nanos = start.Unix(), int32(start.Nanosecond())
	d := time.Since(start)
	a.duration.Seconds, a.duration.Nanos = int64(d/time.Second), int32(d%time.Second)
	ev := &a.ev
	ev.Time, ev.Duration = &a.ts, &a.duration
	ev.RequestId = rid
	ev.Identity = clip(c.identity)
	ev.Method = fullMethod
	ev.Code = audit.CodeName(status.Code(err))
	if m, ok := methods[fullMethod]; ok {
		ev.Operation = m.op
	} else {
		// A method no service has: the caller's path, bounded.
		ev.Operation, ev.Method = unknownOperation, clip(fullMethod)
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		ev.Peer = clip(p.Addr.String())
	}
	// Names a caller sent are recorded only when well formed: a refused
	// call's garbage stays out of the log.
	if keystore.ValidID(c.tenant) {
		ev.Tenant = c.tenant
		key := c.key.Key
		if r, ok := req.(interface{ GetKeyId() string }); ok && key == "" {
			key = r.GetKeyId() // CreateKey names its key apart from its parent
		}
		if keystore.ValidID(key) {
			ev.Key = key
		}
	}
	if err != nil {
		if st, ok := status.FromError(err); ok {
			for _, d := range st.Details() {
				if info, ok := d.(*errdetails.ErrorInfo); ok {
					ev.Reason = info.GetReason()
				}
			}
		}
		return ev
	}
	ev.KeyVersions, ev.ItemsOk, ev.ItemsFailed = usage(req, resp, a.versions[:0])
	return ev
}

// eventAlloc is an event with the messages it points to and room for its
// key versions (most calls use one), allocated together: one allocation
// per call instead of four.
type eventAlloc struct {
	ev       custosv1.AuditEvent
	ts       timestamppb.Timestamp
	duration durationpb.Duration
	versions [2]uint32
}

// maxEventField bounds the identity and peer an event records: the
// longest SPIFFE ID (2048 bytes), so that two SPIFFE IDs never record as
// one (a common name, which has no bound, may); events stay far below
// audit.MaxLeafBytes.
const maxEventField = 2048

// clip bounds s to maxEventField bytes, cut at a character boundary, and
// makes it valid UTF-8: an event is a protobuf message, whose strings must
// be, or it could not be recorded at all (and its call not answered).
func clip(s string) string {
	if len(s) > maxEventField {
		i := maxEventField
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = s[:i]
	}
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return s
}

type keyVersioned interface{ GetKeyVersion() uint32 }

// maxEventVersions bounds the key versions an event lists (a blind
// index's bound): a DecryptBatch of 10,000 items, each of another version
// of a key rotated hourly for a year, made an event past
// audit.MaxLeafBytes, which failed the call (or, failing open, went
// unrecorded).
const maxEventVersions = keystore.MaxBlindIndexVersions

// usage reads the key versions a successful call used (the first
// maxEventVersions of them), and a batch's item counts, from its response
// (or, for version operations, its request). The versions are appended to
// buf.
func usage(req, resp any, buf []uint32) (versions []uint32, ok, failed uint32) {
	versions = buf
	add := func(v uint32) {
		if v != 0 && len(versions) < maxEventVersions && !slices.Contains(versions, v) {
			versions = append(versions, v)
		}
	}
	batch := func(n int, each func(int) (uint32, bool)) {
		for i := range n {
			v, good := each(i)
			if good {
				ok++
				add(v)
			} else {
				failed++
			}
		}
	}
	switch r := resp.(type) {
	case *custosv1.EncryptBatchResponse:
		res := r.GetResults()
		batch(len(res), func(i int) (uint32, bool) { return res[i].GetKeyVersion(), res[i].GetStatus().GetCode() == 0 })
	case *custosv1.DecryptBatchResponse:
		res := r.GetResults()
		batch(len(res), func(i int) (uint32, bool) { return res[i].GetKeyVersion(), res[i].GetStatus().GetCode() == 0 })
	case *custosv1.RewrapBatchResponse:
		res := r.GetResults()
		batch(len(res), func(i int) (uint32, bool) { return res[i].GetKeyVersion(), res[i].GetStatus().GetCode() == 0 })
	case *custosv1.BlindIndexResponse:
		for _, e := range r.GetEntries() {
			add(e.GetKeyVersion())
		}
	case keyVersioned:
		add(r.GetKeyVersion())
	}
	if v, isV := req.(interface{ GetVersion() uint32 }); isV {
		add(v.GetVersion())
	}
	if len(versions) == 0 {
		return nil, ok, failed
	}
	slices.Sort(versions)
	return versions, ok, failed
}

// recordEvent makes the call's event durable; if it cannot, the call fails
// closed with UNAVAILABLE (the recorder decides fail-open).
func (s *Server) recordEvent(ev *custosv1.AuditEvent) error {
	if err := s.audit.Record(ev); err != nil {
		s.logger.Error("audit event could not be recorded; the call fails closed", "request_id", ev.GetRequestId(), "error", err.Error())
		msg := "audit trail unavailable: the call was not acknowledged"
		if errors.Is(err, storage.ErrFull) || storage.NoSpace(err) {
			msg = "audit trail unavailable: the storage is full (no space left for the audit journal); the call was not acknowledged"
		}
		st := status.New(codes.Unavailable, msg)
		if ds, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: custosv1.ReasonAuditUnavailable, Domain: custosv1.ErrorDomain}); derr == nil {
			return ds.Err()
		}
		return st.Err()
	}
	return nil
}

// setRequestID sends the request id to the caller in the response header.
func setRequestID(ctx context.Context, rid string) {
	// A literal: metadata.Pairs would lower-case the constant key again on
	// every call.
	_ = grpc.SetHeader(ctx, metadata.MD{RequestIDHeader: []string{rid}})
}

// AuditLog answers AuditService; *audit.Log is one.
type AuditLog interface {
	Events(ctx context.Context, q audit.Query) ([]audit.Record, *audit.Checkpoint, uint64, error)
	Latest(ctx context.Context) (*audit.Checkpoint, error)
	ConsistencyProof(ctx context.Context, size1, size2 uint64) ([][]byte, error)
	PublicKey(ctx context.Context) (string, error)
}

// Audit page sizes.
const (
	DefaultAuditPageSize = 100
	MaxAuditPageSize     = 1000
)

type auditService struct {
	custosv1.UnimplementedAuditServiceServer
	*Server
}

// errAuditDisabled refuses AuditService calls when the trail is off.
var errAuditDisabled = fmt.Errorf("%w: the audit trail is disabled in this deployment (audit.disabled)", keystore.ErrWrongState)

func (a auditService) log(ctx context.Context) (AuditLog, error) {
	if a.auditLog == nil {
		return nil, a.toError(ctx, errAuditDisabled)
	}
	return a.auditLog, nil
}

// ListAuditEvents lists a tenant's events with inclusion proofs.
func (a auditService) ListAuditEvents(ctx context.Context, req *custosv1.ListAuditEventsRequest) (*custosv1.ListAuditEventsResponse, error) {
	c := callOf(ctx)
	q, err := auditQuery(c.tenant, req)
	if err != nil {
		return nil, err
	}
	log, err := a.log(ctx)
	if err != nil {
		return nil, err
	}
	// An id shredded and created again names two tenants: the events of
	// the earlier one (its callers, keys, addresses) are not the later
	// one's to read, whether the later one still exists or was shredded
	// too (its tombstone says when it was created). They stay in the log
	// until retention (docs/audit.md).
	created, found, err := a.ks.TenantCreateTime(ctx, c.tenant)
	if err != nil {
		return nil, a.toError(ctx, err)
	}
	if found {
		q.EndedFrom = created
	}
	recs, cp, next, err := log.Events(ctx, q)
	if err != nil {
		return nil, a.logError(ctx, err)
	}
	resp := &custosv1.ListAuditEventsResponse{Checkpoint: checkpointPB(cp)}
	for _, r := range recs {
		resp.Records = append(resp.Records, &custosv1.AuditRecord{Event: r.Event, LeafIndex: r.Index, Leaf: r.Leaf, InclusionProof: r.Proof})
	}
	if next > 0 {
		resp.NextPageToken = encodeAuditToken(queryDigest(q), next)
	}
	return resp, nil
}

// GetAuditCheckpoint returns the latest signed checkpoint and its key.
func (a auditService) GetAuditCheckpoint(ctx context.Context, req *custosv1.GetAuditCheckpointRequest) (*custosv1.GetAuditCheckpointResponse, error) {
	log, err := a.log(ctx)
	if err != nil {
		return nil, err
	}
	cp, err := log.Latest(ctx)
	if err != nil {
		return nil, a.logError(ctx, err)
	}
	pub, err := log.PublicKey(ctx)
	if err != nil {
		return nil, a.logError(ctx, err)
	}
	resp := &custosv1.GetAuditCheckpointResponse{Checkpoint: checkpointPB(cp), PublicKey: pub}
	if f := req.GetFirstSize(); f > 0 {
		if cp == nil || f > cp.Size {
			return nil, status.Errorf(codes.InvalidArgument, "first_size %d is beyond the latest checkpoint's size", f)
		}
		if resp.ConsistencyProof, err = log.ConsistencyProof(ctx, f, cp.Size); err != nil {
			return nil, a.logError(ctx, err)
		}
	}
	return resp, nil
}

// logError maps an error of the audit log: a caller that went away or ran
// out of time, CANCELLED or DEADLINE_EXCEEDED; the store or the root (which
// vouches for the signing key's verifier key) out of reach, UNAVAILABLE;
// anything else (a node or record that
// should be there and is not, a verifier key the root does not vouch for)
// is INTERNAL, logged. (The audit log's errors come from the store and the
// root directly, not through the keystore's storageErr and rootErr, which
// classify KeyService's and CryptoService's.)
func (a auditService) logError(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return a.toError(ctx, cerr) // the caller's own deadline or cancellation
	}
	if dependencyDown(err) || errors.Is(err, context.DeadlineExceeded) {
		return a.toError(ctx, fmt.Errorf("%w: %w", keystore.ErrUnavailable, err))
	}
	// %v: no entry of the error table applies (a cancellation not the
	// caller's included), so INTERNAL with its ErrorInfo, logged.
	return a.toError(ctx, fmt.Errorf("audit log read: %v", err))
}

func checkpointPB(cp *audit.Checkpoint) *custosv1.AuditCheckpoint {
	if cp == nil {
		return nil
	}
	return &custosv1.AuditCheckpoint{SignedNote: cp.Note, Origin: cp.Origin, Size: cp.Size, RootHash: cp.Root, Time: timestamppb.New(cp.Time)}
}

// auditQuery validates a request's filters, naming the field at fault.
func auditQuery(tenant string, req *custosv1.ListAuditEventsRequest) (audit.Query, error) {
	bad := func(format string, args ...any) (audit.Query, error) {
		return audit.Query{}, status.Errorf(codes.InvalidArgument, format, args...)
	}
	q := audit.Query{Tenant: tenant, Operation: req.GetOperation(), Identity: req.GetIdentity(), Result: req.GetResult()}
	switch n := req.GetPageSize(); {
	case n < 0 || n > MaxAuditPageSize:
		return bad("page_size %d must be between 0 and %d", n, MaxAuditPageSize)
	case n == 0:
		q.Limit = DefaultAuditPageSize
	default:
		q.Limit = int(n)
	}
	for _, b := range []struct {
		field string
		ts    *timestamppb.Timestamp
		dst   *time.Time
	}{{"start_time", req.GetStartTime(), &q.Start}, {"end_time", req.GetEndTime(), &q.End}} {
		if b.ts == nil {
			continue
		}
		if err := b.ts.CheckValid(); err != nil {
			return bad("%s is not a valid time (years 1 to 9999): %v", b.field, err)
		}
		*b.dst = b.ts.AsTime()
	}
	if !q.Start.IsZero() && !q.End.IsZero() && q.End.Before(q.Start) {
		return bad("end_time %s is before start_time %s", q.End.Format(time.RFC3339), q.Start.Format(time.RFC3339))
	}
	if q.Operation != "" && !knownOperation(q.Operation) {
		return bad("operation %q is not an operation Custos records (see docs/audit.md)", truncate(q.Operation))
	}
	if len(q.Identity) > 2048 {
		return bad("identity is longer than 2048 bytes")
	}
	if q.Result != "" && !audit.ValidResult(q.Result) {
		return bad("result %q is not OK, FAILED or a gRPC code name such as PERMISSION_DENIED", truncate(q.Result))
	}
	from, err := decodeAuditToken(req.GetPageToken(), q)
	if err != nil {
		return audit.Query{}, err
	}
	q.From = max(from, req.GetStartIndex())
	return q, nil
}

// queryDigest names a query's tenant and filters in its page tokens, so
// that a token is refused with another tenant or other filters (where it
// would skip events) instead of being taken as a start index.
func queryDigest(q audit.Query) string {
	h := sha256.New()
	for _, f := range []string{q.Tenant, q.Operation, q.Identity, q.Result, q.Start.UTC().Format(time.RFC3339Nano), q.End.UTC().Format(time.RFC3339Nano)} {
		h.Write([]byte(f))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// knownOperation reports whether events can have operation op: a method
// table's name, or "unknown" (a method no service has).
func knownOperation(op string) bool {
	if op == unknownOperation {
		return true
	}
	for _, m := range methods {
		if m.op == op {
			return true
		}
	}
	return false
}

// Audit page tokens: base64url of "a2:", the digest of the query's tenant
// and filters (queryDigest), ":" and the next leaf index in hex.
const auditTokenPrefix = "a2:"

func encodeAuditToken(digest string, next uint64) string {
	return base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "%s%s:%x", auditTokenPrefix, digest, next))
}

var errMalformedAuditToken = status.Error(codes.InvalidArgument, "page_token is malformed")

func decodeAuditToken(tok string, q audit.Query) (uint64, error) {
	if tok == "" {
		return 0, nil
	}
	if len(tok) > 64 {
		return 0, errMalformedAuditToken
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return 0, errMalformedAuditToken
	}
	rest, ok := strings.CutPrefix(string(b), auditTokenPrefix)
	d, h, ok2 := strings.Cut(rest, ":")
	switch {
	case !ok || !ok2:
		return 0, errMalformedAuditToken
	case d != queryDigest(q):
		return 0, status.Error(codes.InvalidArgument, "page_token was made for another tenant or other filters")
	}
	n, err := strconv.ParseUint(h, 16, 64)
	if err != nil || len(h) > 16 || strconv.FormatUint(n, 16) != h {
		return 0, errMalformedAuditToken
	}
	return n, nil
}
