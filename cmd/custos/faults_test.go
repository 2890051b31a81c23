package main

// The fault suite: real custos serve processes killed, stopped and
// signalled under load, each scenario checked by one checker that records
// every result the server acknowledged and asserts, afterwards, that none
// was lost. Each scenario is bounded to seconds, runs on loopback and
// cleans up after itself.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/pgtest"
	"github.com/custos-kms/custos/internal/testkit"
	"github.com/custos-kms/custos/keystore/backup"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// ackedCiphertext is an Encrypt the server answered.
type ackedCiphertext struct {
	name          string
	plaintext, ad []byte
	ciphertext    []byte
	version       uint32
}

// checker records what servers acknowledged: ciphertexts (and what they
// encrypt) and rotations (the primary version each RotateKey returned).
// verify then asserts that all of it is still there.
type checker struct {
	mu        sync.Mutex
	cts       []ackedCiphertext
	rotations map[string][]uint32 // key name -> acknowledged versions
	failures  map[codes.Code]int  // refused calls by code
	seq       atomic.Int64
}

func newChecker() *checker {
	return &checker{rotations: map[string][]uint32{}, failures: map[codes.Code]int{}}
}

// load runs encrypters and rotators against the server at addr, with the
// dev client of dir, until the returned stop is called. Failed calls are
// counted by code (a killed server refuses calls: that loses nothing).
func (c *checker) load(t *testing.T, dir, addr string, keys []string, encrypters, rotators int) (stop func()) {
	t.Helper()
	conn := devConn(t, dir, addr)
	kc, cc := custosv1.NewKeyServiceClient(conn), custosv1.NewCryptoServiceClient(conn)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	fail := func(err error) {
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		c.failures[status.Code(err)]++
		c.mu.Unlock()
		time.Sleep(5 * time.Millisecond) // a dead server refuses at once
	}
	for i := range encrypters {
		wg.Go(func() {
			for ctx.Err() == nil {
				n := c.seq.Add(1)
				name := keys[int(n)%len(keys)]
				pt, ad := fmt.Appendf(nil, "field %d", n), fmt.Appendf(nil, "row-%d/%d", i, n)
				cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
				resp, err := cc.Encrypt(cctx, &custosv1.EncryptRequest{Name: name, Plaintext: pt, AssociatedData: ad})
				ccancel()
				if err != nil {
					fail(err)
					continue
				}
				c.mu.Lock()
				c.cts = append(c.cts, ackedCiphertext{name: name, plaintext: pt, ad: ad, ciphertext: resp.GetCiphertext(), version: resp.GetKeyVersion()})
				c.mu.Unlock()
			}
		})
	}
	for i := range rotators {
		wg.Go(func() {
			for ctx.Err() == nil {
				name := keys[i%len(keys)]
				cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
				k, err := kc.RotateKey(cctx, &custosv1.RotateKeyRequest{Name: name})
				ccancel()
				if err != nil {
					fail(err)
					continue
				}
				c.mu.Lock()
				c.rotations[name] = append(c.rotations[name], k.GetKey().GetPrimaryVersion())
				c.mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	return func() { cancel(); wg.Wait() }
}

// verify asserts that every acknowledged ciphertext decrypts to its
// plaintext under its associated data and that every acknowledged
// rotation's version exists, with versions contiguous from 1.
func (c *checker) verify(t *testing.T, dir, addr string) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	conn := devConn(t, dir, addr)
	kc, cc := custosv1.NewKeyServiceClient(conn), custosv1.NewCryptoServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Decrypt in batches of one key at a time.
	byKey := map[string][]ackedCiphertext{}
	for _, a := range c.cts {
		byKey[a.name] = append(byKey[a.name], a)
	}
	lost := 0
	for name, acks := range byKey {
		for len(acks) > 0 {
			n := min(len(acks), 500)
			req := &custosv1.DecryptBatchRequest{Name: name}
			for _, a := range acks[:n] {
				req.Items = append(req.Items, &custosv1.DecryptBatchRequest_Item{Ciphertext: a.ciphertext, AssociatedData: a.ad})
			}
			resp, err := cc.DecryptBatch(ctx, req)
			if err != nil {
				t.Fatalf("verify: DecryptBatch %s: %v", name, err)
			}
			if len(resp.GetResults()) != n {
				t.Fatalf("verify: DecryptBatch %s answered %d results for %d items", name, len(resp.GetResults()), n)
			}
			for i, r := range resp.GetResults() {
				if r.GetStatus().GetCode() != 0 || !bytes.Equal(r.GetPlaintext(), acks[i].plaintext) {
					lost++
					if lost <= 3 {
						t.Errorf("acknowledged ciphertext %d of %s (version %d) does not decrypt: %v", i, name, acks[i].version, r.GetStatus())
					}
				}
			}
			acks = acks[n:]
		}
	}
	versions := 0
	for name, acked := range c.rotations {
		k, err := kc.GetKey(ctx, &custosv1.GetKeyRequest{Name: name})
		if err != nil {
			t.Fatalf("verify: GetKey %s: %v", name, err)
		}
		have := map[uint32]bool{}
		for i, v := range k.GetKey().GetVersions() {
			if v.GetVersion() != uint32(i+1) {
				t.Errorf("%s: versions not contiguous: position %d holds %d", name, i, v.GetVersion())
			}
			have[v.GetVersion()] = true
		}
		for _, v := range acked {
			if !have[v] {
				lost++
				t.Errorf("%s: acknowledged rotation to version %d is gone (key has %d versions)", name, v, len(k.GetKey().GetVersions()))
			}
		}
		versions += len(acked)
	}
	if lost > 0 {
		t.Fatalf("%d acknowledged results lost", lost)
	}
	t.Logf("checker: %d acknowledged ciphertexts and %d acknowledged rotations all intact; refused calls by code: %v", len(c.cts), versions, c.failures)
}

// faultServer is one custos serve process on a config file.
type faultServer struct {
	t      *testing.T
	dir    string // the dev directory: PKI, root, policy
	config string
	c      *child
	addr   string
}

// newFaultConfig prepares a dev directory and writes a serve config for
// it: listen on port 0, ops off, and storage (bbolt in dir, or PostgreSQL
// at pgURL), with extra YAML appended.
func newFaultConfig(t *testing.T, pgURL, extra string) (dir, path string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), ".custos-dev")
	if _, err := prepareDev(dir); err != nil {
		t.Fatal(err)
	}
	conf := replaceOnce(t, devConfig, "listen: 127.0.0.1:8443", "listen: 127.0.0.1:0")
	if pgURL != "" {
		conf = onPostgres(t, conf, pgURL)
		conf += "audit:\n  spool: spool\n"
	}
	conf = replaceOnce(t, conf, "  listen: 127.0.0.1:9464", "  listen: \"off\"") + extra
	path = filepath.Join(dir, "fault.yaml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, path
}

// startFaultServer starts custos serve on the config and waits (bounded)
// until it listens.
func startFaultServer(t *testing.T, dir, path string) *faultServer {
	t.Helper()
	t.Setenv("CUSTOS_TEST_RUN_MAIN", "1")
	c, m, err := startChild(context.Background(), []string{"serve", "--config", path},
		filepath.Join(t.TempDir(), "server.log"), regexp.MustCompile(`custos listening on (\S+)`))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.stop)
	return &faultServer{t: t, dir: dir, config: path, c: c, addr: m[1]}
}

func (s *faultServer) kill() {
	s.t.Helper()
	if err := s.c.cmd.Process.Kill(); err != nil {
		s.t.Fatal(err)
	}
	waitExit(s.t, s.c)
}

// setupKeys creates tenant acme with the given keys.
func setupKeys(t *testing.T, dir, addr string, keys ...string) []string {
	t.Helper()
	conn := devConn(t, dir, addr)
	kc := custosv1.NewKeyServiceClient(conn)
	ctx := t.Context()
	if _, err := kc.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: "acme"}); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, k := range keys {
		if _, err := kc.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/acme", KeyId: k, Key: &custosv1.Key{Purpose: custosv1.KeyPurpose_KEY_PURPOSE_ENCRYPT}}); err != nil {
			t.Fatal(err)
		}
		names = append(names, "tenants/acme/keys/"+k)
	}
	return names
}

// kill9Scenario runs load with concurrent rotations against a serve
// process, kills it with SIGKILL three times, restarting it on the same
// store each time, and verifies that nothing acknowledged was lost.
func kill9Scenario(t *testing.T, pgURL string) {
	dir, path := newFaultConfig(t, pgURL, "")
	srv := startFaultServer(t, dir, path)
	keys := setupKeys(t, dir, srv.addr, "a", "b", "c")
	chk := newChecker()
	for round := range 3 {
		stop := chk.load(t, dir, srv.addr, keys, 8, 3)
		time.Sleep(700 * time.Millisecond)
		srv.kill()
		stop()
		t.Logf("round %d: killed with SIGKILL under load", round)
		srv = startFaultServer(t, dir, path)
	}
	chk.verify(t, dir, srv.addr)
	if len(chk.cts) == 0 || len(chk.rotations) == 0 {
		t.Fatal("nothing was acknowledged: the scenario tested nothing")
	}
}

func TestFaultKill9UnderRotationsAndEncryptionsBbolt(t *testing.T) {
	kill9Scenario(t, "")
}

func TestFaultKill9UnderRotationsAndEncryptionsPostgreSQL(t *testing.T) {
	kill9Scenario(t, pgtest.Start(t).NewDatabase(t))
}

// SIGTERM under load: the process exits within shutdown_timeout (plus the
// final steps), a bcrypt hash in flight included, and every call answered
// before it is intact after a restart.
func TestFaultSIGTERMUnderLoadExitsWithinShutdownTimeout(t *testing.T) {
	const timeout = 1500 * time.Millisecond
	dir, path := newFaultConfig(t, "", fmt.Sprintf("shutdown_timeout: %s\npasswords:\n  max_bcrypt_cost: 17\n", timeout))
	srv := startFaultServer(t, dir, path)
	keys := setupKeys(t, dir, srv.addr, "a", "b")
	conn := devConn(t, dir, srv.addr)
	kc, cc := custosv1.NewKeyServiceClient(conn), custosv1.NewCryptoServiceClient(conn)
	ctx := t.Context()
	if _, err := kc.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: "tenants/acme", KeyId: "pw", Key: &custosv1.Key{
		Purpose:        custosv1.KeyPurpose_KEY_PURPOSE_PASSWORD,
		PasswordPolicy: &custosv1.PasswordPolicy{Algorithm: custosv1.PasswordAlgorithm_PASSWORD_ALGORITHM_BCRYPT, BcryptCost: 17},
	}}); err != nil {
		t.Fatal(err)
	}
	chk := newChecker()
	stop := chk.load(t, dir, srv.addr, keys, 8, 2)
	hashDone := make(chan error, 1)
	go func() {
		_, err := cc.HashPassword(ctx, &custosv1.HashPasswordRequest{Name: "tenants/acme/keys/pw", Password: []byte("p")})
		hashDone <- err
	}()
	time.Sleep(500 * time.Millisecond)
	begin := time.Now()
	if err := srv.c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	st := waitExit(t, srv.c)
	took := time.Since(begin)
	stop()
	t.Logf("SIGTERM under load with a bcrypt-17 hash in flight: exit %d after %v (shutdown_timeout %v)", st.ExitCode(), took, timeout)
	if st.ExitCode() != 0 {
		t.Errorf("exit code %d after SIGTERM", st.ExitCode())
	}
	// The bound: shutdown_timeout plus the final steps (audit checkpoint,
	// store close), generous for a -race binary on a loaded machine; the
	// bcrypt-17 hash alone takes far longer.
	if took > timeout+3*time.Second {
		t.Errorf("exit took %v; shutdown_timeout is %v", took, timeout)
	}
	select {
	case err := <-hashDone:
		if err == nil {
			t.Log("the hash finished within the timeout")
		} else if c := status.Code(err); c != codes.Unavailable {
			t.Errorf("the hash cut at shutdown got %v, want UNAVAILABLE", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the hash call was not answered after the server exited")
	}
	srv = startFaultServer(t, dir, path)
	chk.verify(t, dir, srv.addr)
}

// A storm of SIGHUPs under load (config management reloading on every
// deploy): no call fails, the server keeps serving.
func TestFaultSIGHUPStormUnderLoadFailsNoCall(t *testing.T) {
	dir, path := newFaultConfig(t, "", "")
	srv := startFaultServer(t, dir, path)
	keys := setupKeys(t, dir, srv.addr, "a", "b")
	chk := newChecker()
	stop := chk.load(t, dir, srv.addr, keys, 8, 2)
	for range 25 {
		if err := srv.c.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	stop()
	select {
	case <-srv.c.done:
		t.Fatal("the server exited during the SIGHUP storm")
	default:
	}
	chk.mu.Lock()
	failures := chk.failures
	chk.mu.Unlock()
	if len(failures) > 0 {
		t.Fatalf("calls failed during 25 SIGHUPs: %v", failures)
	}
	chk.verify(t, dir, srv.addr)
}

// PostgreSQL killed under load and started again: encryption with cached
// keys goes on without a failure, an uncached key is refused with
// UNAVAILABLE at once, and everything recovers without a restart.
func TestFaultPostgreSQLKilledUnderLoadRecoversWithoutRestart(t *testing.T) {
	pg := pgtest.StartDedicated(t)
	dir, path := newFaultConfig(t, pg.NewDatabase(t), "")
	srv := startFaultServer(t, dir, path)
	keys := setupKeys(t, dir, srv.addr, "a", "b", "cold")
	warm, cold := keys[:2], keys[2]
	// A fresh process: an empty cache, warmed for a and b only.
	if err := srv.c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitExit(t, srv.c)
	srv = startFaultServer(t, dir, path)
	cc := custosv1.NewCryptoServiceClient(devConn(t, dir, srv.addr))
	encrypt := func(name string) error {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		_, err := cc.Encrypt(ctx, &custosv1.EncryptRequest{Name: name, Plaintext: []byte("x")})
		return err
	}
	for _, k := range warm {
		if err := encrypt(k); err != nil {
			t.Fatal(err)
		}
	}
	chk := newChecker()
	stop := chk.load(t, dir, srv.addr, warm, 8, 0)
	time.Sleep(300 * time.Millisecond)

	pg.Kill(t)
	time.Sleep(300 * time.Millisecond)
	begin := time.Now()
	err := encrypt(cold)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("an uncached key with PostgreSQL down: %v, want UNAVAILABLE", err)
	}
	refusedIn := time.Since(begin)
	time.Sleep(time.Second) // the outage, under load

	pg.StartAgain(t)
	back := time.Now()
	var recovered time.Duration
	for {
		if encrypt(cold) == nil {
			recovered = time.Since(back)
			break
		}
		if time.Since(back) > 15*time.Second {
			t.Fatal("the uncached key did not recover within 15s of PostgreSQL's return")
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	t.Logf("PostgreSQL down ~1.6s under load: uncached key refused in %v; recovered %v after PostgreSQL was back", refusedIn, recovered)
	if len(chk.failures) > 0 {
		t.Fatalf("encryptions with cached keys failed during the outage: %v", chk.failures)
	}
	chk.verify(t, dir, srv.addr)
}

// Two replicas on one PostgreSQL rotate the same keys concurrently; one is
// killed with SIGKILL mid-way. Every rotation and ciphertext either
// acknowledged is intact, and versions stay contiguous.
func TestFaultReplicaKilledDuringConcurrentRotationsPostgreSQL(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	dir, path := newFaultConfig(t, url, "")
	conf, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pathB := filepath.Join(dir, "fault-b.yaml") // its own audit spool
	if err := os.WriteFile(pathB, bytes.Replace(conf, []byte("spool: spool\n"), []byte("spool: spool-b\n"), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startFaultServer(t, dir, path)
	b := startFaultServer(t, dir, pathB)
	keys := setupKeys(t, dir, a.addr, "a", "b")
	chk := newChecker()
	stopA := chk.load(t, dir, a.addr, keys, 4, 3)
	stopB := chk.load(t, dir, b.addr, keys, 4, 3)
	time.Sleep(700 * time.Millisecond)
	a.kill()
	stopA()
	time.Sleep(300 * time.Millisecond)
	stopB()
	chk.verify(t, dir, b.addr)
}

// A custos restore process killed with SIGKILL half-way through writing
// into PostgreSQL: a server refuses the half-restored store, running the
// same restore again finishes it, and the restored store serves every
// tenant the backup held.
func TestFaultRestoreKilledMidwayFinishesWhenRunAgain(t *testing.T) {
	t.Setenv("CUSTOS_TEST_RUN_MAIN", "1")
	dir, path := newFaultConfig(t, "", "")
	const tenants = 6000
	runMain(t, "bench", "seed", "--config", path, "--tenants", fmt.Sprint(tenants))
	file := filepath.Join(t.TempDir(), "custos.backup")
	runMain(t, "backup", "--config", path, "--out", file)

	pg := pgtest.Start(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for attempt := 1; ; attempt++ {
		url := pg.NewDatabase(t)
		conf, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		pgPath := filepath.Join(dir, fmt.Sprintf("restore-%d.yaml", attempt))
		pgConf := onPostgres(t, string(conf), url)
		pgConf += "audit:\n  spool: spool-" + fmt.Sprint(attempt) + "\n"
		if err := os.WriteFile(pgPath, []byte(pgConf), 0o600); err != nil {
			t.Fatal(err)
		}
		db, err := pgx.Connect(t.Context(), url)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(exe, "restore", "--config", pgPath, "--in", file)
		cmd.SysProcAttr = childProcAttr() // it dies with the test
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		// Kill it a third of the way through the records.
		killed, exited := false, false
		deadline := time.Now().Add(60 * time.Second)
	poll:
		for time.Now().Before(deadline) {
			select {
			case <-done:
				exited = true
				break poll
			default:
			}
			var n int
			if err := db.QueryRow(t.Context(), `SELECT count(*) FROM custos_records`).Scan(&n); err == nil && n >= tenants/3 {
				_ = cmd.Process.Kill()
				<-done
				killed = true
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		var marker int
		_ = db.QueryRow(t.Context(), `SELECT count(*) FROM custos_records WHERE key = $1`, backup.MarkerKey).Scan(&marker)
		db.Close(context.Background())
		if !killed && !exited { // the deadline passed: stop it before reading its output
			_ = cmd.Process.Kill()
			<-done
		}
		if !killed || marker == 0 {
			if attempt == 3 {
				t.Fatalf("the restore finished before it could be killed, 3 times (killed %v); output:\n%s", killed, out.String())
			}
			t.Logf("attempt %d: the restore finished before the kill; again", attempt)
			continue
		}
		t.Logf("attempt %d: restore killed with SIGKILL a third of the way through", attempt)

		cfg, err := config.Load(pgPath)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Listen, cfg.Ops.Listen = "127.0.0.1:0", "off"
		sctx, scancel := context.WithTimeout(t.Context(), 30*time.Second)
		err = serve(sctx, cfg, &syncBuffer{}, nil, func(net.Addr, net.Addr) {})
		scancel()
		if err == nil || !strings.Contains(err.Error(), "unfinished restore") {
			t.Fatalf("serve on the half-restored store: %v", err)
		}
		// Run again at once, the killed restore's marker is fresh: refused
		// (exit 7) unless the operator says it was stopped.
		if out, err := runMainErr(t, "restore", "--config", pgPath, "--in", file); err == nil || exitCode(err) != exitUnavailable || !strings.Contains(err.Error(), "--take-over") {
			t.Fatalf("a restore run again at once: exit %d (%v)\n%s; want 7 naming --take-over", exitCode(err), err, out)
		}
		again := runMain(t, "restore", "--config", pgPath, "--in", file, "--take-over")
		if !strings.Contains(again, "resumed an interrupted restore") {
			t.Fatalf("the second restore did not resume the first:\n%s", again)
		}
		srv := startFaultServer(t, dir, pgPath)
		kc := custosv1.NewKeyServiceClient(devConn(t, dir, srv.addr))
		seen := 0
		tok := ""
		for {
			resp, err := kc.ListTenants(t.Context(), &custosv1.ListTenantsRequest{PageSize: 1000, PageToken: tok})
			if err != nil {
				t.Fatal(err)
			}
			seen += len(resp.GetTenants())
			if tok = resp.GetNextPageToken(); tok == "" {
				break
			}
		}
		if seen != tenants {
			t.Fatalf("%d tenants served after the resumed restore, the backup held %d", seen, tenants)
		}
		t.Logf("all %d tenants served after a restore killed half-way and run again", seen)
		return
	}
}

// The bbolt file's filesystem (a real tmpfs) fills up under load and is
// freed again: calls refused meanwhile are all UNAVAILABLE (never
// INTERNAL), nothing acknowledged is lost, and the server recovers without
// a restart. Skipped, saying why, where a tmpfs cannot be mounted.
func TestFaultDiskFullUnderLoadLosesNothing(t *testing.T) {
	fs := testkit.MountTmpfs(t, 32<<20)
	dir, path := newFaultConfig(t, "", "")
	conf, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// The store and, by default, the audit journal beside it, on the tmpfs.
	conf = bytes.Replace(conf, []byte("path: custos.db"), []byte("path: "+filepath.Join(fs, "custos.db")), 1)
	if err := os.WriteFile(path, conf, 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startFaultServer(t, dir, path)
	keys := setupKeys(t, dir, srv.addr, "a", "b")
	chk := newChecker()
	stop := chk.load(t, dir, srv.addr, keys, 8, 2)
	time.Sleep(400 * time.Millisecond)

	filler := filepath.Join(fs, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	for buf := make([]byte, 64<<10); ; {
		if _, err := f.Write(buf); err != nil {
			break // ENOSPC
		}
	}
	f.Close()
	time.Sleep(time.Second) // full, under load
	chk.mu.Lock()
	refusedWhileFull := chk.failures[codes.Unavailable]
	chk.mu.Unlock()
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	// Recovery is a write: a rotation, which needs new pages in the store.
	kc := custosv1.NewKeyServiceClient(devConn(t, dir, srv.addr))
	back := time.Now()
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		_, err := kc.RotateKey(ctx, &custosv1.RotateKeyRequest{Name: keys[0]})
		cancel()
		if err == nil {
			break
		}
		if time.Since(back) > 15*time.Second {
			t.Fatalf("writes did not recover within 15s of freeing space: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	recovered := time.Since(back)
	chk.mu.Lock()
	rotationsAtRecovery := 0
	for _, v := range chk.rotations {
		rotationsAtRecovery += len(v)
	}
	chk.mu.Unlock()
	time.Sleep(300 * time.Millisecond)
	stop()
	rotationsAfter := 0
	for _, v := range chk.rotations {
		rotationsAfter += len(v)
	}
	if rotationsAfter <= rotationsAtRecovery {
		t.Errorf("the load's rotations did not resume after space was freed (%d before, %d after)", rotationsAtRecovery, rotationsAfter)
	}
	chk.mu.Lock()
	for code := range chk.failures {
		if code != codes.Unavailable {
			t.Errorf("calls failed with %v on a full disk; want only UNAVAILABLE (retryable): %v", code, chk.failures)
		}
	}
	chk.mu.Unlock()
	if refusedWhileFull == 0 {
		t.Fatal("no call was refused while the disk was full: the scenario tested nothing")
	}
	t.Logf("disk full for 1s under load: %d calls refused with UNAVAILABLE; a rotation succeeded %v after space was freed", refusedWhileFull, recovered)
	chk.verify(t, dir, srv.addr)
}

// replaceOnce replaces old in s by new, failing the test when s lacks it
// (a changed dev config must not leave a test on a fixed port or bbolt).
func replaceOnce(t *testing.T, s, old, new string) string {
	t.Helper()
	if !strings.Contains(s, old) {
		t.Fatalf("config lacks %q:\n%s", old, s)
	}
	return strings.Replace(s, old, new, 1)
}

// onPostgres is a custos dev config moved from bbolt to the PostgreSQL at url.
func onPostgres(t *testing.T, conf, url string) string {
	t.Helper()
	return replaceOnce(t, conf, "  type: bbolt\n  bbolt:\n    path: custos.db\n", "  type: postgres\n  postgres:\n    url: \""+url+"\"\n")
}
