package keystore

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

func TestCountingAnEncryptionDoesNotAllocate(t *testing.T) {
	l := newLifecycleState(0)
	ref := KeyRef{Tenant: "acme", Key: "pii"}
	l.countEncrypt(ref, 7) // creates the counter
	if n := testing.AllocsPerRun(1000, func() { l.countEncrypt(ref, 7) }); n != 0 {
		t.Fatalf("countEncrypt allocates %v times per call", n)
	}
}

func TestCollectNeverLosesACountRacingWithRetirement(t *testing.T) {
	l := newLifecycleState(0)
	ref := KeyRef{Tenant: "acme", Key: "pii"}
	const workers, each = 4, 5000
	var finished atomic.Bool
	var total uint64
	collector := make(chan struct{})
	go func() {
		defer close(collector)
		for !finished.Load() {
			total += l.collect()[ref][1]
		}
	}()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range each {
				l.countEncrypt(ref, 1)
				if i%64 == 0 {
					runtime.Gosched() // let the collector find the counter idle and retire it
				}
			}
		})
	}
	wg.Wait()
	finished.Store(true)
	<-collector
	// Two more collections drain the live and the retired counters.
	total += l.collect()[ref][1]
	total += l.collect()[ref][1]
	if total != workers*each {
		t.Fatalf("collected %d encryptions, want %d", total, workers*each)
	}
}
