// Package pgtest starts throwaway PostgreSQL servers for tests and hands each
// test a fresh database.
//
// A test binary shares one server, started on first use by Start. Its
// TestMain should stop it when the tests are done:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
// Without that the server still dies with the test binary (the kernel sends
// it SIGQUIT, PostgreSQL's immediate shutdown, when its parent exits), but its
// temporary directory stays behind until the next run removes it.
//
// The server comes from the newest /usr/lib/postgresql/*/bin (scripts/test-deps.sh
// installs it when missing). It runs on a free 127.0.0.1 port with trust
// authentication, its unix socket in its temporary directory, and fsync off:
// fast, and fit for nothing but tests (CUSTOS_PGTEST_DURABLE=1 turns fsync on,
// for measurements of what commits cost). initdb and postgres refuse to run as
// root, so under root they run as the "postgres" user. The cluster's default
// collation is ICU en-US (on PostgreSQL 15 and later), as on a typical
// production server, so SQL that forgets COLLATE "C" fails the storage
// conformance suite here rather than in production.
//
// If CUSTOS_TEST_POSTGRES_URL is set, Start uses that server instead: a
// postgres:// URL for a role that may CREATE DATABASE. Such a server is not
// ours to stop, so Kill, Restart and StartAgain fail the test on it; outage
// tests use StartDedicated, which always starts a local server.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvURL names the environment variable that points Start at an existing
// server instead of starting one.
const EnvURL = "CUSTOS_TEST_POSTGRES_URL"

// binGlob is where Debian's postgresql packages install the server
// binaries. A variable for tests.
var binGlob = "/usr/lib/postgresql/*/bin"

// superuser is the role initdb creates and tests connect as.
const superuser = "postgres"

// Timeouts for starting and stopping a server.
const (
	readyTimeout = 60 * time.Second
	stopTimeout  = 15 * time.Second
)

// Server is a PostgreSQL server for tests: the shared one from Start, a
// dedicated one from StartDedicated, or an external one from EnvURL.
type Server struct {
	external bool
	base     *url.URL // connection URL of the admin database
	port     int      // local servers only

	// Local servers only.
	bin  string              // directory holding initdb and postgres
	dir  string              // temporary directory: data/, socket, log
	cred *syscall.Credential // who runs initdb and postgres; nil: us

	mu   sync.Mutex
	proc *process // running postmaster; nil while stopped

	dbSeq atomic.Int64
}

// process is one run of the postmaster.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process has exited and been reaped
}

var shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// Main runs the tests and then stops the shared server, if a test started
// it. Call it from TestMain: os.Exit(pgtest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if shared.srv != nil {
		shared.srv.Stop()
	}
	return code
}

// Start returns the test binary's shared server, starting it on first use.
// If PostgreSQL cannot be started it fails tb, naming scripts/test-deps.sh
// when the binaries are missing; it never skips.
func Start(tb testing.TB) *Server {
	tb.Helper()
	shared.once.Do(func() {
		if u := os.Getenv(EnvURL); u != "" {
			shared.srv, shared.err = external(u)
			return
		}
		shared.srv, shared.err = startLocal()
	})
	if shared.err != nil {
		tb.Fatalf("pgtest: %v", shared.err)
	}
	return shared.srv
}

// StartDedicated starts a local server for tb alone and stops it when tb
// ends. Tests that stop or kill the server use it, so that they disturb no
// other test; it ignores EnvURL.
func StartDedicated(tb testing.TB) *Server {
	tb.Helper()
	s, err := startLocal()
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}

// external returns a Server for the existing server at rawURL.
func external(rawURL string) (*Server, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, fmt.Errorf("%s must be a postgres:// URL", EnvURL)
	}
	return &Server{external: true, base: u}, nil
}

// startLocal initialises a cluster in a new temporary directory and starts
// it.
func startLocal() (*Server, error) {
	bin, major, err := findBinaries()
	if err != nil {
		return nil, err
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	base, err := tempBase()
	if err != nil {
		return nil, err
	}
	removeStale(base)
	dir, err := os.MkdirTemp(base, dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("create temporary directory: %w", err)
	}
	s := &Server{bin: bin, dir: dir, cred: cred}
	if err := s.init(major); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// A port found free may be taken before the server binds it; try again
	// with another.
	for attempt := 1; ; attempt++ {
		if s.port, err = freePort(); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		s.base = &url.URL{
			Scheme:   "postgres",
			User:     url.User(superuser),
			Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
			Path:     "/postgres",
			RawQuery: "sslmode=disable",
		}
		s.mu.Lock()
		err = s.launchLocked()
		s.mu.Unlock()
		if err == nil {
			return s, nil
		}
		if attempt == 3 || !strings.Contains(err.Error(), "could not bind") {
			os.RemoveAll(dir)
			return nil, err
		}
	}
}

// dirPrefix starts the name of every temporary directory, so that a later
// run can find and remove those a crashed run left behind.
const dirPrefix = "custos-pgtest-"

// ownerFile, in a temporary directory, holds the pid of the test process
// that created it.
const ownerFile = "owner.pid"

// init creates the temporary directory's layout and runs initdb.
func (s *Server) init(major int) error {
	if err := os.WriteFile(filepath.Join(s.dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("write owner file: %w", err)
	}
	// The server's user must be able to create data/ and its socket here.
	if err := os.Chmod(s.dir, 0o755); err != nil {
		return fmt.Errorf("chmod temporary directory: %w", err)
	}
	if s.cred != nil {
		if err := os.Chown(s.dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return fmt.Errorf("chown temporary directory: %w", err)
		}
	}
	args := []string{
		"-D", s.dataDir(), "-U", superuser, "-E", "UTF8", "--locale=C",
		"--auth=trust", "--no-sync", "--no-instructions",
	}
	if major >= 15 {
		// A non-C default collation, as production servers have.
		args = append(args, "--locale-provider=icu", "--icu-locale=en-US")
	}
	cmd := exec.Command(filepath.Join(s.bin, "initdb"), args...)
	cmd.Env = serverEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Pdeathsig: syscall.SIGKILL}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, out)
	}
	return nil
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }
func (s *Server) logPath() string { return filepath.Join(s.dir, "postgres.log") }

// launchLocked starts the postmaster and waits until it accepts
// connections. s.mu must be held.
func (s *Server) launchLocked() error {
	if s.proc != nil {
		return errors.New("server is already running")
	}
	logf, err := os.OpenFile(s.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open server log: %w", err)
	}
	defer logf.Close() // the child has its own descriptor
	// Durable (CUSTOS_PGTEST_DURABLE=1, for measurements of commit costs)
	// or not (tests: faster).
	durable := "off"
	if os.Getenv("CUSTOS_PGTEST_DURABLE") == "1" {
		durable = "on"
	}
	cmd := exec.Command(filepath.Join(s.bin, "postgres"),
		"-D", s.dataDir(),
		"-p", strconv.Itoa(s.port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories="+s.dir,
		"-c", "fsync="+durable,
		"-c", "full_page_writes="+durable,
		"-c", "shared_buffers=16MB",
		"-c", "max_connections=200",
	)
	cmd.Env = serverEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: s.cred,
		// Its own process group: a ^C to `go test` does not reach it
		// before we stop it.
		Setpgid: true,
		// If the test binary dies without stopping it, the kernel asks it
		// for an immediate shutdown, which ends every backend too.
		Pdeathsig: syscall.SIGQUIT,
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// The kernel sends Pdeathsig when the thread that started the
		// child exits, not the process; Go may end idle threads, so this
		// one stays locked, waiting for the child, as long as it runs.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
		close(p.exited)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	s.proc = p
	if err := s.waitReady(p); err != nil {
		s.stopLocked(syscall.SIGQUIT)
		return fmt.Errorf("%w\nserver log:\n%s", err, s.logTail())
	}
	return nil
}

// waitReady waits until the server accepts connections, it exits, or
// readyTimeout passes.
func (s *Server) waitReady(p *process) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	var lastErr error
	for {
		attempt, cancelAttempt := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(attempt, s.base.String())
		cancelAttempt()
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		lastErr = err
		select {
		case <-p.exited:
			return fmt.Errorf("postgres exited during startup: %v", p.cmd.ProcessState)
		case <-ctx.Done():
			return fmt.Errorf("postgres not ready after %v: %w", readyTimeout, lastErr)
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// stopLocked signals the postmaster and waits for it to exit, killing its
// process group if it takes longer than stopTimeout. SIGQUIT is an
// immediate shutdown: the postmaster ends every backend at once, reaps them
// and exits, without a checkpoint, so the next start runs crash recovery.
// s.mu must be held.
func (s *Server) stopLocked(sig syscall.Signal) {
	p := s.proc
	if p == nil {
		return
	}
	s.proc = nil
	pid := p.cmd.Process.Pid
	syscall.Kill(pid, sig)
	signalChildren(pid, syscall.SIGCONT) // in case it was frozen
	syscall.Kill(pid, syscall.SIGCONT)
	select {
	case <-p.exited:
		return
	case <-time.After(stopTimeout):
	}
	signalChildren(pid, syscall.SIGKILL)
	syscall.Kill(pid, syscall.SIGKILL)
	<-p.exited
}

// signalChildren sends sig to every child of the process pid. (PostgreSQL
// puts each backend in a session of its own, so signalling the
// postmaster's process group does not reach them.)
func signalChildren(pid int, sig syscall.Signal) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		i := strings.LastIndexByte(string(stat), ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(stat[i+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			syscall.Kill(child, sig)
		}
	}
}

// Freeze stops the postmaster and every backend (SIGSTOP) without closing a
// connection: the server hangs, as behind a network partition. New
// connections are accepted by the kernel but never answered. Thaw resumes
// it; Stop and Kill work on a frozen server too.
func (s *Server) Freeze(tb testing.TB) {
	tb.Helper()
	s.signal(tb, "Freeze", syscall.SIGSTOP)
}

// Thaw resumes a server stopped by Freeze.
func (s *Server) Thaw(tb testing.TB) {
	tb.Helper()
	s.signal(tb, "Thaw", syscall.SIGCONT)
}

func (s *Server) signal(tb testing.TB, what string, sig syscall.Signal) {
	tb.Helper()
	s.mustBeLocal(tb, what)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		tb.Fatalf("pgtest: %s: server is not running", what)
	}
	pid := s.proc.cmd.Process.Pid
	if sig == syscall.SIGSTOP {
		syscall.Kill(pid, sig) // first, so that it starts no new backend
		signalChildren(pid, sig)
	} else {
		signalChildren(pid, sig)
		syscall.Kill(pid, sig)
	}
}

// logTail returns the end of the server's log, for error messages.
func (s *Server) logTail() string {
	b, err := os.ReadFile(s.logPath())
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	const max = 4 << 10
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

// Stop stops a local server and removes its directory. It does nothing for
// an external server, or if the server is already stopped. The shared
// server is stopped by Main, dedicated ones when their test ends.
func (s *Server) Stop() {
	if s.external {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked(syscall.SIGQUIT)
	if s.dir != "" {
		os.RemoveAll(s.dir)
		s.dir = ""
	}
}

// Kill stops the server abruptly, as a crash would: every connection drops
// at once and nothing is checkpointed. StartAgain brings it back on the same
// port with the same data. Every database on the server is affected, so
// outage tests use a server from StartDedicated.
func (s *Server) Kill(tb testing.TB) {
	tb.Helper()
	s.mustBeLocal(tb, "Kill")
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		tb.Fatalf("pgtest: Kill: server is not running")
	}
	s.stopLocked(syscall.SIGQUIT)
}

// StartAgain starts a server stopped by Kill, on the same port with the same
// data, and waits until it accepts connections.
func (s *Server) StartAgain(tb testing.TB) {
	tb.Helper()
	s.mustBeLocal(tb, "StartAgain")
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dir == "" {
		tb.Fatalf("pgtest: StartAgain: server was stopped for good")
	}
	if err := s.launchLocked(); err != nil {
		tb.Fatalf("pgtest: StartAgain: %v", err)
	}
}

// Restart kills the server and starts it again: Kill, then StartAgain.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.Kill(tb)
	s.StartAgain(tb)
}

func (s *Server) mustBeLocal(tb testing.TB, what string) {
	tb.Helper()
	if s.external {
		tb.Fatalf("pgtest: %s: the server at %s is external and cannot be stopped or started; use StartDedicated", what, EnvURL)
	}
}

// NewDatabase creates an empty database for tb, drops it when tb ends, and
// returns a URL that connects to it as a superuser.
func (s *Server) NewDatabase(tb testing.TB) string {
	tb.Helper()
	name := databaseName(tb.Name(), s.dbSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.admin(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		tb.Fatalf("pgtest: create database %s: %v", name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// A test may leave its server stopped; a local server's data goes
		// with its directory anyway.
		if s.running() {
			if err := s.admin(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
				tb.Logf("pgtest: drop database %s: %v", name, err)
			}
		}
	})
	u := *s.base
	u.Path = "/" + name
	return u.String()
}

// URL returns the URL of the server's administrative database, for a
// superuser (or, for an external server, the role EnvURL names).
func (s *Server) URL() string { return s.base.String() }

// running reports whether the server should accept connections.
func (s *Server) running() bool {
	if s.external {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil
}

// admin runs one statement in the administrative database.
func (s *Server) admin(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, s.base.String())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// databaseName returns a valid, unique database name that shows which test
// it belongs to. The pid keeps names apart on an external server shared by
// several test binaries.
func databaseName(testName string, seq int64) string {
	var b strings.Builder
	for _, r := range strings.ToLower(testName) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	name := fmt.Sprintf("custos_%d_%d_%s", os.Getpid(), seq, b.String())
	return name[:min(len(name), 63)] // PostgreSQL's NAMEDATALEN - 1
}

// findBinaries returns the newest /usr/lib/postgresql/*/bin that holds
// initdb and postgres, and its major version.
func findBinaries() (dir string, major int, err error) {
	dirs, _ := filepath.Glob(binGlob)
	best := -1
	for _, d := range dirs {
		v, err := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		if err != nil || v <= best {
			continue
		}
		if !executable(filepath.Join(d, "initdb")) || !executable(filepath.Join(d, "postgres")) {
			continue
		}
		dir, best = d, v
	}
	if dir == "" {
		return "", 0, fmt.Errorf("no PostgreSQL server binaries in %s: run `bash scripts/test-deps.sh` "+
			"(make test-deps) to install them, or set %s to an existing server", binGlob, EnvURL)
	}
	return dir, best, nil
}

func executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// credential returns who initdb and postgres run as: nil (ourselves) unless
// we are root, which both refuse; then the "postgres" user.
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, PostgreSQL must run as an unprivileged user, "+
			"but user \"postgres\" is missing (scripts/test-deps.sh installs the postgresql package, which creates it): %w", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("user postgres has uid %q, gid %q: not numbers", u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// tempBase returns the directory temporary server directories go in: the
// system temporary directory, if the server's user can reach it.
func tempBase() (string, error) {
	base, err := filepath.Abs(os.TempDir())
	if err != nil {
		return "", err
	}
	for d := base; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return "", fmt.Errorf("temporary directory: %w", err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			// Another user cannot traverse it (a private TMPDIR under
			// root's home, say); /tmp is world-writable everywhere.
			return "/tmp", nil
		}
		if d == filepath.Dir(d) {
			return base, nil
		}
	}
}

// removeStale removes temporary directories whose test process and
// postmaster have both gone: what a crashed or TestMain-less run left.
func removeStale(base string) {
	dirs, _ := filepath.Glob(filepath.Join(base, dirPrefix+"*"))
	for _, d := range dirs {
		if alive(readPid(filepath.Join(d, ownerFile))) || alive(readPid(filepath.Join(d, "data", "postmaster.pid"))) {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, ownerFile)); err != nil {
			continue // not ours, or still being created
		}
		os.RemoveAll(d)
	}
}

// readPid returns the number on the first line of the file at path, or 0.
func readPid(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// serverEnv is the environment for initdb and postgres: ours, less the
// libpq variables that could point them elsewhere.
func serverEnv() []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=")
	})
	return append(env, "LC_ALL=C")
}
