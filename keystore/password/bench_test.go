package password_test

import (
	"context"
	"errors"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/custos-kms/custos/internal/workpool"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/password"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/storage/memory"
)

// BenchmarkEncryptIdle is the baseline for BenchmarkEncryptDuringHashingFlood:
// one 64-byte Encrypt at a time with nothing else running.
func BenchmarkEncryptIdle(b *testing.B) {
	benchmarkEncryptWithFlood(b, 0)
}

// BenchmarkEncryptDuringHashingFlood measures Encrypt while background
// callers keep the hashing pool (default size: GOMAXPROCS workers) saturated
// with bcrypt at the default cost, so every worker is always busy and tasks
// are always queued. Compare its ns/op and p99 with BenchmarkEncryptIdle.
func BenchmarkEncryptDuringHashingFlood(b *testing.B) {
	benchmarkEncryptWithFlood(b, 4*runtime.GOMAXPROCS(0))
}

func benchmarkEncryptWithFlood(b *testing.B, flooders int) {
	ctx := context.Background()
	r, err := local.Create(filepath.Join(b.TempDir(), "root.key"))
	if err != nil {
		b.Fatal(err)
	}
	workers := runtime.GOMAXPROCS(0)
	pool := workpool.New(workers, 64*workers)
	b.Cleanup(pool.Close)
	store := memory.New()
	ks, err := keystore.New(keystore.Config{Storage: store, Root: r})
	if err != nil {
		b.Fatal(err)
	}
	hashing, err := password.New(password.Config{Peppers: ks, Store: store, Pool: pool})
	if err != nil {
		b.Fatal(err)
	}
	enc := keystore.KeyRef{Tenant: "acme", Key: "pii"}
	pw := keystore.KeyRef{Tenant: "acme", Key: "pw"}
	if _, err := ks.CreateTenant(ctx, "acme"); err != nil {
		b.Fatal(err)
	}
	if _, err := ks.CreateKey(ctx, enc, keystore.KeySpec{Purpose: keystore.PurposeEncrypt}); err != nil {
		b.Fatal(err)
	}
	if _, err := ks.CreateKey(ctx, pw, keystore.KeySpec{Purpose: keystore.PurposePassword}); err != nil {
		b.Fatal(err)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range flooders {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := hashing.Hash(ctx, pw, []byte("flood")); err != nil && !errors.Is(err, keystore.ErrResourceExhausted) {
					b.Error(err)
					return
				}
			}
		})
	}
	if flooders > 0 {
		for pool.Waiting() == 0 { // saturated: all workers busy, callers queued
			time.Sleep(time.Millisecond)
		}
	}
	plaintext := make([]byte, 64)
	if _, _, err := ks.Encrypt(ctx, enc, plaintext, nil); err != nil { // warm the cache
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		if _, _, err := ks.Encrypt(ctx, enc, plaintext, nil); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	close(stop)
	wg.Wait()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
	b.ReportMetric(float64(lat[len(lat)*999/1000].Nanoseconds()), "p99.9-ns")
	b.ReportMetric(float64(lat[len(lat)-1].Nanoseconds()), "max-ns")
}
