// Package config reads the YAML configuration of `custos serve`. Relative
// paths in the file are resolved against the file's own directory.
// examples/custos.yaml is a commented example.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/custos-kms/custos/internal/yamlint"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/server"
)

// Config is the whole configuration.
type Config struct {
	// Listen is the gRPC address, host:port. Default 127.0.0.1:8443.
	Listen string `yaml:"listen"`
	// TLS holds the server certificate and the CA that verifies clients.
	TLS TLS `yaml:"tls"`
	// PolicyFile maps identities to tenants and permissions; reloaded on SIGHUP.
	PolicyFile string `yaml:"policy_file"`
	// Root selects the root key provider.
	Root Root `yaml:"root"`
	// Storage selects the storage backend.
	Storage Storage `yaml:"storage"`
	// Cache bounds unwrapped key material held in memory.
	Cache Cache `yaml:"cache"`
	// Limits bound requests.
	Limits Limits `yaml:"limits"`
	// Log configures structured logging.
	Log Log `yaml:"log"`
	// ShutdownTimeout bounds a graceful stop before open calls are cut. Default 10s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// Ops is the local HTTP listener for /healthz, /readyz and /metrics.
	Ops Ops `yaml:"ops"`
	// Scheduler runs automatic rotation, scheduled destruction and tenant
	// shredding (one replica at a time holds its lease).
	Scheduler Scheduler `yaml:"scheduler"`
	// Passwords bounds the CPU that password hashing may take.
	Passwords Passwords `yaml:"passwords"`
	// GCPercent is the Go garbage collector's target (GOGC) for custos
	// serve and dev: the heap may grow to (1 + GCPercent/100) × the live
	// heap, most of which is the key cache. Default 400; the GOGC
	// environment variable, when set, wins (docs/performance.md).
	GCPercent int `yaml:"gc_percent"`
	// Audit configures the audit trail (docs/audit.md).
	Audit Audit `yaml:"audit"`
	// Tracing exports OpenTelemetry traces over OTLP; off unless an
	// endpoint is set.
	Tracing Tracing `yaml:"tracing"`
}

// Tracing configures OpenTelemetry traces: a server span per call (gRPC's
// otelgrpc instrumentation, which records method, status and peer, never
// messages), joined to the caller's trace by its W3C traceparent, exported
// over OTLP/gRPC.
type Tracing struct {
	// Endpoint is the OTLP/gRPC collector, host:port; empty turns tracing
	// off (the default).
	Endpoint string `yaml:"endpoint"`
	// Insecure sends to the collector without TLS (a local agent).
	Insecure bool `yaml:"insecure"`
	// CAFile verifies the collector's certificate; empty means the system
	// roots.
	CAFile string `yaml:"ca_file"`
	// SampleRatio is the share of calls without a sampled parent that are
	// traced, 0 to 1 (default 1); a caller's sampling decision is followed.
	SampleRatio *float64 `yaml:"sample_ratio"`
	// ServiceName is the resource's service.name (default "custos").
	ServiceName string `yaml:"service_name"`
}

// Audit configures the audit trail: one event per call, durable before the
// call is answered, leaves of a Merkle tree with signed checkpoints.
type Audit struct {
	// Disabled turns the audit trail off: no events, and AuditService
	// answers FAILED_PRECONDITION. For benchmarks; a regulated deployment
	// keeps it on.
	Disabled bool `yaml:"disabled"`
	// Spool is the path prefix of a local journal that takes events while
	// the store cannot, so a storage outage does not fail calls that can
	// still be served. Default: next to a bbolt file (<path>.audit-spool);
	// with PostgreSQL, DefaultPostgresSpool. "off": none (a storage outage
	// then fails calls closed).
	Spool string `yaml:"spool"`
	// FailOpen answers calls whose event could be made durable nowhere,
	// counting them in custos_audit_dropped_total and logging at error
	// level. Default false: such calls fail with UNAVAILABLE.
	FailOpen bool `yaml:"fail_open"`
	// SyncInterval relaxes the local journal's durability (docs/audit.md):
	// events are written to the operating system before their calls are
	// answered and synced to disk at this interval. They survive the
	// server process dying (kill -9, OOM, panic) but not a power loss or a
	// kernel crash within the interval. Default 0: every group of events is
	// on disk before its calls are answered. With PostgreSQL it applies only
	// to the spool; events the database takes are its commits either way.
	SyncInterval time.Duration `yaml:"sync_interval"`
	// CheckpointInterval is how often new events are integrated into the
	// tree and a checkpoint signed. Default 2s.
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"`
	// Retention: event bodies older than this are deleted (their hashes
	// stay, so the log still verifies). Default 2160h (90 days); negative:
	// keep them forever.
	Retention time.Duration `yaml:"retention"`
	// Origin names the log in its checkpoints and signing key. Default
	// custos-audit. Only read when the signing key is created.
	Origin string `yaml:"origin"`
	// Export writes every event as a JSON line, for log shippers.
	Export AuditExport `yaml:"export"`
}

// AuditExport configures the JSON-lines export of audit events.
type AuditExport struct {
	// Path of the export file, "-" for standard output; empty: no export.
	Path string `yaml:"path"`
	// MaxSizeMB rotates the file at this size. Default 100.
	MaxSizeMB int `yaml:"max_size_mb"`
	// MaxFiles is how many rotated files are kept. Default 10.
	MaxFiles int `yaml:"max_files"`
}

// MaxHashWorkers and MaxHashQueue bound the password-hashing pool: each
// worker holds an OS thread (Go stops a process past 10,000) and a hash's
// memory, and each queued hash a slot.
const (
	MaxHashWorkers = 1024
	MaxHashQueue   = 1 << 20
)

// DefaultGCPercent is the default gc_percent: with a full key cache the
// collector otherwise scans it so often that a million-tenant deployment's
// p99 was 1.31× a small one's (docs/performance.md).
const DefaultGCPercent = 400

// Passwords configures the password-hashing pool (bcrypt, argon2id). Zero
// fields take the keystore's defaults (docs/passwords.md).
type Passwords struct {
	// HashWorkers bounds the hashes computed at once.
	HashWorkers int `yaml:"hash_workers"`
	// HashQueue bounds the hashes waiting for a worker; beyond it calls fail
	// with RESOURCE_EXHAUSTED. Negative: none may wait.
	HashQueue int `yaml:"hash_queue"`
	// HashNice is the scheduling niceness (1–19) of the threads that hash:
	// the OS gives encryption the CPU first. Default 10; negative: hash at
	// normal priority on the callers' goroutines.
	HashNice int `yaml:"hash_nice"`
	// MaxBcryptCost and the argon2id maxima cap every PASSWORD key's
	// policy (the pool is shared by all tenants); zero: the keystore's
	// defaults (bcrypt 16, 256 MiB, 16 passes, 4 lanes).
	MaxBcryptCost        int    `yaml:"max_bcrypt_cost"`
	MaxArgon2MemoryKiB   uint32 `yaml:"max_argon2_memory_kib"`
	MaxArgon2Iterations  uint32 `yaml:"max_argon2_iterations"`
	MaxArgon2Parallelism uint32 `yaml:"max_argon2_parallelism"`
}

// Limits are the password policy caps as the keystore takes them.
func (p Passwords) Limits() keystore.PasswordLimits {
	return keystore.PasswordLimits{BcryptCost: p.MaxBcryptCost, Argon2MemoryKiB: p.MaxArgon2MemoryKiB, Argon2Iterations: p.MaxArgon2Iterations, Argon2Parallelism: p.MaxArgon2Parallelism}
}

// Ops configures the operations listener.
type Ops struct {
	// Listen is host:port, default 127.0.0.1:9464; "off" disables it.
	// It has no authentication: keep it on loopback or a private network.
	Listen string `yaml:"listen"`
	// ProbeInterval is how often the storage and the root are probed for
	// /readyz and gRPC health. Default 5s. Each probe may take as long, and
	// at least 5s.
	ProbeInterval time.Duration `yaml:"probe_interval"`
	// Backup serves GET /backup on the ops listener: a backup of the store
	// taken by this server, which custos backup fetches when the store is
	// a bbolt file the server holds. bbolt only; default off (custos dev
	// turns it on). The file is encrypted under the root, but anyone who
	// reaches the listener can take one.
	Backup bool `yaml:"backup"`
	// RootRewrap serves POST /root/rewrap on the ops listener: this server
	// re-wraps the store's KEKs under the root's current version, which
	// custos root rewrap asks for when the store is a bbolt file the
	// server holds. bbolt only; default off (custos dev turns it on).
	// Anyone who reaches the listener and names the store's file can start
	// one: it changes no key, only their wrapping, at the cost of root
	// calls; its answer holds counts, not tenant names.
	RootRewrap bool `yaml:"root_rewrap"`
	// Pprof serves Go's profiles under /debug/pprof/ on the ops listener.
	// Off by default: profiles show what the process is doing (never key
	// material, but function names and timings).
	Pprof bool `yaml:"pprof"`
}

// Scheduler configures the background lifecycle work. Zero fields take the
// keystore's defaults (docs/lifecycle.md).
type Scheduler struct {
	// Interval between passes of the lease holder. Default 30s.
	Interval time.Duration `yaml:"interval"`
	// LeaseTTL is how long a dead holder's lease blocks the other replicas.
	// Default 3 × Interval; it must exceed Interval.
	LeaseTTL time.Duration `yaml:"lease_ttl"`
	// FlushInterval is how often every replica adds its encryption counts
	// to storage. Default 10s.
	FlushInterval time.Duration `yaml:"flush_interval"`
	// SweepInterval is how often the lease holder visits every tenant and
	// key instead of only the work its due-time index says is due.
	// Default 24h.
	SweepInterval time.Duration `yaml:"sweep_interval"`
	// UsageRotateThreshold is how many encryptions a version of an ENCRYPT
	// key makes before it is rotated automatically. Default 2^30 − 2^27.
	UsageRotateThreshold uint64 `yaml:"usage_rotate_threshold"`
	// Disabled keeps this replica out of the lease; it still flushes its
	// encryption counts.
	Disabled bool `yaml:"disabled"`
}

// TLS holds the server's certificate and the CA bundle that verifies
// clients: PEM files, read again when they change, or the SPIFFE Workload
// API.
type TLS struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
	// ReloadInterval is the longest a change to the three files goes
	// unnoticed (default 5s); SIGHUP reloads them at once.
	ReloadInterval time.Duration `yaml:"reload_interval"`
	// MaxConnectionAge is how long a client connection lasts before the
	// server ends it gracefully (HTTP/2 GOAWAY: calls in flight finish)
	// and the client reconnects, verified against the bundle and
	// presenting the certificates current then: a CA dropped from the
	// bundle stops serving within it. Default 30m; negative: never.
	MaxConnectionAge time.Duration `yaml:"max_connection_age"`
	// SPIFFE takes the certificate and bundle from a SPIFFE Workload API
	// instead of the files.
	SPIFFE SPIFFE `yaml:"spiffe"`
}

// SPIFFE configures X509-SVIDs from the SPIFFE Workload API.
type SPIFFE struct {
	// WorkloadAPI is the agent's address, e.g.
	// "unix:///run/spire/agent/public/api.sock"; setting it turns SPIFFE on.
	WorkloadAPI string `yaml:"workload_api"`
}

// Storage selects the storage backend; Type names the one configured.
type Storage struct {
	// Type is "bbolt", "postgres" or "memory" (tests only: nothing survives a restart).
	Type     string         `yaml:"type"`
	Bbolt    BboltConfig    `yaml:"bbolt"`
	Postgres PostgresConfig `yaml:"postgres"`
}

// PostgresConfig is the shared store of a multi-replica deployment. Give the
// connection URL in exactly one of URL, URLFile or URLEnv; keep passwords out
// of the config file with the latter two.
type PostgresConfig struct {
	// URL is a libpq/pgx connection string, e.g. postgres://custos@db:5432/custos?sslmode=verify-full.
	URL string `yaml:"url"`
	// URLFile is a file holding the URL (e.g. a mounted secret).
	URLFile string `yaml:"url_file"`
	// URLEnv names an environment variable holding the URL.
	URLEnv string `yaml:"url_env"`
	// MaxConns bounds the connection pool; 0 is the driver's default.
	MaxConns int32 `yaml:"max_conns"`
}

// BboltConfig is the embedded single-file store.
type BboltConfig struct {
	Path string `yaml:"path"`
}

// Cache bounds unwrapped material in memory. Zero fields take the
// keystore's defaults.
type Cache struct {
	// Size bounds the cached tenant KEKs and, separately, keys. Default 10000.
	Size int `yaml:"size"`
	// TTL is how long unwrapped material stays cached. Default 5m.
	TTL time.Duration `yaml:"ttl"`
	// UnavailableGrace is how long past TTL cached material keeps serving
	// while the root or the storage is unreachable. Default 1h; negative
	// turns it off.
	UnavailableGrace time.Duration `yaml:"unavailable_grace"`
}

// Limits bound requests; zero takes the server's default.
type Limits struct {
	MaxPlaintextBytes int `yaml:"max_plaintext_bytes"`
	MaxBatchItems     int `yaml:"max_batch_items"`
	MaxMessageBytes   int `yaml:"max_message_bytes"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
}

// PostgresURL returns the configured connection URL, reading the file or
// environment variable it names.
func (p PostgresConfig) PostgresURL() (string, error) {
	switch {
	case p.URL != "":
		return p.URL, nil
	case p.URLFile != "":
		b, err := os.ReadFile(p.URLFile)
		if err != nil {
			return "", fmt.Errorf("storage.postgres.url_file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	case p.URLEnv != "":
		if v := os.Getenv(p.URLEnv); v != "" {
			return v, nil
		}
		return "", fmt.Errorf("storage.postgres.url_env: $%s is empty", p.URLEnv)
	}
	return "", errors.New("storage.postgres: no url configured")
}

// DefaultMaxConnectionAge is tls.max_connection_age's default.
const DefaultMaxConnectionAge = 30 * time.Minute

// Load reads, defaults and validates the file at path.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(b, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes YAML, resolving relative paths against baseDir.
func Parse(b []byte, baseDir string) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the file holds no settings")
		}
		return nil, err
	}
	// A second document would be ignored: refuse it (an empty one, as a
	// trailing "---" makes, holds nothing to ignore).
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil || !emptyDocument(&n) {
			return nil, errors.New("the file holds more than one YAML document; put every setting in one")
		}
	}
	// yaml.v3 truncates 1.5 into an integer and reads 010 as octal: refuse
	// both rather than run with a number nobody wrote.
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	if err := yamlint.Check(&doc, reflect.TypeOf(c)); err != nil {
		return nil, err
	}
	c.resolvePaths(baseDir)
	return &c, c.Validate()
}

// emptyDocument reports whether n, a decoded YAML document, holds nothing.
func emptyDocument(n *yaml.Node) bool {
	if n.Kind == 0 || len(n.Content) == 0 {
		return true
	}
	c := n.Content[0]
	return n.Kind == yaml.DocumentNode && c.Kind == yaml.ScalarNode && c.Tag == "!!null"
}

// Validate fills in the defaults of unset fields and checks the whole
// configuration, reporting every problem at once. Parse calls it; a program
// that builds a Config in code calls it before using it.
func (c *Config) Validate() error {
	c.setDefaults()
	return c.validate()
}

func (c *Config) resolvePaths(baseDir string) {
	for _, p := range c.paths() {
		if *p == "-" || *p == "off" {
			continue
		}
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(baseDir, *p)
		}
	}
	c.Root.resolvePaths(baseDir)
}

// paths are the path settings outside the root's.
func (c *Config) paths() []*string {
	return []*string{&c.TLS.CertFile, &c.TLS.KeyFile, &c.TLS.ClientCAFile, &c.PolicyFile, &c.Storage.Bbolt.Path, &c.Storage.Postgres.URLFile, &c.Audit.Spool, &c.Audit.Export.Path, &c.Tracing.CAFile}
}

// Files are the paths the configuration names, the root's among them
// (the store, its key files…), so that a command writing a file can
// refuse to write over one of them. FilePrefixes names the files it makes
// beside them.
func (c *Config) Files() []string {
	var files []string
	for _, p := range append(c.paths(), c.Root.paths()...) {
		if *p != "" && *p != "-" && *p != "off" {
			files = append(files, *p)
		}
	}
	return files
}

// FilePrefixes are the beginnings of the paths of files the server makes
// from a setting: the audit spool's segments and lock ("<spool>.…"), the
// audit export's rotated files ("<name>-<time><ext>").
func (c *Config) FilePrefixes() []string {
	var prefixes []string
	if sp := c.Audit.Spool; sp != "" && sp != "off" {
		prefixes = append(prefixes, sp+".")
	}
	if ex := c.Audit.Export.Path; ex != "" && ex != "-" {
		prefixes = append(prefixes, strings.TrimSuffix(ex, filepath.Ext(ex))+"-")
	}
	return prefixes
}

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8443"
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.Ops.Listen == "" {
		c.Ops.Listen = "127.0.0.1:9464"
	}
	if c.TLS.MaxConnectionAge == 0 {
		c.TLS.MaxConnectionAge = DefaultMaxConnectionAge
	}
	if c.GCPercent == 0 {
		c.GCPercent = DefaultGCPercent
	}
	if c.Ops.ProbeInterval == 0 {
		c.Ops.ProbeInterval = 5 * time.Second
	}
	if c.Audit.Spool == "" && c.Storage.Type == "bbolt" && c.Storage.Bbolt.Path != "" {
		c.Audit.Spool = c.Storage.Bbolt.Path + ".audit-spool"
	}
	if c.Audit.Spool == "" && c.Storage.Type == "postgres" {
		c.Audit.Spool = DefaultPostgresSpool(c.Listen)
	}
	if c.Audit.CheckpointInterval == 0 {
		c.Audit.CheckpointInterval = 2 * time.Second
	}
	if c.Audit.Retention == 0 {
		c.Audit.Retention = 90 * 24 * time.Hour
	}
}

func (c *Config) validate() error {
	var errs []error
	need := func(field, v string) {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is required", field))
		}
	}
	if c.TLS.SPIFFE.WorkloadAPI == "" {
		need("tls.cert_file", c.TLS.CertFile)
		need("tls.key_file", c.TLS.KeyFile)
		need("tls.client_ca_file", c.TLS.ClientCAFile)
	} else if c.TLS.CertFile != "" || c.TLS.KeyFile != "" || c.TLS.ClientCAFile != "" {
		errs = append(errs, errors.New("tls: set either spiffe.workload_api or cert_file, key_file and client_ca_file, not both"))
	}
	if r := c.Tracing.SampleRatio; r != nil && !(*r >= 0 && *r <= 1) { // NaN too
		errs = append(errs, errors.New("tracing.sample_ratio must be between 0 and 1"))
	}
	if c.Tracing.Endpoint == "" && (c.Tracing.Insecure || c.Tracing.CAFile != "" || c.Tracing.SampleRatio != nil) {
		errs = append(errs, errors.New("tracing: insecure, ca_file or sample_ratio set without tracing.endpoint (which turns tracing on)"))
	}
	if c.Tracing.Insecure && c.Tracing.CAFile != "" {
		errs = append(errs, errors.New("tracing: set insecure or ca_file, not both"))
	}
	if c.TLS.ReloadInterval < 0 {
		errs = append(errs, errors.New("tls.reload_interval must not be negative"))
	}
	if n := c.Passwords.HashWorkers; n > MaxHashWorkers {
		errs = append(errs, fmt.Errorf("passwords.hash_workers %d is more than %d: each worker holds an OS thread, and a hash's memory", n, MaxHashWorkers))
	}
	if n := c.Passwords.HashQueue; n > MaxHashQueue {
		errs = append(errs, fmt.Errorf("passwords.hash_queue %d is more than %d", n, MaxHashQueue))
	}
	if c.TLS.ReloadInterval != 0 && c.TLS.SPIFFE.WorkloadAPI != "" {
		errs = append(errs, errors.New("tls.reload_interval applies to cert_file, key_file and client_ca_file; the SPIFFE Workload API sends new SVIDs itself: remove it"))
	}
	need("policy_file", c.PolicyFile)
	errs = append(errs, c.Root.validate()...)
	switch c.Storage.Type {
	case "bbolt":
		need("storage.bbolt.path", c.Storage.Bbolt.Path)
	case "postgres":
		n := 0
		for _, v := range []string{c.Storage.Postgres.URL, c.Storage.Postgres.URLFile, c.Storage.Postgres.URLEnv} {
			if v != "" {
				n++
			}
		}
		if n != 1 {
			errs = append(errs, errors.New("storage.postgres needs exactly one of url, url_file, url_env"))
		}
	case "memory":
	default:
		errs = append(errs, fmt.Errorf("storage.type %q is not one of: bbolt, postgres, memory", c.Storage.Type))
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level %q is not one of: debug, info, warn, error", c.Log.Level))
	}
	for _, f := range []struct {
		name     string
		negative bool
	}{
		{"cache.size", c.Cache.Size < 0}, {"cache.ttl", c.Cache.TTL < 0}, {"shutdown_timeout", c.ShutdownTimeout < 0},
		{"ops.probe_interval", c.Ops.ProbeInterval < 0}, {"scheduler.interval", c.Scheduler.Interval < 0},
		{"scheduler.lease_ttl", c.Scheduler.LeaseTTL < 0}, {"scheduler.flush_interval", c.Scheduler.FlushInterval < 0},
		{"scheduler.sweep_interval", c.Scheduler.SweepInterval < 0}, {"passwords.hash_workers", c.Passwords.HashWorkers < 0},
	} {
		if f.negative {
			errs = append(errs, fmt.Errorf("%s must not be negative", f.name))
		}
	}
	interval := c.Scheduler.Interval
	if interval == 0 {
		interval = keystore.DefaultSchedulerInterval
	}
	if c.Scheduler.LeaseTTL > 0 && c.Scheduler.LeaseTTL <= interval {
		errs = append(errs, fmt.Errorf("scheduler.lease_ttl %v must exceed scheduler.interval %v", c.Scheduler.LeaseTTL, interval))
	}
	if c.GCPercent < 0 {
		errs = append(errs, fmt.Errorf("gc_percent %d must be positive", c.GCPercent))
	}
	if c.Passwords.HashNice > 19 {
		errs = append(errs, fmt.Errorf("passwords.hash_nice %d is above 19", c.Passwords.HashNice))
	}
	if _, err := c.Passwords.Limits().WithDefaults(); err != nil {
		errs = append(errs, fmt.Errorf("passwords: %w", err))
	}
	if c.Scheduler.UsageRotateThreshold > keystore.MaxUsageRotateThreshold {
		errs = append(errs, fmt.Errorf("scheduler.usage_rotate_threshold %d is above %d (2^30): AES-GCM with random nonces must rotate by 2^30 encryptions, and the counts reach the scheduler late (the default leaves 2^27 for that)", c.Scheduler.UsageRotateThreshold, uint64(keystore.MaxUsageRotateThreshold)))
	}
	if c.Audit.CheckpointInterval < 0 || c.Audit.Export.MaxSizeMB < 0 || c.Audit.Export.MaxFiles < 0 {
		errs = append(errs, errors.New("audit.checkpoint_interval, audit.export.max_size_mb and audit.export.max_files must not be negative"))
	}
	if si := c.Audit.SyncInterval; si != 0 && (si < time.Millisecond || si > time.Minute) {
		errs = append(errs, fmt.Errorf("audit.sync_interval %v: want 0 (sync before answering) or 1ms to 1m", si))
	}
	if c.Audit.Origin != "" && !validOrigin(c.Audit.Origin) {
		errs = append(errs, fmt.Errorf("audit.origin %q must be printable ASCII without spaces or '+'", c.Audit.Origin))
	}
	errs = append(errs, c.Limits.validate()...)
	if c.Storage.Postgres.MaxConns < 0 {
		errs = append(errs, fmt.Errorf("storage.postgres.max_conns %d must not be negative (0: the default)", c.Storage.Postgres.MaxConns))
	}
	return errors.Join(errs...)
}

func (l Limits) validate() []error {
	if err := (server.Limits{MaxPlaintextBytes: l.MaxPlaintextBytes, MaxBatchItems: l.MaxBatchItems, MaxMessageBytes: l.MaxMessageBytes}).Validate(); err != nil {
		return []error{err}
	}
	return nil
}

// validOrigin: a note key name (golang.org/x/mod/sumdb/note): non-empty,
// printable ASCII without spaces or '+'.
func validOrigin(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f || s[i] == '+' {
			return false
		}
	}
	return s != ""
}

// DefaultPostgresSpool is a PostgreSQL replica's default audit spool, in
// its state directory: systemd's $STATE_DIRECTORY, else $XDG_STATE_HOME,
// else ~/.local/state; named after the listen address, so that replicas on
// one host do not share one (a shared spool is refused at start anyway).
// Empty when there is no such directory (no $HOME), which a server then
// refuses (commands that use no spool go on): never the shared temporary
// directory, where another local user could plant or point the spool's
// files, and which a reboot empties of acknowledged events.
func DefaultPostgresSpool(listen string) string {
	dir := os.Getenv("STATE_DIRECTORY")
	if i := strings.IndexByte(dir, ':'); i >= 0 {
		dir = dir[:i]
	}
	if dir == "" {
		if x := os.Getenv("XDG_STATE_HOME"); x != "" {
			dir = filepath.Join(x, "custos")
		} else if home, err := os.UserHomeDir(); err == nil && home != "" {
			dir = filepath.Join(home, ".local", "state", "custos")
		} else {
			return ""
		}
	}
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
			return r
		}
		return '_'
	}, listen)
	return filepath.Join(dir, "audit-"+name+".spool")
}
