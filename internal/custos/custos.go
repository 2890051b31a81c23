// Package custos owns a running Custos: from one configuration it builds the
// storage, the root, the keystore, the policy, the gRPC server and the ops
// listener, runs the background work (change watch, count flush, leased
// maintenance, dependency probe, policy reload), and stops it all in order.
//
// `custos serve`, `custos dev`, client/clienttest and the test harnesses all
// run through it, so what the tests run is what users run:
//
//	rt, err := custos.New(ctx, cfg, custos.Options{})
//	if err != nil { … }
//	err = rt.Run(ctx) // until ctx is done; then drain, flush, close
package custos

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/tlssource"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/audit"
	"github.com/custos-kms/custos/keystore/backup"
	"github.com/custos-kms/custos/keystore/password"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/server"
	"github.com/custos-kms/custos/server/policy"
)

// Options adjust a Runtime for embedding and tests. The zero value runs
// exactly what the configuration says.
type Options struct {
	// Logger receives every component's logs. Default: JSON on LogWriter
	// (or stderr) at the configured level.
	Logger *slog.Logger
	// LogWriter is where the default logger writes. Default os.Stderr.
	LogWriter io.Writer
	// Root replaces the configured root; the Runtime does not close it.
	Root root.Root
	// Store replaces the configured storage; the Runtime does not close it.
	Store storage.Store
	// Now is the keystore's clock. Default time.Now.
	Now func() time.Time
	// ServerOptions are added to the gRPC server's own (for example an
	// interceptor of a test).
	ServerOptions []grpc.ServerOption
	// Register adds services to the gRPC server. Their methods need rows in
	// the server's method table; calls to methods without one are refused.
	Register func(*grpc.Server)
	// TuneRuntime makes the Runtime tune the Go runtime of its process:
	// GOMAXPROCS is raised by the password-hashing threads, so that hashing
	// does not take Go's Ps from the rest, and the GC target is set to the
	// configured gc_percent unless GOGC is in the environment. Only the
	// process's one server sets it (custos serve and dev).
	TuneRuntime bool
	// Listener, if set, is the gRPC listener in place of one bound to the
	// configured address (a socket handed over by systemd, or a test's);
	// the Runtime closes it.
	Listener net.Listener
	// Reload, if set, reloads the policy and the TLS files on every
	// receive. A process's one
	// server passes a channel registered for SIGHUP with signal.Notify as
	// its first step, so that a SIGHUP is never fatal, not during start-up
	// (it is handled once Run starts) nor during the drain.
	Reload <-chan os.Signal
}

// Runtime is a built Custos, ready to Run. Its listeners are bound by New,
// so Addr is known before Run.
type Runtime struct {
	cfg     *config.Config
	reload  <-chan os.Signal
	logger  *slog.Logger
	ks      *keystore.Service
	audit   *audit.Log    // nil with the audit trail off
	writer  *audit.Writer // nil with the audit trail off
	policy  *policy.Holder
	pw      *password.Service
	tlsFile *tlssource.Files // nil with SPIFFE
	srv     *server.Server
	gs      *grpc.Server
	lis     net.Listener
	opsLis  net.Listener
	closers []func() // run in reverse order by close
	// presence tells restores that this server writes to the store; it is
	// renewed every presenceEvery (0: backup.RunPresence's default).
	presence      *backup.Presence
	presenceEvery time.Duration
	ran           atomic.Bool
	// abandoned is set when the drain's deadline passed with handlers
	// still running (hashes): closing does not wait for them.
	abandoned atomic.Bool
}

// New builds everything cfg describes and binds the listeners. cfg must have
// passed config.Load, config.Parse or Config.Validate. Call Run, or Close if
// Run is never called.
func New(ctx context.Context, cfg *config.Config, opts Options) (_ *Runtime, err error) {
	rt := &Runtime{cfg: cfg, logger: opts.Logger, reload: opts.Reload}
	defer func() {
		if err != nil {
			rt.close()
		}
	}()
	if opts.Listener != nil {
		// Ours from here on, whatever fails first.
		rt.lis = opts.Listener
		rt.closers = append(rt.closers, func() { rt.lis.Close() })
	}
	if rt.logger == nil {
		w := opts.LogWriter
		if w == nil {
			w = os.Stderr
		}
		rt.logger = NewLogger(w, cfg.Log.Level)
	}
	// TLS first: a bad certificate fails the start before anything is
	// opened or created.
	var tlsSrc tlssource.Source
	if api := cfg.TLS.SPIFFE.WorkloadAPI; api != "" {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		sp, err := tlssource.NewSPIFFE(sctx, api)
		cancel()
		if err != nil {
			return nil, err
		}
		rt.closers = append(rt.closers, func() { sp.Close() })
		tlsSrc = sp
	} else {
		if rt.tlsFile, err = tlssource.Load(cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.TLS.ClientCAFile, tlssource.Options{
			Interval: cfg.TLS.ReloadInterval, Logger: rt.logger, Name: "server TLS",
		}); err != nil {
			return nil, err
		}
		tlsSrc = rt.tlsFile
	}
	// Then what else can fail without touching anything: the policy and
	// the listeners. A start that fails here creates no store file.
	if rt.policy, err = policy.NewHolder(cfg.PolicyFile); err != nil {
		return nil, err
	}
	if rt.lis == nil {
		if rt.lis, err = net.Listen("tcp", cfg.Listen); err != nil {
			return nil, fmt.Errorf("listen: %w", err)
		}
		rt.closers = append(rt.closers, func() { rt.lis.Close() })
	}
	if cfg.Ops.Listen != "off" {
		if rt.opsLis, err = net.Listen("tcp", cfg.Ops.Listen); err != nil {
			return nil, fmt.Errorf("ops listen: %w", err)
		}
		rt.closers = append(rt.closers, func() { rt.opsLis.Close() })
	}
	// A PostgreSQL server without a spool directory is refused before the
	// database is opened (and migrated); commands that use no spool
	// (backup, restore) take the same configuration.
	if err := checkSpool(cfg); err != nil {
		return nil, err
	}
	// Tracing before the root and the store too: a tracing.ca_file that
	// does not load fails the start before a store file, a migration or
	// an audit signing key is made.
	var tracingOpt grpc.ServerOption
	if cfg.Tracing.Endpoint != "" {
		tp, opt, err := newTracing(ctx, cfg.Tracing)
		if err != nil {
			return nil, err
		}
		// Closed after the gRPC server has stopped: the last spans are
		// flushed, for at most 5 s.
		rt.closers = append(rt.closers, func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := tp.Shutdown(sctx); err != nil {
				rt.logger.Warn("tracing: spans not flushed at shutdown", "error", err.Error())
			}
		})
		tracingOpt = opt
	}
	r := opts.Root
	if r == nil {
		if r, err = OpenRoot(ctx, cfg, rt.logger); err != nil {
			return nil, err
		}
		rt.closers = append(rt.closers, func() { CloseRoot(r) })
	}
	// Calls to the root are counted and timed (the dependency probe's too).
	mr := newMeteredRoot(r, cfg.Root.Type)
	r = mr
	store := opts.Store
	if store == nil {
		if store, err = OpenStorage(ctx, cfg, rt.logger); err != nil {
			return nil, err
		}
		rt.closers = append(rt.closers, func() {
			if err := store.Close(); err != nil {
				rt.logger.Error("closing the storage failed", "error", err.Error())
			}
		})
	}
	// A store a restore has not finished is not served: it holds part of a
	// backup. Nor is one that could not be checked (the database was
	// reachable for the migration a moment ago): it would be served once
	// it answers again. The presence record comes first, so that a
	// restore starting meanwhile refuses to write beside this server
	// (backup.Announce); it is renewed while the server runs and
	// withdrawn when it stops.
	if rt.presence, err = backup.Announce(ctx, store, "custos server "+holderID(rt.lis.Addr())); err != nil {
		return nil, err
	}
	if !rt.presence.Recorded() {
		// A full store: it serves reads (and a restore cannot write to
		// it either); the record is written once space returns.
		rt.logger.Warn("the store is full: this server's presence record waits for space (a forced restore meanwhile would not see this server)")
	}
	rt.closers = append(rt.closers, func() {
		wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := rt.presence.Withdraw(wctx); err != nil {
			rt.logger.Warn("the presence record stays until it expires (a forced restore waits for it)", "error", err.Error())
		}
	})
	kcfg := KeystoreConfig(cfg, store, r, rt.logger)
	kcfg.Now = opts.Now
	if rt.ks, err = keystore.New(kcfg); err != nil {
		return nil, err
	}
	pw, err := password.New(password.Config{
		Peppers: rt.ks,
		Store:   store,
		Workers: cfg.Passwords.HashWorkers,
		Queue:   cfg.Passwords.HashQueue,
		Nice:    cfg.Passwords.HashNice,
		Now:     opts.Now,
		Logger:  rt.logger,
	})
	if err != nil {
		return nil, err
	}
	rt.pw = pw
	rt.closers = append(rt.closers, func() {
		if rt.abandoned.Load() {
			// Hashes cut at the shutdown deadline cannot be interrupted:
			// the pool closes when they end, and the process does not
			// wait for them.
			go pw.Close()
			return
		}
		pw.Close()
	})
	if opts.TuneRuntime && os.Getenv("GOGC") == "" {
		debug.SetGCPercent(cfg.GCPercent)
	}
	if opts.TuneRuntime && pw.Niced() {
		// A hashing thread holds one of Go's Ps while it runs; give Go as
		// many more (at most one per CPU), so that encryption keeps every
		// core and the OS scheduler, by the hashing threads' niceness,
		// decides who gets the CPU. (Setting GOMAXPROCS stops Go from
		// following a container's CPU limit as it changes.)
		runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + min(pw.Workers(), runtime.NumCPU()))
	}
	var auditCfg server.Config
	if !cfg.Audit.Disabled {
		if err := rt.openAudit(ctx, store, r, opts.Now, &auditCfg); err != nil {
			return nil, err
		}
	}
	var backupFn, rewrapFn func(context.Context, io.Writer) error
	if rt.bboltOpsEndpoint(cfg, cfg.Ops.RootRewrap, "ops.root_rewrap", "POST /root/rewrap", "custos root rewrap works on this storage directly") {
		rewrapFn = func(ctx context.Context, w io.Writer) error { return RewrapRoot(ctx, store, rt.ks, r, w, false) }
	}
	if cfg.Ops.Pprof && rt.opsLis == nil {
		rt.logger.Warn("ops.pprof is on but the ops listener is off (ops.listen); /debug/pprof is not served")
	}
	if sn, ok := store.(storage.Snapshotter); ok && rt.bboltOpsEndpoint(cfg, cfg.Ops.Backup, "ops.backup", "GET /backup", "custos backup reads this storage directly") {
		backupFn = func(ctx context.Context, w io.Writer) error {
			_, err := backup.Write(ctx, w, sn, r, backup.Options{Source: cfg.Storage.Type})
			return err
		}
	}
	var storeFile string
	if backupFn != nil || rewrapFn != nil {
		// The file they work on, absolute as the CLI names it (and this
		// process could change directory): a request that means another
		// is refused.
		if storeFile, err = filepath.Abs(cfg.Storage.Bbolt.Path); err != nil {
			return nil, err
		}
	}
	rt.srv, err = server.New(server.Config{
		Backup:     backupFn,
		RootRewrap: rewrapFn,
		StoreFile:  storeFile,
		OpsHost:    opsHost(cfg.Ops.Listen),
		Audit:      auditCfg.Audit,
		AuditLog:   auditCfg.AuditLog,
		Collectors: append(auditCfg.Collectors, mr.collectors()...),
		Keystore:   rt.ks,
		Passwords:  pw,
		Policy:     rt.policy,
		Logger:     rt.logger,
		Limits: server.Limits{
			MaxPlaintextBytes: cfg.Limits.MaxPlaintextBytes,
			MaxBatchItems:     cfg.Limits.MaxBatchItems,
			MaxMessageBytes:   cfg.Limits.MaxMessageBytes,
		},
	})
	if err != nil {
		return nil, err
	}
	serverOpts := opts.ServerOptions
	age := cfg.TLS.MaxConnectionAge
	if age == 0 { // a Config built in code, not loaded
		age = config.DefaultMaxConnectionAge
	}
	if age > 0 {
		// First, so that options a caller gives (tests) win.
		serverOpts = append([]grpc.ServerOption{grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionAge: age, MaxConnectionAgeGrace: connectionAgeGrace,
		})}, serverOpts...)
	}
	if tracingOpt != nil {
		serverOpts = append(slices.Clone(serverOpts), tracingOpt)
	}
	if rt.gs, err = rt.srv.NewGRPCServer(tlssource.ServerConfig(tlsSrc), serverOpts...); err != nil {
		return nil, err
	}
	// The server's stream workers run from its creation: a Runtime
	// closed without running stops them (after Run's drain, a no-op).
	rt.closers = append(rt.closers, rt.gs.Stop)
	if opts.Register != nil {
		opts.Register(rt.gs)
	}
	return rt, nil
}

// NewLogger returns a JSON slog logger at level (debug, info, warn, error).
func NewLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level)) // validated by config
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}

// Addr is the address the gRPC listener is bound to.
func (rt *Runtime) Addr() net.Addr { return rt.lis.Addr() }

// OpsAddr is the address of the ops listener, or nil when it is off.
func (rt *Runtime) OpsAddr() net.Addr {
	if rt.opsLis == nil {
		return nil
	}
	return rt.opsLis.Addr()
}

// Keystore is the runtime's keystore, for tests and embedding programs
// that need to act on it directly (for example run one scheduler pass).
func (rt *Runtime) Keystore() *keystore.Service { return rt.ks }

// Passwords is the runtime's password hashing service.
func (rt *Runtime) Passwords() *password.Service { return rt.pw }

// AuditLog is the runtime's audit log, nil with the audit trail off.
func (rt *Runtime) AuditLog() *audit.Log { return rt.audit }

// AuditWriter is the runtime's audit writer, nil with the audit trail off.
func (rt *Runtime) AuditWriter() *audit.Writer { return rt.writer }

// FlushAudit ships the events in the spool to the store, integrates
// everything queued and signs a checkpoint, so that every call answered so
// far is in the log (tests; the running log does this every checkpoint
// interval).
func (rt *Runtime) FlushAudit(ctx context.Context) error {
	if rt.audit == nil {
		return errors.New("custos: the audit trail is off")
	}
	if err := rt.writer.ShipOnce(ctx); err != nil {
		return err
	}
	return rt.audit.Flush(ctx)
}

// Close releases what New built, for a Runtime that is never Run. It does
// nothing after Run.
func (rt *Runtime) Close() {
	if rt.ran.CompareAndSwap(false, true) {
		rt.close()
	}
}

func (rt *Runtime) close() {
	for i := len(rt.closers) - 1; i >= 0; i-- {
		rt.closers[i]()
	}
	rt.closers = nil
}

// Run serves until ctx is done or the listener fails, then stops in order:
// health turns NOT_SERVING, open calls drain (cut after the configured
// shutdown timeout), background work stops (the last count flush runs after
// the last call, the scheduler lease is released), the ops listener shuts
// down, and the storage and the root are closed. It may be called once.
func (rt *Runtime) Run(ctx context.Context) error {
	if !rt.ran.CompareAndSwap(false, true) {
		return errors.New("custos: Run called twice, or after Close")
	}
	defer rt.close()
	cfg, logger := rt.cfg, rt.logger

	var ops *http.Server
	opsDone := make(chan struct{})
	if rt.opsLis != nil {
		ops = &http.Server{Handler: rt.srv.OpsHandler(cfg.Ops.Pprof), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}
		go func() {
			defer close(opsDone)
			if err := ops.Serve(rt.opsLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				logger.Error("ops listener stopped", "error", err.Error())
			}
		}()
	} else {
		close(opsDone)
	}

	// Background work runs on a context of its own, stopped only after the
	// last call has drained: change notices keep reaching the cache while
	// calls finish, and the final flush counts every encryption served.
	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	stopBackground := sync.OnceFunc(func() { stopBG(); wg.Wait() })
	defer stopBackground()
	// Listening before the first call is answered: nothing cached can
	// miss a change.
	if watch, err := rt.ks.StartWatch(bg); err != nil {
		logger.Error("storage change watch could not start; caches expire by TTL only", "error", err.Error())
	} else {
		wg.Go(watch)
	}
	wg.Go(func() { rt.srv.WatchDependencies(bg, rt.ks, cfg.Ops.ProbeInterval) })
	if rt.reload != nil {
		wg.Go(func() { rt.reloadOn(bg) })
	}
	wg.Go(func() { rt.ks.RunCountFlush(bg, cfg.Scheduler.FlushInterval) })
	// A restore found writing to the store (one started while this
	// server's presence record had lapsed, in a storage outage longer than
	// its TTL) stops the server: it must not serve a store half restored.
	// Its supervisor's restart is refused until the restore has finished.
	restoring := make(chan error, 1)
	wg.Go(func() {
		backup.RunPresence(bg, rt.presence, rt.presenceEvery, func(msg string, err error) {
			if errors.Is(err, backup.ErrRestoring) {
				select {
				case restoring <- err:
				default:
				}
				return
			}
			logger.Warn(msg, "error", err.Error())
		})
	})
	holder := holderID(rt.lis.Addr())
	if rt.audit != nil {
		// Stopped after the last call has drained (and so after its event
		// was queued): the lease holder's last pass integrates and signs
		// everything.
		wg.Go(func() { rt.writer.Ship(bg) })
		wg.Go(func() {
			rt.audit.Run(bg, audit.RunConfig{
				Holder:             holder,
				CheckpointInterval: cfg.Audit.CheckpointInterval,
				// The trail's own lease TTL (audit.Run's default), not
				// the scheduler's.
				Retention: cfg.Audit.Retention,
				BeforeFinal: func(ctx context.Context) {
					if err := rt.writer.ShipOnce(ctx); err != nil {
						logger.Warn("audit: spooled events stay in the spool for the next start", "error", err.Error())
					}
				},
			})
		})
	}
	if !cfg.Scheduler.Disabled {
		wg.Go(func() {
			err := rt.ks.RunScheduler(bg, keystore.SchedulerConfig{
				Interval:      cfg.Scheduler.Interval,
				LeaseTTL:      cfg.Scheduler.LeaseTTL,
				SweepInterval: cfg.Scheduler.SweepInterval,
				HolderID:      holder,
			})
			if err != nil {
				logger.Error("scheduler stopped", "error", err.Error())
			}
		})
	}

	logger.Info("custos serving", "addr", rt.lis.Addr().String(), "ops", cfg.Ops.Listen, "root", cfg.Root.Type, "storage", cfg.Storage.Type)
	errc := make(chan error, 1)
	go func() { errc <- rt.gs.Serve(rt.lis) }()
	var serveErr, failed error
	select {
	case serveErr = <-errc:
		// The listener failed (whatever Serve says, net.ErrClosed
		// included: nothing here closed it): no new connections, but the
		// calls in flight finish as on a signal, before the trail and the
		// store close under them, and Run fails so that a supervisor
		// restarts the process.
		failed = fmt.Errorf("serve: the listener failed: %w", cmp.Or(serveErr, errors.New("serve returned")))
		logger.Error("custos listener failed; stopping", "error", failed.Error(), "timeout", cfg.ShutdownTimeout.String())
	case err := <-restoring:
		failed = fmt.Errorf("a restore is writing to the store: %w", err)
		logger.Error("a restore is writing to the store this server serves; stopping (start it again once the restore has finished)", "error", err.Error(), "timeout", cfg.ShutdownTimeout.String())
	case <-ctx.Done():
		logger.Info("custos stopping", "timeout", cfg.ShutdownTimeout.String())
	}
	rt.srv.Shutdown()
	rt.drain(cfg.ShutdownTimeout)
	if failed == nil {
		serveErr = <-errc
	}
	stopBackground()
	if ops != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if err := ops.Shutdown(sctx); err != nil {
			// A long request (a backup) still running: cut it.
			logger.Warn("ops listener did not shut down cleanly; closing it", "error", err.Error())
			_ = ops.Close()
		}
		cancel()
	}
	<-opsDone
	if failed != nil {
		return failed
	}
	if serveErr != nil && !errors.Is(serveErr, grpc.ErrServerStopped) && !errors.Is(serveErr, net.ErrClosed) {
		return fmt.Errorf("serve: %w", serveErr)
	}
	return nil
}

// reloadOn reloads the policy and the TLS files on every SIGHUP until ctx
// is done; either one failing keeps its previous version and is logged.
func (rt *Runtime) reloadOn(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-rt.reload:
			rt.policy.ReloadLogged(rt.logger)
			if rt.tlsFile != nil {
				_, _ = rt.tlsFile.Reload() // logged by the source
			}
		}
	}
}

// drain stops the gRPC server gracefully, cutting open calls after timeout.
func (rt *Runtime) drain(timeout time.Duration) {
	stopped := make(chan struct{})
	go func() { rt.gs.GracefulStop(); close(stopped) }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-stopped:
		return
	case <-t.C:
	}
	// The deadline: cut every connection; callers still waiting get
	// UNAVAILABLE. GracefulStop still waits for handlers to return, and a
	// handler inside bcrypt or argon2 cannot be interrupted, so its work
	// is abandoned rather than waited for: shutdown_timeout bounds the
	// exit.
	rt.logger.Warn("graceful stop timed out; closing open calls")
	rt.gs.Stop()
	select {
	case <-stopped:
	case <-time.After(100 * time.Millisecond):
		rt.abandoned.Store(true)
		rt.logger.Warn("calls still running at the shutdown deadline were abandoned (password hashing cannot be interrupted)")
	}
}

// connectionAgeGrace is how long calls in flight on a connection past
// tls.max_connection_age may take to finish before it is closed (streams
// such as health watches are cut then, and their clients watch again).
const connectionAgeGrace = time.Minute

// holderID names this replica in the scheduler's and the audit log's
// leases. Host, process and address say which replica it is; the random
// part keeps two replicas apart where those are the same (containers with
// a fixed hostname, each process 1 listening on the same address), which
// would otherwise both count as the holder and both run the passes.
func holderID(addr net.Addr) string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d/%s/%s", host, os.Getpid(), addr, rand.Text()[:8])
}

// checkSpool refuses a PostgreSQL server with the trail on and no spool:
// config.DefaultPostgresSpool found no state directory.
func checkSpool(cfg *config.Config) error {
	if cfg.Storage.Type == "postgres" && cfg.Audit.Spool == "" && !cfg.Audit.Disabled {
		return errors.New("audit.spool: no state directory for the default ($STATE_DIRECTORY, $XDG_STATE_HOME and $HOME are unset): set audit.spool to a directory of this server's own")
	}
	return nil
}

// openAudit opens the audit log and its writer (and export) and fills the
// server's audit settings.
func (rt *Runtime) openAudit(ctx context.Context, store storage.Store, r root.Root, now func() time.Time, sc *server.Config) error {
	ac := rt.cfg.Audit
	log, err := audit.Open(ctx, audit.Config{Store: store, Root: r, Origin: ac.Origin, Now: now, Logger: rt.logger})
	if err != nil {
		return err
	}
	var exp *audit.Exporter
	if ac.Export.Path != "" {
		exp = audit.NewExporter(audit.ExportConfig{Path: ac.Export.Path, MaxSizeMB: ac.Export.MaxSizeMB, MaxFiles: ac.Export.MaxFiles, Logger: rt.logger})
		rt.closers = append(rt.closers, func() { _ = exp.Close() })
	}
	spool := ac.Spool
	if spool == "off" {
		spool = ""
	}
	if spool == "" && rt.cfg.Storage.Type == "postgres" {
		rt.logger.Warn("audit.spool is off: while PostgreSQL is down, calls fail closed (or, with audit.fail_open, lose their events) instead of spooling them locally")
	}
	if spool != "" {
		if err := os.MkdirAll(filepath.Dir(spool), 0o700); err != nil {
			return fmt.Errorf("audit spool: %w", err)
		}
	}
	// With bbolt the spool is on the store's disk: a spool append and its
	// sync cost a fraction of a bbolt transaction and are as durable, so
	// every batch goes to the spool first and is shipped in bulk.
	journal := spool != "" && rt.cfg.Storage.Type == "bbolt"
	w, err := audit.NewWriter(audit.WriterConfig{Store: store, SpoolPath: spool, JournalFirst: journal, SyncInterval: ac.SyncInterval, FailOpen: ac.FailOpen, Export: exp, Logger: rt.logger})
	if err != nil {
		return err
	}
	if spool != "" {
		// Events another spool here holds (this server's, under another
		// listen address or audit.spool) are shipped by no one.
		stranded, err := audit.StrandedSpools(spool)
		if err != nil {
			rt.logger.Warn("audit: could not look for other spools", "error", err.Error())
		}
		for _, s := range stranded {
			rt.logger.Warn("audit: another spool beside this server's holds entries not shipped; unless a running server uses it, start one with audit.spool set to it to ship them",
				"spool", s.Path, "entries", s.Events)
		}
	}
	// The journal (bbolt) answers every event before its sync; with
	// PostgreSQL an answered event is in its commit, and only events
	// spooled during an outage wait for the interval.
	switch {
	case ac.SyncInterval > 0 && journal:
		rt.logger.Warn("audit.sync_interval is set: events are in the operating system, not yet on disk, when their calls are answered; a power loss or kernel crash can lose up to that interval of them", "sync_interval", ac.SyncInterval.String())
	case ac.SyncInterval > 0 && spool != "":
		rt.logger.Warn("audit.sync_interval is set: events spooled while the store is out of reach are in the operating system, not yet on disk, when their calls are answered; a power loss or kernel crash can lose up to that interval of them", "sync_interval", ac.SyncInterval.String())
	}
	rt.closers = append(rt.closers, func() {
		if err := w.Close(); err != nil {
			rt.logger.Error("closing the audit writer failed", "error", err.Error())
		}
	})
	if ac.FailOpen {
		rt.logger.Warn("audit.fail_open is set: calls whose audit event cannot be recorded anywhere are answered anyway")
	}
	rt.audit, rt.writer = log, w
	sc.Audit, sc.AuditLog, sc.Collectors = w, log, w.Collectors()
	if exp != nil {
		sc.Collectors = append(sc.Collectors, exp.Collectors()...)
	}
	return nil
}

// bboltOpsEndpoint reports whether to serve an ops endpoint that works on
// a bbolt file inside the server (GET /backup, POST /root/rewrap): on in
// the configuration (key), the store a bbolt file, and the ops listener
// on. When on but not served, it says why.
func (rt *Runtime) bboltOpsEndpoint(cfg *config.Config, on bool, key, endpoint, elsewise string) bool {
	switch {
	case !on:
		return false
	case cfg.Storage.Type != "bbolt":
		rt.logger.Warn(key+" is on but serves bbolt stores only; "+elsewise, "storage", cfg.Storage.Type)
		return false
	case rt.opsLis == nil:
		rt.logger.Warn(key + " is on but the ops listener is off (ops.listen); " + endpoint + " is not served")
		return false
	}
	return true
}

// opsHost is the host name in the ops listener's address, or "" for an IP
// address or none.
func opsHost(listen string) string {
	host, _, err := net.SplitHostPort(listen)
	if err != nil || net.ParseIP(host) != nil {
		return ""
	}
	return host
}
