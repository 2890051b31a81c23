package lease_test

import (
	"context"
	"testing"
	"time"

	"github.com/custos-kms/custos/keystore/storage/lease"
	"github.com/custos-kms/custos/keystore/storage/memory"
)

func TestOneHolderAtATime(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	defer store.Close()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	l := lease.Lease{Store: store, Key: "jobs/lease", Now: func() time.Time { return now }}
	take := func(holder string) bool {
		t.Helper()
		held, _, err := l.Acquire(ctx, holder, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return held
	}
	steps := []struct {
		name  string
		do    func() bool
		want  bool
		after func()
	}{
		{"a takes the free lease", func() bool { return take("a") }, true, nil},
		{"b is refused while a's lease runs", func() bool { return take("b") }, false, nil},
		{"a renews its own lease", func() bool { return take("a") }, true, func() { now = now.Add(2 * time.Minute) }},
		{"b takes a's expired lease", func() bool { return take("b") }, true, nil},
		{"a is refused now", func() bool { return take("a") }, false, func() {
			if err := l.Release(ctx, "a"); err != nil { // not a's: a no-op
				t.Fatal(err)
			}
		}},
		{"a release by a non-holder changed nothing", func() bool { return take("a") }, false, func() {
			if err := l.Release(ctx, "b"); err != nil {
				t.Fatal(err)
			}
		}},
		{"after b released it, a takes it at once", func() bool { return take("a") }, true, nil},
	}
	for _, s := range steps {
		if got := s.do(); got != s.want {
			t.Fatalf("%s: held = %v, want %v", s.name, got, s.want)
		}
		if s.after != nil {
			s.after()
		}
	}
}

func TestAnUnreadableRecordIsTakenOver(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	defer store.Close()
	if _, err := store.Put(ctx, "jobs/lease", []byte("{not json"), 0); err != nil {
		t.Fatal(err)
	}
	held, tookOver, err := lease.Lease{Store: store, Key: "jobs/lease"}.Acquire(ctx, "a", time.Minute)
	if err != nil || !held || !tookOver {
		t.Fatalf("Acquire over garbage = held %v, took over %v, %v; want true, true, nil", held, tookOver, err)
	}
}
