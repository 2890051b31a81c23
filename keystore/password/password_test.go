package password_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-kms/custos/internal/workpool"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/passhash"
	"github.com/custos-kms/custos/keystore/password"
)

// Cheapest policies the bounds allow, to keep tests fast (bcrypt cost 10 is
// still ~0.7 s under -race, so bcrypt tests hash as little as they can).
var (
	fastBcrypt   = keystore.PasswordPolicy{Algorithm: keystore.PasswordBcrypt, BcryptCost: keystore.MinBcryptCost}
	fastArgon2id = keystore.PasswordPolicy{Algorithm: keystore.PasswordArgon2id,
		Argon2MemoryKiB: keystore.MinArgon2MemoryKiB, Argon2Iterations: 1, Argon2Parallelism: 1}
)

// passwordKey creates a PASSWORD key with policy p (and its tenant if needed).
func (f *fixture) passwordKey(t *testing.T, tenant, key string, p keystore.PasswordPolicy) keystore.KeyRef {
	t.Helper()
	ctx := context.Background()
	if _, err := f.ks.CreateTenant(ctx, tenant); err != nil && !errors.Is(err, keystore.ErrAlreadyExists) {
		t.Fatal(err)
	}
	ref := keystore.KeyRef{Tenant: tenant, Key: key}
	if _, err := f.ks.CreateKey(ctx, ref, keystore.KeySpec{Purpose: keystore.PurposePassword, PasswordPolicy: &p}); err != nil {
		t.Fatal(err)
	}
	return ref
}

func pwHash(t *testing.T, ks *password.Service, ref keystore.KeyRef, pw []byte) string {
	t.Helper()
	h, err := ks.Hash(context.Background(), ref, pw)
	if err != nil {
		t.Fatalf("HashPassword: %v", err)
	}
	return h
}

func pwVerify(t *testing.T, ks *password.Service, ref keystore.KeyRef, pw []byte, hash string) (match, rehash bool) {
	t.Helper()
	match, rehash, err := ks.Verify(context.Background(), ref, pw, hash, "")
	if err != nil {
		t.Fatalf("VerifyPassword: %v", err)
	}
	return match, rehash
}

func TestBcryptHashesLongPasswordsWithoutTruncating(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ref := f.passwordKey(t, "acme", "pw", fastBcrypt)
	pw := bytes.Repeat([]byte("p"), 100)
	other := bytes.Clone(pw)
	other[80] = 'q' // differs only after bcrypt's 72-byte limit
	h := pwHash(t, f.pw, ref, pw)
	if !strings.HasPrefix(h, "$custos-bcrypt$v=1$$2a$10$") {
		t.Fatalf("hash %q is not $custos-bcrypt$v=1$$2a$10$…", h)
	}
	if m, r := pwVerify(t, f.pw, ref, pw, h); !m || r {
		t.Fatalf("right password: match=%v needs_rehash=%v", m, r)
	}
	if m, r := pwVerify(t, f.pw, ref, other, h); m || r {
		t.Fatalf("100-byte password differing after byte 72 matched (needs_rehash=%v)", r)
	}
}

func TestArgon2idRoundTripAndFreshSalts(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ref := f.passwordKey(t, "acme", "pw", fastArgon2id)
	pw := []byte("correct horse battery staple")
	h1, h2 := pwHash(t, f.pw, ref, pw), pwHash(t, f.pw, ref, pw)
	if h1 == h2 {
		t.Fatal("two hashes of one password are equal")
	}
	if !strings.HasPrefix(h1, "$custos-argon2id$v=1$m=8192,t=1,p=1$") {
		t.Fatalf("hash %q does not name its algorithm, pepper and parameters", h1)
	}
	// A cold Service (another replica) verifies it too.
	for _, ks := range []*password.Service{f.pw, f.open(t)} {
		if m, r := pwVerify(t, ks, ref, pw, h1); !m || r {
			t.Fatalf("right password: match=%v needs_rehash=%v", m, r)
		}
		if m, _ := pwVerify(t, ks, ref, []byte("correct horse battery stapler"), h1); m {
			t.Fatal("wrong password matched")
		}
	}
	long := bytes.Repeat([]byte("x"), 100)
	other := bytes.Clone(long)
	other[99] = 'y'
	if m, _ := pwVerify(t, f.pw, ref, other, pwHash(t, f.pw, ref, long)); m {
		t.Fatal("100-byte passwords differing in the last byte matched")
	}
}

func TestAnotherTenantsPepperDoesNotMatch(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a := f.passwordKey(t, "tenant-a", "pw", fastArgon2id)
	b := f.passwordKey(t, "tenant-b", "pw", fastArgon2id)
	aOther := f.passwordKey(t, "tenant-a", "other", fastArgon2id)
	pw := []byte("hunter2")
	h := pwHash(t, f.pw, a, pw)
	for name, ref := range map[string]keystore.KeyRef{"tenant B's key": b, "tenant A's other key": aOther} {
		m, r, err := f.pw.Verify(context.Background(), ref, pw, h, "")
		if m || r || err != nil {
			t.Fatalf("%s: match=%v needs_rehash=%v err=%v; want no match and no error", name, m, r, err)
		}
	}
}

func TestNeedsRehashAfterRotationAndAfterRaisingThePolicy(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	ref := f.passwordKey(t, "acme", "pw", fastArgon2id)
	pw := []byte("s3cret")
	old := pwHash(t, f.pw, ref, pw)
	if _, err := f.ks.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if m, r := pwVerify(t, f.pw, ref, pw, old); !m || !r {
		t.Fatalf("hash of pepper v1 after rotation: match=%v needs_rehash=%v; want both", m, r)
	}
	fresh := pwHash(t, f.pw, ref, pw)
	if !strings.HasPrefix(fresh, "$custos-argon2id$v=2$") {
		t.Fatalf("new hash %q does not use pepper v2", fresh)
	}
	if m, r := pwVerify(t, f.pw, ref, pw, fresh); !m || r {
		t.Fatalf("current hash: match=%v needs_rehash=%v", m, r)
	}
	if m, r := pwVerify(t, f.pw, ref, []byte("nope"), old); m || r {
		t.Fatalf("wrong password: match=%v needs_rehash=%v; needs_rehash only on a match", m, r)
	}

	raised := fastArgon2id
	raised.Argon2Iterations = 2
	if _, err := f.ks.UpdateKey(ctx, ref, keystore.KeyUpdate{PasswordPolicy: &raised}); err != nil {
		t.Fatal(err)
	}
	if m, r := pwVerify(t, f.pw, ref, pw, fresh); !m || !r {
		t.Fatalf("t=1 hash under a t=2 policy: match=%v needs_rehash=%v", m, r)
	}
	if h := pwHash(t, f.pw, ref, pw); !strings.Contains(h, "m=8192,t=2,p=1") {
		t.Fatalf("hash %q does not follow the raised policy", h)
	}
	// Switching the algorithm asks for a rehash too.
	if _, err := f.ks.UpdateKey(ctx, ref, keystore.KeyUpdate{PasswordPolicy: &fastBcrypt}); err != nil {
		t.Fatal(err)
	}
	if m, r := pwVerify(t, f.pw, ref, pw, fresh); !m || !r {
		t.Fatalf("argon2id hash under a bcrypt policy: match=%v needs_rehash=%v", m, r)
	}
}

func TestNeedsRehashAfterRaisingTheBcryptCost(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ref := f.passwordKey(t, "acme", "pw", fastBcrypt)
	pw := []byte("s3cret")
	h := pwHash(t, f.pw, ref, pw)
	raised := fastBcrypt
	raised.BcryptCost = keystore.MinBcryptCost + 1
	if _, err := f.ks.UpdateKey(context.Background(), ref, keystore.KeyUpdate{PasswordPolicy: &raised}); err != nil {
		t.Fatal(err)
	}
	if m, r := pwVerify(t, f.pw, ref, pw, h); !m || !r {
		t.Fatalf("cost-10 hash under a cost-11 policy: match=%v needs_rehash=%v", m, r)
	}
}

func TestVerifyRefusesMalformedHostileAndUnusableHashes(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	ref := f.passwordKey(t, "acme", "pw", fastArgon2id)
	pw := []byte("correct horse")
	h1 := pwHash(t, f.pw, ref, pw)
	if _, err := f.ks.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	h2 := pwHash(t, f.pw, ref, pw)
	if _, err := f.ks.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	digest := h1[strings.LastIndexByte(h1, '$')+1:]
	salt := "AAAAAAAAAAAAAAAAAAAAAA$" + strings.Repeat("A", 43)
	invalid := map[string]string{
		"empty":                         "",
		"truncated":                     h1[:len(h1)-1],
		"trailing garbage":              h1 + "A",
		"another scheme":                "$2a$10$" + strings.Repeat("a", 53),
		"pepper version unknown":        strings.Replace(h1, "$v=1$", "$v=9$", 1),
		"oversized":                     h1 + strings.Repeat("A", passhash.MaxLen),
		"argon2id with 4 GiB of memory": "$custos-argon2id$v=1$m=4194304,t=1,p=1$" + salt,
		"argon2id with 64 iterations":   "$custos-argon2id$v=1$m=8192,t=64,p=1$" + salt,
		"argon2id with 64 lanes":        "$custos-argon2id$v=1$m=8192,t=1,p=64$" + salt,
		"bcrypt at cost 31":             "$custos-bcrypt$v=1$$2a$31$" + strings.Repeat("a", 53),
	}
	for name, h := range invalid {
		t.Run(name, func(t *testing.T) {
			_, _, err := f.pw.Verify(ctx, ref, pw, h, "")
			if !errors.Is(err, keystore.ErrInvalidArgument) || !strings.Contains(err.Error(), "hash") {
				t.Fatalf("got %v, want ErrInvalidArgument naming hash", err)
			}
			if strings.Contains(err.Error(), digest) || strings.Contains(err.Error(), string(pw)) {
				t.Fatalf("error leaks the hash or the password: %v", err)
			}
		})
	}

	// Version states refuse like Decrypt does.
	if _, err := f.ks.DisableKeyVersion(ctx, ref, 2); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.pw.Verify(ctx, ref, pw, h2, ""); !errors.Is(err, keystore.ErrKeyVersionDisabled) {
		t.Fatalf("hash of a disabled pepper version: %v", err)
	}
	if _, err := f.ks.DestroyKeyVersion(ctx, ref, 2, 0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.pw.Verify(ctx, ref, pw, h2, ""); !errors.Is(err, keystore.ErrKeyVersionDestroyed) {
		t.Fatalf("hash of a pepper version scheduled for destruction: %v", err)
	}
	min := uint32(3)
	if _, err := f.ks.UpdateKey(ctx, ref, keystore.KeyUpdate{MinDecryptionVersion: &min}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.pw.Verify(ctx, ref, pw, h1, ""); !errors.Is(err, keystore.ErrKeyVersionTooOld) {
		t.Fatalf("hash of a pepper version below the minimum: %v", err)
	}

	for name, p := range map[string][]byte{"empty": nil, "oversized": make([]byte, password.MaxPasswordSize+1)} {
		if _, err := f.pw.Hash(ctx, ref, p); !errors.Is(err, keystore.ErrInvalidArgument) {
			t.Fatalf("HashPassword(%s password): %v", name, err)
		}
		if _, _, err := f.pw.Verify(ctx, ref, p, h1, ""); !errors.Is(err, keystore.ErrInvalidArgument) {
			t.Fatalf("VerifyPassword(%s password): %v", name, err)
		}
	}
	if _, _, err := f.pw.Verify(ctx, ref, pw, h1, strings.Repeat("s", password.MaxSubjectSize+1)); !errors.Is(err, keystore.ErrInvalidArgument) {
		t.Fatalf("oversized subject: %v", err)
	}
}

func TestPasswordCallsNeedAPasswordKey(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	pwKey := f.passwordKey(t, "acme", "pw", fastArgon2id)
	h := pwHash(t, f.pw, pwKey, []byte("x"))
	for _, p := range []keystore.Purpose{keystore.PurposeEncrypt, keystore.PurposeMAC} {
		ref := f.key(t, "acme", strings.ToLower(p.String()), p)
		if _, err := f.pw.Hash(ctx, ref, []byte("x")); !errors.Is(err, keystore.ErrWrongPurpose) || !strings.Contains(err.Error(), "PASSWORD") {
			t.Fatalf("HashPassword with a %v key: %v", p, err)
		}
		if _, _, err := f.pw.Verify(ctx, ref, []byte("x"), h, ""); !errors.Is(err, keystore.ErrWrongPurpose) {
			t.Fatalf("VerifyPassword with a %v key: %v", p, err)
		}
	}
	// And a PASSWORD key does nothing else: its pepper is not a MAC oracle.
	if _, _, err := f.ks.ComputeMAC(ctx, pwKey, []byte("x")); !errors.Is(err, keystore.ErrWrongPurpose) {
		t.Fatalf("ComputeMAC with a PASSWORD key: %v", err)
	}
}

func TestFullHashingQueueIsResourceExhaustedWhileEncryptAnswers(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	pool := workpool.New(1, 1)
	t.Cleanup(pool.Close)
	ks := f.openPasswordService(t, password.Config{Pool: pool})
	pwKey := f.passwordKey(t, "acme", "pw", fastArgon2id)
	encKey := f.key(t, "acme", "pii", keystore.PurposeEncrypt)
	h := pwHash(t, ks, pwKey, []byte("pw"))

	// Occupy the only worker and the only queue slot.
	release := make(chan struct{})
	running := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { _ = pool.Do(ctx, func() { close(running); <-release }) })
	select {
	case <-running:
	case <-time.After(10 * time.Second):
		t.Fatal("the pool's worker did not start within 10s")
	}
	// A caller whose deadline passes while queued gets the context's error.
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := ks.Hash(short, pwKey, []byte("pw")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("HashPassword queued past its deadline: %v", err)
	}
	wg.Go(func() { _ = pool.Do(ctx, func() {}) })
	for pool.Waiting() != 1 {
		time.Sleep(time.Millisecond)
	}

	if _, err := ks.Hash(ctx, pwKey, []byte("pw")); !errors.Is(err, keystore.ErrResourceExhausted) {
		t.Fatalf("HashPassword with a full queue: %v", err)
	}
	if _, _, err := ks.Verify(ctx, pwKey, []byte("pw"), h, ""); !errors.Is(err, keystore.ErrResourceExhausted) {
		t.Fatalf("VerifyPassword with a full queue: %v", err)
	}
	ct, _, err := f.ks.Encrypt(ctx, encKey, []byte("still here"), nil)
	if err != nil {
		t.Fatalf("Encrypt while hashing is saturated: %v", err)
	}
	if pt, _, err := f.ks.Decrypt(ctx, encKey, ct, nil); err != nil || string(pt) != "still here" {
		t.Fatalf("Decrypt while hashing is saturated: %q %v", pt, err)
	}
	close(release)
	wg.Wait()
	if m, _ := pwVerify(t, ks, pwKey, []byte("pw"), h); !m {
		t.Fatal("no match once the pool drained")
	}
}

func TestDefaultHashingPoolQueuesAndRefuses(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	ks := f.openPasswordService(t, password.Config{Workers: 1, Queue: -1})
	ref := f.passwordKey(t, "acme", "pw", fastArgon2id)
	// With one worker and no queue, parallel callers either hash or are
	// refused at once; none waits, and at least one succeeds.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ok, refused int
	for range 8 {
		wg.Go(func() {
			_, err := ks.Hash(ctx, ref, []byte("pw"))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, keystore.ErrResourceExhausted):
				refused++
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if ok == 0 || ok+refused != 8 {
		t.Fatalf("ok=%d refused=%d", ok, refused)
	}
}

func TestHashParserBoundsMatchThePolicyBounds(t *testing.T) {
	if passhash.MaxBcryptCost != keystore.MaxBcryptCost ||
		passhash.MaxArgon2MemoryKiB != keystore.MaxArgon2MemoryKiB ||
		passhash.MaxArgon2Iterations != keystore.MaxArgon2Iterations ||
		passhash.MaxArgon2Parallelism != keystore.MaxArgon2Parallelism ||
		passhash.MinBcryptCost > keystore.MinBcryptCost {
		t.Fatal("keystore/passhash bounds differ from the password policy's")
	}
}

// A key whose policy is above the deployment's limits (set before they were
// lowered) keeps verifying its users' hashes, hashes new passwords at the
// limits, and asks for a rehash of the hashes above them; no hash with
// more argon2id memory or lanes than the limits is taken beyond what the
// key's own policy allows.
func TestAKeyAboveTheLimitsVerifiesAndMovesItsHashesDownToThem(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	high, err := keystore.New(keystore.Config{Storage: f.store, Root: f.root, PasswordLimits: keystore.PasswordLimits{Argon2Iterations: 32}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := high.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	ref := keystore.KeyRef{Tenant: "acme", Key: "pw"}
	pol := fastArgon2id
	pol.Argon2Iterations = 20 // above the default limit of 16
	if _, err := high.CreateKey(ctx, ref, keystore.KeySpec{Purpose: keystore.PurposePassword, PasswordPolicy: &pol}); err != nil {
		t.Fatal(err)
	}
	before, err := password.New(password.Config{Peppers: high, Store: f.store})
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	pw := []byte("s3cret")
	old := pwHash(t, before, ref, pw)
	if !strings.Contains(old, "t=20") {
		t.Fatalf("the hash under the higher limit: %q", old)
	}
	// f.pw runs under the default limits.
	if m, r := pwVerify(t, f.pw, ref, pw, old); !m || !r {
		t.Fatalf("a t=20 hash of a t=20 key under a limit of 16: match=%v needs_rehash=%v; want both", m, r)
	}
	fresh := pwHash(t, f.pw, ref, pw)
	if !strings.Contains(fresh, "t=16") {
		t.Fatalf("a new hash of a t=20 key under a limit of 16: %q, want t=16", fresh)
	}
	if m, r := pwVerify(t, f.pw, ref, pw, fresh); !m || r {
		t.Fatalf("the capped hash: match=%v needs_rehash=%v; want a match and no rehash", m, r)
	}
	// Lowered by its tenant to the limit, the key still verifies the
	// hashes within its headroom (t=20 under t=16 × 4).
	lowered := fastArgon2id
	lowered.Argon2Iterations = 16
	if _, err := f.ks.UpdateKey(ctx, ref, keystore.KeyUpdate{PasswordPolicy: &lowered}); err != nil {
		t.Fatal(err)
	}
	if m, r := pwVerify(t, f.pw, ref, pw, old); !m || !r {
		t.Fatalf("a t=20 hash after the policy was lowered to t=16: match=%v needs_rehash=%v; want both", m, r)
	}
	// A key at the memory limit takes no hash with more memory, whatever
	// its headroom: what each worker holds is capped.
	atMem := fastArgon2id
	atMem.Argon2MemoryKiB = keystore.DefaultPasswordLimits.Argon2MemoryKiB
	atRef := f.passwordKey(t, "acme", "at-limit", atMem)
	cheap := pwHash(t, f.pw, f.passwordKey(t, "acme", "cheap", fastArgon2id), pw)
	above := strings.Replace(cheap, "m=8192,", fmt.Sprintf("m=%d,", 2*keystore.DefaultPasswordLimits.Argon2MemoryKiB), 1)
	if _, _, err := f.pw.Verify(ctx, atRef, pw, above, ""); !errors.Is(err, keystore.ErrInvalidArgument) {
		t.Fatalf("a hash with twice the memory limit for a key at it: %v, want ErrInvalidArgument", err)
	}
	atLanes := fastArgon2id
	atLanes.Argon2Parallelism = keystore.DefaultPasswordLimits.Argon2Parallelism
	lanesRef := f.passwordKey(t, "acme", "lanes-at-limit", atLanes)
	wide := strings.Replace(cheap, ",p=1$", fmt.Sprintf(",p=%d$", 4*keystore.DefaultPasswordLimits.Argon2Parallelism), 1)
	if _, _, err := f.pw.Verify(ctx, lanesRef, pw, wide, ""); !errors.Is(err, keystore.ErrInvalidArgument) {
		t.Fatalf("a hash with four times the lane limit for a key at it: %v, want ErrInvalidArgument", err)
	}
}

// A key that switches algorithm keeps verifying the hashes made before, up
// to what the deployment lets any policy reach: a bcrypt key at cost 16
// (the default limit) that turns to argon2id, or an argon2id key at the
// memory limit that turns to bcrypt, does not strand its users.
func TestSwitchingAlgorithmKeepsVerifyingTheHashesMadeBefore(t *testing.T) {
	l := keystore.DefaultPasswordLimits
	bcrypt16 := passhash.Hash{Algorithm: passhash.Bcrypt, BcryptCost: l.BcryptCost}
	argonMax := passhash.Hash{Algorithm: passhash.Argon2id, Argon2: passhash.Argon2Params{MemoryKiB: l.Argon2MemoryKiB, Iterations: l.Argon2Iterations, Parallelism: uint8(l.Argon2Parallelism)}}
	toArgon := keystore.PasswordPolicy{Algorithm: keystore.PasswordArgon2id}
	toBcrypt := keystore.PasswordPolicy{Algorithm: keystore.PasswordBcrypt, BcryptCost: keystore.DefaultBcryptCost}
	if err := password.CheckVerifyCost(bcrypt16, toArgon, l); err != nil {
		t.Errorf("a bcrypt hash at the limit on a key now argon2id: %v", err)
	}
	if err := password.CheckVerifyCost(argonMax, toBcrypt, l); err != nil {
		t.Errorf("an argon2id hash at the limits on a key now bcrypt: %v", err)
	}
	// Beyond the limits stays refused, whatever the key's algorithm.
	over := bcrypt16
	over.BcryptCost++
	if err := password.CheckVerifyCost(over, toArgon, l); !errors.Is(err, keystore.ErrInvalidArgument) {
		t.Errorf("a bcrypt hash above the limit: %v, want ErrInvalidArgument", err)
	}
	overM := argonMax
	overM.Argon2.MemoryKiB++
	if err := password.CheckVerifyCost(overM, toBcrypt, l); !errors.Is(err, keystore.ErrInvalidArgument) {
		t.Errorf("an argon2id hash above the memory limit: %v, want ErrInvalidArgument", err)
	}
}

// A large argon2id hash's memory goes back to the heap when the hash ends:
// with the server's GC target (400) it piled up to several hashes' worth
// per worker before the collector ran. Not parallel: it reads the heap.
func TestLargeArgon2idHashesDoNotPileUp(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	f := newFixture(t)
	const memKiB = 96 << 10
	ref := f.passwordKey(t, "acme", "big", keystore.PasswordPolicy{Algorithm: keystore.PasswordArgon2id,
		Argon2MemoryKiB: memKiB, Argon2Iterations: 1, Argon2Parallelism: 1})
	pw := []byte("correct horse battery staple")
	h := pwHash(t, f.pw, ref, pw)
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak uint64
	for range 3 {
		if m, _ := pwVerify(t, f.pw, ref, pw, h); !m {
			t.Fatal("the right password did not match")
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapAlloc)
	}
	if limit := base.HeapAlloc + memKiB<<10; peak > limit {
		t.Fatalf("heap at %d MiB after hashes of %d MiB each (%d MiB before them): their memory piles up", peak>>20, memKiB>>10, base.HeapAlloc>>20)
	}
}
