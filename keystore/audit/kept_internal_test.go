package audit

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/memory"
)

// countingStore counts the records listed under the history's prefix.
type countingStore struct {
	storage.Store
	listed int
}

func (c *countingStore) List(ctx context.Context, prefix, after string, limit int) ([]storage.Record, error) {
	recs, err := c.Store.List(ctx, prefix, after, limit)
	if prefix == cpPrefix {
		c.listed += len(recs)
	}
	return recs, err
}

// The newest kept checkpoint is found without reading the whole history
// (a process's first signing reads it, and the history keeps one a minute,
// without bound when retention is off), and it is the last key, as a scan
// finds it, whatever else a store writer put under the prefix.
func TestNewestKeptIsTheLastKeyWithoutReadingTheHistory(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 200 {
		store := memory.New()
		counted := &countingStore{Store: store}
		l := &Log{store: counted}
		seen := map[string]bool{}
		put := func(key string) {
			if seen[key] {
				return
			}
			seen[key] = true
			if _, err := store.Put(ctx, key, []byte(key), 0); err != nil {
				t.Fatal(err)
			}
		}
		n := rng.IntN(3000)
		if trial == 0 {
			n = 0
		}
		for range n {
			switch rng.IntN(4) {
			case 0:
				put(cpKey(rng.Uint64()))
			case 1:
				put(cpKey(uint64(rng.IntN(1 << 20))))
			default:
				put(cpKey(uint64(rng.IntN(64))))
			}
		}
		junk := trial%5 == 4
		if junk { // a key no server writes, somewhere among the others
			switch rng.IntN(3) {
			case 0:
				put(cpPrefix + "zz")
			case 1:
				put(cpKey(uint64(rng.IntN(1<<20))) + "x")
			default:
				put(cpPrefix + fmt.Sprintf("%016X", uint64(rng.IntN(1<<20))|0xa))
			}
		}
		got, err := l.newestKept(ctx)
		if err != nil {
			t.Fatal(err)
		}
		bisected := counted.listed
		want, err := l.scanKept(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Fatalf("trial %d (%d keys): newestKept %q, the last key is %q", trial, n, got, want)
		}
		if !junk && bisected > 70 {
			t.Fatalf("trial %d: newestKept read %d records of a history of %d", trial, bisected, n)
		}
	}
	if got, ok := cpSize(cpKey(math.MaxUint64)); !ok || got != math.MaxUint64 {
		t.Fatalf("cpSize(cpKey(max)) = %d, %v", got, ok)
	}
}
