package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/custos-kms/custos/keystore"
)

// SeedName is the i-th seeded tenant's id: prefix and a zero-padded number.
func SeedName(prefix string, i int) string { return fmt.Sprintf("%s%07d", prefix, i) }

// Seed creates tenants prefix0000000 … prefix(n-1), each with one ENCRYPT
// key "enc", directly in the keystore's storage (as custos root rewrap works:
// no server needed), with workers at once. Existing tenants and keys are
// kept, so an interrupted seed can be run again. progress, if not nil, is
// called with the count done every 10,000 tenants.
func Seed(ctx context.Context, ks *keystore.Service, prefix string, n, workers int, progress func(done int)) error {
	var next, done atomic.Int64
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for range max(workers, 1) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				t := SeedName(prefix, i)
				if _, err := ks.CreateTenant(ctx, t); err != nil && !errors.Is(err, keystore.ErrAlreadyExists) {
					select {
					case errc <- fmt.Errorf("seed tenant %s: %w", t, err):
					default:
					}
					return
				}
				_, err := ks.CreateKey(ctx, keystore.KeyRef{Tenant: t, Key: "enc"}, keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
				if err != nil && !errors.Is(err, keystore.ErrAlreadyExists) {
					select {
					case errc <- fmt.Errorf("seed key of %s: %w", t, err):
					default:
					}
					return
				}
				if d := done.Add(1); progress != nil && d%10000 == 0 {
					progress(int(d))
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
	}
	return ctx.Err()
}
