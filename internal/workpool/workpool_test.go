package workpool_test

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custos-kms/custos/internal/workpool"
)

// waitFor polls cond for up to a few seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// occupy starts n tasks that block until release is closed and waits until
// they all run.
func occupy(t *testing.T, p *workpool.Pool, n int, release <-chan struct{}, wg *sync.WaitGroup) {
	t.Helper()
	var started atomic.Int64
	for range n {
		wg.Go(func() {
			if err := p.Do(context.Background(), func() { started.Add(1); <-release }); err != nil {
				t.Error(err)
			}
		})
	}
	waitFor(t, "tasks to start", func() bool { return started.Load() == int64(n) })
}

func TestRunsAtMostWorkersTasksAtOnce(t *testing.T) {
	p := workpool.New(3, 100)
	defer p.Close()
	var running, peak, done atomic.Int64
	var wg sync.WaitGroup
	for range 40 {
		wg.Go(func() {
			err := p.Do(context.Background(), func() {
				n := running.Add(1)
				for {
					old := peak.Load()
					if n <= old || peak.CompareAndSwap(old, n) {
						break
					}
				}
				time.Sleep(time.Millisecond)
				running.Add(-1)
				done.Add(1)
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if done.Load() != 40 || peak.Load() > 3 {
		t.Fatalf("done=%d peak=%d; want 40 done, at most 3 at once", done.Load(), peak.Load())
	}
}

func TestRefusesAtOnceWhenTheQueueIsFull(t *testing.T) {
	p := workpool.New(1, 2)
	defer p.Close()
	release := make(chan struct{})
	var wg sync.WaitGroup
	occupy(t, p, 1, release, &wg)
	var ran atomic.Int64
	for range 2 {
		wg.Go(func() {
			if err := p.Do(context.Background(), func() { ran.Add(1) }); err != nil {
				t.Error(err)
			}
		})
	}
	waitFor(t, "two waiting tasks", func() bool { return p.Waiting() == 2 })
	start := time.Now()
	if err := p.Do(context.Background(), func() { t.Error("ran a refused task") }); !errors.Is(err, workpool.ErrFull) {
		t.Fatalf("Do with a full queue: %v, want ErrFull", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("ErrFull took %v; it must not wait", d)
	}
	close(release)
	wg.Wait()
	if ran.Load() != 2 {
		t.Fatalf("queued tasks ran %d times, want 2", ran.Load())
	}
}

func TestContextEndingWhileQueuedSkipsTheTask(t *testing.T) {
	p := workpool.New(1, 1)
	defer p.Close()
	release := make(chan struct{})
	var wg sync.WaitGroup
	occupy(t, p, 1, release, &wg)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Do(ctx, func() { t.Error("ran a cancelled task") }) }()
	waitFor(t, "the task to queue", func() bool { return p.Waiting() == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Do after cancel: %v", err)
	}
	if p.Waiting() != 0 {
		t.Fatalf("a cancelled task still waits")
	}
	if err := p.Do(ctx, func() {}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Do with a done context: %v", err)
	}
	close(release)
	wg.Wait()
}

func TestPanicInATaskReachesTheCallerAndFreesTheWorker(t *testing.T) {
	p := workpool.New(1, 0)
	defer p.Close()
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Fatalf("recovered %v, want boom", r)
			}
		}()
		_ = p.Do(context.Background(), func() { panic("boom") })
	}()
	if err := p.Do(context.Background(), func() {}); err != nil {
		t.Fatalf("worker not freed after a panic: %v", err)
	}
}

func TestCloseWaitsForRunningTasksReleasesWaitersAndLeaksNothing(t *testing.T) {
	before := runtime.NumGoroutine()
	p := workpool.New(2, 4)
	release := make(chan struct{})
	var wg sync.WaitGroup
	var finished atomic.Int64
	var started atomic.Int64
	for range 2 {
		wg.Go(func() {
			_ = p.Do(context.Background(), func() { started.Add(1); <-release; finished.Add(1) })
		})
	}
	waitFor(t, "tasks to start", func() bool { return started.Load() == 2 })
	waiterErr := make(chan error, 1)
	go func() { waiterErr <- p.Do(context.Background(), func() { t.Error("ran a task after Close") }) }()
	waitFor(t, "a waiting task", func() bool { return p.Waiting() == 1 })

	closed := make(chan struct{})
	go func() { p.Close(); close(closed) }()
	if err := <-waiterErr; !errors.Is(err, workpool.ErrClosed) {
		t.Fatalf("waiting task after Close: %v, want ErrClosed", err)
	}
	select {
	case <-closed:
		t.Fatal("Close returned while tasks were running")
	case <-time.After(20 * time.Millisecond):
	}
	close(release)
	<-closed
	if finished.Load() != 2 {
		t.Fatalf("Close returned before the running tasks finished (%d/2)", finished.Load())
	}
	p.Close() // idempotent
	if err := p.Do(context.Background(), func() { t.Error("ran after Close") }); !errors.Is(err, workpool.ErrClosed) {
		t.Fatalf("Do after Close: %v", err)
	}
	wg.Wait()
	waitFor(t, "goroutines to exit", func() bool { return runtime.NumGoroutine() <= before })
}
