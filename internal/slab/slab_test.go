package slab_test

import (
	"testing"

	"github.com/custos-kms/custos/internal/slab"
)

type item struct {
	a, b int
	s    []byte
}

func TestOfGivesDistinctZeroValues(t *testing.T) {
	ps := slab.Of[item](5)
	if len(ps) != 5 {
		t.Fatalf("%d pointers, want 5", len(ps))
	}
	seen := map[*item]bool{}
	for i, p := range ps {
		if p == nil || seen[p] || p.a != 0 || p.b != 0 || p.s != nil {
			t.Fatalf("pointer %d: %p %+v (nil, repeated or not zero)", i, p, p)
		}
		seen[p] = true
		p.a = i
	}
	for i, p := range ps {
		if p.a != i {
			t.Errorf("value %d changed to %d by a write through another pointer", i, p.a)
		}
	}
	if n := len(slab.Of[item](0)); n != 0 {
		t.Errorf("Of(0) gave %d pointers", n)
	}
}

var sink []*item

func TestOfAllocatesTwice(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { sink = slab.Of[item](100) }); n != 2 {
		t.Errorf("Of(100) made %v allocations, want 2 (the block and the pointers)", n)
	}
}
