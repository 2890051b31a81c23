//go:build cgo

package pkcs11

import (
	"context"
	"time"

	p11 "github.com/miekg/pkcs11"
)

// Hang runs an operation that blocks until release is closed, standing for
// a token that stopped answering in the middle of a call.
func (r *Root) Hang(ctx context.Context, release <-chan struct{}) error {
	_, err := r.do(ctx, "hang", func(p11.SessionHandle, p11.ObjectHandle) ([]byte, error) {
		<-release
		return nil, nil
	})
	return err
}

// CloseAllSessions closes every session of the root's slot behind its
// back, as an HSM failover or a session timeout does.
func (r *Root) CloseAllSessions() error {
	r.mu.Lock()
	slot := r.state.slot
	r.mu.Unlock()
	return r.mod.ctx.CloseAllSessions(slot)
}

// SetCloseWait sets how long Close waits for token calls.
func (r *Root) SetCloseWait(d time.Duration) { r.closeWait = d }

// HangThenReturn runs an operation that blocks until release is closed and
// then returns out, standing for an unwrap the caller stopped waiting for.
func (r *Root) HangThenReturn(ctx context.Context, release <-chan struct{}, out []byte) error {
	_, err := r.do(ctx, "hang", func(p11.SessionHandle, p11.ObjectHandle) ([]byte, error) {
		<-release
		return out, nil
	})
	return err
}

// Drain waits until no operation runs on the library.
func (r *Root) Drain() { r.inflight.Wait() }

// WaitReleased waits until Close has released the sessions and the library.
func (r *Root) WaitReleased() { <-r.released }

// SetCallTimeout sets the bound of each operation.
func (r *Root) SetCallTimeout(d time.Duration) { r.callTimeout = d }

// SetPIN changes the PIN the root logs in with, standing for a PIN changed
// on the token while the root runs.
func (r *Root) SetPIN(pin string) { r.pin = pin }

// Logins is how many times the root tried to log in.
func (r *Root) Logins() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.logins
}
