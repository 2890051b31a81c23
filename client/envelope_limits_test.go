package client_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/client/clienttest"
	"github.com/custos-kms/custos/envelope"
)

// Local mode refuses the associated data the service refuses, so every
// envelope it makes stays readable, and rewrappable, by the service.
func TestLocalModeRefusesTheAssociatedDataTheServiceRefuses(t *testing.T) {
	ctx := context.Background()
	e := startEnvelopeEnv(t)
	env := e.c.Envelope(e.name, client.EnvelopeOptions{Now: e.now})
	for what, ad := range map[string][]byte{
		"one byte over the limit": make([]byte, envelope.MaxAssociatedData+1),
		"the data-key prefix":     []byte(envelope.DataKeyAADPrefix + "x"),
		"the envelope context":    []byte(envelope.DataKeyContext),
	} {
		if _, err := env.Encrypt(ctx, []byte("x"), ad); status.Code(err) != codes.InvalidArgument || !errors.Is(err, client.ErrInvalidArgument) {
			t.Errorf("%s, local encrypt: %v, want INVALID_ARGUMENT", what, err)
		}
		if _, _, err := e.c.Encrypt(ctx, e.name, []byte("x"), ad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s, the service's encrypt: %v, want INVALID_ARGUMENT (the limits differ)", what, err)
		}
	}
	// The largest associated data both take round-trips every way.
	ad := bytes.Repeat([]byte{'a'}, envelope.MaxAssociatedData)
	ct, err := env.Encrypt(ctx, []byte("field"), ad)
	if err != nil {
		t.Fatal(err)
	}
	if pt, _, err := e.c.Decrypt(ctx, e.name, ct, ad); err != nil || string(pt) != "field" {
		t.Fatalf("the service decrypting a local envelope with %d bytes of associated data: %q, %v", len(ad), pt, err)
	}
	if _, _, err := e.c.Rewrap(ctx, e.name, ct, ad); err != nil {
		t.Fatalf("the service rewrapping it: %v", err)
	}
	// An envelope sealed with reserved associated data (as a client
	// before this check could) fails locally as on the service.
	dk, err := e.c.GenerateDataKey(ctx, e.name, []byte(envelope.DataKeyContext))
	if err != nil {
		t.Fatal(err)
	}
	k, err := envelope.NewKey(dk.Plaintext, dk.Wrapped)
	if err != nil {
		t.Fatal(err)
	}
	reserved := []byte(envelope.DataKeyContext)
	old, err := k.Seal([]byte("field"), reserved)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Decrypt(ctx, old, reserved); !errors.Is(err, client.ErrInvalidCiphertext) {
		t.Errorf("local decrypt with reserved associated data: %v, want ErrInvalidCiphertext", err)
	}
	if _, _, err := e.c.Decrypt(ctx, e.name, old, reserved); !errors.Is(err, client.ErrInvalidCiphertext) {
		t.Errorf("the service's decrypt with reserved associated data: %v, want ErrInvalidCiphertext", err)
	}
	// One sealed with more associated data than the service takes (as a
	// client before this check could) stays readable locally.
	large := make([]byte, envelope.MaxAssociatedData+1024)
	big, err := k.Seal([]byte("field"), large)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := env.Decrypt(ctx, big, large); err != nil || string(pt) != "field" {
		t.Errorf("local decrypt of an envelope with %d bytes of associated data: %q, %v", len(large), pt, err)
	}
}

// After Close, local mode fails as the client's remote calls do, even with
// a data key in hand.
func TestLocalModeFailsWithErrClosedAfterClose(t *testing.T) {
	ctx := context.Background()
	srv := clienttest.Start(t)
	c := srv.Client(t)
	if _, err := c.CreateTenant(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	name := client.KeyName("a", "k")
	if _, err := c.CreateKey(ctx, client.TenantName("a"), "k", client.KeySpec{Purpose: client.PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	env := c.Envelope(name, client.EnvelopeOptions{})
	ct, err := env.Encrypt(ctx, []byte("field"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Decrypt(ctx, ct, nil); err != nil { // the data key is cached now
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Encrypt(ctx, []byte("field"), nil); !errors.Is(err, client.ErrClosed) || status.Code(err) != codes.Canceled {
		t.Errorf("local encrypt after Close: %v, want ErrClosed", err)
	}
	if _, err := env.Decrypt(ctx, ct, nil); !errors.Is(err, client.ErrClosed) || status.Code(err) != codes.Canceled {
		t.Errorf("local decrypt after Close: %v, want ErrClosed", err)
	}
}

// A local wait that the caller's context ends fails as a remote call would:
// with the context's code, matching its error, as a *client.Error.
func TestALocalWaitEndedByItsContextFailsAsARemoteCallWould(t *testing.T) {
	e := startEnvelopeEnv(t)
	ct, err := e.c.Envelope(e.name, client.EnvelopeOptions{}).Encrypt(context.Background(), []byte("field"), nil)
	if err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	e.hold.Store(&hold)
	defer close(hold)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = e.c.Envelope(e.name, client.EnvelopeOptions{}).Decrypt(ctx, ct, nil) // its unwrap is held
	var ce *client.Error
	if status.Code(err) != codes.DeadlineExceeded || !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &ce) {
		t.Errorf("decrypt whose unwrap outlived its deadline: %v (%T), want DEADLINE_EXCEEDED", err, err)
	}
	gone, cancelNow := context.WithCancel(context.Background())
	cancelNow()
	_, err = e.c.Envelope(e.other, client.EnvelopeOptions{}).Encrypt(gone, []byte("field"), nil)
	if status.Code(err) != codes.Canceled || !errors.Is(err, context.Canceled) || !errors.As(err, &ce) {
		t.Errorf("encrypt with a cancelled context: %v (%T), want CANCELLED", err, err)
	}
}

// A Purge that comes while a fetched data key is being installed is not
// undone by the install: no encryption after the Purge uses that key.
func TestAPurgeDuringTheInstallOfAFetchedDataKeyTakesEffect(t *testing.T) {
	ctx := context.Background()
	e := startEnvelopeEnv(t)
	env := e.c.Envelope(e.name, client.EnvelopeOptions{Now: e.now})
	purged := make(chan struct{})
	var raced []byte // the data key whose install the Purge came during
	var once sync.Once
	restore := client.SetTestHookInstall(func(wrapped []byte) {
		once.Do(func() {
			raced = bytes.Clone(wrapped)
			go func() { env.Purge(); close(purged) }()
			select { // long enough for a Purge the install does not hold back
			case <-purged:
			case <-time.After(100 * time.Millisecond):
			}
		})
	})
	_, err := env.Encrypt(ctx, []byte("field"), nil)
	restore()
	if err != nil {
		t.Fatal(err)
	}
	<-purged
	next, err := env.Encrypt(ctx, []byte("field"), nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := envelope.Parse(next)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(p.Wrapped, raced) {
		t.Fatal("an encryption after Purge used the data key whose install the Purge came during")
	}
}
