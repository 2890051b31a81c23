package password_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custos-kms/custos/internal/workpool"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/password"
	"github.com/custos-kms/custos/keystore/storage"
)

// lockoutPolicy locks a subject after 3 failures within a minute, for 5 minutes.
var lockoutPolicy = func() keystore.PasswordPolicy {
	p := fastArgon2id
	p.LockoutMaxFailures = 3
	p.LockoutWindow = time.Minute
	p.LockoutDuration = 5 * time.Minute
	return p
}()

type lockoutFixture struct {
	*fixture
	clock *testClock
	ks    *password.Service
	ref   keystore.KeyRef
	hash  map[string]string // subject → hash of its password
}

var lockoutPasswords = map[string]string{"alice@example.com": "alice-pw", "bob@example.com": "bob-pw"}

func newLockoutFixture(t *testing.T) *lockoutFixture {
	t.Helper()
	f := newFixture(t)
	lf := &lockoutFixture{fixture: f, clock: &testClock{now: time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)}, hash: map[string]string{}}
	lf.ks = lf.open(t)
	lf.ref = f.passwordKey(t, "acme", "logins", lockoutPolicy)
	for subject, pw := range lockoutPasswords {
		lf.hash[subject] = pwHash(t, lf.ks, lf.ref, []byte(pw))
	}
	return lf
}

// open returns another replica with the fixture's clock.
func (lf *lockoutFixture) open(t *testing.T) *password.Service {
	return lf.openPasswordService(t, password.Config{Now: lf.clock.Now})
}

func (lf *lockoutFixture) try(ks *password.Service, subject, pw string) (bool, error) {
	return lf.try2(context.Background(), ks, subject, pw)
}

func (lf *lockoutFixture) try2(ctx context.Context, ks *password.Service, subject, pw string) (bool, error) {
	m, _, err := ks.Verify(ctx, lf.ref, []byte(pw), lf.hash[subject], subject)
	return m, err
}

func (lf *lockoutFixture) mustFail(t *testing.T, subject string) {
	t.Helper()
	if m, err := lf.try(lf.ks, subject, "wrong"); m || err != nil {
		t.Fatalf("wrong password for %s: match=%v err=%v; want a plain failure", subject, m, err)
	}
}

func (lf *lockoutFixture) mustMatch(t *testing.T, ks *password.Service, subject string) {
	t.Helper()
	if m, err := lf.try(ks, subject, lockoutPasswords[subject]); !m || err != nil {
		t.Fatalf("right password for %s: match=%v err=%v", subject, m, err)
	}
}

func (lf *lockoutFixture) mustBeLocked(t *testing.T, ks *password.Service, subject string) {
	t.Helper()
	if m, err := lf.try(ks, subject, lockoutPasswords[subject]); m || !errors.Is(err, keystore.ErrSubjectLocked) {
		t.Fatalf("%s: match=%v err=%v; want ErrSubjectLocked", subject, m, err)
	}
}

const subjectAlice, subjectBob = "alice@example.com", "bob@example.com"

func TestLockoutLocksAfterNFailuresUntilItExpires(t *testing.T) {
	t.Parallel()
	lf := newLockoutFixture(t)
	for range 3 {
		lf.mustFail(t, subjectAlice)
	}
	lf.mustBeLocked(t, lf.ks, subjectAlice)      // even the right password
	lf.mustBeLocked(t, lf.open(t), subjectAlice) // on another replica too
	lf.mustMatch(t, lf.ks, subjectBob)           // other subjects are independent
	if m, _, err := lf.pw.Verify(context.Background(), lf.ref, []byte("alice-pw"), lf.hash[subjectAlice], ""); !m || err != nil {
		t.Fatalf("without a subject there is no lockout: %v %v", m, err)
	}
	lf.clock.Advance(5*time.Minute - time.Second)
	lf.mustBeLocked(t, lf.ks, subjectAlice)
	lf.clock.Advance(time.Second)
	lf.mustMatch(t, lf.ks, subjectAlice)
	// After the lock the count starts again from zero.
	lf.mustFail(t, subjectAlice)
	lf.mustFail(t, subjectAlice)
	lf.mustMatch(t, lf.ks, subjectAlice)
}

func TestLockoutMatchBeforeNResetsTheCount(t *testing.T) {
	t.Parallel()
	lf := newLockoutFixture(t)
	lf.mustFail(t, subjectAlice)
	lf.mustFail(t, subjectAlice)
	lf.mustMatch(t, lf.ks, subjectAlice)
	lf.mustFail(t, subjectAlice)
	lf.mustFail(t, subjectAlice)
	lf.mustMatch(t, lf.ks, subjectAlice) // 4 failures in all, never 3 in a row
	// A match deletes the state: storage keeps nothing for subjectAlice.
	recs, err := lf.store.List(context.Background(), "lockout/", "", 10)
	if err != nil || len(recs) != 0 {
		t.Fatalf("lockout records after a match: %d %v", len(recs), err)
	}
}

func TestLockoutWindowExpires(t *testing.T) {
	t.Parallel()
	lf := newLockoutFixture(t)
	lf.mustFail(t, subjectAlice)
	lf.mustFail(t, subjectAlice)
	lf.clock.Advance(time.Minute)
	lf.mustFail(t, subjectAlice) // a new window: 1 failure
	lf.mustFail(t, subjectAlice)
	lf.mustMatch(t, lf.ks, subjectAlice)
}

func TestLockoutStateHidesSubjectsAndSurvivesRestarts(t *testing.T) {
	t.Parallel()
	lf := newLockoutFixture(t)
	lf.mustFail(t, subjectAlice)
	lf.mustFail(t, subjectAlice)
	recs, err := lf.store.List(context.Background(), "lockout/", "", 10)
	if err != nil || len(recs) != 1 {
		t.Fatalf("lockout records: %d %v", len(recs), err)
	}
	if k := recs[0].Key; !strings.HasPrefix(k, "lockout/acme/logins/") || strings.Contains(k, "alice") || len(k) != len("lockout/acme/logins/")+64 {
		t.Fatalf("lockout record key %q is not lockout/{tenant}/{key}/{64 hex}", k)
	}
	if strings.Contains(string(recs[0].Value), "alice") {
		t.Fatalf("lockout record holds the subject: %s", recs[0].Value)
	}
	// A restarted replica continues the count: one more failure locks.
	restarted := lf.open(t)
	if m, err := lf.try(restarted, subjectAlice, "wrong"); m || err != nil {
		t.Fatalf("third failure: %v %v", m, err)
	}
	lf.mustBeLocked(t, lf.ks, subjectAlice)
}

func TestLockoutCannotBeOutrunByParallelGuesses(t *testing.T) {
	t.Parallel()
	lf := newLockoutFixture(t)
	var failures, locked atomic.Int64
	var wg sync.WaitGroup
	for range 12 {
		wg.Go(func() {
			m, err := lf.try(lf.ks, subjectAlice, "guess")
			switch {
			case errors.Is(err, keystore.ErrSubjectLocked):
				locked.Add(1)
			case err == nil && !m:
				failures.Add(1)
			default:
				t.Errorf("parallel guess: match=%v err=%v", m, err)
			}
		})
	}
	wg.Wait()
	if failures.Load() > 3 || failures.Load()+locked.Load() != 12 {
		t.Fatalf("%d guesses were verified and %d refused; at most 3 may be verified", failures.Load(), locked.Load())
	}
	lf.mustBeLocked(t, lf.ks, subjectAlice)
}

// lockoutStore fails lockout reads or writes on demand, its errors quoting
// the key as the real stores' do.
type lockoutStore struct {
	storage.Store
	failGets, failPuts, conflictPuts atomic.Bool
}

func (s *lockoutStore) Get(ctx context.Context, key string) (storage.Record, error) {
	if s.failGets.Load() && strings.HasPrefix(key, "lockout/") {
		return storage.Record{}, fmt.Errorf("test store: get %q: %w", key, storage.ErrUnavailable)
	}
	return s.Store.Get(ctx, key)
}

func (s *lockoutStore) Put(ctx context.Context, key string, v []byte, expect uint64) (uint64, error) {
	if s.failPuts.Load() && strings.HasPrefix(key, "lockout/") {
		return 0, fmt.Errorf("test store: put %q: %w", key, storage.ErrUnavailable)
	}
	if s.conflictPuts.Load() && strings.HasPrefix(key, "lockout/") {
		return 0, fmt.Errorf("test store: %w", storage.ErrConflict)
	}
	return s.Store.Put(ctx, key, v, expect)
}

func TestLockoutFailsClosedWhenItsStateIsUnreachable(t *testing.T) {
	t.Parallel()
	lf := newLockoutFixture(t)
	st := &lockoutStore{Store: lf.store}
	keys, err := keystore.New(keystore.Config{Storage: st, Root: lf.root, Now: lf.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ks, err := password.New(password.Config{Peppers: keys, Store: st, Now: lf.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ks.Close)
	lf.mustMatch(t, ks, subjectAlice) // warm the key cache
	st.failGets.Store(true)
	if m, err := lf.try(ks, subjectAlice, lockoutPasswords[subjectAlice]); m || !errors.Is(err, keystore.ErrUnavailable) {
		t.Fatalf("lockout state unreadable: match=%v err=%v; want ErrUnavailable", m, err)
	} else if strings.Contains(err.Error(), "lockout/") {
		// The record's key holds an HMAC of the subject: a pseudonym that
		// links a user's attempts, which the logs get with the error.
		t.Fatalf("the error names the lockout record's key: %v", err)
	}
	st.failGets.Store(false)
	st.failPuts.Store(true)
	if m, err := lf.try(ks, subjectAlice, lockoutPasswords[subjectAlice]); m || !errors.Is(err, keystore.ErrUnavailable) {
		t.Fatalf("lockout state unwritable: match=%v err=%v; want ErrUnavailable", m, err)
	} else if strings.Contains(err.Error(), "lockout/") {
		t.Fatalf("the error names the lockout record's key: %v", err)
	}
	st.failPuts.Store(false)
	// A record whose compare-and-swap keeps losing (verifications of one
	// subject racing on many replicas): try again later, not ABORTED.
	st.conflictPuts.Store(true)
	if m, err := lf.try(ks, subjectAlice, lockoutPasswords[subjectAlice]); m || !errors.Is(err, keystore.ErrUnavailable) {
		t.Fatalf("lockout state never written for conflicts: match=%v err=%v; want ErrUnavailable", m, err)
	}
	st.conflictPuts.Store(false)
	lf.mustMatch(t, ks, subjectAlice)
}

func TestLockoutIsOffByDefault(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ref := f.passwordKey(t, "acme", "pw", fastArgon2id)
	h := pwHash(t, f.pw, ref, []byte("pw"))
	for range 5 {
		if m, _, err := f.pw.Verify(context.Background(), ref, []byte("wrong"), h, subjectAlice); m || err != nil {
			t.Fatalf("failure: %v %v", m, err)
		}
	}
	if m, _, err := f.pw.Verify(context.Background(), ref, []byte("pw"), h, subjectAlice); !m || err != nil {
		t.Fatalf("locked without a lockout policy: %v %v", m, err)
	}
	if recs, _ := f.store.List(context.Background(), "lockout/", "", 10); len(recs) != 0 {
		t.Fatalf("lockout state written without a lockout policy: %d records", len(recs))
	}
}

// A verification still queued when its window ends is settled in no window:
// abandoning it cannot free a slot of the next window, so the next window
// still admits at most N.
func TestLockoutAnAttemptFromAnEndedWindowFreesNoSlotInTheNext(t *testing.T) {
	t.Parallel()
	lf := newLockoutFixture(t)
	pool := workpool.New(1, 64)
	t.Cleanup(pool.Close)
	ks := lf.openPasswordService(t, password.Config{Now: lf.clock.Now, Pool: pool})
	holdWorker(t, pool)
	waitQueued := func(n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for pool.Waiting() != n || pool.Running() != 1 {
			if time.Now().After(deadline) {
				t.Fatalf("%d verifications queued (%d running), want %d", pool.Waiting(), pool.Running(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	guess := func(ctx context.Context, done chan<- error) {
		_, err := lf.try2(ctx, ks, subjectAlice, "guess")
		done <- err
	}
	old, cancelOld := context.WithCancel(context.Background())
	oldDone := make(chan error, 3)
	for range 3 {
		go guess(old, oldDone)
	}
	waitQueued(3)
	lf.clock.Advance(2 * time.Minute) // the window ends
	cur, cancelCur := context.WithCancel(context.Background())
	t.Cleanup(cancelCur)
	curDone := make(chan error, 3)
	for range 3 {
		go guess(cur, curDone)
	}
	select {
	case err := <-curDone:
		t.Fatalf("a verification in the new window ended early: %v", err)
	case err := <-oldDone:
		t.Fatalf("a verification in the old window ended early: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	waitQueued(6)
	cancelOld()
	for range 3 {
		if err := <-oldDone; !errors.Is(err, context.Canceled) {
			t.Fatalf("a cancelled queued verification: %v", err)
		}
	}
	short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := lf.try2(short, ks, subjectAlice, "guess"); !errors.Is(err, keystore.ErrSubjectLocked) {
		t.Fatalf("a fourth verification in a window that admitted three: %v, want ErrSubjectLocked", err)
	}
}

// Guesses timed to straddle a window's end still count: failures admitted
// in an ended window count in the window they end in, so N guesses a
// window lock the subject however they are timed.
func TestLockoutGuessesStraddlingAWindowsEndStillCount(t *testing.T) {
	t.Parallel()
	lf := newLockoutFixture(t)
	pool := workpool.New(1, 64)
	t.Cleanup(pool.Close)
	ks := lf.openPasswordService(t, password.Config{Now: lf.clock.Now, Pool: pool})
	release := holdWorker(t, pool)
	early := make(chan error, 2)
	for range 2 {
		go func() { _, err := lf.try2(context.Background(), ks, subjectAlice, "guess"); early <- err }()
	}
	deadline := time.Now().Add(10 * time.Second)
	for pool.Waiting() != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d guesses queued, want 2", pool.Waiting())
		}
		time.Sleep(time.Millisecond)
	}
	lf.clock.Advance(2 * time.Minute) // the window ends under the queued guesses
	late := make(chan error, 1)
	go func() { _, err := lf.try2(context.Background(), ks, subjectAlice, "guess"); late <- err }()
	for pool.Waiting() != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d guesses queued, want 3", pool.Waiting())
		}
		time.Sleep(time.Millisecond)
	}
	release()
	for range 2 {
		if err := <-early; err != nil {
			t.Fatal(err)
		}
	}
	if err := <-late; err != nil {
		t.Fatal(err)
	}
	lf.mustBeLocked(t, ks, subjectAlice)
}

// A failure that ends after its window did, before any attempt opened the
// next window, opens that window itself: it was added to the ended one,
// which the next attempt then reset, forgetting it.
func TestLockoutAFailureEndingAfterItsWindowOpensTheNext(t *testing.T) {
	t.Parallel()
	lf := newLockoutFixture(t)
	pool := workpool.New(1, 64)
	t.Cleanup(pool.Close)
	ks := lf.openPasswordService(t, password.Config{Now: lf.clock.Now, Pool: pool})
	if ok, err := lf.try(ks, subjectAlice, "guess"); ok || err != nil {
		t.Fatalf("first guess: %v %v", ok, err)
	}
	release := holdWorker(t, pool)
	straddling := make(chan error, 1)
	go func() { _, err := lf.try2(context.Background(), ks, subjectAlice, "guess"); straddling <- err }()
	deadline := time.Now().Add(10 * time.Second)
	for pool.Waiting() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d guesses queued, want 1", pool.Waiting())
		}
		time.Sleep(time.Millisecond)
	}
	lf.clock.Advance(2 * time.Minute) // the window ends under the queued guess
	release()
	if err := <-straddling; err != nil {
		t.Fatal(err)
	}
	// The straddling failure counts in the new window: two more make three.
	for i := range 2 {
		if ok, err := lf.try(ks, subjectAlice, "guess"); ok || err != nil {
			t.Fatalf("guess %d in the new window: %v %v", i+1, ok, err)
		}
	}
	lf.mustBeLocked(t, ks, subjectAlice)
}

// A verification refused before it was hashed (the pool full, or its
// deadline ended while queued) leaves no lockout record behind: one record
// per subject tried had stayed for good, without any hashing cost.
func TestLockoutAnAbandonedVerificationLeavesNoRecord(t *testing.T) {
	t.Parallel()
	lf := newLockoutFixture(t)
	pool := workpool.New(1, 0)
	t.Cleanup(pool.Close)
	ks := lf.openPasswordService(t, password.Config{Now: lf.clock.Now, Pool: pool})
	holdWorker(t, pool)
	for i := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		_, _, err := ks.Verify(ctx, lf.ref, []byte("guess"), lf.hash[subjectAlice], fmt.Sprintf("subject-%d", i))
		cancel()
		if err == nil {
			t.Fatal("a verification ran with the pool's only worker held")
		}
	}
	recs, err := lf.store.List(context.Background(), keystore.LockoutStoragePrefix(lf.ref.Tenant), "", 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 0 {
		t.Fatalf("%d lockout records left by verifications that never ran", len(recs))
	}
}

// Guesses in flight while the right password resets the count still count
// when they fail: they were forgotten, which let about 2N − 1 guesses run
// around each successful login.
func TestLockoutGuessesInFlightAcrossAMatchStillCount(t *testing.T) {
	t.Parallel()
	lf := newLockoutFixture(t)
	pool := workpool.New(1, 64)
	t.Cleanup(pool.Close)
	guesser := lf.openPasswordService(t, password.Config{Now: lf.clock.Now, Pool: pool})
	release := holdWorker(t, pool)
	done := make(chan error, 2)
	for range 2 {
		go func() { _, err := lf.try(guesser, subjectAlice, "guess"); done <- err }()
	}
	deadline := time.Now().Add(10 * time.Second)
	for pool.Waiting() != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d guesses queued, want 2", pool.Waiting())
		}
		time.Sleep(time.Millisecond)
	}
	lf.mustMatch(t, lf.ks, subjectAlice) // another replica: the count resets
	release()
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("a guess: %v", err)
		}
	}
	lf.mustFail(t, subjectAlice) // the third failure since the two in flight
	lf.mustBeLocked(t, lf.ks, subjectAlice)
}

// holdWorker runs a task that holds the pool's only worker until release
// is called (or the test ends), once the worker runs it.
func holdWorker(t *testing.T, pool *workpool.Pool) (release func()) {
	t.Helper()
	block, holding := make(chan struct{}), make(chan struct{})
	blocked := make(chan error, 1)
	go func() { blocked <- pool.Do(context.Background(), func() { close(holding); <-block }) }()
	var once sync.Once
	release = func() { once.Do(func() { close(block); <-blocked }) }
	t.Cleanup(release)
	select {
	case <-holding:
	case err := <-blocked:
		t.Fatalf("the task holding the pool's worker: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the pool never ran the task holding its worker")
	}
	return release
}
