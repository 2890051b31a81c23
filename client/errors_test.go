package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

func withInfo(t *testing.T, code codes.Code, msg, domain, reason string) *status.Status {
	t.Helper()
	st, err := status.New(code, msg).WithDetails(&errdetails.ErrorInfo{Domain: domain, Reason: reason})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestReasonConstantsAreTheContractStrings(t *testing.T) {
	for got, want := range map[string]string{
		ErrorDomain:                  "custos.dev",
		ReasonCiphertextNotAuthentic: "CIPHERTEXT_NOT_AUTHENTIC",
		ReasonTenantDeleted:          "TENANT_DELETED",
		ReasonKeyVersionDisabled:     "KEY_VERSION_DISABLED",
		ReasonKeyVersionDestroyed:    "KEY_VERSION_DESTROYED",
		ReasonKeyVersionTooOld:       "KEY_VERSION_TOO_OLD",
		ReasonWrongPurpose:           "WRONG_PURPOSE",
		ReasonPrimaryVersion:         "PRIMARY_VERSION",
		ReasonWrongState:             "WRONG_STATE",
		ReasonHashQueueFull:          "HASH_QUEUE_FULL",
		ReasonSubjectLocked:          "SUBJECT_LOCKED",
	} {
		if got != want {
			t.Errorf("constant = %q, want %q", got, want)
		}
	}
}

func TestErrorFromStatusReadsTheCustosErrorInfo(t *testing.T) {
	t.Run("the reason of a custos.dev ErrorInfo is taken", func(t *testing.T) {
		e := errorFromStatus(withInfo(t, codes.FailedPrecondition, "key version 2 is disabled", "custos.dev", "KEY_VERSION_DISABLED"))
		if e.Code != codes.FailedPrecondition || e.Reason != ReasonKeyVersionDisabled || e.Message != "key version 2 is disabled" {
			t.Errorf("errorFromStatus = %+v", e)
		}
		if !errors.Is(e, ErrKeyVersionDisabled) || !errors.Is(e, ErrFailedPrecondition) || errors.Is(e, ErrKeyVersionDestroyed) {
			t.Errorf("sentinel matching is wrong for %v", e)
		}
	})
	t.Run("an ErrorInfo of another domain is ignored", func(t *testing.T) {
		e := errorFromStatus(withInfo(t, codes.InvalidArgument, "bad", "googleapis.com", "CIPHERTEXT_NOT_AUTHENTIC"))
		if e.Reason != "" || errors.Is(e, ErrInvalidCiphertext) || !errors.Is(e, ErrInvalidArgument) {
			t.Errorf("foreign ErrorInfo was used: %+v", e)
		}
	})
	t.Run("a reason only matches together with its code", func(t *testing.T) {
		e := errorFromStatus(withInfo(t, codes.NotFound, "gone", "custos.dev", "TENANT_DELETED"))
		if errors.Is(e, ErrTenantDeleted) || errors.Is(e, ErrFailedPrecondition) || !errors.Is(e, ErrNotFound) {
			t.Errorf("reason matched across codes: %+v", e)
		}
	})
	t.Run("other details do not hide the ErrorInfo", func(t *testing.T) {
		st, err := status.New(codes.InvalidArgument, "bad").WithDetails(
			&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "ciphertext"}}},
			&errdetails.ErrorInfo{Domain: "custos.dev", Reason: "CIPHERTEXT_NOT_AUTHENTIC"},
		)
		if err != nil {
			t.Fatal(err)
		}
		if e := errorFromStatus(st); !errors.Is(e, ErrInvalidCiphertext) {
			t.Errorf("errorFromStatus = %+v, want ErrInvalidCiphertext", e)
		}
	})
}

func TestItemErrorTreatsAMissingStatusAsOK(t *testing.T) {
	if err := itemError(nil); err != nil {
		t.Errorf("itemError(nil) = %v", err)
	}
	if err := itemError(&spb.Status{}); err != nil {
		t.Errorf("itemError(OK) = %v", err)
	}
	err := itemError(withInfo(t, codes.InvalidArgument, "x", "custos.dev", "CIPHERTEXT_NOT_AUTHENTIC").Proto())
	if !errors.Is(err, ErrInvalidCiphertext) || !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("itemError = %v, want ErrInvalidCiphertext", err)
	}
}

func TestErrorStringAndStatus(t *testing.T) {
	e := &Error{Code: codes.FailedPrecondition, Reason: ReasonTenantDeleted, Message: "tenants/acme is scheduled for deletion"}
	if got, want := e.Error(), "FailedPrecondition (TENANT_DELETED): tenants/acme is scheduled for deletion"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if got, want := ErrNotFound.Error(), "NotFound"; got != want {
		t.Errorf("ErrNotFound.Error() = %q, want %q", got, want)
	}

	// A locally made error builds its status, ErrorInfo included.
	st := e.GRPCStatus()
	if st.Code() != codes.FailedPrecondition || st.Message() != e.Message {
		t.Errorf("GRPCStatus = %v", st)
	}
	if back := errorFromStatus(st); back.Reason != ReasonTenantDeleted {
		t.Errorf("GRPCStatus lost the reason: %v", st.Details())
	}
	// Through wrapping, status.FromError still finds the code.
	wrapped := localError("get tenant tenants/acme", codes.InvalidArgument, "page size %d out of range", -1)
	if got := status.Code(wrapped); got != codes.InvalidArgument {
		t.Errorf("status.Code(wrapped) = %v", got)
	}
	if got, want := wrapped.Error(), "custos: get tenant tenants/acme: InvalidArgument: page size -1 out of range"; got != want {
		t.Errorf("wrapped.Error() = %q, want %q", got, want)
	}
}

func TestCallErrorKeepsNonStatusErrors(t *testing.T) {
	c := &Client{}
	cause := errors.New("boom")
	err := c.callError(context.Background(), "op", cause)
	if !errors.Is(err, cause) {
		t.Errorf("callError lost a non-status error: %v", err)
	}
}

func TestCheckTLSConfig(t *testing.T) {
	cert := tls.Certificate{Certificate: [][]byte{{1}}}
	t.Run("MinVersion is raised to TLS 1.3 on a copy", func(t *testing.T) {
		in := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12}
		out, err := checkTLSConfig(in)
		if err != nil {
			t.Fatal(err)
		}
		if out.MinVersion != tls.VersionTLS13 || in.MinVersion != tls.VersionTLS12 {
			t.Errorf("MinVersion: out %x, in %x", out.MinVersion, in.MinVersion)
		}
	})
	t.Run("GetClientCertificate counts as presenting a certificate", func(t *testing.T) {
		in := &tls.Config{RootCAs: x509.NewCertPool(), GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }}
		if _, err := checkTLSConfig(in); err != nil {
			t.Error(err)
		}
	})
	t.Run("no RootCAs is refused: the system's public roots would verify the server", func(t *testing.T) {
		in := &tls.Config{Certificates: []tls.Certificate{cert}}
		if _, err := checkTLSConfig(in); err == nil || !strings.Contains(err.Error(), "RootCAs") {
			t.Errorf("a TLSConfig without RootCAs: %v, want it refused", err)
		}
	})
	t.Run("InsecureSkipVerify is accepted with a verifier of its own", func(t *testing.T) {
		in := &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, VerifyConnection: func(tls.ConnectionState) error { return nil }}
		if _, err := checkTLSConfig(in); err != nil {
			t.Error(err)
		}
	})
}

// A call whose own context ended as Close ran matches the context's error;
// an answer the server gave as Close ran keeps its code and is not
// ErrClosed; a call cut off by Close alone is ErrClosed (CANCELLED).
func TestCallErrorAfterClose(t *testing.T) {
	c := &Client{}
	c.closed.Store(true)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.callError(cancelled, "op", status.Error(codes.Canceled, "context canceled")); !errors.Is(err, context.Canceled) {
		t.Errorf("a call whose context was cancelled, Close meanwhile: %v, want context.Canceled", err)
	}
	if err := c.callError(context.Background(), "op", status.Error(codes.NotFound, "no key")); errors.Is(err, ErrClosed) || status.Code(err) != codes.NotFound {
		t.Errorf("an answer given as Close ran: %v, want NOT_FOUND, not ErrClosed", err)
	}
	if err := c.callError(context.Background(), "op", status.Error(codes.Unavailable, "transport is closing")); !errors.Is(err, ErrClosed) || status.Code(err) != codes.Canceled {
		t.Errorf("a call cut off by Close: %v, want ErrClosed, CANCELLED", err)
	}
}

// A request gRPC cannot encode (a string field that is not UTF-8) never
// leaves: the caller's argument, INVALID_ARGUMENT, not INTERNAL. A
// server's own INTERNAL with the same message, for a request that encodes,
// stays INTERNAL.
func TestAnUnencodableRequestIsInvalidArgument(t *testing.T) {
	internal := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		return status.Error(codes.Internal, "grpc: error while marshaling: string field contains invalid UTF-8")
	}
	err := unencodable(context.Background(), "/m", &custosv1.EncryptRequest{Name: "tenants/\xff/keys/k"}, nil, nil, internal)
	if status.Code(err) != codes.InvalidArgument || strings.Contains(err.Error(), "\xff") {
		t.Errorf("an unencodable request: %v, want INVALID_ARGUMENT without the value", err)
	}
	err = unencodable(context.Background(), "/m", &custosv1.EncryptRequest{Name: "tenants/a/keys/k"}, nil, nil, internal)
	if status.Code(err) != codes.Internal {
		t.Errorf("the server's INTERNAL for a request that encodes: %v, want INTERNAL", err)
	}
}
