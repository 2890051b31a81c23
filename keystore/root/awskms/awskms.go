// Package awskms is a root provider backed by a symmetric AWS KMS key,
// through github.com/aws/aws-sdk-go-v2/service/kms.
//
// Wrap calls KMS Encrypt and Unwrap KMS Decrypt, both with the key ID (so
// that KMS refuses a blob made under another key) and with the associated
// data bound as the encryption context {"custos-aad": base64(aad)}; empty
// associated data sends no encryption context. KMS authenticates the
// encryption context like GCM associated data: Decrypt with other associated
// data fails.
//
// # Wrapped blob format
//
//	0x01 | KMS CiphertextBlob
//
// The CiphertextBlob names the key and the key material it was made with, so
// blobs made before an automatic key rotation still unwrap.
//
// # Errors
//
// Network failures, timeouts, throttling, KMSInternalException,
// DependencyTimeoutException, KeyUnavailableException and 5xx answers wrap
// root.ErrUnavailable. InvalidCiphertextException and IncorrectKeyException
// on Decrypt wrap root.ErrNotAuthentic. Everything else (AccessDenied, a
// disabled or missing key, ...) is a misconfiguration and wraps neither.
//
// The package is tested against a fake of Client (AES-GCM with the
// encryption context bound) and against the real SDK pointed at local
// endpoints that refuse, hang or answer errors; AWS KMS itself cannot be
// reached from the test machines.
package awskms

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/custos-kms/custos/keystore/root"
)

// Client is the part of *kms.Client the provider uses.
type Client interface {
	Encrypt(ctx context.Context, in *kms.EncryptInput, optFns ...func(*kms.Options)) (*kms.EncryptOutput, error)
	Decrypt(ctx context.Context, in *kms.DecryptInput, optFns ...func(*kms.Options)) (*kms.DecryptOutput, error)
}

var _ Client = (*kms.Client)(nil)

// ContextKey is the encryption context key that carries the associated data.
const ContextKey = "custos-aad"

// Config configures an AWS KMS root. Credentials come from the SDK's
// default chain: environment, shared config and credentials files (Profile),
// web identity, ECS or EC2 instance roles.
type Config struct {
	// KeyID is the key's ARN (or an alias ARN). Required.
	KeyID string
	// Region is the key's region; empty takes it from the default chain.
	Region string
	// Profile selects a shared config profile; empty uses the default.
	Profile string
	// Endpoint overrides the KMS endpoint URL (a VPC endpoint, or tests).
	Endpoint string
	// MaxAttempts bounds the SDK's attempts per call, retries included.
	// Zero keeps the SDK's default (3).
	MaxAttempts int
	// Timeout bounds each Wrap and Unwrap, its attempts included, within
	// the caller's deadline. Default DefaultTimeout. (The SDK's client
	// bounds connecting, not an answer: an endpoint that accepts and never
	// answers held a caller without a deadline for ever.)
	Timeout time.Duration
}

// DefaultTimeout bounds a call when Config.Timeout is zero, as Vault's
// default does.
const DefaultTimeout = 30 * time.Second

// Root is an AWS KMS root. It is safe for concurrent use.
type Root struct {
	client  Client
	keyID   string
	timeout time.Duration
}

var _ root.Root = (*Root)(nil)

const formatVersion = 0x01

// New builds a KMS client from the default credential chain and cfg. It
// does not call KMS.
func New(ctx context.Context, cfg Config) (*Root, error) {
	if cfg.KeyID == "" {
		return nil, errors.New("awskms root: key ID is required")
	}
	var opts []func(*config.LoadOptions) error
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(cfg.Profile))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("awskms root: load AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		return nil, errors.New("awskms root: no region configured (set region, AWS_REGION or a profile's region)")
	}
	if cfg.MaxAttempts < 0 {
		return nil, errors.New("awskms root: max attempts must not be negative")
	}
	if cfg.Timeout < 0 {
		return nil, errors.New("awskms root: timeout must not be negative")
	}
	client := kms.NewFromConfig(awsCfg, func(o *kms.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		if cfg.MaxAttempts > 0 {
			o.RetryMaxAttempts = cfg.MaxAttempts
		}
	})
	// The endpoint the client will use, wherever it came from: the
	// configuration, AWS_ENDPOINT_URL(_KMS) or a profile's endpoint_url.
	if ep := client.Options().BaseEndpoint; ep != nil {
		if err := root.CheckEndpoint(*ep); err != nil {
			return nil, fmt.Errorf("awskms root: endpoint: %w", err)
		}
	}
	r, err := NewWithClient(client, cfg.KeyID)
	if err == nil && cfg.Timeout > 0 {
		r.timeout = cfg.Timeout
	}
	return r, err
}

// NewWithClient returns a root that wraps under keyID through client.
func NewWithClient(client Client, keyID string) (*Root, error) {
	if client == nil || keyID == "" {
		return nil, errors.New("awskms root: a client and a key ID are required")
	}
	return &Root{client: client, keyID: keyID, timeout: DefaultTimeout}, nil
}

// encryptionContext binds aad; nil for empty aad.
func encryptionContext(aad []byte) map[string]string {
	if len(aad) == 0 {
		return nil
	}
	return map[string]string{ContextKey: base64.StdEncoding.EncodeToString(aad)}
}

// Wrap encrypts plaintext under the KMS key, binding aad.
func (r *Root) Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, classify(ctx, "wrap", err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	out, err := r.client.Encrypt(ctx, &kms.EncryptInput{
		KeyId:             aws.String(r.keyID),
		Plaintext:         plaintext,
		EncryptionContext: encryptionContext(aad),
	})
	if err != nil {
		return nil, classify(ctx, "wrap", err)
	}
	if len(out.CiphertextBlob) == 0 {
		return nil, errors.New("awskms root: wrap: KMS returned no ciphertext")
	}
	return append([]byte{formatVersion}, out.CiphertextBlob...), nil
}

// maxCiphertextBlob is the most a KMS Decrypt takes (CiphertextBlob: 1 to
// 6144 bytes).
const maxCiphertextBlob = 6144

// Unwrap decrypts a blob made by Wrap with the same aad.
func (r *Root) Unwrap(ctx context.Context, wrapped, aad []byte) ([]byte, error) {
	// Past KMS's ciphertext limit no blob of Wrap's is: KMS would refuse
	// it as a malformed request, which reads as a misconfiguration.
	if len(wrapped) < 2 || len(wrapped) > 1+maxCiphertextBlob || wrapped[0] != formatVersion {
		return nil, fmt.Errorf("awskms root: %w", root.ErrNotAuthentic)
	}
	if err := ctx.Err(); err != nil {
		return nil, classify(ctx, "unwrap", err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	out, err := r.client.Decrypt(ctx, &kms.DecryptInput{
		KeyId:             aws.String(r.keyID),
		CiphertextBlob:    wrapped[1:],
		EncryptionContext: encryptionContext(aad),
	})
	if err != nil {
		return nil, classify(ctx, "unwrap", err)
	}
	return out.Plaintext, nil
}

// classify maps an SDK error to the root sentinels.
func classify(ctx context.Context, what string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		if errors.Is(cerr, context.DeadlineExceeded) {
			return fmt.Errorf("awskms root: %s: %w: %w", what, root.ErrUnavailable, cerr)
		}
		return fmt.Errorf("awskms root: %s: %w", what, cerr)
	}
	var (
		invalidCiphertext *types.InvalidCiphertextException
		incorrectKey      *types.IncorrectKeyException
		internal          *types.KMSInternalException
		dependency        *types.DependencyTimeoutException
		keyUnavailable    *types.KeyUnavailableException
		quota             ratelimit.QuotaExceededError
		resp              *smithyhttp.ResponseError
		api               smithy.APIError
		ue                *url.Error
		ne                net.Error
	)
	switch {
	case what == "unwrap" && (errors.As(err, &invalidCiphertext) || errors.As(err, &incorrectKey)):
		return fmt.Errorf("awskms root: %w", root.ErrNotAuthentic)
	case errors.As(err, &internal), errors.As(err, &dependency), errors.As(err, &keyUnavailable),
		errors.As(err, &quota),
		retry.IsErrorThrottles(retry.DefaultThrottles).IsErrorThrottle(err) == aws.TrueTernary,
		retry.IsErrorRetryables(retry.DefaultRetryables).IsErrorRetryable(err) == aws.TrueTernary:
		return fmt.Errorf("awskms root: %s: %w: %w", what, root.ErrUnavailable, err)
	case errors.As(err, &resp) && (resp.HTTPStatusCode() >= 500 || resp.HTTPStatusCode() == http.StatusTooManyRequests):
		return fmt.Errorf("awskms root: %s: %w: %w", what, root.ErrUnavailable, err)
	case errors.As(err, &api):
		return fmt.Errorf("awskms root: %s: KMS refused the request (check the key and the IAM policy): %w", what, err)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ue), errors.As(err, &ne):
		return fmt.Errorf("awskms root: %s: %w: %w", what, root.ErrUnavailable, err)
	}
	return fmt.Errorf("awskms root: %s: %w", what, err)
}
