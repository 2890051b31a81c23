// Package workpool bounds CPU-heavy work (password hashing) so that it cannot
// starve everything else: at most a fixed number of tasks run at once, at most
// a fixed number wait, and anything beyond that is refused at once.
package workpool

import (
	"context"
	"errors"
	"sync"
)

var (
	// ErrFull is returned by Do when the queue already holds its maximum
	// number of waiting tasks. Callers should report "try again later"
	// (RESOURCE_EXHAUSTED) rather than wait.
	ErrFull = errors.New("workpool: queue is full")
	// ErrClosed is returned by Do after Close.
	ErrClosed = errors.New("workpool: closed")
)

// Pool runs tasks with bounded concurrency and a bounded queue. It is safe for
// concurrent use.
//
// A worker is a slot, not a goroutine: Do runs f on the calling goroutine once
// it holds one of the pool's worker slots. An idle pool therefore owns no
// goroutines and leaks none, f sees the caller's stack (a panic in f unwinds
// the caller, as a plain call would), and the number of tasks running at once
// never exceeds the number of workers.
type Pool struct {
	slots chan struct{} // one token per running task; capacity = workers
	queue int
	mu    sync.Mutex
	wait  int // callers blocked waiting for a slot

	closed    chan struct{}
	closeOnce sync.Once
}

// New returns a pool that runs at most workers tasks at once and lets at most
// queue more wait. workers < 1 is taken as 1 and queue < 0 as 0.
func New(workers, queue int) *Pool {
	return &Pool{
		slots:  make(chan struct{}, max(workers, 1)),
		queue:  max(queue, 0),
		closed: make(chan struct{}),
	}
}

// Do runs f on a worker and returns nil when f has returned. When every
// worker is busy it waits for one; it returns ErrFull at once, without
// running f, when queue tasks are already waiting, and ctx.Err() if ctx ends
// while it waits. After Close it returns ErrClosed. f is never interrupted:
// once started it runs to completion, and Do returns after it.
func (p *Pool) Do(ctx context.Context, f func()) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-p.closed:
		return ErrClosed
	case p.slots <- struct{}{}: // a worker is free
	default:
		if err := p.waitForSlot(ctx); err != nil {
			return err
		}
	}
	defer func() { <-p.slots }()
	select {
	case <-p.closed:
		return ErrClosed
	default:
	}
	f()
	return nil
}

// waitForSlot queues the caller, if the queue has room, until it holds a slot.
func (p *Pool) waitForSlot(ctx context.Context) error {
	p.mu.Lock()
	if p.wait >= p.queue {
		p.mu.Unlock()
		return ErrFull
	}
	p.wait++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.wait--
		p.mu.Unlock()
	}()
	select {
	case p.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-p.closed:
		return ErrClosed
	}
}

// Waiting returns how many tasks are waiting for a worker.
func (p *Pool) Waiting() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.wait
}

// Close refuses new tasks (ErrClosed), releases waiting ones with ErrClosed,
// and returns once the tasks already running have finished. It is idempotent;
// every call returns only after the running tasks are done.
func (p *Pool) Close() {
	p.closeOnce.Do(func() {
		close(p.closed)
		// Hold every slot: this waits for running tasks, and no task can
		// start afterwards.
		for range cap(p.slots) {
			p.slots <- struct{}{}
		}
	})
}
