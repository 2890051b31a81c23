// Package gcpkms is a root provider backed by a Google Cloud KMS symmetric
// key (purpose ENCRYPT_DECRYPT), through cloud.google.com/go/kms/apiv1.
//
// Wrap calls Encrypt and Unwrap Decrypt on the CryptoKey, passing the
// associated data as AdditionalAuthenticatedData, which Cloud KMS
// authenticates: Decrypt with other associated data fails. Requests carry
// CRC32C checksums of their inputs and responses are checked against them,
// as Google recommends; a checksum mismatch (corruption in transit) is
// reported as unavailable, so the call is retried.
//
// # Wrapped blob format
//
//	0x01 | Cloud KMS ciphertext
//
// The ciphertext names the CryptoKeyVersion that made it, so blobs made
// before a rotation still unwrap while that version is enabled.
//
// # Errors
//
// gRPC UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED and
// INTERNAL, network failures and a checksum mismatch wrap
// root.ErrUnavailable. INVALID_ARGUMENT on Decrypt (the ciphertext or the
// associated data does not authenticate) wraps root.ErrNotAuthentic.
// PERMISSION_DENIED, UNAUTHENTICATED, NOT_FOUND, FAILED_PRECONDITION (a
// disabled or destroyed version) and the rest are misconfigurations and wrap
// neither.
//
// The package is tested against a fake of Client (AES-GCM with the AAD
// bound) and against the real client over gRPC to a local fake server;
// Cloud KMS itself cannot be reached from the test machines.
package gcpkms

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"net/url"
	"regexp"
	"strings"

	kms "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/api/option"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/custos-kms/custos/keystore/root"
)

// Client is the part of *kms.KeyManagementClient the provider uses.
type Client interface {
	Encrypt(ctx context.Context, req *kmspb.EncryptRequest, opts ...gax.CallOption) (*kmspb.EncryptResponse, error)
	Decrypt(ctx context.Context, req *kmspb.DecryptRequest, opts ...gax.CallOption) (*kmspb.DecryptResponse, error)
}

var _ Client = (*kms.KeyManagementClient)(nil)

// Config configures a Cloud KMS root.
type Config struct {
	// KeyName is the CryptoKey's resource name,
	// projects/P/locations/L/keyRings/R/cryptoKeys/K. Required.
	KeyName string
	// CredentialsFile is a service account key file; empty uses Application
	// Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, the metadata
	// server, workload identity, ...).
	CredentialsFile string
	// Endpoint overrides the API endpoint (host:port), e.g. a private one.
	Endpoint string
}

// Root is a Cloud KMS root. It is safe for concurrent use.
type Root struct {
	client Client
	name   string
	closer func() error // closes a client New built; nil otherwise
}

var _ root.Root = (*Root)(nil)

const formatVersion = 0x01

var keyNameRE = regexp.MustCompile(`^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$`)

// New builds a Cloud KMS client from cfg and opts (extra client options,
// for tests or special transports). It does not call Cloud KMS. Some
// credential types keep ctx to refresh tokens later, so pass a context that
// outlives the root, not a short timeout. Close releases the client.
func New(ctx context.Context, cfg Config, opts ...option.ClientOption) (*Root, error) {
	if !keyNameRE.MatchString(cfg.KeyName) {
		return nil, errors.New("gcpkms root: key name must be projects/P/locations/L/keyRings/R/cryptoKeys/K (a CryptoKey, not a version)")
	}
	if cfg.CredentialsFile != "" {
		opts = append(opts, option.WithAuthCredentialsFile(option.ServiceAccount, cfg.CredentialsFile))
	}
	if cfg.Endpoint != "" {
		opts = append(opts, option.WithEndpoint(cfg.Endpoint))
	}
	c, err := kms.NewKeyManagementClient(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("gcpkms root: client: %w", err)
	}
	r, err := NewWithClient(c, cfg.KeyName)
	if err != nil {
		c.Close()
		return nil, err
	}
	r.closer = c.Close
	return r, nil
}

// NewWithClient returns a root that wraps under the CryptoKey keyName
// through client. Close does not close client.
func NewWithClient(client Client, keyName string) (*Root, error) {
	if client == nil || !keyNameRE.MatchString(keyName) {
		return nil, errors.New("gcpkms root: a client and a CryptoKey resource name are required")
	}
	return &Root{client: client, name: keyName}, nil
}

// Close closes the client New built.
func (r *Root) Close() error {
	if r.closer == nil {
		return nil
	}
	return r.closer()
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc(b []byte) *wrapperspb.Int64Value {
	return wrapperspb.Int64(int64(crc32.Checksum(b, castagnoli)))
}

func crcMatches(b []byte, v *wrapperspb.Int64Value) bool {
	return v != nil && v.GetValue() == int64(crc32.Checksum(b, castagnoli))
}

// errCorrupted reports a checksum mismatch between client and service.
var errCorrupted = errors.New("checksum mismatch between request and response (corrupted in transit)")

// Wrap encrypts plaintext under the CryptoKey's primary version, binding aad.
func (r *Root) Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, classify(ctx, "wrap", err)
	}
	resp, err := r.client.Encrypt(ctx, &kmspb.EncryptRequest{
		Name:                              r.name,
		Plaintext:                         plaintext,
		PlaintextCrc32C:                   crc(plaintext),
		AdditionalAuthenticatedData:       aad,
		AdditionalAuthenticatedDataCrc32C: crc(aad),
	})
	if err != nil {
		return nil, classify(ctx, "wrap", err)
	}
	if !resp.GetVerifiedPlaintextCrc32C() || !resp.GetVerifiedAdditionalAuthenticatedDataCrc32C() || !crcMatches(resp.GetCiphertext(), resp.GetCiphertextCrc32C()) {
		return nil, fmt.Errorf("gcpkms root: wrap: %w: %w", root.ErrUnavailable, errCorrupted)
	}
	return append([]byte{formatVersion}, resp.GetCiphertext()...), nil
}

// Unwrap decrypts a blob made by Wrap with the same aad.
func (r *Root) Unwrap(ctx context.Context, wrapped, aad []byte) ([]byte, error) {
	if len(wrapped) < 2 || wrapped[0] != formatVersion {
		return nil, fmt.Errorf("gcpkms root: %w", root.ErrNotAuthentic)
	}
	if err := ctx.Err(); err != nil {
		return nil, classify(ctx, "unwrap", err)
	}
	ct := wrapped[1:]
	resp, err := r.client.Decrypt(ctx, &kmspb.DecryptRequest{
		Name:                              r.name,
		Ciphertext:                        ct,
		CiphertextCrc32C:                  crc(ct),
		AdditionalAuthenticatedData:       aad,
		AdditionalAuthenticatedDataCrc32C: crc(aad),
	})
	if err != nil {
		return nil, classify(ctx, "unwrap", err)
	}
	if !crcMatches(resp.GetPlaintext(), resp.GetPlaintextCrc32C()) {
		return nil, fmt.Errorf("gcpkms root: unwrap: %w: %w", root.ErrUnavailable, errCorrupted)
	}
	return resp.GetPlaintext(), nil
}

// tokenStatus finds the HTTP status of a failed token fetch in the auth
// library's message ("cannot fetch token: 400 …").
var tokenStatus = regexp.MustCompile(`cannot fetch token: ([0-9]{3})`)

// tokenRefused reports a token fetch the token endpoint refused: an OAuth
// error that names the credentials, or a 4xx other than 408 and 429 (which
// say "try again").
func tokenRefused(msg string) bool {
	for _, e := range []string{"invalid_grant", "invalid_client", "unauthorized_client", "access_denied"} {
		if strings.Contains(msg, e) {
			return true
		}
	}
	m := tokenStatus.FindStringSubmatch(msg)
	return m != nil && m[1][0] == '4' && m[1] != "408" && m[1] != "429"
}

// classify maps a client error to the root sentinels.
func classify(ctx context.Context, what string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		if errors.Is(cerr, context.DeadlineExceeded) {
			return fmt.Errorf("gcpkms root: %s: %w: %w", what, root.ErrUnavailable, cerr)
		}
		return fmt.Errorf("gcpkms root: %s: %w", what, cerr)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("gcpkms root: %s: %w: %w", what, root.ErrUnavailable, err)
	}
	switch code := status.Code(err); code {
	case codes.InvalidArgument:
		if msg := strings.ToLower(status.Convert(err).Message()); strings.Contains(msg, "crc32c") || strings.Contains(msg, "checksum") {
			// Cloud KMS found a request's checksum not matching what
			// it received: corrupted in transit, which its docs say to
			// retry a few times. Not a verdict on the blob.
			return fmt.Errorf("gcpkms root: %s: %w: %w", what, root.ErrUnavailable, errCorrupted)
		}
		if what == "unwrap" {
			return fmt.Errorf("gcpkms root: %w", root.ErrNotAuthentic)
		}
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted, codes.Internal:
		return fmt.Errorf("gcpkms root: %s: %w: %w", what, root.ErrUnavailable, err)
	case codes.Unauthenticated:
		// grpc-go reports credentials it could not get (the metadata
		// server or the token endpoint unreachable) as UNAUTHENTICATED
		// "per-RPC creds failed", with the cause flattened into the
		// message: an outage of the credentials, not Cloud KMS refusing
		// them.
		// A token endpoint that answered 4xx (a revoked or disabled
		// service-account key: invalid_grant) refused them, though.
		if msg := status.Convert(err).Message(); strings.Contains(msg, "per-RPC creds failed") && !tokenRefused(msg) {
			return fmt.Errorf("gcpkms root: %s: %w: could not get credentials: %w", what, root.ErrUnavailable, err)
		}
	case codes.Unknown:
		// Not a gRPC status. A network failure is retryable; anything else
		// is reported as it is.
		var (
			ue *url.Error
			ne net.Error
		)
		if errors.As(err, &ue) || errors.As(err, &ne) {
			return fmt.Errorf("gcpkms root: %s: %w: %w", what, root.ErrUnavailable, err)
		}
		return fmt.Errorf("gcpkms root: %s: %w", what, err)
	}
	return fmt.Errorf("gcpkms root: %s: Cloud KMS refused the request (check the key and the IAM policy): %w", what, err)
}
