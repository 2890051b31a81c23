//go:build cgo

package pkcs11

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	p11 "github.com/miekg/pkcs11"

	"github.com/custos-kms/custos/keystore/root"
)

// Root is a PKCS#11 root. It is safe for concurrent use. Close it to
// release its sessions and the library.
type Root struct {
	mod        *module
	tokenLabel string
	keyLabel   string
	pin        string
	rand       io.Reader

	idle  chan *session // open sessions not in use
	slots chan struct{} // one per open session, in use or idle
	done  chan struct{} // closed by Close

	life        sync.Mutex     // guards closed; orders inflight.Add before Close's Wait
	closed      bool           // guarded by life
	inflight    sync.WaitGroup // operations running on the library
	closeWait   time.Duration  // how long Close waits for them (defaultCloseWait)
	callTimeout time.Duration  // bounds each operation (defaultCallTimeout)
	released    chan struct{}  // closed once Close released the sessions and the library

	mu    sync.Mutex // guards state; held while (re)finding the token and key
	state tokenState
	// pinErr is the token's refusal of refusedPIN (guarded by mu), which
	// is not tried again. logins counts the tries (tests).
	pinErr     error
	refusedPIN string
	logins     int
	readPIN    func() (string, error) // the PIN from its file or variable, read again
}

// tokenState is what the provider found in the token. Each reset starts a
// new generation; sessions of an older one are closed when next met.
type tokenState struct {
	gen   uint64
	lib   uint64 // incremented when this root re-initialises the library
	ready bool   // slot and key are valid for gen
	slot  uint
	key   p11.ObjectHandle
}

type session struct {
	h   p11.SessionHandle
	gen uint64
	lib uint64 // a handle from before a re-initialisation is dead, and its number may be reused
}

var _ root.Root = (*Root)(nil)

// Blob layout; see the package documentation.
const (
	formatVersion = 0x01
	ivSize        = 12
	tagSize       = 16
	overhead      = 1 + ivSize + tagSize
)

// New loads the module, finds the token by its label, logs in and finds the
// key, checking its attributes. It fails with an error wrapping
// root.ErrUnavailable when the token cannot be found or reached.
func New(ctx context.Context, cfg Config) (*Root, error) {
	if cfg.Module == "" || cfg.TokenLabel == "" || cfg.KeyLabel == "" {
		return nil, errors.New("pkcs11 root: module, token label and key label are required")
	}
	pin, err := readPIN(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.MaxSessions == 0 {
		cfg.MaxSessions = 4
	}
	if cfg.MaxSessions < 0 {
		return nil, errors.New("pkcs11 root: max sessions must not be negative")
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	mod, err := loadModule(cfg.Module)
	if err != nil {
		return nil, err
	}
	r := &Root{
		mod:         mod,
		tokenLabel:  cfg.TokenLabel,
		keyLabel:    cfg.KeyLabel,
		pin:         pin,
		readPIN:     func() (string, error) { return readPIN(cfg) },
		rand:        cfg.Rand,
		idle:        make(chan *session, cfg.MaxSessions),
		slots:       make(chan struct{}, cfg.MaxSessions),
		done:        make(chan struct{}),
		closeWait:   defaultCloseWait,
		callTimeout: defaultCallTimeout,
		released:    make(chan struct{}),
	}
	// Find the token and the key now, so that a misconfiguration fails here.
	if _, err := r.do(ctx, "open", func(p11.SessionHandle, p11.ObjectHandle) ([]byte, error) { return nil, nil }); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// readPIN reads the PIN from the configured file or environment variable.
// Errors name the source, never the PIN.
func readPIN(cfg Config) (string, error) {
	switch {
	case cfg.PINFile != "" && cfg.PINEnv != "":
		return "", errors.New("pkcs11 root: set one of PIN file and PIN environment variable, not both")
	case cfg.PINFile != "":
		b, err := os.ReadFile(cfg.PINFile)
		if err != nil {
			return "", fmt.Errorf("pkcs11 root: PIN file: %w", err)
		}
		pin := strings.TrimRight(string(b), "\r\n")
		if pin == "" {
			return "", fmt.Errorf("pkcs11 root: PIN file %s is empty", cfg.PINFile)
		}
		return pin, nil
	case cfg.PINEnv != "":
		pin := os.Getenv(cfg.PINEnv)
		if pin == "" {
			return "", fmt.Errorf("pkcs11 root: environment variable %s is unset or empty", cfg.PINEnv)
		}
		return pin, nil
	}
	return "", errors.New("pkcs11 root: a PIN file or PIN environment variable is required")
}

// defaultCallTimeout bounds each Wrap and Unwrap within the caller's
// deadline, as Vault's default timeout does: a network HSM that stops
// answering held a caller without a deadline (custos backup, root rewrap)
// for ever.
const defaultCallTimeout = 30 * time.Second

// defaultCloseWait bounds how long Close waits for a token call: PKCS#11
// calls cannot be interrupted, and a token that stopped answering would
// otherwise hold a command's exit or a server's shutdown for ever.
const defaultCloseWait = 10 * time.Second

// Close waits for operations in flight (including ones whose callers gave
// up), closes the sessions and releases the library. Later operations fail.
// If a token call has not returned within defaultCloseWait, it returns an
// error wrapping root.ErrUnavailable at once, and the sessions and the
// library are released when the call returns. Closing again waits and
// reports the same way.
func (r *Root) Close() error {
	r.life.Lock()
	first := !r.closed
	r.closed = true
	r.life.Unlock()
	if first {
		close(r.done)
		go func() { // ends when the last token call returns
			defer close(r.released)
			r.inflight.Wait()
			for len(r.idle) > 0 {
				r.discard(<-r.idle)
			}
			r.mod.release()
		}()
	}
	// A later Close waits as the first did, and reports the same while
	// the library is still held.
	select {
	case <-r.released:
		return nil
	case <-time.After(r.closeWait):
		return fmt.Errorf("pkcs11 root: close: %w: a token call has not returned after %v; the library is released when it does", root.ErrUnavailable, r.closeWait)
	}
}

// Wrap encrypts plaintext with AES-256-GCM under the token's key, binding aad.
func (r *Root) Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	pt, ad := clone(plaintext), clone(aad) // the call may outlive this one
	// op may run twice (a retry on a stale session): the copy of the
	// plaintext is cleared once both are over, never between them, and
	// each attempt draws its own IV.
	return r.doThen(ctx, "wrap", func(h p11.SessionHandle, key p11.ObjectHandle) ([]byte, error) {
		iv := make([]byte, ivSize)
		if _, err := io.ReadFull(r.rand, iv); err != nil {
			return nil, fmt.Errorf("IV: %w", err)
		}
		params := p11.NewGCMParams(iv, ad, tagSize*8)
		defer params.Free()
		if err := r.mod.ctx.EncryptInit(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, key); err != nil {
			return nil, err
		}
		ct, err := r.mod.ctx.Encrypt(h, pt)
		if err != nil {
			return nil, err
		}
		used := iv
		if got := params.IV(); len(got) == ivSize {
			used = got // the token may choose its own IV
		}
		if len(ct) != len(pt)+tagSize {
			return nil, fmt.Errorf("token returned %d bytes of GCM output for %d bytes", len(ct), len(pt))
		}
		out := make([]byte, 0, 1+ivSize+len(ct))
		out = append(out, formatVersion)
		out = append(out, used...)
		return append(out, ct...), nil
	}, func() { clear(pt) })
}

// Unwrap decrypts a blob made by Wrap with the same aad.
func (r *Root) Unwrap(ctx context.Context, wrapped, aad []byte) ([]byte, error) {
	if len(wrapped) < overhead || wrapped[0] != formatVersion {
		return nil, fmt.Errorf("pkcs11 root: %w", root.ErrNotAuthentic)
	}
	iv := clone(wrapped[1 : 1+ivSize])
	ct, ad := clone(wrapped[1+ivSize:]), clone(aad)
	return r.do(ctx, "unwrap", func(h p11.SessionHandle, key p11.ObjectHandle) ([]byte, error) {
		params := p11.NewGCMParams(iv, ad, tagSize*8)
		defer params.Free()
		if err := r.mod.ctx.DecryptInit(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, params)}, key); err != nil {
			return nil, err
		}
		pt, err := r.mod.ctx.Decrypt(h, ct)
		switch {
		case err == nil:
			return pt, nil
		case isNotAuthentic(err):
			return nil, errNotAuthentic
		case isAmbiguous(err):
			// SoftHSM2 reports a failed GCM tag as CKR_GENERAL_ERROR, which
			// could also be a fault. A round trip on the same session tells:
			// if the token works, the blob was at fault.
			if perr := r.probe(h, key); perr != nil {
				return nil, probeFailed(perr)
			}
			return nil, errNotAuthentic
		}
		return nil, err
	})
}

// probeFailed is the error of an unwrap whose failure was ambiguous and
// whose probe then failed too: the token is at fault, not the blob, so the
// unwrap is unavailable (roots.md), whatever code the probe got. A code
// that means a stale session still resets and retries (isStale sees it
// through the wrapping).
func probeFailed(perr error) error {
	return fmt.Errorf("%w: the token failed a test encryption after a decrypt failed: %w", root.ErrUnavailable, perr)
}

// probe checks that the token can encrypt and decrypt on session h.
func (r *Root) probe(h p11.SessionHandle, key p11.ObjectHandle) error {
	iv := make([]byte, ivSize)
	if _, err := io.ReadFull(r.rand, iv); err != nil {
		return err
	}
	msg, ad := make([]byte, 32), []byte("custos:pkcs11:probe")
	mech := func() (*p11.GCMParams, []*p11.Mechanism) {
		p := p11.NewGCMParams(iv, ad, tagSize*8)
		return p, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, p)}
	}
	ep, em := mech()
	defer ep.Free()
	if err := r.mod.ctx.EncryptInit(h, em, key); err != nil {
		return err
	}
	ct, err := r.mod.ctx.Encrypt(h, msg)
	if err != nil {
		return err
	}
	if got := ep.IV(); len(got) == ivSize {
		iv = got
	}
	dp, dm := mech()
	defer dp.Free()
	if err := r.mod.ctx.DecryptInit(h, dm, key); err != nil {
		return err
	}
	pt, err := r.mod.ctx.Decrypt(h, ct)
	if err != nil {
		return err
	}
	if !bytes.Equal(pt, msg) {
		return p11.Error(p11.CKR_DEVICE_ERROR)
	}
	return nil
}

var errNotAuthentic = fmt.Errorf("pkcs11 root: %w", root.ErrNotAuthentic)

func clone(b []byte) []byte { return append([]byte(nil), b...) }

// errClosed is returned by operations after Close.
var errClosed = errors.New("pkcs11 root: closed")

// do runs op on a pooled session in a goroutine and waits for it or for
// ctx. An error that means the token state went stale resets it and op is
// tried once more.
func (r *Root) do(ctx context.Context, what string, op func(p11.SessionHandle, p11.ObjectHandle) ([]byte, error)) ([]byte, error) {
	return r.doThen(ctx, what, op, nil)
}

// doThen is do, and runs after (when not nil) once op's attempts are over,
// however long after the caller stopped waiting.
func (r *Root) doThen(ctx context.Context, what string, op func(p11.SessionHandle, p11.ObjectHandle) ([]byte, error), after func()) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, ctxError(what, err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.callTimeout)
	defer cancel()
	r.life.Lock()
	if r.closed {
		r.life.Unlock()
		return nil, errClosed
	}
	r.inflight.Add(1)
	r.life.Unlock()
	type result struct {
		out []byte
		err error
	}
	ch := make(chan result, 1)
	// gone is set once the caller stopped waiting; what op returns then
	// (an unwrapped KEK) is cleared, not left for the garbage collector.
	var mu sync.Mutex
	gone := false
	go func() {
		defer r.inflight.Done()
		if after != nil {
			defer after()
		}
		out, err := r.attempt(ctx, op)
		if err != nil && isStale(err) && ctx.Err() == nil {
			out, err = r.attempt(ctx, op)
		}
		mu.Lock()
		defer mu.Unlock()
		if gone {
			clear(out)
			return
		}
		ch <- result{out, err}
	}()
	select {
	case res := <-ch:
		if res.err != nil {
			return nil, classify(what, res.err)
		}
		return res.out, nil
	case <-ctx.Done():
		mu.Lock()
		gone = true
		select {
		case res := <-ch: // it ended as the caller gave up
			clear(res.out)
		default:
		}
		mu.Unlock()
		return nil, ctxError(what, ctx.Err())
	}
}

// attempt runs op once on a session, then returns the session to the pool,
// or closes it and resets the token state when the error says it is stale.
func (r *Root) attempt(ctx context.Context, op func(p11.SessionHandle, p11.ObjectHandle) ([]byte, error)) ([]byte, error) {
	s, key, err := r.acquire(ctx)
	if err != nil {
		return nil, err
	}
	out, err := op(s.h, key)
	if err != nil && isStale(err) {
		r.discard(s)
		r.reset(s.gen)
		return nil, err
	}
	r.release(s)
	return out, err
}

// acquire returns an idle session of the current generation, or opens one
// when fewer than MaxSessions are open, or waits.
func (r *Root) acquire(ctx context.Context) (*session, p11.ObjectHandle, error) {
	for {
		select {
		case <-r.done:
			return nil, 0, errClosed
		case s := <-r.idle:
			if key, ok := r.current(s.gen); ok {
				return s, key, nil
			}
			r.discard(s)
			continue
		default:
		}
		select {
		case <-r.done:
			return nil, 0, errClosed
		case s := <-r.idle:
			if key, ok := r.current(s.gen); ok {
				return s, key, nil
			}
			r.discard(s)
		case r.slots <- struct{}{}:
			s, key, err := r.open()
			if err != nil {
				<-r.slots
				return nil, 0, err
			}
			return s, key, nil
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
}

// current returns the key handle if gen is the current generation.
func (r *Root) current(gen uint64) (p11.ObjectHandle, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state.key, r.state.ready && r.state.gen == gen
}

// open opens and logs in a session, first finding the token and the key if
// the state was reset.
func (r *Root) open() (*session, p11.ObjectHandle, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.mod.ctx
	if !r.state.ready {
		if err := r.mod.initialize(); err != nil {
			return nil, 0, fmt.Errorf("initialise the library: %w", err)
		}
		slot, err := findSlot(c, r.tokenLabel)
		var nf errTokenNotFound
		if errors.As(err, &nf) && r.aloneOnModule() {
			// Some libraries (SoftHSM2 among them) only notice a token that
			// came back after C_Finalize and C_Initialize. Safe only when no
			// other session of this process is in use.
			_ = c.Finalize()
			r.state.lib++
			if err := r.mod.initialize(); err != nil {
				return nil, 0, fmt.Errorf("initialise the library again: %w", err)
			}
			slot, err = findSlot(c, r.tokenLabel)
		}
		if err != nil {
			return nil, 0, err
		}
		r.state.slot = slot
	}
	if r.pinErr != nil {
		// A PIN the token refused is never tried again: HSMs lock a user
		// PIN after a few wrong tries (on a shared partition, for every
		// application on it), and every call and readiness probe would
		// try it. Only a new one from the PIN file or variable is.
		pin, err := r.readPIN()
		if err != nil || pin == r.refusedPIN {
			return nil, 0, fmt.Errorf("log in: %w (not tried again until the PIN file holds another, or a restart: a wrong PIN tried again can lock it)", r.pinErr)
		}
		r.pin = pin
	}
	h, err := c.OpenSession(r.state.slot, p11.CKF_SERIAL_SESSION)
	if err != nil {
		if isStale(err) {
			r.state.gen++
			r.state.ready = false
		}
		return nil, 0, fmt.Errorf("open a session: %w", err)
	}
	r.logins++
	if err := login(c, h, r.pin); err != nil {
		_ = c.CloseSession(h)
		if isPINRefusal(err) {
			r.pinErr, r.refusedPIN = err, r.pin
		}
		return nil, 0, fmt.Errorf("log in: %w", err)
	}
	r.pinErr = nil
	if !r.state.ready {
		key, err := findKey(c, h, r.keyLabel)
		if err != nil {
			_ = c.CloseSession(h)
			return nil, 0, err
		}
		r.state.key, r.state.ready = key, true
	}
	return &session{h: h, gen: r.state.gen, lib: r.state.lib}, r.state.key, nil
}

// aloneOnModule reports whether this root is the library's only user in
// the process and none of its sessions is in use but the one being opened
// (the caller holds mu and one slot). Sessions leave the idle pool only
// through current, which needs mu, so the count cannot grow meanwhile.
func (r *Root) aloneOnModule() bool {
	modules.Lock()
	refs := r.mod.refs
	modules.Unlock()
	return refs == 1 && len(r.slots)-len(r.idle) == 1
}

// reset starts a new generation unless one has started since gen.
func (r *Root) reset(gen uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state.gen == gen {
		r.state.gen++
		r.state.ready = false
	}
}

func (r *Root) release(s *session) {
	select {
	case <-r.done:
		r.discard(s)
	default:
		r.idle <- s // cannot block: at most cap(slots) sessions exist
	}
}

func (r *Root) discard(s *session) {
	r.mu.Lock()
	live := s.lib == r.state.lib
	r.mu.Unlock()
	if live {
		_ = r.mod.ctx.CloseSession(s.h)
	}
	<-r.slots
}

// errTokenNotFound reports a token absent from every slot: detached,
// unreachable, or a wrong label.
type errTokenNotFound struct{ label string }

func (e errTokenNotFound) Error() string {
	return fmt.Sprintf("no token labelled %q is present (token absent or unreachable, or a wrong token label)", e.label)
}

func findSlot(c *p11.Ctx, label string) (uint, error) {
	slots, err := c.GetSlotList(true)
	if err != nil {
		return 0, err
	}
	var found []uint
	serials := map[string]bool{}
	for _, s := range slots {
		info, err := c.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if strings.TrimRight(info.Label, " \x00") == label {
			found = append(found, s)
			serials[strings.TrimRight(info.SerialNumber, " \x00")] = true
		}
	}
	switch {
	case len(found) == 0:
		return 0, errTokenNotFound{label}
	case len(found) == 1 || len(serials) == 1 && !serials[""]:
		// One token seen in several slots (an HSM client without load
		// sharing lists it once per path): any slot reaches it.
		return found[0], nil
	}
	// Which one is found first depends on the slot order: tenants wrapped
	// under one token's key would be "not authentic" under the other's.
	return 0, fmt.Errorf("%d tokens are labelled %q (slots %v): give the root's token a label no other token has", len(found), label, found)
}

// isPINRefusal reports a token refusing the PIN itself (not an outage).
func isPINRefusal(err error) bool { return hasCode(err, pinCodes) }

func login(c *p11.Ctx, h p11.SessionHandle, pin string) error {
	err := c.Login(h, p11.CKU_USER, pin)
	if err == nil || errors.Is(err, p11.Error(p11.CKR_USER_ALREADY_LOGGED_IN)) {
		return nil
	}
	return err
}

// findKey finds the one secret key labelled label and checks that it is a
// private, sensitive, non-extractable AES-256 token object that may encrypt
// and decrypt and nothing else (roots.md): a public key decrypts without
// the PIN, and a key that may wrap, unwrap, derive, sign or verify has
// other ways out than the root's.
func findKey(c *p11.Ctx, h p11.SessionHandle, label string) (p11.ObjectHandle, error) {
	key, found, err := lookupKey(c, h, label)
	if err != nil {
		return 0, err
	}
	if !found {
		return 0, fmt.Errorf("no secret key labelled %q in the token (create it with pkcs11.CreateKey)", label)
	}
	attrs, err := c.GetAttributeValue(h, key, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_KEY_TYPE, nil),
		p11.NewAttribute(p11.CKA_VALUE_LEN, nil),
		p11.NewAttribute(p11.CKA_SENSITIVE, nil),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, nil),
		p11.NewAttribute(p11.CKA_ENCRYPT, nil),
		p11.NewAttribute(p11.CKA_DECRYPT, nil),
		p11.NewAttribute(p11.CKA_TOKEN, nil),
		p11.NewAttribute(p11.CKA_PRIVATE, nil),
		p11.NewAttribute(p11.CKA_WRAP, nil),
		p11.NewAttribute(p11.CKA_UNWRAP, nil),
		p11.NewAttribute(p11.CKA_DERIVE, nil),
		p11.NewAttribute(p11.CKA_SIGN, nil),
		p11.NewAttribute(p11.CKA_VERIFY, nil),
	})
	if err != nil {
		return 0, err
	}
	v := map[uint][]byte{}
	for _, a := range attrs {
		v[a.Type] = a.Value
	}
	switch {
	case ulong(v[p11.CKA_KEY_TYPE]) != p11.CKK_AES || ulong(v[p11.CKA_VALUE_LEN]) != 32:
		return 0, fmt.Errorf("key %q is not an AES-256 key", label)
	case !boolean(v[p11.CKA_SENSITIVE]) || boolean(v[p11.CKA_EXTRACTABLE]):
		return 0, fmt.Errorf("key %q must be sensitive and not extractable: a root key never leaves the token", label)
	case !boolean(v[p11.CKA_ENCRYPT]) || !boolean(v[p11.CKA_DECRYPT]):
		return 0, fmt.Errorf("key %q must allow encrypt and decrypt", label)
	case !boolean(v[p11.CKA_TOKEN]) || !boolean(v[p11.CKA_PRIVATE]):
		return 0, fmt.Errorf("key %q must be a private token object (CKA_TOKEN, CKA_PRIVATE): a public key decrypts without the PIN", label)
	case boolean(v[p11.CKA_WRAP]) || boolean(v[p11.CKA_UNWRAP]) || boolean(v[p11.CKA_DERIVE]) || boolean(v[p11.CKA_SIGN]) || boolean(v[p11.CKA_VERIFY]):
		return 0, fmt.Errorf("key %q must allow encrypt and decrypt only (CKA_WRAP, CKA_UNWRAP, CKA_DERIVE, CKA_SIGN, CKA_VERIFY false)", label)
	}
	return key, nil
}

func lookupKey(c *p11.Ctx, h p11.SessionHandle, label string) (p11.ObjectHandle, bool, error) {
	if err := c.FindObjectsInit(h, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_LABEL, label),
	}); err != nil {
		return 0, false, err
	}
	objs, _, err := c.FindObjects(h, 2)
	if ferr := c.FindObjectsFinal(h); err == nil {
		err = ferr
	}
	if err != nil {
		return 0, false, err
	}
	switch len(objs) {
	case 0:
		return 0, false, nil
	case 1:
		return objs[0], true, nil
	}
	return 0, false, fmt.Errorf("more than one secret key is labelled %q", label)
}

// ulong decodes a CK_ULONG attribute value (native byte order and size).
func ulong(b []byte) uint {
	switch len(b) {
	case 8:
		return uint(binary.NativeEndian.Uint64(b))
	case 4:
		return uint(binary.NativeEndian.Uint32(b))
	}
	return ^uint(0)
}

func boolean(b []byte) bool { return len(b) == 1 && b[0] != 0 }
