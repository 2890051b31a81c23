package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/custos-kms/custos/internal/tlssource"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// Config says where a [Client] connects and how it authenticates. Give
// either the three PEM files or TLSConfig, not both.
type Config struct {
	// Address is the server's gRPC address, host:port or any target
	// grpc.NewClient accepts (e.g. "dns:///custos.internal:8443").
	Address string

	// CAFile is a PEM file of the CA certificates that may sign the
	// server's certificate.
	CAFile string
	// CertFile is a PEM file holding the client certificate (and any
	// intermediates) presented to the server.
	CertFile string
	// KeyFile is the PEM private key of CertFile.
	KeyFile string
	// ReloadInterval is how often the three files are checked for a new
	// certificate, key or CA bundle (rotated in place by SPIRE's helper,
	// cert-manager or Vault Agent). A change is used from the next
	// connection on; a new set that does not load is ignored and the
	// previous one kept. Zero means every 5 seconds; negative, never.
	ReloadInterval time.Duration

	// TLSConfig is a ready TLS configuration, used instead of the files,
	// e.g. go-spiffe's tlsconfig.MTLSClientConfig over a
	// workloadapi.X509Source, which follows SVID rotation. It is cloned;
	// its MinVersion is raised to TLS 1.3. It must present a client
	// certificate (Certificates or GetClientCertificate), and set RootCAs
	// (nil would trust the system's public roots), or InsecureSkipVerify
	// with its own VerifyPeerCertificate or VerifyConnection, as go-spiffe's
	// configurations do.
	TLSConfig *tls.Config

	// TracerProvider makes the client's spans (one per call, otelgrpc's
	// instrumentation); nil means OpenTelemetry's global provider. Either
	// way the caller's trace context in ctx is sent to the server as a W3C
	// traceparent header, so the server's spans join the caller's trace.
	TracerProvider trace.TracerProvider

	// KeepaliveTime is how long a connection with calls open may go
	// without hearing from the server before the client pings it; a ping
	// not answered within a third of that (at most 10 s) ends the
	// connection. A connection the network dropped without a reset (a NAT
	// or load balancer forgetting it, a failover) then fails its calls
	// with [ErrUnavailable] and is made again, instead of holding them
	// until the operating system gives up on it (about 15 minutes). Idle
	// connections are not pinged. Zero means 30 seconds; gRPC raises
	// anything below 10 seconds to 10; negative turns the pings off.
	// Servers allow pings every 10 seconds. A server from before this
	// version allows one in 5 minutes and ends the connection at the third
	// ping too soon: there a call open longer than about four
	// KeepaliveTimes (2 minutes by default) fails with [ErrUnavailable].
	KeepaliveTime time.Duration

	// DialOptions are extra options for grpc.NewClient, such as
	// interceptors, or grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(n))
	// for answers above DefaultMaxRecvMsgSize (a server whose message
	// limit is raised). They cannot replace the mutual-TLS transport
	// credentials.
	DialOptions []grpc.DialOption
}

// DefaultKeepaliveTime is Config.KeepaliveTime's default.
const DefaultKeepaliveTime = 30 * time.Second

// keepalive is the connection's ping settings, false when they are off.
func (cfg Config) keepalive() (keepalive.ClientParameters, bool) {
	t := cfg.KeepaliveTime
	switch {
	case t < 0:
		return keepalive.ClientParameters{}, false
	case t == 0:
		t = DefaultKeepaliveTime
	}
	t = max(t, 10*time.Second) // gRPC's floor, said here so the timeout follows it
	// Only while calls are open: a server from before this version allows
	// one ping in 5 minutes and none without a call, and closes the
	// connection of a client that pings an idle connection more often. A
	// dead idle connection is then found by the first call on it.
	return keepalive.ClientParameters{Time: t, Timeout: min(t/3, 10*time.Second)}, true
}

// DefaultMaxRecvMsgSize is the largest answer the client takes unless
// DialOptions say otherwise: twice the server's default request limit.
const DefaultMaxRecvMsgSize = 32 << 20

// Client calls a Custos server. It is safe for concurrent use; share one per
// server rather than making one per request.
type Client struct {
	conn   *grpc.ClientConn
	keys   custosv1.KeyServiceClient
	crypto custosv1.CryptoServiceClient
	audit  custosv1.AuditServiceClient
	closed atomic.Bool
}

// New returns a Client for cfg.Address over mutual TLS 1.3. It reads the PEM
// files if given, but does not connect: the connection is made by the first
// call and re-made as needed, so New succeeds while the server is down. It
// fails if ctx is already done or the configuration is incomplete or
// invalid.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("custos: new client: %w", err)
	}
	if cfg.Address == "" {
		return nil, errors.New("custos: new client: config has no Address")
	}
	creds, err := cfg.transportCredentials()
	if err != nil {
		return nil, fmt.Errorf("custos: new client: %w", err)
	}
	// The transport credentials come last so no dial option can replace
	// them with insecure ones.
	traceOpts := []otelgrpc.Option{otelgrpc.WithPropagators(propagation.TraceContext{})}
	if cfg.TracerProvider != nil {
		traceOpts = append(traceOpts, otelgrpc.WithTracerProvider(cfg.TracerProvider))
	}
	// No service config from the name resolver (a DNS TXT record): it
	// could add retries to calls that must not repeat (RotateKey,
	// CreateKey). One given in DialOptions (WithDefaultServiceConfig) is
	// still used.
	//
	// Answers may be larger than the 4 MiB gRPC takes by default: the
	// server bounds requests (16 MiB by default), and a batch's answer can
	// outgrow its request. A call the server served and recorded must not
	// fail here; a MaxCallRecvMsgSize in DialOptions still wins.
	opts := []grpc.DialOption{grpc.WithDisableServiceConfig(), grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(DefaultMaxRecvMsgSize)), grpc.WithChainUnaryInterceptor(unencodable)}
	if kp, ok := cfg.keepalive(); ok {
		opts = append(opts, grpc.WithKeepaliveParams(kp))
	}
	opts = append(opts, cfg.DialOptions...)
	opts = append(opts,
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(traceOpts...)),
		grpc.WithTransportCredentials(creds))
	conn, err := grpc.NewClient(cfg.Address, opts...)
	if err != nil {
		return nil, fmt.Errorf("custos: new client for %s: %w", cfg.Address, err)
	}
	return &Client{
		conn:   conn,
		keys:   custosv1.NewKeyServiceClient(conn),
		crypto: custosv1.NewCryptoServiceClient(conn),
		audit:  custosv1.NewAuditServiceClient(conn),
	}, nil
}

// Close closes the connection. Calls in flight fail, and later calls fail
// at once, with an error matching [ErrClosed]. Closing again does nothing
// and returns nil.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	if err := c.conn.Close(); err != nil {
		return fmt.Errorf("custos: close client: %w", err)
	}
	return nil
}

// transportCredentials returns the client's mutual-TLS credentials:
// cfg.TLSConfig checked and cloned, or the PEM files, reloaded as they
// change.
func (cfg Config) transportCredentials() (credentials.TransportCredentials, error) {
	files := cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != ""
	switch {
	case cfg.TLSConfig != nil && files:
		return nil, errors.New("config sets both TLSConfig and PEM files; set one")
	case cfg.TLSConfig != nil:
		tc, err := checkTLSConfig(cfg.TLSConfig)
		if err != nil {
			return nil, err
		}
		return credentials.NewTLS(tc), nil
	case files:
		return cfg.loadTLSFiles()
	default:
		return nil, errors.New("config has no TLS settings: set CAFile, CertFile and KeyFile, or TLSConfig (mutual TLS is required)")
	}
}

// checkTLSConfig clones a caller's TLS configuration, raises it to TLS 1.3
// and refuses one that would not authenticate both sides.
func checkTLSConfig(in *tls.Config) (*tls.Config, error) {
	tc := in.Clone()
	if tc.MaxVersion != 0 && tc.MaxVersion < tls.VersionTLS13 {
		return nil, errors.New("TLSConfig.MaxVersion is below TLS 1.3, which Custos requires")
	}
	if tc.MinVersion < tls.VersionTLS13 {
		tc.MinVersion = tls.VersionTLS13
	}
	if len(tc.Certificates) == 0 && tc.GetClientCertificate == nil {
		return nil, errors.New("TLSConfig presents no client certificate (set Certificates or GetClientCertificate); Custos requires mutual TLS")
	}
	if tc.InsecureSkipVerify && tc.VerifyPeerCertificate == nil && tc.VerifyConnection == nil {
		return nil, errors.New("TLSConfig.InsecureSkipVerify is set without VerifyPeerCertificate or VerifyConnection; the server would not be authenticated")
	}
	if !tc.InsecureSkipVerify && tc.RootCAs == nil {
		// crypto/tls would verify the server against the system's public
		// roots: any of them could then issue a certificate for its name.
		return nil, errors.New("TLSConfig.RootCAs is not set: set the CA that signed the server's certificate (x509.SystemCertPool() only if a public CA did)")
	}
	return tc, nil
}

// loadTLSFiles makes credentials that present the current certificate of
// the files and verify the server against their current CA bundle and the
// host it is dialled by.
func (cfg Config) loadTLSFiles() (credentials.TransportCredentials, error) {
	if cfg.CAFile == "" || cfg.CertFile == "" || cfg.KeyFile == "" {
		return nil, errors.New("config must set all of CAFile, CertFile and KeyFile")
	}
	f, err := tlssource.Load(cfg.CertFile, cfg.KeyFile, cfg.CAFile, tlssource.Options{
		Interval: cfg.ReloadInterval, Name: "client TLS",
	})
	if err != nil {
		return nil, err
	}
	return tlssource.ClientCredentials(f), nil
}
