package workpool

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestNicedTasksRunOnLowPriorityThreadsOfTheirOwn(t *testing.T) {
	p := NewNiced(2, 4, 10)
	if err := p.NiceErr(); err != nil {
		t.Fatalf("setting the niceness: %v", err)
	}
	callerTID := unix.Gettid()
	var mu sync.Mutex
	tids := map[int]bool{}
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			err := p.Do(context.Background(), func() {
				tid := unix.Gettid()
				// The raw getpriority system call returns 20 − niceness.
				prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
				if err != nil || 20-prio != 10 {
					t.Errorf("task thread niceness: 20-%d (%v), want 10", prio, err)
				}
				mu.Lock()
				tids[tid] = true
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if len(tids) == 0 || len(tids) > 2 || tids[callerTID] {
		t.Errorf("tasks ran on threads %v (caller %d); want at most the 2 workers' own", tids, callerTID)
	}
	// The caller's thread keeps its priority.
	if prio, _ := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid()); 20-prio == 10 {
		t.Error("the calling thread was niced")
	}
	before := runtime.NumGoroutine()
	p.Close()
	// A worker's goroutine may still be counted for a moment after it
	// returned (its locked thread is being torn down): wait, with a bound.
	deadline := time.Now().Add(2 * time.Second)
	after := runtime.NumGoroutine()
	for after > before-2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
		after = runtime.NumGoroutine()
	}
	if after > before-2 {
		t.Errorf("goroutines %d → %d 2s after Close; the 2 workers should have ended", before, after)
	}
	if err := p.Do(context.Background(), func() {}); err != ErrClosed {
		t.Errorf("Do after Close = %v, want ErrClosed", err)
	}
}

func TestANicedTaskPanicReachesTheCaller(t *testing.T) {
	p := NewNiced(1, 0, 5)
	defer p.Close()
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v, want boom", r)
			}
		}()
		_ = p.Do(context.Background(), func() { panic("boom") })
	}()
	ran := false
	if err := p.Do(context.Background(), func() { ran = true }); err != nil || !ran {
		t.Fatalf("the worker is gone after a panic: %v, ran=%v", err, ran)
	}
}

func TestATaskThatCallsGoexitFailsItsCallerAndTheWorkerIsReplaced(t *testing.T) {
	p := NewNiced(1, 0, 5)
	defer p.Close()
	func() {
		defer func() {
			if r := recover(); r != errGoexit {
				t.Errorf("recovered %v, want errGoexit", r)
			}
		}()
		_ = p.Do(context.Background(), runtime.Goexit)
	}()
	done := make(chan error, 1)
	go func() { done <- p.Do(context.Background(), func() {}) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the pool lost its only worker")
	}
}
