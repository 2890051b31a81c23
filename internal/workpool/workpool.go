// Package workpool bounds CPU-heavy work (password hashing) so that it cannot
// starve everything else: at most a fixed number of tasks run at once, at most
// a fixed number wait, and anything beyond that is refused at once. A pool
// made with a niceness runs its tasks on OS threads of their own at a lower
// CPU priority, so that when the machine is busy the operating system gives
// the rest of the process the CPU first.
package workpool

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
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
// In a pool from New a worker is a slot, not a goroutine: Do runs f on the
// calling goroutine once it holds one of the pool's worker slots. An idle pool therefore owns no
// goroutines and leaks none, f sees the caller's stack (a panic in f unwinds
// the caller, as a plain call would), and the number of tasks running at once
// never exceeds the number of workers.
type Pool struct {
	slots chan struct{} // one token per running task; capacity = workers
	queue int

	// With a niceness: tasks go to the worker goroutines over work, each
	// locked to an OS thread of its own (see NewNiced).
	work    chan task
	workers sync.WaitGroup
	niceErr error
	mu      sync.Mutex
	wait    int // callers blocked waiting for a slot

	rejected atomic.Uint64 // Do calls refused with ErrFull
	running  atomic.Int64  // tasks running f now

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

// task is one f for a worker thread; done receives what f panicked with, or
// nil.
type task struct {
	f    func()
	done chan any
}

// NewNiced returns a pool like New whose tasks run on workers dedicated OS
// threads, each with scheduling niceness nice (Linux: 1 lowest to 19
// highest; other systems: the niceness is not applied). The Go runtime
// still counts a running task against GOMAXPROCS, so a process that wants
// the rest of its work to keep every core should raise GOMAXPROCS by
// workers. The pool holds its workers' goroutines until Close. NiceErr
// says whether the niceness could be set.
func NewNiced(workers, queue, nice int) *Pool {
	p := New(workers, queue)
	p.work = make(chan task)
	started := make(chan error, cap(p.slots))
	for range cap(p.slots) {
		p.startWorker(nice, started)
	}
	for range cap(p.slots) {
		if err := <-started; err != nil && p.niceErr == nil {
			p.niceErr = err
		}
	}
	return p
}

// startWorker starts one worker thread at niceness nice, reporting on
// started whether the niceness could be set.
func (p *Pool) startWorker(nice int, started chan<- error) {
	p.workers.Go(func() {
		// Locked and never unlocked: the thread is this worker's alone,
		// and ends with it.
		runtime.LockOSThread()
		started <- setThreadNice(nice)
		for t := range p.work {
			returned := false
			func() {
				defer func() {
					r := recover()
					if !returned && r == nil {
						// f called runtime.Goexit, which ends this
						// goroutine: tell the caller, and replace the
						// worker so the pool keeps its size.
						r = errGoexit
						p.startWorker(nice, make(chan error, 1))
					}
					t.done <- r
				}()
				t.f()
				returned = true
			}()
		}
	})
}

// errGoexit is what Do panics with when its task called runtime.Goexit.
var errGoexit = errors.New("workpool: task called runtime.Goexit")

// NiceErr reports why the niceness of a NewNiced pool's threads could not be
// set, or nil.
func (p *Pool) NiceErr() error { return p.niceErr }

// Workers is the number of tasks the pool runs at once.
func (p *Pool) Workers() int { return cap(p.slots) }

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
	p.running.Add(1)
	defer p.running.Add(-1)
	if p.work == nil {
		f()
		return nil
	}
	// A worker thread is free: as many hold slots as there are workers.
	t := task{f: f, done: make(chan any, 1)}
	p.work <- t
	if r := <-t.done; r != nil {
		panic(r) // unwind the caller, as a plain call would
	}
	return nil
}

// waitForSlot queues the caller, if the queue has room, until it holds a slot.
func (p *Pool) waitForSlot(ctx context.Context) error {
	p.mu.Lock()
	if p.wait >= p.queue {
		p.mu.Unlock()
		p.rejected.Add(1)
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

// Running returns how many tasks hold a worker now.
func (p *Pool) Running() int { return int(p.running.Load()) }

// Rejected returns how many tasks were refused with ErrFull since the pool
// was made.
func (p *Pool) Rejected() uint64 { return p.rejected.Load() }

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
		if p.work != nil {
			close(p.work)
			p.workers.Wait()
		}
	})
}
