package audit

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/memory"
)

// secondPutFails is a store whose second write fails: a group commit split
// into two queue records makes the first durable and loses the second.
type secondPutFails struct {
	storage.Store
	puts atomic.Int64
}

func (s *secondPutFails) Put(ctx context.Context, key string, v []byte, expect uint64) (uint64, error) {
	if s.puts.Add(1) == 2 {
		return 0, storage.ErrUnavailable
	}
	return s.Store.Put(ctx, key, v, expect)
}

// A group commit too large for one queue record, whose second record fails,
// answers the calls whose events were made durable and refuses only the
// others: no event in the log stands for a call that was refused.
func TestASplitGroupCommitThatFailsPartWayRefusesOnlyTheLostCalls(t *testing.T) {
	st := &secondPutFails{Store: memory.New()}
	w, err := NewWriter(WriterConfig{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	b := newBatch()
	for i := range MaxBatchEvents + 10 {
		leaf, err := Marshal(testEvent(i))
		if err != nil {
			t.Fatal(err)
		}
		b.leaves = append(b.leaves, leaf)
	}
	w.mu.Lock()
	w.cur = b
	w.mu.Unlock()
	w.commitCurrent()
	if b.committed != MaxBatchEvents {
		t.Fatalf("%d leaves durable, want the first record's %d", b.committed, MaxBatchEvents)
	}
	if err := b.errFor(0); err != nil {
		t.Fatalf("a call whose event was made durable: %v, want it answered", err)
	}
	if err := b.errFor(MaxBatchEvents); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a call whose event was lost: %v, want ErrUnavailable", err)
	}
}
