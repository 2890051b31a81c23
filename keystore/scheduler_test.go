package keystore_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/storage"
)

func TestKeysRotateWhenTheirRotationPeriodComesRound(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt, RotationPeriod: 24 * time.Hour})
	manual := f.newKey("acme", "manual", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	ct := f.encrypt(f.ks, ref, "alice", 1)

	f.clock.Advance(23 * time.Hour)
	if err := f.ks.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if k := f.getKey(ref); k.PrimaryVersion != 1 {
		t.Fatalf("rotated early: primary %d", k.PrimaryVersion)
	}
	f.clock.Advance(time.Hour)
	if err := f.ks.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	k := f.getKey(ref)
	if k.PrimaryVersion != 2 || !k.NextRotationTime.Equal(f.clock.Now().Add(24*time.Hour)) {
		t.Fatalf("after the period: primary %d, next rotation %v", k.PrimaryVersion, k.NextRotationTime)
	}
	if err := f.ks.RunOnce(ctx); err != nil { // not due again
		t.Fatal(err)
	}
	if k := f.getKey(ref); k.PrimaryVersion != 2 {
		t.Fatalf("rotated twice in one period: primary %d", k.PrimaryVersion)
	}
	if k := f.getKey(manual); k.PrimaryVersion != 1 {
		t.Fatalf("a key without a rotation period rotated: primary %d", k.PrimaryVersion)
	}
	// The warm replica encrypts with the new primary and still decrypts the old.
	f.encrypt(f.ks, ref, "bob", 2)
	f.mustDecrypt(f.ks, ref, ct, "alice")
}

func TestKeysRotateWhenTheirPrimaryReachesTheUsageThreshold(t *testing.T) {
	f := newLCFixture(t, func(c *keystore.Config) { c.UsageRotateThreshold = 5 })
	ctx := context.Background()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	det := f.newKey("acme", "email-idx", keystore.KeySpec{Purpose: keystore.PurposeEncryptDeterministic})
	for range 3 {
		f.encrypt(f.ks, ref, "x", 1)
	}
	if _, _, _, err := f.ks.GenerateDataKey(ctx, ref, nil, true); err != nil { // counts too
		t.Fatal(err)
	}
	for range 10 {
		f.encrypt(f.ks, det, "x", 1)
	}
	if err := f.ks.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if k := f.getKey(ref); k.PrimaryVersion != 1 || k.Versions[0].EncryptCount != 4 {
		t.Fatalf("after 4 encryptions: primary %d, count %d", k.PrimaryVersion, k.Versions[0].EncryptCount)
	}
	f.encrypt(f.ks, ref, "x", 1)
	if err := f.ks.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	k := f.getKey(ref)
	if k.PrimaryVersion != 2 || k.Versions[0].EncryptCount != 5 || k.Versions[1].EncryptCount != 0 {
		t.Fatalf("after 5 encryptions: %+v", k)
	}
	f.encrypt(f.ks, ref, "x", 2)
	// Deterministic keys count but do not rotate by usage (see rotationDue).
	if k := f.getKey(det); k.PrimaryVersion != 1 || k.Versions[0].EncryptCount != 10 {
		t.Fatalf("deterministic key: %+v", k)
	}
}

func TestRewrapCountsOnlyWhenItEncrypts(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	ct := f.encrypt(f.ks, ref, "alice", 1)
	if _, _, err := f.ks.Rewrap(ctx, ref, ct, []byte("aad")); err != nil { // already current: unchanged
		t.Fatal(err)
	}
	if _, err := f.ks.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.ks.Rewrap(ctx, ref, ct, []byte("aad")); err != nil {
		t.Fatal(err)
	}
	if err := f.ks.FlushUsage(ctx); err != nil {
		t.Fatal(err)
	}
	if k := f.getKey(ref); k.Versions[0].EncryptCount != 1 || k.Versions[1].EncryptCount != 1 {
		t.Fatalf("counts %+v; want 1 and 1", k.Versions)
	}
}

func TestCountsFromReplicasAddUp(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	replicas := []*keystore.Service{f.ks, f.replica(), f.replica()}
	const perWorker = 200
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var flushers sync.WaitGroup
	for _, ks := range replicas {
		for range 2 {
			wg.Go(func() {
				for range perWorker {
					if _, _, err := ks.Encrypt(ctx, ref, []byte("x"), nil); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		flushers.Go(func() { // flushes race with the encryptions
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := ks.FlushUsage(ctx); err != nil {
					t.Error(err)
					return
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	wg.Wait()
	close(stop)
	flushers.Wait()
	for _, ks := range replicas {
		if err := ks.FlushUsage(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := f.getKey(ref).Versions[0].EncryptCount, uint64(len(replicas)*2*perWorker); got != want {
		t.Fatalf("encrypt_count %d, want %d", got, want)
	}
}

// failingPuts fails writes of key records while down is set.
type failingPuts struct {
	storage.Store
	mu   sync.Mutex
	down bool
}

func (s *failingPuts) Put(ctx context.Context, key string, v []byte, expect uint64) (uint64, error) {
	s.mu.Lock()
	down := s.down
	s.mu.Unlock()
	if down {
		return 0, storage.ErrUnavailable
	}
	return s.Store.Put(ctx, key, v, expect)
}

func TestCountsSurviveAFailedFlush(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt})
	flaky := &failingPuts{Store: f.store}
	f.store = flaky
	ks := f.replica()
	for range 3 {
		f.encrypt(ks, ref, "x", 1)
	}
	flaky.mu.Lock()
	flaky.down = true
	flaky.mu.Unlock()
	if err := ks.FlushUsage(ctx); !errors.Is(err, keystore.ErrUnavailable) {
		t.Fatalf("flush while storage is down: %v", err)
	}
	f.encrypt(ks, ref, "x", 1)
	flaky.mu.Lock()
	flaky.down = false
	flaky.mu.Unlock()
	if err := ks.FlushUsage(ctx); err != nil {
		t.Fatal(err)
	}
	if got := f.getKey(ref).Versions[0].EncryptCount; got != 4 {
		t.Fatalf("encrypt_count %d, want 4", got)
	}
}

func TestSchedulerLeaseHasOneHolderUntilItExpires(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	a, b := f.replica(), f.replica()
	take := func(ks *keystore.Service, holder string) bool {
		t.Helper()
		ok, err := keystore.AcquireLease(ctx, ks, holder, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !take(a, "a") || take(b, "b") || !take(a, "a") {
		t.Fatal("a should take and renew the lease while b is refused")
	}
	f.clock.Advance(59 * time.Second)
	if take(b, "b") {
		t.Fatal("b took a lease that had not expired")
	}
	f.clock.Advance(2 * time.Second)
	if !take(b, "b") || take(a, "a") {
		t.Fatal("b should take the expired lease, then a be refused")
	}
}

func TestOneSchedulerRotatesOnceForManyReplicas(t *testing.T) {
	f := newLCFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt, RotationPeriod: time.Hour})
	f.clock.Advance(2 * time.Hour)

	replicas := []*keystore.Service{f.replica(), f.replica(), f.replica()}
	var wg sync.WaitGroup
	for i, ks := range replicas {
		cfg := keystore.SchedulerConfig{Interval: 2 * time.Millisecond, LeaseTTL: time.Hour, HolderID: string(rune('a' + i))}
		wg.Go(func() {
			if err := ks.RunScheduler(ctx, cfg); err != nil {
				t.Error(err)
			}
		})
	}
	waitFor(t, "the rotation", func() bool { return f.getKey(ref).PrimaryVersion == 2 })
	leader := -1
	waitFor(t, "several passes", func() bool {
		for i, ks := range replicas {
			if keystore.LeaderPasses(ks) >= 5 {
				leader = i
				return true
			}
		}
		return false
	})
	cancel()
	wg.Wait()

	if k := f.getKey(ref); len(k.Versions) != 2 {
		t.Fatalf("%d versions after the schedulers ran; want 2 (one rotation)", len(k.Versions))
	}
	for i, ks := range replicas {
		if n := keystore.LeaderPasses(ks); i != leader && n != 0 {
			t.Fatalf("replica %d ran %d passes beside leader %d", i, n, leader)
		}
	}
	// The stopping leader released the lease, so another replica takes over at once.
	if _, err := f.store.Get(context.Background(), keystore.LeaseStorageKey); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("lease after the schedulers stopped: %v", err)
	}
}

func TestRunSchedulerRefusesALeaseShorterThanItsInterval(t *testing.T) {
	f := newLCFixture(t)
	err := f.ks.RunScheduler(context.Background(), keystore.SchedulerConfig{Interval: time.Minute, LeaseTTL: time.Minute})
	if !errors.Is(err, keystore.ErrInvalidArgument) {
		t.Fatalf("got %v, want ErrInvalidArgument", err)
	}
}

func TestConcurrentPassesRotateAndDestroyOnce(t *testing.T) {
	f := newLCFixture(t)
	ctx := context.Background()
	ref := f.newKey("acme", "pii", keystore.KeySpec{Purpose: keystore.PurposeEncrypt, RotationPeriod: time.Hour})
	f.rotate(ref)
	if _, err := f.ks.DestroyKeyVersion(ctx, ref, 1, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(25 * time.Hour)
	var wg sync.WaitGroup
	var replicas []*keystore.Service
	for range 4 {
		ks := f.replica()
		replicas = append(replicas, ks)
		wg.Go(func() {
			for range 3 {
				if err := ks.RunOnce(ctx); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	k := f.getKey(ref)
	if len(k.Versions) != 3 || k.PrimaryVersion != 3 || versionState(k, 1) != keystore.VersionDestroyed {
		t.Fatalf("after concurrent passes: %+v; want one rotation (3 versions) and version 1 destroyed", k)
	}
	// The metrics' counts add up to what happened, once.
	var rotations, destructions, shreds uint64
	for _, ks := range replicas {
		r, d, s := ks.SchedulerStats()
		rotations, destructions, shreds = rotations+r, destructions+d, shreds+s
	}
	if rotations != 1 || destructions != 1 || shreds != 0 {
		t.Fatalf("scheduler stats over the replicas: %d rotations, %d destructions, %d shreds; want 1, 1, 0", rotations, destructions, shreds)
	}
}
