package client_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/client/clienttest"
	"github.com/custos-kms/custos/envelope"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// envEnv is a real server that counts GenerateDataKey and Decrypt calls,
// with tenants a and b, each with ENCRYPT key k.
type envEnv struct {
	c           *client.Client
	dataKeys    atomic.Int64
	decrypts    atomic.Int64
	hold        atomic.Pointer[chan struct{}] // if set, Decrypt calls wait for it to close
	holdFetch   atomic.Pointer[chan struct{}] // if set, GenerateDataKey calls wait for it to close
	fetching    chan struct{}                 // receives as a GenerateDataKey call starts, when holdFetch is set
	failFetch   atomic.Bool                   // if set, GenerateDataKey fails UNAVAILABLE
	clockMu     sync.Mutex
	clock       time.Time
	name, other string
}

func (e *envEnv) now() time.Time { e.clockMu.Lock(); defer e.clockMu.Unlock(); return e.clock }
func (e *envEnv) advance(d time.Duration) {
	e.clockMu.Lock()
	e.clock = e.clock.Add(d)
	e.clockMu.Unlock()
}

func startEnvelopeEnv(t testing.TB) *envEnv {
	t.Helper()
	e := &envEnv{clock: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), name: client.KeyName("a", "k"), other: client.KeyName("b", "k")}
	srv := clienttest.StartWith(t, clienttest.Options{Interceptor: func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		switch info.FullMethod {
		case custosv1.CryptoService_GenerateDataKey_FullMethodName:
			e.dataKeys.Add(1)
			if hold := e.holdFetch.Load(); hold != nil {
				e.fetching <- struct{}{}
				<-*hold
			}
			if e.failFetch.Load() {
				return nil, status.Error(codes.Unavailable, "test: data keys unavailable")
			}
		case custosv1.CryptoService_Decrypt_FullMethodName:
			e.decrypts.Add(1)
			if hold := e.hold.Load(); hold != nil {
				<-*hold
			}
		}
		return h(ctx, req)
	}})
	e.c = srv.Client(t)
	ctx := context.Background()
	for _, tn := range []string{"a", "b"} {
		if _, err := e.c.CreateTenant(ctx, tn); err != nil {
			t.Fatal(err)
		}
		if _, err := e.c.CreateKey(ctx, client.TenantName(tn), "k", client.KeySpec{Purpose: client.PurposeEncrypt}); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func TestEnvelopeRoundTripsLocalAndThroughTheService(t *testing.T) {
	ctx := context.Background()
	e := startEnvelopeEnv(t)
	env := e.c.Envelope(e.name, client.EnvelopeOptions{Now: e.now})
	ad := client.AssociatedData("customer-42", "email")
	ct, err := env.Encrypt(ctx, []byte("alice@example.com"), ad)
	if err != nil {
		t.Fatal(err)
	}
	if !envelope.IsEnvelope(ct) {
		t.Fatal("not an envelope")
	}
	// Local → local, with the data key cached: no call.
	before := e.decrypts.Load()
	if pt, err := env.Decrypt(ctx, ct, ad); err != nil || string(pt) != "alice@example.com" {
		t.Fatalf("local decrypt: %q %v", pt, err)
	}
	if e.decrypts.Load() != before {
		t.Fatal("a local decrypt of the client's own data key called the service")
	}
	// Another client (cold cache) unwraps once, then decrypts locally.
	other := e.c.Envelope(e.name, client.EnvelopeOptions{Now: e.now})
	for range 3 {
		if pt, err := other.Decrypt(ctx, ct, ad); err != nil || string(pt) != "alice@example.com" {
			t.Fatalf("cold local decrypt: %q %v", pt, err)
		}
	}
	if n := e.decrypts.Load() - before; n != 1 {
		t.Fatalf("%d unwraps for 3 decryptions of one data key, want 1", n)
	}
	// Local → the service's Decrypt (what a Node or Python caller does).
	if pt, v, err := e.c.Decrypt(ctx, e.name, ct, ad); err != nil || string(pt) != "alice@example.com" || v != 1 {
		t.Fatalf("service decrypt of an envelope: %q v%d %v", pt, v, err)
	}
	// Rotate; the service rewraps the envelope's data key only.
	if _, err := e.c.RotateKey(ctx, e.name); err != nil {
		t.Fatal(err)
	}
	re, v, err := e.c.Rewrap(ctx, e.name, ct, ad)
	if err != nil || v != 2 {
		t.Fatalf("rewrap: v%d %v", v, err)
	}
	old, _ := envelope.Parse(ct)
	neu, err := envelope.Parse(re)
	if err != nil || bytes.Equal(old.Wrapped, neu.Wrapped) || !bytes.Equal(ct[len(ct)-40:], re[len(re)-40:]) {
		t.Fatalf("rewrap should replace the wrapping and keep the bulk (err %v)", err)
	}
	if pt, err := other.Decrypt(ctx, re, ad); err != nil || string(pt) != "alice@example.com" {
		t.Fatalf("local decrypt of the rewrapped envelope: %q %v", pt, err)
	}
	// Envelopes of one data key get one new wrapping, so a reader's cache
	// keeps working after a table is rewrapped.
	ct2, err := env.Encrypt(ctx, []byte("bob@example.com"), ad)
	if err != nil {
		t.Fatal(err)
	}
	re2, _, err := e.c.Rewrap(ctx, e.name, ct2, ad)
	if err != nil {
		t.Fatal(err)
	}
	if p2, _ := envelope.Parse(re2); !bytes.Equal(p2.Wrapped, neu.Wrapped) {
		t.Fatal("two envelopes of one data key were given different new wrappings")
	}
	// A service ciphertext goes through Envelope.Decrypt too.
	sct, _, err := e.c.Encrypt(ctx, e.name, []byte("remote"), ad)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := env.Decrypt(ctx, sct, ad); err != nil || string(pt) != "remote" {
		t.Fatalf("Envelope.Decrypt of a service ciphertext: %q %v", pt, err)
	}
}

func TestEnvelopeLimitsAndRotation(t *testing.T) {
	ctx := context.Background()
	e := startEnvelopeEnv(t)
	env := e.c.Envelope(e.name, client.EnvelopeOptions{MaxMessages: 3, MaxBytes: 1000, MaxAge: time.Minute, Now: e.now})
	wrappedOf := func(ct []byte) string {
		p, err := envelope.Parse(ct)
		if err != nil {
			t.Fatal(err)
		}
		return string(p.Wrapped)
	}
	seal := func(n int) []byte {
		ct, err := env.Encrypt(ctx, make([]byte, n), nil)
		if err != nil {
			t.Fatal(err)
		}
		return ct
	}
	first := wrappedOf(seal(1))
	seal(1)
	seal(1)
	if got := wrappedOf(seal(1)); got == first {
		t.Fatal("the 4th encryption with MaxMessages 3 used the same data key")
	}
	if e.dataKeys.Load() != 2 {
		t.Fatalf("%d data keys for 4 encryptions at 3 per key", e.dataKeys.Load())
	}
	// Max bytes.
	k := wrappedOf(seal(600))
	if wrappedOf(seal(600)) == k {
		t.Fatal("1200 bytes under a 1000-byte limit used one data key")
	}
	// Max age, and rotation reaching new ciphertexts within it.
	if _, err := e.c.RotateKey(ctx, e.name); err != nil {
		t.Fatal(err)
	}
	k = wrappedOf(seal(1))
	e.advance(time.Minute)
	ct := seal(1)
	if wrappedOf(ct) == k {
		t.Fatal("an encryption after MaxAge used the same data key")
	}
	if _, v, err := e.c.Decrypt(ctx, e.name, ct, nil); err != nil || v != 2 {
		t.Fatalf("after the rotation and MaxAge, new ciphertexts use version %d (%v), want 2", v, err)
	}

	// Concurrent callers share one GenerateDataKey.
	fresh := e.c.Envelope(e.name, client.EnvelopeOptions{Now: e.now})
	before := e.dataKeys.Load()
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			if _, err := fresh.Encrypt(ctx, []byte("x"), nil); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := e.dataKeys.Load() - before; n != 1 {
		t.Fatalf("64 concurrent first encryptions made %d GenerateDataKey calls, want 1", n)
	}
}

func TestEnvelopeDecryptionStopsWithinTheTTLAfterADisable(t *testing.T) {
	ctx := context.Background()
	e := startEnvelopeEnv(t)
	enc := e.c.Envelope(e.name, client.EnvelopeOptions{Now: e.now})
	ct, err := enc.Encrypt(ctx, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	dec := e.c.Envelope(e.name, client.EnvelopeOptions{DecryptTTL: time.Minute, Now: e.now})
	if _, err := dec.Decrypt(ctx, ct, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.RotateKey(ctx, e.name); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.DisableKeyVersion(ctx, e.name, 1); err != nil {
		t.Fatal(err)
	}
	// Cached: still decrypts until the TTL…
	if _, err := dec.Decrypt(ctx, ct, nil); err != nil {
		t.Fatalf("within the TTL: %v", err)
	}
	e.advance(time.Minute)
	// …then the service refuses the disabled version.
	if _, err := dec.Decrypt(ctx, ct, nil); !errors.Is(err, client.ErrKeyVersionDisabled) {
		t.Fatalf("after the TTL: %v, want ErrKeyVersionDisabled", err)
	}
	// Purge takes effect at once.
	if _, err := e.c.EnableKeyVersion(ctx, e.name, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := dec.Decrypt(ctx, ct, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.DisableKeyVersion(ctx, e.name, 1); err != nil {
		t.Fatal(err)
	}
	dec.Purge()
	if _, err := dec.Decrypt(ctx, ct, nil); !errors.Is(err, client.ErrKeyVersionDisabled) {
		t.Fatalf("after Purge: %v, want ErrKeyVersionDisabled", err)
	}
}

func TestBadEnvelopesFailAsInvalidCiphertextLocallyAndOnTheService(t *testing.T) {
	ctx := context.Background()
	e := startEnvelopeEnv(t)
	a := e.c.Envelope(e.name, client.EnvelopeOptions{Now: e.now})
	b := e.c.Envelope(e.other, client.EnvelopeOptions{Now: e.now})
	ad := []byte("customer-42/email")
	ct, err := a.Encrypt(ctx, []byte("alice@example.com"), ad)
	if err != nil {
		t.Fatal(err)
	}
	ctB, err := b.Encrypt(ctx, []byte("bob@example.com"), ad)
	if err != nil {
		t.Fatal(err)
	}
	pa, _ := envelope.Parse(ct)
	pb, _ := envelope.Parse(ctB)
	// Tenant a's wrapped data key spliced into tenant b's envelope.
	cross, err := envelope.Rewrapped(ctB, pa.Wrapped)
	if err != nil {
		t.Fatal(err)
	}
	flip := bytes.Clone(ct)
	flip[len(flip)-3] ^= 4
	unknown := bytes.Clone(ct)
	unknown[0] = 0xE6
	oversized := bytes.Clone(ct)
	binary.BigEndian.PutUint16(oversized[1:3], 0xFFFF)
	cases := map[string]struct {
		ct   []byte
		ad   []byte
		name string
		env  *client.Envelope
	}{
		"truncated":                     {ct[:len(ct)-10], ad, e.name, a},
		"bit flipped":                   {flip, ad, e.name, a},
		"unknown format byte":           {unknown, ad, e.name, a},
		"oversized length field":        {oversized, ad, e.name, a},
		"wrong associated data":         {ct, []byte("customer-43/email"), e.name, a},
		"a's data key in b's envelope":  {cross, ad, e.other, b},
		"b's envelope under a's key":    {ctB, ad, e.name, a},
		"a's envelope wrapped key only": {pb.Wrapped, ad, e.name, a},
	}
	for what, c := range cases {
		if _, err := c.env.Decrypt(ctx, c.ct, c.ad); !errors.Is(err, client.ErrInvalidCiphertext) {
			t.Errorf("%s, locally: %v, want ErrInvalidCiphertext", what, err)
		}
		if _, _, err := e.c.Decrypt(ctx, c.name, c.ct, c.ad); !errors.Is(err, client.ErrInvalidCiphertext) {
			t.Errorf("%s, on the service: %v, want ErrInvalidCiphertext", what, err)
		}
	}
}

func BenchmarkEnvelopeEncrypt64(b *testing.B) {
	e := startEnvelopeEnv(b)
	env := e.c.Envelope(e.name, client.EnvelopeOptions{})
	ctx := context.Background()
	pt, ad := make([]byte, 64), []byte("customer-42/email")
	if _, err := env.Encrypt(ctx, pt, ad); err != nil { // the data key, once
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := env.Encrypt(ctx, pt, ad); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEnvelopeEncrypt64Parallel(b *testing.B) {
	e := startEnvelopeEnv(b)
	env := e.c.Envelope(e.name, client.EnvelopeOptions{})
	ctx := context.Background()
	pt, ad := make([]byte, 64), []byte("customer-42/email")
	if _, err := env.Encrypt(ctx, pt, ad); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetParallelism(32) // 64 goroutines on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := env.Encrypt(ctx, pt, ad); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkEnvelopeDecrypt64(b *testing.B) {
	e := startEnvelopeEnv(b)
	env := e.c.Envelope(e.name, client.EnvelopeOptions{})
	ctx := context.Background()
	ad := []byte("customer-42/email")
	ct, err := env.Encrypt(ctx, make([]byte, 64), ad)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := env.Decrypt(ctx, ct, ad); err != nil {
			b.Fatal(err)
		}
	}
}

// The baselines: crypto/cipher AES-256-GCM of the same field, a random
// nonce, a new output buffer.
func BenchmarkRawGCMSeal64(b *testing.B) {
	block, _ := aes.NewCipher(make([]byte, 32))
	g, _ := cipher.NewGCM(block)
	pt, ad := make([]byte, 64), []byte("customer-42/email")
	b.ReportAllocs()
	for b.Loop() {
		out := make([]byte, 12, 12+64+16)
		if _, err := rand.Read(out); err != nil {
			b.Fatal(err)
		}
		_ = g.Seal(out, out[:12], pt, ad)
	}
}

func BenchmarkRawGCMOpen64(b *testing.B) {
	block, _ := aes.NewCipher(make([]byte, 32))
	g, _ := cipher.NewGCM(block)
	pt, ad := make([]byte, 64), []byte("customer-42/email")
	nonce := make([]byte, 12)
	ct := g.Seal(nil, nonce, pt, ad)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := g.Open(nil, nonce, ct, ad); err != nil {
			b.Fatal(err)
		}
	}
}

func TestRecordHelpersRemoteAndLocal(t *testing.T) {
	ctx := context.Background()
	e := startEnvelopeEnv(t)
	rec := client.Fields{"email": []byte("alice@example.com"), "iban": []byte("DE89370400440532013000")}
	for name, fc := range map[string]*client.FieldCipher{"remote": e.c.Fields(e.name), "local": e.c.Envelope(e.name, client.EnvelopeOptions{}).Fields()} {
		ct, err := fc.Encrypt(ctx, "customer-42", rec)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		pt, err := fc.Decrypt(ctx, "customer-42", ct)
		if err != nil || string(pt["email"]) != "alice@example.com" || string(pt["iban"]) != "DE89370400440532013000" {
			t.Fatalf("%s: decrypt: %q %v", name, pt, err)
		}
		// A field moved to another column or another record is refused.
		swapped := client.Fields{"email": ct["iban"], "iban": ct["email"]}
		if _, err := fc.Decrypt(ctx, "customer-42", swapped); !errors.Is(err, client.ErrInvalidCiphertext) {
			t.Fatalf("%s: swapped columns: %v", name, err)
		}
		if _, err := fc.Decrypt(ctx, "customer-43", ct); !errors.Is(err, client.ErrInvalidCiphertext) {
			t.Fatalf("%s: another record: %v", name, err)
		}
		if _, err := fc.Encrypt(ctx, "", rec); !errors.Is(err, client.ErrInvalidArgument) {
			t.Fatalf("%s: no record id: %v", name, err)
		}
		// A field truncated to nothing (a NULL column) is a truncated
		// ciphertext in both modes.
		if _, err := fc.Decrypt(ctx, "customer-42", client.Fields{"email": ct["email"], "iban": nil}); !errors.Is(err, client.ErrInvalidCiphertext) {
			t.Fatalf("%s: an empty field: %v, want ErrInvalidCiphertext", name, err)
		}
	}
}

func TestBlindIndexValuesFindRowsAcrossARotation(t *testing.T) {
	ctx := context.Background()
	e := startEnvelopeEnv(t)
	if _, err := e.c.CreateKey(ctx, client.TenantName("a"), "idx", client.KeySpec{Purpose: client.PurposeMAC}); err != nil {
		t.Fatal(err)
	}
	name := client.KeyName("a", "idx")
	stored, _, err := e.c.BlindIndexValues(ctx, name, []byte("alice@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.RotateKey(ctx, name); err != nil {
		t.Fatal(err)
	}
	newStore, query, err := e.c.BlindIndexValues(ctx, name, []byte("alice@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	if len(query) != 2 || bytes.Equal(newStore, stored) {
		t.Fatalf("after a rotation: %d query values, store changed %v", len(query), !bytes.Equal(newStore, stored))
	}
	found := false
	for _, q := range query {
		found = found || bytes.Equal(q, stored)
	}
	if !found {
		t.Fatal("a row stored before the rotation is not found by the query values")
	}
}

func TestEnvelopeTenantDeletionAndDataKeyCallsPerWindow(t *testing.T) {
	ctx := context.Background()
	e := startEnvelopeEnv(t)
	env := e.c.Envelope(e.name, client.EnvelopeOptions{MaxAge: time.Minute, DecryptTTL: time.Minute, Now: e.now})
	// Steady load over three MaxAge windows: one data key per window.
	before := e.dataKeys.Load()
	var ct []byte
	for w := range 3 {
		for range 500 {
			var err error
			if ct, err = env.Encrypt(ctx, []byte("x"), nil); err != nil {
				t.Fatal(err)
			}
		}
		if w < 2 {
			e.advance(time.Minute)
		}
	}
	if n := e.dataKeys.Load() - before; n != 3 {
		t.Fatalf("%d GenerateDataKey calls for 1500 encryptions over 3 windows, want 3", n)
	}
	// A tenant scheduled for deletion: local decryption stops within the
	// decrypt TTL.
	dec := e.c.Envelope(e.name, client.EnvelopeOptions{DecryptTTL: time.Minute, Now: e.now})
	if _, err := dec.Decrypt(ctx, ct, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.DeleteTenant(ctx, client.TenantName("a"), 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := dec.Decrypt(ctx, ct, nil); err != nil {
		t.Fatalf("within the TTL: %v", err)
	}
	e.advance(time.Minute)
	if _, err := dec.Decrypt(ctx, ct, nil); !errors.Is(err, client.ErrTenantDeleted) {
		t.Fatalf("after the TTL: %v, want ErrTenantDeleted", err)
	}
	if _, err := env.Encrypt(ctx, []byte("x"), nil); err == nil {
		e.advance(2 * time.Minute)
		if _, err := env.Encrypt(ctx, []byte("x"), nil); !errors.Is(err, client.ErrTenantDeleted) {
			t.Fatalf("encryption after MaxAge on a deleted tenant: %v, want ErrTenantDeleted", err)
		}
	}
}

// What each permission can do with envelopes: a writer in local mode needs
// datakey; a reader with decrypt only reads envelopes through the service
// (Envelope.Decrypt falls back to it); datakey alone reads them locally.
func TestEnvelopePermissions(t *testing.T) {
	ctx := context.Background()
	policy := `rules:
  - identities: ["` + clienttest.ClientID + `"]
    tenants: ["*"]
    permissions: ["*"]
  - identities: ["spiffe://test/reader"]
    tenants: ["a"]
    permissions: [decrypt]
  - identities: ["spiffe://test/encrypt-only"]
    tenants: ["a"]
    permissions: [encrypt]
`
	srv := clienttest.StartWith(t, clienttest.Options{Policy: policy})
	admin := srv.Client(t)
	if _, err := admin.CreateTenant(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	name := client.KeyName("a", "k")
	if _, err := admin.CreateKey(ctx, client.TenantName("a"), "k", client.KeySpec{Purpose: client.PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	ct, err := admin.Envelope(name, client.EnvelopeOptions{}).Encrypt(ctx, []byte("x"), []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	reader := srv.ClientAs(t, "spiffe://test/reader")
	if pt, err := reader.Envelope(name, client.EnvelopeOptions{}).Decrypt(ctx, ct, []byte("ad")); err != nil || string(pt) != "x" {
		t.Fatalf("a decrypt-only reader through Envelope.Decrypt: %q %v", pt, err)
	}
	if _, err := reader.DecryptDataKey(ctx, name, envelopeWrapped(t, ct), []byte(envelope.DataKeyContext)); err == nil {
		t.Fatal("a decrypt-only reader unwrapped an envelope's data key")
	}
	// An encrypt-only caller cannot make a field that passes for an
	// envelope data key: that associated data is reserved.
	w := srv.ClientAs(t, "spiffe://test/encrypt-only")
	if _, _, err := w.Encrypt(ctx, name, make([]byte, 32), []byte(envelope.DataKeyContext)); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("a field with the envelope data-key context: %v, want refused", err)
	}
	if _, err := w.Envelope(name, client.EnvelopeOptions{}).Encrypt(ctx, []byte("x"), nil); !errors.Is(err, client.ErrPermissionDenied) {
		t.Fatalf("local mode without datakey: %v, want PERMISSION_DENIED", err)
	}
}

func envelopeWrapped(t *testing.T, ct []byte) []byte {
	t.Helper()
	e, err := envelope.Parse(ct)
	if err != nil {
		t.Fatal(err)
	}
	return e.Wrapped
}

// A record id is associated data: it never appears in an error.
func TestRecordErrorsDoNotNameTheRecord(t *testing.T) {
	const id = "alice@example.com"
	f := new(client.Client).Fields("tenants/a/keys/k")
	for name, op := range map[string]func() error{
		"encrypt": func() error {
			_, err := f.Encrypt(context.Background(), id, client.Fields{"": []byte("x")})
			return err
		},
		"decrypt": func() error {
			_, err := f.Decrypt(context.Background(), id, client.Fields{"": []byte("x")})
			return err
		},
	} {
		err := op()
		if err == nil || strings.Contains(err.Error(), id) {
			t.Errorf("%s: %v; want an error that does not name the record", name, err)
		}
	}
}

// A caller that gives up while its data key is being unwrapped may reuse
// its ciphertext buffer at once (a pooled row buffer): the unwrap that goes
// on for the other callers must not read it, and caches the key under the
// wrapping it was asked for.
func TestAnAbandonedUnwrapDoesNotReadTheCallersBuffer(t *testing.T) {
	e := startEnvelopeEnv(t)
	ctx := context.Background()
	ct, err := e.c.Envelope(e.name, client.EnvelopeOptions{}).Encrypt(ctx, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	dec := e.c.Envelope(e.name, client.EnvelopeOptions{})
	hold := make(chan struct{})
	e.hold.Store(&hold)
	buf := append([]byte(nil), ct...)
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { _, err := dec.Decrypt(cctx, buf, nil); done <- err }()
	for deadline := time.Now().Add(10 * time.Second); e.decrypts.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the unwrap did not reach the server within 10s")
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned Decrypt: %v, want context.Canceled", err)
	}
	for i := range buf { // the caller reuses its buffer
		buf[i] = 0xAA
	}
	e.hold.Store(nil)
	close(hold)
	for range 2 { // joins the unwrap or finds its key cached; then the cache
		if _, err := dec.Decrypt(ctx, ct, nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.decrypts.Load(); n != 1 {
		t.Fatalf("%d unwraps, want 1: the abandoned one's key was cached under another wrapping", n)
	}
}

// Many callers at once with a data key good for one message each all get
// their ciphertexts: losing a round to the others is no reason to fail.
func TestEnvelopeEncryptUnderContentionWithOneMessagePerKey(t *testing.T) {
	ctx := context.Background()
	e := startEnvelopeEnv(t)
	env := e.c.Envelope(e.name, client.EnvelopeOptions{MaxMessages: 1, MaxAge: time.Minute, Now: e.now})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			if _, err := env.Encrypt(ctx, []byte("x"), nil); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a local Encrypt among 16 with one message per data key: %v", err)
	}
}

// A reader with decrypt but not datakey reads envelopes through the
// service; it asks for an unwrap the service refuses once per data key and
// while, not once per field (each refusal is an extra call and an audit
// event that looks like tampering).
func TestADecryptOnlyReaderAsksForARefusedUnwrapOncePerWhile(t *testing.T) {
	ctx := context.Background()
	policy := `rules:
  - identities: ["` + clienttest.ClientID + `"]
    tenants: ["*"]
    permissions: ["*"]
  - identities: ["spiffe://test/reader"]
    tenants: ["a"]
    permissions: [decrypt]
`
	var unwraps, decrypts atomic.Int64
	srv := clienttest.StartWith(t, clienttest.Options{Policy: policy, Interceptor: func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if r, ok := req.(*custosv1.DecryptRequest); ok {
			if string(r.GetAssociatedData()) == envelope.DataKeyContext {
				unwraps.Add(1)
			} else {
				decrypts.Add(1)
			}
		}
		return h(ctx, req)
	}})
	admin := srv.Client(t)
	if _, err := admin.CreateTenant(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	name := client.KeyName("a", "k")
	if _, err := admin.CreateKey(ctx, client.TenantName("a"), "k", client.KeySpec{Purpose: client.PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	w := admin.Envelope(name, client.EnvelopeOptions{}) // one data key for every field
	var cts [][]byte
	for i := range 10 {
		ct, err := w.Encrypt(ctx, []byte(fmt.Sprint(i)), []byte("ad"))
		if err != nil {
			t.Fatal(err)
		}
		cts = append(cts, ct)
	}
	r := srv.ClientAs(t, "spiffe://test/reader").Envelope(name, client.EnvelopeOptions{})
	for i, ct := range cts {
		if pt, err := r.Decrypt(ctx, ct, []byte("ad")); err != nil || string(pt) != fmt.Sprint(i) {
			t.Fatalf("field %d: %q %v", i, pt, err)
		}
	}
	if n := unwraps.Load(); n != 1 {
		t.Fatalf("%d refused unwraps for 10 fields, want 1", n)
	}
	if n := decrypts.Load(); n != 10 {
		t.Fatalf("%d service decryptions for 10 fields, want 10", n)
	}
}

// One envelope whose data key the service refuses (tampered) sends only
// envelopes of that data key to the service: a reader with datakey alone
// (no decrypt) still reads every other envelope locally.
func TestOneRefusedDataKeyLeavesTheOthersLocal(t *testing.T) {
	ctx := context.Background()
	policy := `rules:
  - identities: ["` + clienttest.ClientID + `"]
    tenants: ["*"]
    permissions: ["*"]
  - identities: ["spiffe://test/local-reader"]
    tenants: ["a"]
    permissions: [datakey]
`
	srv := clienttest.StartWith(t, clienttest.Options{Policy: policy})
	admin := srv.Client(t)
	if _, err := admin.CreateTenant(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	name := client.KeyName("a", "k")
	if _, err := admin.CreateKey(ctx, client.TenantName("a"), "k", client.KeySpec{Purpose: client.PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	w := admin.Envelope(name, client.EnvelopeOptions{MaxMessages: 1}) // a data key per envelope
	bad, err := w.Encrypt(ctx, []byte("one"), []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	good, err := w.Encrypt(ctx, []byte("two"), []byte("ad"))
	if err != nil {
		t.Fatal(err)
	}
	wrapped := envelopeWrapped(t, bad)
	wrapped[len(wrapped)-1] ^= 1 // the wrapped data key, tampered in place
	r := srv.ClientAs(t, "spiffe://test/local-reader").Envelope(name, client.EnvelopeOptions{})
	if _, err := r.Decrypt(ctx, bad, []byte("ad")); err == nil {
		t.Fatal("an envelope with a tampered data key decrypted")
	}
	if pt, err := r.Decrypt(ctx, good, []byte("ad")); err != nil || string(pt) != "two" {
		t.Fatalf("a valid envelope read right after a tampered one: %q %v", pt, err)
	}
}

// Once the client is closed, an Envelope's next call drops the data keys it
// holds, whatever the call: a ciphertext that is not an envelope too.
func TestAClosedClientsEnvelopeDropsItsKeysAtItsNextCall(t *testing.T) {
	ctx := context.Background()
	e := startEnvelopeEnv(t)
	env := e.c.Envelope(e.name, client.EnvelopeOptions{Now: e.now})
	ct, err := env.Encrypt(ctx, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Decrypt(ctx, ct, nil); err != nil {
		t.Fatal(err)
	}
	service, _, err := e.c.Encrypt(ctx, e.name, []byte("y"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := client.HeldDataKeys(env); n == 0 {
		t.Fatal("the envelope holds no data key after encrypting and decrypting")
	}
	if err := e.c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Decrypt(ctx, service, nil); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Decrypt of a service ciphertext after Close: %v, want ErrClosed", err)
	}
	if n := client.HeldDataKeys(env); n != 0 {
		t.Fatalf("the envelope still holds %d data keys after a call on a closed client", n)
	}
}

// An empty field is refused locally as the service refuses it, so the two
// modes accept the same records.
func TestEnvelopeRefusesAnEmptyPlaintextLikeTheService(t *testing.T) {
	ctx := context.Background()
	e := startEnvelopeEnv(t)
	env := e.c.Envelope(e.name, client.EnvelopeOptions{Now: e.now})
	ad := client.AssociatedData("customer-42", "note")
	if _, err := env.Encrypt(ctx, nil, ad); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("local: %v, want ErrInvalidArgument", err)
	}
	if _, _, err := e.c.Encrypt(ctx, e.name, nil, ad); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("service: %v, want ErrInvalidArgument", err)
	}
}

// With MaxPlaintext set to the deployment's limit (the test server's is
// the default 64 KiB), a field too large for the service is refused
// locally too, and one within it is taken by both modes; without it, the
// API's ceiling applies (1 MiB).
func TestEnvelopeMaxPlaintextMatchesTheServiceLimit(t *testing.T) {
	ctx := context.Background()
	e := startEnvelopeEnv(t)
	ad := client.AssociatedData("customer-42", "note")
	limited := e.c.Envelope(e.name, client.EnvelopeOptions{MaxPlaintext: 64 << 10, Now: e.now})
	over := bytes.Repeat([]byte("x"), 64<<10+1)
	if _, err := limited.Encrypt(ctx, over, ad); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("local, over the limit: %v, want ErrInvalidArgument", err)
	}
	if _, _, err := e.c.Encrypt(ctx, e.name, over, ad); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("service, over the limit: %v, want ErrInvalidArgument", err)
	}
	if _, err := limited.Encrypt(ctx, over[:64<<10], ad); err != nil {
		t.Fatalf("local, at the limit: %v", err)
	}
	if _, err := e.c.Envelope(e.name, client.EnvelopeOptions{Now: e.now}).Encrypt(ctx, over, ad); err != nil {
		t.Fatalf("local without MaxPlaintext (the API's ceiling): %v", err)
	}
	if _, err := e.c.Envelope(e.name, client.EnvelopeOptions{Now: e.now}).Encrypt(ctx, bytes.Repeat([]byte("x"), client.MaxEnvelopePlaintext+1), ad); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("local over the API's ceiling: %v, want ErrInvalidArgument", err)
	}
}

// A current data key past its age is dropped by the call that finds it so,
// even when no new one can be fetched (it was kept until a fetch
// succeeded); its copy cached for decryption stays for DecryptTTL.
func TestAnExpiredDataKeyIsDroppedWhileFetchesFail(t *testing.T) {
	ctx := context.Background()
	e := startEnvelopeEnv(t)
	env := e.c.Envelope(e.name, client.EnvelopeOptions{MaxAge: time.Minute, DecryptTTL: time.Hour, Now: e.now})
	ad := client.AssociatedData("customer-42", "email")
	if _, err := env.Encrypt(ctx, []byte("alice@example.com"), ad); err != nil {
		t.Fatal(err)
	}
	if n := client.HeldDataKeys(env); n != 2 {
		t.Fatalf("%d keys held, want the current one and its cached copy", n)
	}
	e.failFetch.Store(true)
	e.advance(2 * time.Minute)
	if _, err := env.Encrypt(ctx, []byte("alice@example.com"), ad); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("encrypt with fetches failing: %v, want ErrUnavailable", err)
	}
	if n := client.HeldDataKeys(env); n != 1 {
		t.Fatalf("%d keys held, want only the cached copy", n)
	}
}

// A caller whose context ends while a shared data-key fetch runs does not
// waste it: the fetched key still becomes current for the callers waiting
// on it (the expired key the caller dropped made it miss its place, and
// the waiters fetched a second one).
func TestACallerGivingUpDoesNotWasteASharedFetch(t *testing.T) {
	ctx := context.Background()
	e := startEnvelopeEnv(t)
	env := e.c.Envelope(e.name, client.EnvelopeOptions{MaxAge: time.Minute, Now: e.now})
	ad := client.AssociatedData("customer-42", "email")
	if _, err := env.Encrypt(ctx, []byte("x"), ad); err != nil {
		t.Fatal(err)
	}
	e.advance(2 * time.Minute) // the current key is past its age
	before := e.dataKeys.Load()
	release := make(chan struct{})
	e.fetching = make(chan struct{}, 8)
	e.holdFetch.Store(&release)
	defer e.holdFetch.Store(nil)
	done := make(chan error, 1)
	go func() { _, err := env.Encrypt(ctx, []byte("x"), ad); done <- err }()
	select {
	case <-e.fetching:
	case <-time.After(10 * time.Second):
		t.Fatal("the fetch never started")
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err := env.Encrypt(short, []byte("x"), ad)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the caller that gave up: %v, want its deadline", err)
	}
	e.holdFetch.Store(nil)
	close(release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting caller never returned")
	}
	if n := e.dataKeys.Load() - before; n != 1 {
		t.Fatalf("%d data keys fetched, want the one shared fetch", n)
	}
}

// A caller whose context has already ended makes no data-key call: the
// shared fetch runs detached from its callers, so it would have made a
// GenerateDataKey (audited, and counted as an encryption) or an unwrap
// for no one.
func TestACancelledCallerMakesNoDataKeyCall(t *testing.T) {
	e := startEnvelopeEnv(t)
	ad := client.AssociatedData("customer-42", "email")
	sealed, err := e.c.Envelope(e.name, client.EnvelopeOptions{Now: e.now}).Encrypt(context.Background(), []byte("alice@example.com"), ad)
	if err != nil {
		t.Fatal(err)
	}
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	env := e.c.Envelope(e.name, client.EnvelopeOptions{Now: e.now}) // nothing cached
	keys, unwraps := e.dataKeys.Load(), e.decrypts.Load()
	if _, err := env.Encrypt(gone, []byte("bob@example.com"), ad); !errors.Is(err, context.Canceled) {
		t.Fatalf("Encrypt with its context ended: %v, want context.Canceled", err)
	}
	if _, err := env.Decrypt(gone, sealed, ad); !errors.Is(err, context.Canceled) {
		t.Fatalf("Decrypt with its context ended: %v, want context.Canceled", err)
	}
	time.Sleep(100 * time.Millisecond) // a detached fetch, had one started, would have reached the server
	if n, m := e.dataKeys.Load()-keys, e.decrypts.Load()-unwraps; n != 0 || m != 0 {
		t.Fatalf("%d GenerateDataKey and %d Decrypt calls for callers already gone; want none", n, m)
	}
}

// A data key past its decrypt TTL is not kept until the cache fills: each
// new data key cached drops those expired. A writer that never reads its
// keys back held the derived keys of its last CacheSize data keys (83 hours
// of them with the defaults).
func TestEnvelopeDropsExpiredDataKeysAsItCachesNewOnes(t *testing.T) {
	ctx := context.Background()
	e := startEnvelopeEnv(t)
	env := e.c.Envelope(e.name, client.EnvelopeOptions{MaxMessages: 1, MaxAge: time.Minute, DecryptTTL: time.Minute, Now: e.now})
	for range 10 {
		if _, err := env.Encrypt(ctx, []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := client.HeldDataKeys(env); n < 10 {
		t.Fatalf("%d data keys held after 10 encryptions of one message each, want at least 10", n)
	}
	e.advance(6 * time.Minute)
	if _, err := env.Encrypt(ctx, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	// The new data key, cached and current.
	if n := client.HeldDataKeys(env); n != 2 {
		t.Fatalf("%d data keys held after the others' TTL passed, want 2 (the new one, cached and current)", n)
	}
}

// A field truncated to nothing fails as any truncated ciphertext does
// (ErrInvalidCiphertext), without a call: the service refused it as a
// malformed request, INVALID_ARGUMENT without the not-authentic reason.
func TestEnvelopeAnEmptyCiphertextIsInvalid(t *testing.T) {
	e := startEnvelopeEnv(t)
	env := e.c.Envelope(e.name, client.EnvelopeOptions{Now: e.now})
	before := e.decrypts.Load()
	if _, err := env.Decrypt(context.Background(), nil, nil); !errors.Is(err, client.ErrInvalidCiphertext) {
		t.Fatalf("Decrypt of an empty ciphertext: %v, want ErrInvalidCiphertext", err)
	}
	if n := e.decrypts.Load() - before; n != 0 {
		t.Fatalf("%d Decrypt calls for an empty ciphertext, want none", n)
	}
}

// The memory of refused unwraps, when full, drops those past their 10 s
// before anything else: it was wiped whole, so a refusal made a moment
// before was asked again at once (docs/client.md promises one refused
// unwrap per data key per 10 s).
func TestEnvelopeRefusedUnwrapsOutliveAFullMemory(t *testing.T) {
	e := startEnvelopeEnv(t)
	env := e.c.Envelope(e.name, client.EnvelopeOptions{Now: e.now})
	for i := range client.MaxRefused - 1 {
		client.NoteRefused(env, fmt.Appendf(nil, "old-%d", i))
	}
	e.advance(11 * time.Second) // the old ones' time is up
	recent := []byte("recent")
	client.NoteRefused(env, recent) // the memory is full now
	client.NoteRefused(env, []byte("newest"))
	if !client.RecentlyRefused(env, recent) {
		t.Fatal("a refusal made a moment ago was forgotten when the memory filled")
	}
	if !client.RecentlyRefused(env, []byte("newest")) {
		t.Fatal("the newest refusal is not remembered")
	}
}
