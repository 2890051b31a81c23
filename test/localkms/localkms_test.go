package localkms

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/custos-kms/custos/internal/testkit"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/awskms"
	"github.com/custos-kms/custos/keystore/root/roottest"
)

const (
	region  = "us-east-1"
	account = "111122223333"
)

var (
	buildOnce sync.Once
	kmsBinary string
	buildErr  error
)

// emulator builds local-kms once per test binary, from the version go.mod
// pins, into a temporary directory.
func emulator(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "local-kms-")
		if err != nil {
			buildErr = err
			return
		}
		kmsBinary = filepath.Join(dir, "local-kms")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		// $GO is the toolchain make test runs with (go on PATH otherwise).
		out, err := testkit.GoCommand(ctx, "build", "-o", kmsBinary, "github.com/nsmithuk/local-kms").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build local-kms: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return kmsBinary
}

func TestMain(m *testing.M) {
	code := m.Run()
	if kmsBinary != "" {
		os.RemoveAll(filepath.Dir(kmsBinary))
	}
	os.Exit(code)
}

// kmsProcess is one local-kms process; it can be stopped and started
// again on the same port and data.
type kmsProcess struct {
	t         *testing.T
	bin, data string
	seed      string
	port      int
	cmd       *exec.Cmd
	exited    chan error // cmd's Wait, once it ends
	log       *testkit.SyncBuffer
}

// startKMS runs local-kms on a free loopback port with seed (YAML, may be
// empty) and stops it at cleanup.
func startKMS(t *testing.T, seed string) *kmsProcess {
	t.Helper()
	dir := t.TempDir()
	p := &kmsProcess{t: t, bin: emulator(t), data: filepath.Join(dir, "data")}
	if seed != "" {
		p.seed = filepath.Join(dir, "seed.yaml")
		if err := os.WriteFile(p.seed, []byte(seed), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// local-kms takes a port number, not port 0: ask the kernel for a free
	// one and retry if another process takes it first.
	var err error
	for range 5 {
		l, lerr := net.Listen("tcp", "127.0.0.1:0")
		if lerr != nil {
			t.Fatal(lerr)
		}
		p.port = l.Addr().(*net.TCPAddr).Port
		l.Close()
		if err = p.start(); err == nil {
			t.Cleanup(p.stop)
			return p
		}
	}
	t.Fatalf("local-kms did not start: %v", err)
	return nil
}

func (p *kmsProcess) start() error {
	p.log = &testkit.SyncBuffer{}
	cmd := exec.Command(p.bin)
	cmd.Env = append(os.Environ(), "PORT="+strconv.Itoa(p.port), "KMS_REGION="+region, "KMS_ACCOUNT_ID="+account, "KMS_DATA_PATH="+p.data)
	if p.seed != "" {
		cmd.Env = append(cmd.Env, "KMS_SEED_PATH="+p.seed)
	}
	cmd.Stdout, cmd.Stderr = p.log, p.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	p.cmd = cmd
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", p.addr(), 200*time.Millisecond)
		if err == nil {
			c.Close()
			p.exited = exited // stop waits on it
			return nil
		}
		select {
		case werr := <-exited:
			p.cmd = nil
			return fmt.Errorf("local-kms exited (%v) before listening on %s: %s", werr, p.addr(), p.log.String())
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			p.cmd = nil
			return fmt.Errorf("local-kms not listening on %s within 15s (last error %v): %s", p.addr(), err, p.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop kills the emulator and waits until it has exited: a start right
// after would find its database still locked by the dying process (local-kms
// then panics with "resource temporarily unavailable").
func (p *kmsProcess) stop() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		p.t.Errorf("local-kms (pid %d) had not exited 10s after it was killed", p.cmd.Process.Pid)
	}
	p.cmd = nil
}

func (p *kmsProcess) addr() string     { return "127.0.0.1:" + strconv.Itoa(p.port) }
func (p *kmsProcess) endpoint() string { return "http://" + p.addr() }

// awsEnv gives the SDK's default chain static test credentials.
func awsEnv(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "local")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "local")
	t.Setenv("AWS_REGION", region)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
}

// admin is a raw KMS client of the emulator, for what the root does not do
// (creating and disabling keys).
func admin(t *testing.T, p *kmsProcess) *kms.Client {
	t.Helper()
	return kms.New(kms.Options{
		Region: region, BaseEndpoint: aws.String(p.endpoint()),
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "local", SecretAccessKey: "local"}, nil
		}),
	})
}

// newRoot creates a key on the emulator and returns the awskms root for it,
// built as custos builds it (awskms.New, the default credential chain).
func newRoot(t *testing.T, p *kmsProcess) (*awskms.Root, string) {
	t.Helper()
	awsEnv(t)
	ctx := t.Context()
	k, err := admin(t, p).CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("custos root")})
	if err != nil {
		t.Fatalf("CreateKey on local-kms: %v\n%s", err, p.log.String())
	}
	arn := aws.ToString(k.KeyMetadata.Arn)
	r, err := awskms.New(ctx, awskms.Config{KeyID: arn, Region: region, Endpoint: p.endpoint(), MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	return r, arn
}

func TestConformanceAgainstLocalKMS(t *testing.T) {
	p := startKMS(t, "")
	r, _ := newRoot(t, p)
	// Wrap/unwrap, the encryption context bound, tampering refused. One
	// gap of the emulator: local-kms's ciphertext starts with the key's
	// ARN (a length byte, then the ARN), which it does not check when the
	// request names the key, as the awskms root's requests do; every other
	// byte is authenticated. Truncations are still all refused.
	roottest.TestWithOptions(t, r, roottest.Options{Unchecked: func(blob []byte, i int) bool {
		return len(blob) > 2 && i >= 2 && i < 2+int(blob[1])
	}})
}

func TestEmulatorDownIsUnavailableAndRecovers(t *testing.T) {
	p := startKMS(t, "")
	r, _ := newRoot(t, p)
	roottest.TestUnavailable(t, r, p.stop, func() {
		if err := p.start(); err != nil {
			t.Fatal(err)
		}
	})
}

// A disabled key is refused, as a configuration problem rather than an
// outage (so the keystore does not retry it as one) and never as "not
// authentic"; enabled again, blobs wrapped before unwrap again.
func TestADisabledKeyIsRefusedAndComesBack(t *testing.T) {
	p := startKMS(t, "")
	r, arn := newRoot(t, p)
	ctx := t.Context()
	aad := []byte("custos:tenant:acme")
	blob, err := r.Wrap(ctx, bytes.Repeat([]byte{7}, 32), aad)
	if err != nil {
		t.Fatal(err)
	}
	kc := admin(t, p)
	if _, err := kc.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(arn)}); err != nil {
		t.Fatal(err)
	}
	for op, err := range map[string]error{
		"wrap":   func() error { _, err := r.Wrap(ctx, []byte("k"), aad); return err }(),
		"unwrap": func() error { _, err := r.Unwrap(ctx, blob, aad); return err }(),
	} {
		if err == nil || errors.Is(err, root.ErrNotAuthentic) || errors.Is(err, root.ErrUnavailable) || !strings.Contains(err.Error(), "Disabled") {
			t.Errorf("%s with the key disabled: %v; want KMS's refusal (DisabledException), neither unavailable nor not authentic", op, err)
		}
	}
	if _, err := kc.EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(arn)}); err != nil {
		t.Fatal(err)
	}
	if got, err := r.Unwrap(ctx, blob, aad); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{7}, 32)) {
		t.Fatalf("unwrap after EnableKey: %v", err)
	}
}

// KMS key rotation keeps the old backing keys: a blob wrapped before the
// rotation still unwraps, and new blobs use the new backing key. local-kms
// rotates a key when its NextKeyRotation has passed, which a seed sets.
func TestBlobsWrappedBeforeAKeyRotationStillUnwrap(t *testing.T) {
	const keyID = "bc436485-5092-42b8-92a3-0aa8b93536dc"
	emulator(t) // built first: the rotation time counts from the start
	rotateAt := time.Now().Add(3 * time.Second).UTC()
	p := startKMS(t, fmt.Sprintf(`Keys:
  Symmetric:
    Aes:
      - Metadata:
          KeyId: %s
        BackingKeys:
          - 5cdaead27fe7da2de47945d73cd6d79e36494e73802f3cd3869f1d2cb0b5d7a9
        NextKeyRotation: %s
`, keyID, rotateAt.Format(time.RFC3339Nano)))
	awsEnv(t)
	ctx := t.Context()
	arn := "arn:aws:kms:" + region + ":" + account + ":key/" + keyID
	r, err := awskms.New(ctx, awskms.Config{KeyID: arn, Region: region, Endpoint: p.endpoint(), MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	aad := []byte("custos:tenant:acme")
	kekA, kekB := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	before, err := r.Wrap(ctx, kekA, aad)
	if err != nil {
		t.Fatalf("wrap before the rotation: %v\n%s", err, p.log.String())
	}
	if v := backingVersion(t, before); v != 0 {
		t.Fatalf("the first blob already used backing key %d: local-kms took over 3s to start", v)
	}
	time.Sleep(time.Until(rotateAt) + 200*time.Millisecond)
	after, err := r.Wrap(ctx, kekB, aad)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct{ blob, want []byte }{"before": {before, kekA}, "after": {after, kekB}} {
		got, err := r.Unwrap(ctx, c.blob, aad)
		if err != nil || !bytes.Equal(got, c.want) {
			t.Fatalf("unwrap of the blob wrapped %s the rotation: %v", name, err)
		}
	}
	// The emulator's ciphertext names the backing key version it used
	// (local-kms's format: ident length, ident, 4-byte little-endian
	// version): 0 before the rotation, 1 after.
	if vb, va := backingVersion(t, before), backingVersion(t, after); vb != 0 || va != 1 {
		t.Fatalf("backing key versions %d before and %d after; the key did not rotate", vb, va)
	}
}

// backingVersion reads local-kms's backing key version from an awskms blob
// (format byte, then KMS's ciphertext blob).
func backingVersion(t *testing.T, blob []byte) uint32 {
	t.Helper()
	kmsBlob := blob[1:]
	n := int(kmsBlob[0])
	if len(kmsBlob) < 1+n+4 {
		t.Fatalf("short local-kms ciphertext (%d bytes)", len(kmsBlob))
	}
	return binary.LittleEndian.Uint32(kmsBlob[1+n : 1+n+4])
}
