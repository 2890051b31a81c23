package policy

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
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

// WatchSIGHUP starts a goroutine that calls Reload whenever the process
// receives SIGHUP, until ctx is done. Each reload is logged to logger (or
// slog.Default() if nil): success at Info, failure, with the previous
// policy kept, at Error. The policy's contents are never logged. The signal
// handler is installed before WatchSIGHUP returns.
func (h *Holder) WatchSIGHUP(ctx context.Context, logger *slog.Logger) {
	if logger == nil {
		logger = slog.Default()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP)
	go func() {
		defer signal.Stop(sig)
		for {
			select {
			case <-ctx.Done():
				return
			case <-sig:
				p, err := h.reload()
				if err != nil {
					logger.Error("policy reload failed; keeping the previous policy", "path", h.path, "error", err)
					continue
				}
				logger.Info("policy reloaded", "path", h.path, "rules", len(p.rules))
			}
		}
	}()
}
