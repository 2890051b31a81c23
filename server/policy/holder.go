package policy

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
)

// Holder holds the policy in force and replaces it on reload. Current is a
// single atomic load, so checks never wait for a reload and a reload never
// drops or fails calls in flight. A Holder is safe for concurrent use.
type Holder struct {
	path    string
	current atomic.Pointer[Policy]
	mu      sync.Mutex // serializes reloads, so the last file read wins
}

// NewHolder loads the policy file at path and returns a Holder for it.
func NewHolder(path string) (*Holder, error) {
	p, err := Load(path)
	if err != nil {
		return nil, err
	}
	h := &Holder{path: path}
	h.current.Store(p)
	return h, nil
}

// Current returns the policy in force. Use one Policy for all the checks of
// one call, so that a reload in the middle cannot mix two policies.
func (h *Holder) Current() *Policy { return h.current.Load() }

// Reload reads the policy file again and, if it is valid, makes it the
// policy in force. If it is not, the previous policy stays in force and the
// error says what is wrong with the file.
func (h *Holder) Reload() error {
	_, err := h.reload()
	return err
}

func (h *Holder) reload() (*Policy, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p, err := Load(h.path)
	if err != nil {
		return nil, err
	}
	h.current.Store(p)
	return p, nil
}

// ReloadOn reloads the policy every time reload delivers a signal (SIGHUP),
// until ctx is done. The caller registers reload with signal.Notify, as
// early as it can: a signal that arrives before ReloadOn runs waits in the
// channel and is handled then, and one that arrives after ReloadOn returns
// stays caught (never fatal) as long as the registration lasts. Each reload
// is logged to logger: success at Info, failure, with the previous policy
// kept, at Error (naming the rule at fault). The policy's contents are
// never logged.
func (h *Holder) ReloadOn(ctx context.Context, reload <-chan os.Signal, logger *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-reload:
			h.ReloadLogged(logger)
		}
	}
}

// ReloadLogged reloads the policy as Reload does and logs the outcome:
// success at Info, failure, with the previous policy kept, at Error (naming
// the rule at fault). The policy's contents are never logged.
func (h *Holder) ReloadLogged(logger *slog.Logger) {
	p, err := h.reload()
	if err != nil {
		logger.Error("policy reload failed; keeping the previous policy", "path", h.path, "error", err)
		return
	}
	logger.Info("policy reloaded", "path", h.path, "rules", len(p.rules))
}
