//go:build cgo

package pkcs11_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/pkcs11"
	"github.com/custos-kms/custos/keystore/root/roottest"
)

// newRoot creates the key (if missing) and opens a root on it, closed at
// the end of the test.
func newRoot(t *testing.T, cfg pkcs11.Config) *pkcs11.Root {
	t.Helper()
	if _, err := pkcs11.CreateKey(t.Context(), cfg); err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	r, err := pkcs11.New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestConformanceOnSoftHSM(t *testing.T) {
	h := newSoftHSM(t)
	roottest.Test(t, newRoot(t, h.cfg))
}

func TestCreateKeyIsIdempotent(t *testing.T) {
	h := newSoftHSM(t)
	for i, want := range []bool{true, false} {
		created, err := pkcs11.CreateKey(t.Context(), h.cfg)
		if err != nil || created != want {
			t.Fatalf("CreateKey #%d = %v, %v; want %v", i+1, created, err, want)
		}
	}
}

func TestTheKeyNeverLeavesTheToken(t *testing.T) {
	h := newSoftHSM(t)
	newRoot(t, h.cfg)

	// Look at the key with a session of our own.
	c := p11.New(h.module)
	t.Cleanup(c.Destroy)
	if err := c.Initialize(); err != nil && !errors.Is(err, p11.Error(p11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		t.Fatal(err)
	}
	slots, err := c.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	var sh p11.SessionHandle
	for _, s := range slots {
		if info, err := c.GetTokenInfo(s); err == nil && info.Label == tokenLabel {
			if sh, err = c.OpenSession(s, p11.CKF_SERIAL_SESSION); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(func() { c.CloseSession(sh) })
	if err := c.Login(sh, p11.CKU_USER, userPIN); err != nil && !errors.Is(err, p11.Error(p11.CKR_USER_ALREADY_LOGGED_IN)) {
		t.Fatal(err)
	}
	if err := c.FindObjectsInit(sh, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, "custos-root")}); err != nil {
		t.Fatal(err)
	}
	objs, _, err := c.FindObjects(sh, 10)
	c.FindObjectsFinal(sh)
	if err != nil || len(objs) != 1 {
		t.Fatalf("found %d objects labelled custos-root (%v); want 1", len(objs), err)
	}
	attrs, err := c.GetAttributeValue(sh, objs[0], []*p11.Attribute{
		p11.NewAttribute(p11.CKA_TOKEN, nil),
		p11.NewAttribute(p11.CKA_SENSITIVE, nil),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, nil),
		p11.NewAttribute(p11.CKA_ALWAYS_SENSITIVE, nil),
		p11.NewAttribute(p11.CKA_NEVER_EXTRACTABLE, nil),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint]bool{p11.CKA_TOKEN: true, p11.CKA_SENSITIVE: true, p11.CKA_EXTRACTABLE: false, p11.CKA_ALWAYS_SENSITIVE: true, p11.CKA_NEVER_EXTRACTABLE: true}
	for _, a := range attrs {
		if got := len(a.Value) == 1 && a.Value[0] != 0; got != want[a.Type] {
			t.Errorf("attribute 0x%x = %v, want %v", a.Type, got, want[a.Type])
		}
	}
	// The value itself cannot be read.
	if _, err := c.GetAttributeValue(sh, objs[0], []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)}); !errors.Is(err, p11.Error(p11.CKR_ATTRIBUTE_SENSITIVE)) {
		t.Fatalf("reading CKA_VALUE: %v; want CKR_ATTRIBUTE_SENSITIVE", err)
	}
}

// New refuses a root key weaker than roots.md allows: extractable, not
// sensitive, public (it decrypts without the PIN), or allowed more than
// encrypt and decrypt.
func TestNewRefusesAWeakKey(t *testing.T) {
	h := newSoftHSM(t)
	for label, c := range map[string]struct {
		attrs []*p11.Attribute
		want  string
	}{
		"extractable": {[]*p11.Attribute{p11.NewAttribute(p11.CKA_SENSITIVE, false), p11.NewAttribute(p11.CKA_EXTRACTABLE, true)}, "not extractable"},
		"public":      {[]*p11.Attribute{p11.NewAttribute(p11.CKA_PRIVATE, false)}, "private token object"},
		"wraps":       {[]*p11.Attribute{p11.NewAttribute(p11.CKA_WRAP, true)}, "encrypt and decrypt only"},
		"derives":     {[]*p11.Attribute{p11.NewAttribute(p11.CKA_DERIVE, true)}, "encrypt and decrypt only"},
		"signs":       {[]*p11.Attribute{p11.NewAttribute(p11.CKA_SIGN, true)}, "encrypt and decrypt only"},
	} {
		generateKey(t, h, label, c.attrs...)
		cfg := h.cfg
		cfg.KeyLabel = label
		r, err := pkcs11.New(t.Context(), cfg)
		if err == nil {
			r.Close()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New with a key that %s: %v; want a refusal saying %q", label, err, c.want)
		}
	}
	// The same key with the documented attributes is taken.
	generateKey(t, h, "strong")
	cfg := h.cfg
	cfg.KeyLabel = "strong"
	r, err := pkcs11.New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New with a key of the documented attributes: %v", err)
	}
	r.Close()
}

// generateKey makes an AES-256 token key labelled label in h's token with
// the documented root attributes, changed by override.
func generateKey(t *testing.T, h *softHSM, label string, override ...*p11.Attribute) {
	t.Helper()
	c := p11.New(h.module)
	if err := c.Initialize(); err != nil {
		t.Fatal(err)
	}
	defer func() { c.Finalize(); c.Destroy() }()
	slots, _ := c.GetSlotList(true)
	sh, err := c.OpenSession(slots[0], p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseSession(sh)
	if err := c.Login(sh, p11.CKU_USER, userPIN); err != nil {
		t.Fatal(err)
	}
	attrs := map[uint]*p11.Attribute{}
	for _, a := range []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_VALUE_LEN, 32),
		p11.NewAttribute(p11.CKA_LABEL, label),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_ENCRYPT, true),
		p11.NewAttribute(p11.CKA_DECRYPT, true),
		p11.NewAttribute(p11.CKA_WRAP, false),
		p11.NewAttribute(p11.CKA_UNWRAP, false),
		p11.NewAttribute(p11.CKA_SIGN, false),
		p11.NewAttribute(p11.CKA_VERIFY, false),
		p11.NewAttribute(p11.CKA_DERIVE, false),
	} {
		attrs[a.Type] = a
	}
	for _, a := range override {
		attrs[a.Type] = a
	}
	template := make([]*p11.Attribute, 0, len(attrs))
	for _, a := range attrs {
		template = append(template, a)
	}
	if _, err := c.GenerateKey(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, template); err != nil {
		t.Fatalf("generate %s: %v", label, err)
	}
}

func TestPIN(t *testing.T) {
	h := newSoftHSM(t)
	if _, err := pkcs11.CreateKey(t.Context(), h.cfg); err != nil {
		t.Fatal(err)
	}
	t.Run("from an environment variable", func(t *testing.T) {
		t.Setenv("CUSTOS_TEST_PIN", userPIN)
		cfg := h.cfg
		cfg.PINFile, cfg.PINEnv = "", "CUSTOS_TEST_PIN"
		r, err := pkcs11.New(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		r.Close()
	})
	t.Run("a wrong PIN is a misconfiguration that names no PIN", func(t *testing.T) {
		t.Setenv("CUSTOS_TEST_PIN", "987654")
		cfg := h.cfg
		cfg.PINFile, cfg.PINEnv = "", "CUSTOS_TEST_PIN"
		_, err := pkcs11.New(t.Context(), cfg)
		if err == nil || errors.Is(err, root.ErrUnavailable) || errors.Is(err, root.ErrNotAuthentic) {
			t.Fatalf("New with a wrong PIN: %v; want a plain error", err)
		}
		if strings.Contains(err.Error(), "987654") {
			t.Fatalf("the error reveals the PIN: %v", err)
		}
	})
	t.Run("an unset variable is refused", func(t *testing.T) {
		cfg := h.cfg
		cfg.PINFile, cfg.PINEnv = "", "CUSTOS_TEST_PIN_UNSET"
		if _, err := pkcs11.New(t.Context(), cfg); err == nil || !strings.Contains(err.Error(), "CUSTOS_TEST_PIN_UNSET") {
			t.Fatalf("New with an unset PIN variable: %v", err)
		}
	})
}

func TestAMissingTokenIsUnavailable(t *testing.T) {
	h := newSoftHSM(t)
	cfg := h.cfg
	cfg.TokenLabel = "no-such-token"
	if _, err := pkcs11.New(t.Context(), cfg); !errors.Is(err, root.ErrUnavailable) {
		t.Fatalf("New with an unknown token label: %v; want ErrUnavailable", err)
	}
}

func TestAMissingKeyIsNotUnavailable(t *testing.T) {
	h := newSoftHSM(t)
	_, err := pkcs11.New(t.Context(), h.cfg) // no CreateKey
	if err == nil || errors.Is(err, root.ErrUnavailable) || !strings.Contains(err.Error(), "CreateKey") {
		t.Fatalf("New without a key: %v; want a misconfiguration error pointing at CreateKey", err)
	}
}

func TestTokenGoneAndBackIsUnavailableThenRecovers(t *testing.T) {
	// SoftHSM2 keeps each token in a directory under its token dir. Moving
	// the directory away is the nearest thing to pulling an HSM: the token
	// vanishes from its slot and every call fails. Moved back, the provider
	// finds it again on its own (SoftHSM2 needs the library re-initialised to
	// notice, which the provider does when it is the library's only user).
	h := newSoftHSM(t)
	r := newRoot(t, h.cfg)
	away := h.tokenDir + ".away"
	roottest.TestUnavailable(t, r,
		func() {
			if err := os.Rename(h.tokenDir, away); err != nil {
				t.Fatal(err)
			}
		},
		func() {
			if err := os.Rename(away, h.tokenDir); err != nil {
				t.Fatal(err)
			}
		})
}

func TestConcurrentUseSharesAFewSessions(t *testing.T) {
	h := newSoftHSM(t)
	cfg := h.cfg
	cfg.MaxSessions = 3
	r := newRoot(t, cfg)
	ctx := t.Context()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Go(func() {
			kek := bytes.Repeat([]byte{byte(g)}, 32)
			aad := []byte{byte(g)}
			for range 25 {
				w, err := r.Wrap(ctx, kek, aad)
				if err != nil {
					errs <- err
					return
				}
				got, err := r.Unwrap(ctx, w, aad)
				if err != nil || !bytes.Equal(got, kek) {
					errs <- errors.Join(errors.New("round trip failed"), err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestCallsAfterCloseFail(t *testing.T) {
	h := newSoftHSM(t)
	r := newRoot(t, h.cfg)
	r.Close()
	if _, err := r.Wrap(context.Background(), []byte("k"), nil); err == nil {
		t.Fatal("Wrap after Close succeeded")
	}
}

func TestAHungTokenDoesNotHoldCallersPastTheirDeadline(t *testing.T) {
	// PKCS#11 calls cannot be interrupted. A call stuck in the token (here
	// a stand-in operation that blocks) must not keep its caller, or callers
	// queued for its session, past their deadlines.
	h := newSoftHSM(t)
	cfg := h.cfg
	cfg.MaxSessions = 1
	r := newRoot(t, cfg)
	release := make(chan struct{})
	const deadline = 300 * time.Millisecond
	within := func(name string, call func(ctx context.Context) error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), deadline)
		defer cancel()
		start := time.Now()
		err := call(ctx)
		if d := time.Since(start); d > deadline+time.Second {
			t.Fatalf("%s took %v; the context allowed %v", name, d, deadline)
		}
		if !errors.Is(err, root.ErrUnavailable) {
			t.Fatalf("%s: %v; want ErrUnavailable", name, err)
		}
	}
	within("the hung call", func(ctx context.Context) error { return r.Hang(ctx, release) })
	within("Wrap queued behind it", func(ctx context.Context) error {
		_, err := r.Wrap(ctx, []byte("k"), nil)
		return err
	})
	close(release) // the token answers at last; the session returns to the pool
	if _, err := r.Wrap(t.Context(), []byte("k"), nil); err != nil {
		t.Fatalf("Wrap after the token answered: %v", err)
	}
}

// A Wrap retried on a fresh session (the pooled one closed behind the
// root's back) wraps the plaintext it was given, not a cleared copy.
func TestAWrapRetriedOnAStaleSessionWrapsThePlaintext(t *testing.T) {
	h := newSoftHSM(t)
	r := newRoot(t, h.cfg)
	ctx := t.Context()
	kek := bytes.Repeat([]byte{0x5a}, 32)
	if _, err := r.Wrap(ctx, kek, []byte("warm")); err != nil { // a session now idle in the pool
		t.Fatal(err)
	}
	if err := r.CloseAllSessions(); err != nil {
		t.Fatal(err)
	}
	wrapped, err := r.Wrap(ctx, kek, []byte("aad"))
	if err != nil {
		t.Fatalf("Wrap on a stale session: %v", err)
	}
	got, err := r.Unwrap(ctx, wrapped, []byte("aad"))
	if err != nil || !bytes.Equal(got, kek) {
		t.Fatalf("Unwrap of what the retried Wrap made: %x, %v; want the plaintext %x", got, err, kek)
	}
}

// Close gives up on a token call that never returns (reporting it) instead
// of waiting for ever: custos root rewrap, backup and a server's shutdown
// close the root on their way out.
func TestCloseDoesNotWaitForEverOnAHungToken(t *testing.T) {
	h := newSoftHSM(t)
	r := newRoot(t, h.cfg)
	r.SetCloseWait(200 * time.Millisecond)
	release := make(chan struct{})
	defer func() {
		close(release) // the token answers at last: the library is released
		r.WaitReleased()
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := r.Hang(ctx, release); !errors.Is(err, root.ErrUnavailable) {
		t.Fatalf("the hung call: %v, want ErrUnavailable", err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Close() }()
	select {
	case err := <-done:
		if !errors.Is(err, root.ErrUnavailable) {
			t.Fatalf("Close with a call hung in the token: %v, want ErrUnavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close waited for a token call that never returns")
	}
	// Closed again while the call still hangs: not a success either.
	if err := r.Close(); !errors.Is(err, root.ErrUnavailable) {
		t.Fatalf("a second Close with the call still hung: %v, want ErrUnavailable", err)
	}
}

// What an operation returns after its caller stopped waiting (an unwrapped
// KEK) is cleared, not left in memory for the garbage collector.
func TestAnAbandonedResultIsCleared(t *testing.T) {
	h := newSoftHSM(t)
	r := newRoot(t, h.cfg)
	release := make(chan struct{})
	kek := bytes.Repeat([]byte{0x5a}, 32)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := r.HangThenReturn(ctx, release, kek); !errors.Is(err, root.ErrUnavailable) {
		t.Fatalf("the abandoned call: %v, want ErrUnavailable", err)
	}
	close(release)
	r.Drain()
	if !bytes.Equal(kek, make([]byte, 32)) {
		t.Fatalf("the abandoned result was left as it was: %x", kek)
	}
}

// A call made without a deadline (custos backup, root rewrap) is bounded
// by the root's own timeout when the token stops answering.
func TestACallWithoutADeadlineIsBounded(t *testing.T) {
	h := newSoftHSM(t)
	r := newRoot(t, h.cfg)
	r.SetCallTimeout(200 * time.Millisecond)
	release := make(chan struct{})
	defer close(release)
	done := make(chan error, 1)
	go func() { done <- r.Hang(context.Background(), release) }()
	select {
	case err := <-done:
		if !errors.Is(err, root.ErrUnavailable) {
			t.Fatalf("a hung call without a deadline: %v, want ErrUnavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a call without a deadline waited for a token that never answers")
	}
}

// A PIN the token refuses (changed on the HSM while the root ran, then a
// reset made it log in again) is not tried again, by calls or probes,
// until the PIN file holds another: HSMs lock a user PIN after a few
// wrong tries.
func TestARefusedPINIsNotTriedOnEveryCall(t *testing.T) {
	h := newSoftHSM(t)
	r := newRoot(t, h.cfg)
	// The token's PIN is no longer the one the root has (and its file).
	writeFile(t, h.cfg.PINFile, "987654\n")
	r.SetPIN("987654")
	if err := r.CloseAllSessions(); err != nil { // logs the application out
		t.Fatal(err)
	}
	ctx := t.Context()
	for range 20 {
		if _, err := r.Wrap(ctx, make([]byte, 32), []byte("aad")); err == nil {
			t.Fatal("a wrap with the PIN refused succeeded")
		} else if strings.Contains(err.Error(), "987654") {
			t.Fatalf("the error reveals the PIN: %v", err)
		}
	}
	if n := r.Logins(); n > 2 { // New's, and the one refused
		t.Fatalf("%d logins for 20 calls with the PIN refused; want it tried once", n)
	}
	// The PIN file updated: the next call logs in with it.
	writeFile(t, h.cfg.PINFile, userPIN+"\n")
	if _, err := r.Wrap(ctx, make([]byte, 32), []byte("aad")); err != nil {
		t.Fatalf("a wrap after the PIN file was updated: %v", err)
	}
}

// Two tokens with the root's token label are refused: which one was used
// depended on the slot order, and tenants wrapped under one token's key
// would be "not authentic" under the other's.
func TestTwoTokensWithTheLabelAreRefused(t *testing.T) {
	h := newSoftHSM(t)
	if _, err := pkcs11.CreateKey(t.Context(), h.cfg); err != nil {
		t.Fatal(err)
	}
	initToken(t)
	_, err := pkcs11.New(t.Context(), h.cfg)
	if err == nil || !strings.Contains(err.Error(), "2 tokens are labelled") {
		t.Fatalf("New with two tokens of one label: %v, want the ambiguity named", err)
	}
}
