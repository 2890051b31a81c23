package pgtest_test

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/custos-kms/custos/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestNewDatabaseGivesEachTestAnEmptyDatabase(t *testing.T) {
	srv := pgtest.Start(t)
	a, b := srv.NewDatabase(t), srv.NewDatabase(t)
	if a == b {
		t.Fatalf("two NewDatabase calls returned the same URL %s", a)
	}
	ctx := t.Context()
	ca := connect(t, a)
	if _, err := ca.Exec(ctx, "CREATE TABLE only_in_a (x int)"); err != nil {
		t.Fatal(err)
	}
	cb := connect(t, b)
	var n int
	if err := cb.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("a table created in one database shows in another")
	}
}

func TestDefaultCollationIsNotByteWise(t *testing.T) {
	if os.Getenv(pgtest.EnvURL) != "" {
		t.Skipf("%s is set: the external server's collation is its own", pgtest.EnvURL)
	}
	conn := connect(t, pgtest.Start(t).NewDatabase(t))
	// Under the "C" collation "B" < "a"; under ICU en-US "a" < "B".
	var less bool
	if err := conn.QueryRow(t.Context(), "SELECT 'a'::text < 'B'::text").Scan(&less); err != nil {
		t.Fatal(err)
	}
	if !less {
		t.Fatalf(`'a' < 'B' is false: the default collation is byte-wise, so tests would not catch a missing COLLATE "C"`)
	}
}

func TestKillAndStartAgain(t *testing.T) {
	srv := pgtest.StartDedicated(t)
	url := srv.NewDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(t.Context(), "CREATE TABLE survives (x int); INSERT INTO survives VALUES (42)"); err != nil {
		t.Fatal(err)
	}

	srv.Kill(t)
	if err := conn.Ping(t.Context()); err == nil {
		t.Fatalf("Ping on a connection to a killed server succeeded")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if c, err := pgx.Connect(ctx, url); err == nil {
		c.Close(ctx)
		t.Fatalf("Connect to a killed server succeeded")
	}

	srv.StartAgain(t)
	var x int
	if err := connect(t, url).QueryRow(t.Context(), "SELECT x FROM survives").Scan(&x); err != nil || x != 42 {
		t.Fatalf("after StartAgain: x = %d, %v; want 42, nil", x, err)
	}

	srv.Restart(t)
	if err := connect(t, url).Ping(t.Context()); err != nil {
		t.Fatalf("Ping after Restart = %v", err)
	}
}

func TestFreezeHangsTheServerUntilThaw(t *testing.T) {
	srv := pgtest.StartDedicated(t)
	url := srv.NewDatabase(t)
	conn := connect(t, url)
	srv.Freeze(t)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if err := conn.Ping(ctx); err == nil {
		t.Fatalf("Ping on a frozen server succeeded")
	}
	if c, err := pgx.Connect(ctx, url); err == nil {
		c.Close(ctx)
		t.Fatalf("Connect to a frozen server succeeded")
	}
	srv.Thaw(t)
	if err := connect(t, url).Ping(t.Context()); err != nil {
		t.Fatalf("Ping after Thaw = %v", err)
	}
	// Stop works on a frozen server too.
	srv.Freeze(t)
	srv.Stop()
}

func TestStopLeavesNoProcessOrDirectory(t *testing.T) {
	srv := pgtest.StartDedicated(t)
	conn := connect(t, srv.NewDatabase(t))
	var dataDir string
	if err := conn.QueryRow(t.Context(), "SHOW data_directory").Scan(&dataDir); err != nil {
		t.Fatal(err)
	}
	var pid int
	if err := conn.QueryRow(t.Context(), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Errorf("data directory %s still there after Stop (err %v)", dataDir, err)
	}
	// The backend was the postmaster's child; immediate shutdown ends both.
	if _, err := exec.LookPath("pgrep"); err != nil {
		t.Fatalf("pgrep (procps), which scripts/test-deps.sh installs: %v", err)
	}
	if out, err := exec.Command("pgrep", "-f", "-a", "postgres -D "+dataDir).Output(); err == nil {
		t.Errorf("postgres processes left after Stop:\n%s", out)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
		status, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if !strings.Contains(string(status), "zombie") {
			t.Errorf("backend %d still running after Stop", pid)
		}
	}
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
