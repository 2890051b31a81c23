package client

import (
	"context"
	"errors"
	"fmt"
	"strings"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of Custos errors. Only an
// ErrorInfo detail with this domain sets [Error.Reason].
const ErrorDomain = custosv1.ErrorDomain

// Reasons the server gives in the google.rpc.ErrorInfo detail of a status,
// with domain [ErrorDomain]. They are defined once, in the proto package,
// which the server uses too.
//
//	| constant                     | value                    | code                | meaning                                              |
//	| ---------------------------- | ------------------------ | ------------------- | ---------------------------------------------------- |
//	| ReasonCiphertextNotAuthentic | CIPHERTEXT_NOT_AUTHENTIC | INVALID_ARGUMENT    | tampered ciphertext, wrong key or associated data    |
//	| ReasonTenantDeleted          | TENANT_DELETED           | FAILED_PRECONDITION | the tenant is scheduled for deletion                 |
//	| ReasonKeyVersionDisabled     | KEY_VERSION_DISABLED     | FAILED_PRECONDITION | the version is disabled                              |
//	| ReasonKeyVersionDestroyed    | KEY_VERSION_DESTROYED    | FAILED_PRECONDITION | the version is destroyed or scheduled for it         |
//	| ReasonKeyVersionTooOld       | KEY_VERSION_TOO_OLD      | FAILED_PRECONDITION | the version is below the key's min decrypt version   |
//	| ReasonWrongPurpose           | WRONG_PURPOSE            | FAILED_PRECONDITION | the key's purpose does not allow the operation       |
//	| ReasonPrimaryVersion         | PRIMARY_VERSION          | FAILED_PRECONDITION | the primary version cannot be disabled or destroyed  |
//	| ReasonWrongState             | WRONG_STATE              | FAILED_PRECONDITION | the tenant or version is not in a state that allows  |
//	|                              |                          |                     | the operation (e.g. restoring a version not          |
//	|                              |                          |                     | scheduled for destruction)                           |
//	| ReasonHashQueueFull          | HASH_QUEUE_FULL          | RESOURCE_EXHAUSTED  | the server's password-hashing queue is full          |
//	| ReasonSubjectLocked          | SUBJECT_LOCKED           | RESOURCE_EXHAUSTED  | too many failed password verifications for a subject |
const (
	ReasonCiphertextNotAuthentic = custosv1.ReasonCiphertextNotAuthentic
	ReasonTenantDeleted          = custosv1.ReasonTenantDeleted
	ReasonKeyVersionDisabled     = custosv1.ReasonKeyVersionDisabled
	ReasonKeyVersionDestroyed    = custosv1.ReasonKeyVersionDestroyed
	ReasonKeyVersionTooOld       = custosv1.ReasonKeyVersionTooOld
	ReasonWrongPurpose           = custosv1.ReasonWrongPurpose
	ReasonPrimaryVersion         = custosv1.ReasonPrimaryVersion
	ReasonWrongState             = custosv1.ReasonWrongState
	ReasonHashQueueFull          = custosv1.ReasonHashQueueFull
	ReasonSubjectLocked          = custosv1.ReasonSubjectLocked
)

// Sentinel errors, for use with [errors.Is]. See the package documentation
// for the table of codes and reasons they match. Do not modify them.
var (
	// ErrInvalidArgument: a malformed name, an empty or oversized field, a
	// bad page token — or an inauthentic ciphertext (see ErrInvalidCiphertext).
	ErrInvalidArgument = &Error{Code: codes.InvalidArgument}
	// ErrInvalidCiphertext: the ciphertext was tampered with, or was made by
	// another key, or the associated data differs from what was encrypted
	// with. The server deliberately does not say which. Also matches
	// ErrInvalidArgument.
	ErrInvalidCiphertext = &Error{Code: codes.InvalidArgument, Reason: ReasonCiphertextNotAuthentic}
	// ErrNotFound: the tenant, key or key version does not exist.
	ErrNotFound = &Error{Code: codes.NotFound}
	// ErrAlreadyExists: a tenant or key with that id already exists.
	ErrAlreadyExists = &Error{Code: codes.AlreadyExists}
	// ErrPermissionDenied: the policy does not let the caller's identity do
	// this on this tenant.
	ErrPermissionDenied = &Error{Code: codes.PermissionDenied}
	// ErrUnauthenticated: the server did not accept the client's
	// certificate, or the client did not accept the server's (another CA,
	// expired, another name). gRPC reports a refused TLS handshake as
	// UNAVAILABLE; the client reports it as UNAUTHENTICATED, because
	// retrying cannot help until the certificates or the CA change. (With
	// TLS 1.3 the server refuses a client certificate after the client's
	// side of the handshake, so the client may see only the connection
	// closed: ErrUnavailable.)
	ErrUnauthenticated = &Error{Code: codes.Unauthenticated}
	// ErrFailedPrecondition: the resource is not in a state that allows the
	// operation. The more specific sentinels below also match it.
	ErrFailedPrecondition = &Error{Code: codes.FailedPrecondition}
	// ErrTenantDeleted: the tenant is scheduled for deletion; every
	// operation on it fails until it is undeleted.
	ErrTenantDeleted = &Error{Code: codes.FailedPrecondition, Reason: ReasonTenantDeleted}
	// ErrKeyVersionDisabled: the key version that made the ciphertext is
	// disabled; enabling it makes the ciphertext decrypt again.
	ErrKeyVersionDisabled = &Error{Code: codes.FailedPrecondition, Reason: ReasonKeyVersionDisabled}
	// ErrKeyVersionDestroyed: the key version that made the ciphertext has
	// been destroyed, and the data cannot be decrypted any more — or is
	// scheduled for destruction, and [Client.RestoreKeyVersion] can still
	// save it.
	ErrKeyVersionDestroyed = &Error{Code: codes.FailedPrecondition, Reason: ReasonKeyVersionDestroyed}
	// ErrKeyVersionTooOld: the key version is below the key's minimum
	// decryption version.
	ErrKeyVersionTooOld = &Error{Code: codes.FailedPrecondition, Reason: ReasonKeyVersionTooOld}
	// ErrWrongPurpose: the key's purpose does not allow the operation, e.g.
	// Encrypt with a MAC key.
	ErrWrongPurpose = &Error{Code: codes.FailedPrecondition, Reason: ReasonWrongPurpose}
	// ErrPrimaryVersion: the version to disable or destroy is the key's
	// primary; rotate the key first.
	ErrPrimaryVersion = &Error{Code: codes.FailedPrecondition, Reason: ReasonPrimaryVersion}
	// ErrWrongState: the tenant or key version is not in a state that
	// allows the operation, e.g. undeleting an active tenant, restoring a
	// version not scheduled for destruction, or enabling one that is
	// (restore it first); or a blind index of a key with more than 1,024
	// versions it would hash under, or more than 2 MiB in all (versions
	// times the value's length): raise the key's minimum decryption
	// version or disable old versions.
	ErrWrongState = &Error{Code: codes.FailedPrecondition, Reason: ReasonWrongState}
	// ErrResourceExhausted: a rate limit or the server's hashing queue is
	// full (retry later with backoff), or a subject is locked out. The more
	// specific sentinels below also match it.
	ErrResourceExhausted = &Error{Code: codes.ResourceExhausted}
	// ErrHashQueueFull: the server's password-hashing pool and its queue
	// are full; retry later with backoff. Encrypt and Decrypt are not
	// affected. Also matches ErrResourceExhausted.
	ErrHashQueueFull = &Error{Code: codes.ResourceExhausted, Reason: ReasonHashQueueFull}
	// ErrSubjectLocked: the subject given to [Password.VerifySubject] (or
	// [Client.VerifyPassword]) failed too many verifications within the
	// key's lockout window and is locked for its lockout duration; the
	// password was not checked. Retrying sooner does not help. Also matches
	// ErrResourceExhausted.
	ErrSubjectLocked = &Error{Code: codes.ResourceExhausted, Reason: ReasonSubjectLocked}
	// ErrUnavailable: the server, its root KMS or its storage cannot be
	// reached. Reads and cryptographic calls may be retried. A change
	// (CreateKey, RotateKey, a version's state, a tenant's) may have been
	// made all the same (its audit event failed after it, or the server
	// stopped as it answered): read the state back (GetKey, GetTenant)
	// before retrying it, or a retried RotateKey rotates twice.
	ErrUnavailable = &Error{Code: codes.Unavailable}
	// ErrAborted: a change lost to concurrent changes of the same record
	// too many times (a busy key's rotations and counts); retry the call.
	ErrAborted = &Error{Code: codes.Aborted}
)

// ErrClosed is matched by the error of a call made on, or interrupted by, a
// closed [Client].
var ErrClosed = errors.New("custos: client is closed")

// Error is a failure reported by the Custos API (or, for a few checks, by
// the client before calling it). Calls return it wrapped with context; use
// [errors.Is] with the sentinels, or [errors.As] to read the fields.
type Error struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Reason is the google.rpc.ErrorInfo reason given by the server with
	// domain [ErrorDomain], such as [ReasonKeyVersionDisabled]; empty if the
	// status carried none.
	Reason string
	// Message is the status message: what was wrong, never secret data.
	Message string

	// status is the status as received, details included, if any.
	status *status.Status
	// cause is an error the status stands for on this side of the wire:
	// the context's error or ErrClosed.
	cause error
}

// Error returns the code, the reason if any, and the message, e.g.
// "FailedPrecondition (KEY_VERSION_DISABLED): key version 2 is disabled".
func (e *Error) Error() string {
	s := e.Code.String()
	if e.Reason != "" {
		s += " (" + e.Reason + ")"
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Is reports whether target is an *Error with the same Code and, when the
// target has a Reason, the same Reason. Messages are not compared. So the
// error of an inauthentic ciphertext is both [ErrInvalidCiphertext] and
// [ErrInvalidArgument], but not [ErrNotFound].
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	return t.Code == e.Code && (t.Reason == "" || t.Reason == e.Reason)
}

// Unwrap returns the local cause of the error, if any: the context's error
// for a call whose context ended, or [ErrClosed].
func (e *Error) Unwrap() error { return e.cause }

// GRPCStatus returns the status the error stands for, so that
// [status.FromError] and [status.Code] work on errors from this package. It
// is the status as received when the error came from the server, details
// included; otherwise one built from Code, Message and Reason.
func (e *Error) GRPCStatus() *status.Status {
	if e.status != nil {
		return e.status
	}
	st := status.New(e.Code, e.Message)
	if e.Reason != "" {
		if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: e.Reason, Domain: ErrorDomain}); err == nil {
			st = withInfo
		}
	}
	return st
}

// errorFromStatus converts a non-OK status to an *Error, taking the reason
// from its first google.rpc.ErrorInfo detail with domain ErrorDomain.
func errorFromStatus(st *status.Status) *Error {
	e := &Error{Code: st.Code(), Message: st.Message(), status: st}
	// The client's own transport errors carry no details; the server's
	// UNAVAILABLE carries its ErrorInfo and is never a TLS refusal.
	if e.Code == codes.Unavailable && len(st.Details()) == 0 && tlsRefusal(e.Message) {
		e.Code, e.status = codes.Unauthenticated, nil
		return e
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			e.Reason = info.GetReason()
			break
		}
	}
	return e
}

// tlsRefusal recognises, in the message of an UNAVAILABLE call, a TLS
// handshake that authentication ended: the client could not verify the
// server's certificate (crypto/tls's check, or go-spiffe's of an SVID and
// its ID), or it read the server's alert refusing its own.
func tlsRefusal(msg string) bool {
	if strings.Contains(msg, "authentication handshake failed") {
		for _, s := range []string{"x509svid: ", "unexpected ID ", "unexpected trust domain "} {
			if strings.Contains(msg, s) {
				return true
			}
		}
	}
	for _, s := range []string{
		"x509: ", // the client's check of the server's certificate
		"tls: bad certificate", "tls: certificate required",
		"tls: expired certificate", "tls: revoked certificate", "tls: unsupported certificate",
		"tls: unknown certificate", "tls: access denied",
	} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// itemError converts the status of one batch item: nil for OK (or for no
// status, which proto3 reads as OK), otherwise an *Error.
func itemError(st *spb.Status) error {
	if st.GetCode() == int32(codes.OK) {
		return nil
	}
	return errorFromStatus(status.FromProto(st))
}

// callError converts the error of a gRPC call to an *Error wrapped with op,
// which names what was being done. A context error or a closed client
// becomes the *Error's cause, so errors.Is matches it too.
func (c *Client) callError(ctx context.Context, op string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("custos: %s: %w", op, err)
	}
	e := errorFromStatus(st)
	cut := e.Code == codes.Canceled || e.Code == codes.DeadlineExceeded
	switch {
	case cut && ctx.Err() != nil:
		// The caller's own context, even if Close ran meanwhile.
		e.cause = ctx.Err()
	case c.closed.Load() && (e.Code == codes.Unavailable || e.Code == codes.Canceled):
		// Cut off by Close (gRPC reports the closed transport as
		// UNAVAILABLE): CANCELLED, as the docs say, never "retry". An
		// answer the server gave just before stays what it is.
		e.cause = ErrClosed
		e.Code, e.status = codes.Canceled, nil
	case cut:
		e.cause = ctx.Err()
	}
	return fmt.Errorf("custos: %s: %w", op, e)
}

// contextError is a local wait that ctx ended, as a remote call's: its
// code is CANCELLED or DEADLINE_EXCEEDED and it matches ctx's error.
func contextError(op string, ctx context.Context) error {
	err := ctx.Err()
	return fmt.Errorf("custos: %s: %w", op, &Error{Code: status.FromContextError(err).Code(), Message: err.Error(), cause: err})
}

// localError is a failure found by the client before or after a call, with
// the code the server would have used.
func localError(op string, code codes.Code, format string, args ...any) error {
	return fmt.Errorf("custos: %s: %w", op, &Error{Code: code, Message: fmt.Sprintf(format, args...)})
}

// unencodable turns the INTERNAL of a request gRPC could not encode (a
// name, hash or subject that is not UTF-8: it never left) into the
// INVALID_ARGUMENT the server would have answered, the caller's mistake.
// The request is encoded again only when a call failed INTERNAL, to tell
// this from a server's own INTERNAL (whose message can be the same).
func unencodable(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if status.Code(err) != codes.Internal {
		return err
	}
	if m, ok := req.(proto.Message); ok {
		if _, merr := proto.Marshal(m); merr != nil {
			// merr names neither the field nor its value.
			return status.Error(codes.InvalidArgument, "the request cannot be sent: "+merr.Error())
		}
	}
	return err
}
