package audit

import (
	"fmt"
	"math"
	"testing"
)

// Keys must sort in numeric order and keep the format stored logs hold:
// hex16 is fmt's %016x, written without fmt.
func TestHex16IsFixedWidthLowerCaseHex(t *testing.T) {
	for _, n := range []uint64{0, 1, 9, 10, 15, 16, 255, 256, 0xdeadbeef, 1 << 32, math.MaxUint64 - 1, math.MaxUint64} {
		want := fmt.Sprintf("%016x", n)
		if got := hex16(n); got != want {
			t.Errorf("hex16(%d) = %q, want %q", n, got, want)
		}
		if got := leafKey(n); got != leafPrefix+want {
			t.Errorf("leafKey(%d) = %q, want %q", n, got, leafPrefix+want)
		}
		if back, ok := parseHex16(hex16(n)); !ok || back != n {
			t.Errorf("parseHex16(hex16(%d)) = %d, %v", n, back, ok)
		}
	}
	if a, b := leafKey(0xff), leafKey(0x100); a >= b {
		t.Errorf("leafKey(0xff) %q sorts after leafKey(0x100) %q", a, b)
	}
}

var keySink string

// A leaf key is built in one allocation (the string): integration makes
// one per event.
func TestALeafKeyIsOneAllocation(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { keySink = leafKey(0xdeadbeef) }); n != 1 {
		t.Errorf("leafKey made %v allocations, want 1", n)
	}
}
