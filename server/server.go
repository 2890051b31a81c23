// Package server is Custos's gRPC edge: mutual TLS, caller identity, policy,
// interceptors, request limits, the handlers of KeyService and CryptoService,
// and the one table mapping domain errors to gRPC codes. Key handling lives
// in keystore/; this package converts between it and custosv1.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync/atomic"
	"time"

	"buf.build/go/protovalidate"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	protovalidatemw "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/protovalidate"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/envelope"
	"github.com/custos-kms/custos/internal/tlssource"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/password"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server/identity"
	"github.com/custos-kms/custos/server/policy"
)

// Limits bound what one request may carry. Larger requests fail with
// INVALID_ARGUMENT naming the field.
type Limits struct {
	// MaxPlaintextBytes bounds one plaintext field. Default 64 KiB.
	MaxPlaintextBytes int
	// MaxBatchItems bounds the items of one batch call. Default 1000.
	MaxBatchItems int
	// MaxMessageBytes bounds one request message (answers are not
	// bounded: a batch's answer outgrows its request). Default 16 MiB.
	MaxMessageBytes int
}

// Default limits.
const (
	DefaultMaxPlaintextBytes = 64 << 10
	DefaultMaxBatchItems     = 1000
	DefaultMaxMessageBytes   = 16 << 20
)

// messageOverhead is the room a message needs beside its largest
// plaintext: the most associated data, and a margin for the rest.
const messageOverhead = envelope.MaxAssociatedData + 4<<10

// withDefaults fills in the defaults of the limits left at zero.
func (l Limits) withDefaults() Limits {
	if l.MaxPlaintextBytes <= 0 {
		l.MaxPlaintextBytes = DefaultMaxPlaintextBytes
	}
	if l.MaxBatchItems <= 0 {
		l.MaxBatchItems = DefaultMaxBatchItems
	}
	if l.MaxMessageBytes <= 0 {
		l.MaxMessageBytes = DefaultMaxMessageBytes
	}
	return l
}

// Validate reports the limits no server could serve as configured (zero
// is the default): a negative one, one above the API's own bounds (it
// could never be reached: refused rather than serve less than the
// configuration says), or a message limit too small for the largest field
// with its associated data. Errors name the configuration's fields.
func (l Limits) Validate() error {
	var errs []error
	for _, f := range []struct {
		name string
		v    int
	}{{"limits.max_plaintext_bytes", l.MaxPlaintextBytes}, {"limits.max_batch_items", l.MaxBatchItems}, {"limits.max_message_bytes", l.MaxMessageBytes}} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", f.name))
		}
	}
	if l.MaxBatchItems > maxBatchItemsCeiling {
		errs = append(errs, fmt.Errorf("limits.max_batch_items %d is above the API's %d", l.MaxBatchItems, maxBatchItemsCeiling))
	}
	if l.MaxPlaintextBytes > maxPlaintextCeiling {
		errs = append(errs, fmt.Errorf("limits.max_plaintext_bytes %d is above the API's %d (1 MiB)", l.MaxPlaintextBytes, maxPlaintextCeiling))
	}
	pt := l.withDefaults().MaxPlaintextBytes
	if l.MaxMessageBytes > 0 && l.MaxMessageBytes < pt+messageOverhead {
		errs = append(errs, fmt.Errorf("limits.max_message_bytes %d cannot carry a field of limits.max_plaintext_bytes (%d) with its associated data: want at least %d", l.MaxMessageBytes, pt, pt+messageOverhead))
	}
	return errors.Join(errs...)
}

// PolicySource returns the policy in force; *policy.Holder is one.
type PolicySource interface {
	Current() *policy.Policy
}

// Config configures a Server.
type Config struct {
	// Keystore does the work. Required.
	Keystore *keystore.Service
	// Passwords hashes and verifies passwords. Required.
	Passwords *password.Service
	// Policy authorizes callers. Required.
	Policy PolicySource
	// Logger receives structured logs; never payloads. Default slog.Default().
	Logger *slog.Logger
	// Limits; zero fields take the defaults.
	Limits Limits
	// Audit records one event per call before the call is answered; nil
	// records nothing.
	Audit AuditRecorder
	// AuditLog answers AuditService; nil answers FAILED_PRECONDITION.
	AuditLog AuditLog
	// Collectors are more Prometheus metrics (the audit trail's, the
	// root's), served with the server's own.
	Collectors []prometheus.Collector
	// Backup, if set, streams a backup of the store; the ops listener
	// serves it at GET /backup (custos backup uses it when the store is a
	// bbolt file the server holds).
	Backup func(ctx context.Context, w io.Writer) error
	// RootRewrap, if set, re-wraps the store's KEKs under the root's
	// current version, writing a line per step to w; the ops listener
	// serves it at POST /root/rewrap (custos root rewrap uses it when the
	// store is a bbolt file the server holds).
	RootRewrap func(ctx context.Context, w io.Writer) error
	// StoreFile is the file of the store Backup and RootRewrap work on.
	// A request names the file it means (StoreFileHeader), and one that
	// names another (a configuration whose ops.listen reaches another
	// server) is refused.
	StoreFile string
	// OpsHost is the host name the ops listener is reached by, if its
	// address names one (ops.listen); GET /backup and POST /root/rewrap
	// answer requests addressed to it, to an IP address or to localhost,
	// and refuse others: a web page that rebinds its own DNS name to the
	// listener's address sends that name.
	OpsHost string
}

// Server implements custosv1.KeyServiceServer and custosv1.CryptoServiceServer.
type Server struct {
	ks      *keystore.Service
	pw      *password.Service
	policy  PolicySource
	logger  *slog.Logger
	limits  Limits
	health  *health.Server
	metrics *metrics
	limiter *limiter
	ready   atomic.Pointer[readiness]
	// drained is cancelled by Shutdown: /readyz answers 503 from then on,
	// and health watches end.
	drained    context.Context
	endWatches context.CancelFunc

	audit    AuditRecorder
	auditLog AuditLog
	backup   func(ctx context.Context, w io.Writer) error
	rewrap   func(ctx context.Context, w io.Writer) error
	// storeFile is the file backup and rewrap work on.
	storeFile string
	opsHost   string
}

// New returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Keystore == nil || cfg.Passwords == nil || cfg.Policy == nil {
		return nil, errors.New("server: Keystore, Passwords and Policy are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := cfg.Limits.Validate(); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	cfg.Limits = cfg.Limits.withDefaults()
	m := newMetrics()
	ks := cfg.Keystore
	m.registry.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "custos_key_cache_hits_total", Help: "Key lookups served from the cache."},
			func() float64 { h, _, _ := ks.CacheStats(); return float64(h) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "custos_key_cache_misses_total", Help: "Key lookups that loaded from storage (and the root, for a tenant KEK not cached)."},
			func() float64 { _, mi, _ := ks.CacheStats(); return float64(mi) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "custos_key_cache_evictions_total", Help: "Cached keys and tenant KEKs evicted to make room (cache.size)."},
			func() float64 { _, _, ev := ks.CacheStats(); return float64(ev) }),
	)
	pw := cfg.Passwords
	m.registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "custos_password_hashing_running", Help: "Password hashes running now on the hashing pool."},
			func() float64 { return float64(pw.Stats().Running) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "custos_password_hashing_queued", Help: "Password hashing calls waiting for a worker (queue depth)."},
			func() float64 { return float64(pw.Stats().Queued) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "custos_password_hashing_rejected_total", Help: "Password hashing calls refused with RESOURCE_EXHAUSTED because the queue was full (passwords.hash_queue)."},
			func() float64 { return float64(pw.Stats().Rejected) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "custos_password_lockouts_total", Help: "Subjects locked out after too many failed verifications."},
			func() float64 { return float64(pw.Stats().Lockouts) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "custos_password_locked_refusals_total", Help: "Verifications refused SUBJECT_LOCKED: their subject locked out, or at its limit counting the attempts in flight."},
			func() float64 { return float64(pw.Stats().LockedRefusals) }),
		schedulerCollector{ks},
	)
	for _, c := range cfg.Collectors {
		if err := m.registry.Register(c); err != nil {
			return nil, fmt.Errorf("server: audit metrics: %w", err)
		}
	}
	drained, endWatches := context.WithCancel(context.Background())
	return &Server{
		ks: cfg.Keystore, pw: cfg.Passwords, policy: cfg.Policy, logger: cfg.Logger, limits: cfg.Limits,
		health: health.NewServer(), metrics: m, limiter: newLimiter(cfg.Policy, m.rateLimited),
		audit: cfg.Audit, auditLog: cfg.AuditLog, backup: cfg.Backup, rewrap: cfg.RootRewrap, storeFile: cfg.StoreFile, opsHost: cfg.OpsHost,
		drained: drained, endWatches: endWatches,
	}, nil
}

// Register registers the Custos services, health and reflection on r.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	r.RegisterService(auditUndecodable(&custosv1.KeyService_ServiceDesc), keyService{Server: s})
	r.RegisterService(auditUndecodable(&custosv1.CryptoService_ServiceDesc), cryptoService{Server: s})
	r.RegisterService(auditUndecodable(&custosv1.AuditService_ServiceDesc), auditService{Server: s})
	r.RegisterService(auditUndecodable(&healthpb.Health_ServiceDesc), healthService{s.health, s.drained})
	for _, svc := range []string{"", custosv1.KeyService_ServiceDesc.ServiceName, custosv1.CryptoService_ServiceDesc.ServiceName, custosv1.AuditService_ServiceDesc.ServiceName} {
		s.health.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
	if sr, ok := r.(reflection.GRPCServer); ok {
		reflection.Register(sr)
	}
}

// Shutdown marks every service NOT_SERVING and /readyz 503 ("draining"), so
// load balancers and probers drain the server before it stops.
func (s *Server) Shutdown() {
	s.health.Shutdown()
	s.endWatches()
}

// healthService is gRPC's health service whose watches end when the
// server drains: a watch returns only when its stream ends, and a graceful
// stop waits for every handler, so a peer watching (client-side health
// checking) held every stop to shutdown_timeout.
type healthService struct {
	*health.Server
	drained context.Context
}

// Watch is health.Server's, ended once the server drains with a last
// NOT_SERVING. The watch then ends OK, not UNAVAILABLE: its end is the
// expected part of every stop, not a failure to log at error level once per
// watching connection.
func (h healthService) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	defer context.AfterFunc(h.drained, cancel)()
	err := h.Server.Watch(req, watchStream{stream, ctx})
	if h.drained.Err() == nil || stream.Context().Err() != nil {
		return err
	}
	// The watch has returned, so this is the only send: whichever of the
	// NOT_SERVING update and the drain the watch saw first, the watcher
	// hears NOT_SERVING last.
	return stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_NOT_SERVING})
}

// watchStream is a watch's stream with a context that also ends on drain.
type watchStream struct {
	healthpb.Health_WatchServer
	ctx context.Context
}

func (w watchStream) Context() context.Context { return w.ctx }

// KeepaliveEnforcement lets clients ping every 10 seconds (gRPC's floor
// for its clients), idle connections too: the Go client pings a connection
// with calls open after 30 s of silence (client.Config.KeepaliveTime) to
// find connections the network dropped silently; other clients may ping
// idle ones. gRPC's default allowed one ping in 5 minutes, and none without
// a call, and ended the connection of a client that pinged more often.
var KeepaliveEnforcement = keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}

// NewGRPCServer returns a *grpc.Server that serves only mutual TLS with
// tlsConf and has s registered. Unary calls go through one interceptor
// (metrics, recovery, identity, validation, the request path's
// authorization, rate limits and audit event, the call log); streams through
// a chain that authenticates and audits them before anything else can
// refuse them.
func (s *Server) NewGRPCServer(tlsConf *tls.Config, opts ...grpc.ServerOption) (*grpc.Server, error) {
	tlsConf, err := s.perHandshake(tlsConf)
	if err != nil {
		return nil, err
	}
	validator, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("server: protovalidate: %w", err)
	}
	rec := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		// The panic value may hold request data: log only its type and the stack.
		s.logger.LogAttrs(ctx, slog.LevelError, "panic in handler", slog.String("panic_type", fmt.Sprintf("%T", p)), slog.String("stack", string(debug.Stack())))
		return status.Error(codes.Internal, "internal error")
	})
	logOpts := []logging.Option{
		logging.WithLogOnEvents(logging.FinishCall),
		logging.WithLevels(codeToLevel),
		logging.WithDurationField(func(time.Duration) logging.Fields { return nil }),
		logging.WithFieldsFromContext(callFields),
	}
	logger := logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		s.logger.Log(ctx, slog.Level(lvl), msg, fields...)
	})
	all := []grpc.ServerOption{
		grpc.Creds(expiringCreds{credentials.NewTLS(tlsConf)}),
		// Calls run on long-lived goroutines whose stacks have already grown
		// through the interceptor chain: a new goroutine per call spent a
		// sixth of the server's CPU growing its stack (runtime.newstack).
		// When all are busy, gRPC starts a goroutine for the call as before.
		grpc.NumStreamWorkers(streamWorkers),
		// Calls at once on one connection (gRPC's default is unbounded): a
		// caller holding streams open (health watches, requests it never
		// finishes sending) costs the server a goroutine and buffers each.
		grpc.MaxConcurrentStreams(MaxStreamsPerConnection),
		// The limit bounds requests. Answers keep gRPC's own (2 GiB):
		// an answer is bounded by its request and is built, recorded and
		// counted before gRPC sends it, so a send limit would fail a call
		// whose event, metrics and log said OK (a batch's answer outgrows
		// its request by its ciphertexts' overhead and item statuses).
		grpc.MaxRecvMsgSize(s.limits.MaxMessageBytes),
		// A request's headers (its path and metadata) are small; gRPC's
		// default bound is 16 MiB a request.
		grpc.MaxHeaderListSize(MaxHeaderListSize),
		grpc.KeepaliveEnforcementPolicy(KeepaliveEnforcement),
		grpc.UnknownServiceHandler(unknownMethod),
		grpc.ChainUnaryInterceptor((&unaryPath{s: s, validator: validator}).intercept),
		grpc.ChainStreamInterceptor(
			s.metrics.stream,
			recovery.StreamServerInterceptor(rec),
			// Authenticates, audits and refuses all but public streams,
			// before anything else can refuse the call unaudited; the
			// recovery after it turns a handler's panic into the INTERNAL
			// its event records.
			s.streamRequestPath,
			recovery.StreamServerInterceptor(rec),
			logging.StreamServerInterceptor(logger, logOpts...),
			protovalidatemw.StreamServerInterceptor(validator),
		),
	}
	gs := grpc.NewServer(append(all, opts...)...)
	s.Register(gs)
	return gs, nil
}

// MaxHeaderListSize bounds the headers of one request.
const MaxHeaderListSize = 64 << 10

// streamWorkers is how many goroutines serve calls (grpc.NumStreamWorkers).
const streamWorkers = 256

// MaxStreamsPerConnection is how many calls one connection may have in
// flight at once; more wait for one to end.
const MaxStreamsPerConnection = 1024

// callFields are the fields Custos adds to a stream's log line: its
// request id and the caller's identity.
func callFields(ctx context.Context) logging.Fields {
	var f logging.Fields
	if rid, ok := ctx.Value(requestIDKey{}).(string); ok {
		f = append(f, "request_id", rid)
	}
	if id, ok := identity.FromContext(ctx); ok {
		f = append(f, "identity", id)
	}
	return f
}

// requestIDKey carries a stream's request id to its call log line.
type requestIDKey struct{}

// codeToLevel logs successful calls at debug level only, so the hot path does
// not write a log line per request at the default info level.
func codeToLevel(c codes.Code) logging.Level {
	switch c {
	case codes.OK:
		return logging.LevelDebug
	case codes.Internal, codes.Unknown, codes.DataLoss, codes.Unavailable:
		return logging.LevelError
	}
	return logging.LevelInfo
}

// perHandshake checks tlsConf and, when it chooses a configuration per
// handshake (certificate reload), returns a copy whose GetConfigForClient
// holds every chosen configuration to the same rules.
func (s *Server) perHandshake(tlsConf *tls.Config) (*tls.Config, error) {
	if err := checkServerTLS(tlsConf, true); err != nil {
		return nil, err
	}
	if get := tlsConf.GetConfigForClient; get != nil {
		// A configuration chosen per handshake (certificate reload) is held
		// to the same rules at every handshake.
		tlsConf = tlsConf.Clone()
		tlsConf.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := get(hello)
			switch {
			case err != nil:
			case c == nil:
				// crypto/tls would fall back to the top-level config,
				// which need not name ClientCAs.
				err = errors.New("server: GetConfigForClient returned no configuration")
			default:
				err = checkServerTLS(c, false)
			}
			return c, err
		}
	}
	return tlsConf, nil
}

// checkServerTLS refuses a configuration that would not verify clients
// against a configured CA with TLS 1.3. A configuration with
// GetConfigForClient (top is true) needs no ClientCAs itself: the one it
// returns is checked at each handshake.
func checkServerTLS(c *tls.Config, top bool) error {
	switch {
	case c == nil || c.ClientAuth != tls.RequireAndVerifyClientCert:
		return errors.New("server: mutual TLS (RequireAndVerifyClientCert) is required")
	case c.ClientCAs == nil && !(top && c.GetConfigForClient != nil):
		return errors.New("server: ClientCAs is required (client certificates must chain to the configured CA, not the system roots)")
	case c.MinVersion < tls.VersionTLS13:
		return errors.New("server: TLS 1.3 is required (MinVersion)")
	}
	return nil
}

// TLSConfig returns the server's mutual-TLS configuration: TLS 1.3 only,
// client certificates required and verified against the CA bundle in
// clientCAFile. It is tlssource's, as custos serve uses: the files are
// read again when they change.
func TLSConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	src, err := tlssource.Load(certFile, keyFile, clientCAFile, tlssource.Options{Name: "server TLS"})
	if err != nil {
		return nil, err
	}
	return tlssource.ServerConfig(src), nil
}

// schedulerCollector exports the scheduler's actions in this process as
// custos_scheduler_actions_total{action}: rotate, destroy, shred.
type schedulerCollector struct{ ks *keystore.Service }

var schedulerActionsDesc = prometheus.NewDesc("custos_scheduler_actions_total",
	"What the scheduler did in this process: keys rotated automatically, key versions destroyed on their date, tenants shredded on their deletion date.",
	[]string{"action"}, nil)

// Describe implements prometheus.Collector.
func (c schedulerCollector) Describe(ch chan<- *prometheus.Desc) { ch <- schedulerActionsDesc }

// Collect implements prometheus.Collector.
func (c schedulerCollector) Collect(ch chan<- prometheus.Metric) {
	r, d, s := c.ks.SchedulerStats()
	ch <- prometheus.MustNewConstMetric(schedulerActionsDesc, prometheus.CounterValue, float64(r), "rotate")
	ch <- prometheus.MustNewConstMetric(schedulerActionsDesc, prometheus.CounterValue, float64(d), "destroy")
	ch <- prometheus.MustNewConstMetric(schedulerActionsDesc, prometheus.CounterValue, float64(s), "shred")
}
