package backup_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/custos-kms/custos/internal/pgtest"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/audit"
	"github.com/custos-kms/custos/keystore/backup"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/bbolt"
	"github.com/custos-kms/custos/keystore/storage/lease"
	"github.com/custos-kms/custos/keystore/storage/memory"
	"github.com/custos-kms/custos/keystore/storage/postgres"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type world struct {
	root  *local.Root
	clock *clock
}

func newWorld(t *testing.T) *world {
	r, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	return &world{root: r, clock: &clock{t: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)}}
}

func (w *world) keystore(t *testing.T, s storage.Store) *keystore.Service {
	t.Helper()
	ks, err := keystore.New(keystore.Config{Storage: s, Root: w.root, Now: w.clock.now})
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func bboltStore(t *testing.T) storage.Store {
	s, err := bbolt.Open(filepath.Join(t.TempDir(), "custos.db"), bbolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func pgStore(t *testing.T) storage.Store {
	s, err := postgres.Open(context.Background(), postgres.Config{URL: pgtest.Start(t).NewDatabase(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// ciphertext is one acknowledged encryption.
type ciphertext struct {
	ref keystore.KeyRef
	pt  string
	ct  []byte
}

// populate creates tenants with two keys each and encrypts under them.
func populate(t *testing.T, ks *keystore.Service, tenants ...string) []ciphertext {
	t.Helper()
	ctx := context.Background()
	var out []ciphertext
	for _, tn := range tenants {
		if _, err := ks.CreateTenant(ctx, tn); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"pii", "cards"} {
			ref := keystore.KeyRef{Tenant: tn, Key: k}
			if _, err := ks.CreateKey(ctx, ref, keystore.KeySpec{Purpose: keystore.PurposeEncrypt}); err != nil {
				t.Fatal(err)
			}
			pt := fmt.Sprintf("%s/%s secret", tn, k)
			ct, _, err := ks.Encrypt(ctx, ref, []byte(pt), nil)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, ciphertext{ref, pt, ct})
		}
	}
	return out
}

func backupOf(t *testing.T, w *world, s storage.Store) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := backup.Write(context.Background(), &buf, s.(storage.Snapshotter), w.root, backup.Options{Source: "test", Now: w.clock.now}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func restore(w *world, file []byte, target storage.Store, opts backup.RestoreOptions) (*backup.RestoreReport, error) {
	opts.Now = w.clock.now
	return backup.Restore(context.Background(), bytes.NewReader(file), target, w.root, opts)
}

func mustDecrypt(t *testing.T, ks *keystore.Service, cts []ciphertext) {
	t.Helper()
	for _, c := range cts {
		pt, _, err := ks.Decrypt(context.Background(), c.ref, c.ct, nil)
		if err != nil || string(pt) != c.pt {
			t.Fatalf("decrypt %v after restore: %q, %v", c.ref, pt, err)
		}
	}
}

// The drill: back up under a load of encryptions and rotations, restore
// into a new store of the other backend, and everything acknowledged
// before the snapshot decrypts; rotations after it are not there.
func TestDrillAcrossBackends(t *testing.T) {
	for _, dir := range []struct {
		name     string
		from, to func(*testing.T) storage.Store
	}{{"bbolt to postgres", bboltStore, pgStore}, {"postgres to bbolt", pgStore, bboltStore}} {
		t.Run(dir.name, func(t *testing.T) {
			ctx := context.Background()
			w := newWorld(t)
			src := dir.from(t)
			ks := w.keystore(t, src)
			acked := populate(t, ks, "acme", "globex", "initech")
			// Load while the backup runs: encryptions and rotations.
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					ref := keystore.KeyRef{Tenant: "acme", Key: "pii"}
					_, _, _ = ks.Encrypt(ctx, ref, []byte("during"), nil)
					if i%50 == 0 {
						_, _ = ks.RotateKey(ctx, keystore.KeyRef{Tenant: "globex", Key: "cards"})
					}
				}
			})
			file := backupOf(t, w, src)
			close(stop)
			wg.Wait()
			after, err := ks.RotateKey(ctx, keystore.KeyRef{Tenant: "initech", Key: "pii"})
			if err != nil {
				t.Fatal(err)
			}

			dst := dir.to(t)
			rep, err := restore(w, file, dst, backup.RestoreOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Written == 0 || len(rep.Shredded) != 0 {
				t.Fatalf("restore report %+v", rep)
			}
			restored := w.keystore(t, dst)
			mustDecrypt(t, restored, acked)
			k, err := restored.GetKey(ctx, keystore.KeyRef{Tenant: "initech", Key: "pii"})
			if err != nil {
				t.Fatal(err)
			}
			if k.PrimaryVersion >= after.PrimaryVersion {
				t.Fatalf("a rotation after the snapshot is in the restore: primary %d, rotated to %d after", k.PrimaryVersion, after.PrimaryVersion)
			}
			if _, err := backup.Read(ctx, bytes.NewReader(file), w.root, nil); err != nil {
				t.Fatalf("verify: %v", err)
			}
		})
	}
}

func TestDamagedBackupsAreRefusedBeforeAnythingIsWritten(t *testing.T) {
	w := newWorld(t)
	src := memory.New()
	populate(t, w.keystore(t, src), "acme", "globex")
	file := backupOf(t, w, src)
	refused := func(name string, f []byte, opts backup.RestoreOptions, want string) {
		t.Helper()
		dst := memory.New()
		_, err := restore(w, f, dst, opts)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: restore returned %v, want an error containing %q", name, err, want)
		}
		if recs, _ := dst.List(context.Background(), "", "", 1); len(recs) != 0 {
			t.Fatalf("%s: the target was written", name)
		}
	}
	for cut := 0; cut < len(file); cut += max(len(file)/40, 1) {
		refused(fmt.Sprintf("truncated at %d of %d", cut, len(file)), file[:cut], backup.RestoreOptions{}, "damaged")
	}
	for _, at := range []int{3, 20, 40, len(file) / 2, len(file) - 40, len(file) - 2} {
		f := bytes.Clone(file)
		f[at] ^= 0x10
		want := "damaged"
		if at == 3 {
			want = "not a Custos backup"
		}
		refused(fmt.Sprintf("a bit flipped at %d", at), f, backup.RestoreOptions{}, want)
	}
	f := bytes.Clone(file)
	copy(f, "custos-backup\x00v9\n")
	refused("an unknown format", f, backup.RestoreOptions{}, "format")
	if _, err := restore(w, f, memory.New(), backup.RestoreOptions{}); !errors.Is(err, backup.ErrUnknownFormat) || errors.Is(err, backup.ErrDamaged) {
		t.Fatalf("an unknown format: %v, want ErrUnknownFormat (not damaged)", err)
	}
	other := newWorld(t)
	other.clock = w.clock
	dst := memory.New()
	if _, err := restore(other, file, dst, backup.RestoreOptions{}); !errors.Is(err, backup.ErrDamaged) {
		t.Fatalf("another deployment's root: %v, want ErrDamaged", err)
	}
	w.clock.add(backup.DefaultMaxAge + time.Hour)
	refused("older than the maximum age", file, backup.RestoreOptions{}, "maximum age")
	if _, err := restore(w, file, memory.New(), backup.RestoreOptions{}); !errors.Is(err, backup.ErrTooOld) {
		t.Fatalf("older than the maximum age: %v, want ErrTooOld", err)
	}
	w.clock.add(-backup.DefaultMaxAge - time.Hour)
	// Dated well in the future (taken on a machine whose clock was ahead):
	// it would pass the maximum age for as long again.
	w.clock.add(-2 * time.Hour)
	if _, err := restore(w, file, memory.New(), backup.RestoreOptions{}); !errors.Is(err, backup.ErrTooOld) || !strings.Contains(err.Error(), "future") {
		t.Fatalf("a backup dated 2 hours ahead: %v, want ErrTooOld naming the future", err)
	}
	if _, err := restore(w, file, memory.New(), backup.RestoreOptions{MaxAge: -1}); err != nil {
		t.Fatalf("a backup dated ahead with no maximum age: %v", err)
	}
	w.clock.add(2*time.Hour - 5*time.Minute)
	if _, err := restore(w, file, memory.New(), backup.RestoreOptions{}); err != nil {
		t.Fatalf("a backup dated 5 minutes ahead (clock skew): %v", err)
	}
	w.clock.add(5 * time.Minute)

	// A target that holds records: refused unless forced.
	full := memory.New()
	populate(t, w.keystore(t, full), "other")
	if _, err := restore(w, file, full, backup.RestoreOptions{}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("restore into a store with records: %v", err)
	}
	if _, err := restore(w, file, full, backup.RestoreOptions{Force: true}); err != nil {
		t.Fatalf("forced: %v", err)
	}
}

// A tenant shredded after a backup was taken stays shredded when that
// backup is restored; a tenant whose deletion date passes while the backup
// ages is shredded on restore, not brought back.
func TestShreddingReachesBackups(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	live := memory.New()
	ks := w.keystore(t, live)
	cts := populate(t, ks, "keep", "late", "early")
	// "early" was scheduled for deletion before the backup.
	if _, err := ks.DeleteTenant(ctx, "early", 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	file := backupOf(t, w, live)
	// "late" is deleted after the backup and its date passes: the live
	// scheduler shreds it (and "early").
	if _, err := ks.DeleteTenant(ctx, "late", 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	w.clock.add(48 * time.Hour)
	if err := ks.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	tombs, err := backup.Tombstones(ctx, live)
	if err != nil || len(tombs) != 2 {
		t.Fatalf("tombstones in the live store: %v, %v; want late and early", tombs, err)
	}

	// Into a new store, with the live store's tombstones.
	dst := memory.New()
	rep, err := restore(w, file, dst, backup.RestoreOptions{Tombstones: tombs})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rep.Shredded, ",") != "early,late" {
		t.Fatalf("shredded on restore: %v", rep.Shredded)
	}
	restored := w.keystore(t, dst)
	for _, tn := range []string{"late", "early"} {
		if _, err := restored.GetTenant(ctx, tn); !errors.Is(err, keystore.ErrNotFound) {
			t.Fatalf("tenant %s after restore: %v, want not found", tn, err)
		}
	}
	mustDecrypt(t, restored, cts[:2]) // keep's

	// Without the tombstones, "early" (whose date passed) still stays
	// shredded; "late" comes back: the documented limit.
	dst2 := memory.New()
	rep, err = restore(w, file, dst2, backup.RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rep.Shredded, ",") != "early" {
		t.Fatalf("shredded without tombstones: %v", rep.Shredded)
	}
	// Restored over the live store (forced), its tombstones count.
	rep, err = restore(w, file, live, backup.RestoreOptions{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rep.Shredded, ",") != "early,late" {
		t.Fatalf("shredded over the live store: %v", rep.Shredded)
	}
	// The first restore gave its target tombstones for the tenants it kept
	// out: restoring the same (old) backup over it, forced, keeps them out
	// and clears anything of theirs already there.
	if tombs, _ := backup.Tombstones(ctx, dst); len(tombs) != 2 {
		t.Fatalf("tombstones in the restored store: %v", tombs)
	}
	if _, err := dst.Put(ctx, "keys/late/leftover", []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := restore(w, file, dst, backup.RestoreOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if recs, _ := dst.List(ctx, "keys/late/", "", 10); len(recs) != 0 {
		t.Fatalf("records of a shredded tenant stay in the target: %v", recs)
	}
}

// Only the two leases are left out: a key named "lease" is restored.
func TestAKeyNamedLeaseIsRestored(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	src := memory.New()
	ks := w.keystore(t, src)
	if _, err := ks.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	ref := keystore.KeyRef{Tenant: "acme", Key: "lease"}
	if _, err := ks.CreateKey(ctx, ref, keystore.KeySpec{Purpose: keystore.PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	ct, _, err := ks.Encrypt(ctx, ref, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Put(ctx, keystore.LeaseStorageKey, []byte("{}"), 0); err != nil {
		t.Fatal(err)
	}
	dst := memory.New()
	rep, err := restore(w, backupOf(t, w, src), dst, backup.RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Skipped != 1 {
		t.Fatalf("%d records left out, want the scheduler lease only", rep.Skipped)
	}
	mustDecrypt(t, w.keystore(t, dst), []ciphertext{{ref, "x", ct}})
}

// errAfter fails the target's writes after n records: an interrupted
// restore.
type errAfter struct {
	storage.Store
	mu   sync.Mutex
	left int
}

var errInterrupted = errors.New("interrupted")

func (e *errAfter) Apply(ctx context.Context, ops []storage.Op) error {
	e.mu.Lock()
	e.left -= len(ops)
	left := e.left
	e.mu.Unlock()
	if left < 0 {
		return errInterrupted
	}
	return e.Store.(storage.Applier).Apply(ctx, ops)
}

func TestAnInterruptedRestoreCompletesWhenRunAgain(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	src := memory.New()
	cts := populate(t, w.keystore(t, src), "a", "b", "c", "d", "e", "f", "g", "h")
	// Enough records for several batches.
	for i := range 1500 {
		if _, err := src.Put(ctx, fmt.Sprintf("lockout/a/pii/%04d", i), []byte("x"), 0); err != nil {
			t.Fatal(err)
		}
	}
	file := backupOf(t, w, src)
	dst := bboltStore(t)
	if _, err := restore(w, file, &errAfter{Store: dst, left: 800}, backup.RestoreOptions{}); !errors.Is(err, errInterrupted) {
		t.Fatalf("first run: %v", err)
	}
	// A backup of the half-restored store is refused: it would look whole,
	// and restoring it would drop the marker.
	if _, err := backup.Write(ctx, io.Discard, dst.(storage.Snapshotter), w.root, backup.Options{}); !errors.Is(err, backup.ErrRestoring) {
		t.Fatalf("a backup of a half-restored store: %v, want ErrRestoring", err)
	}
	// Run again at once, the marker looks like a restore still running,
	// and is left alone; once it is stale, the run resumes.
	if _, err := restore(w, file, dst, backup.RestoreOptions{}); err == nil || !strings.Contains(err.Error(), "another restore is writing") {
		t.Fatalf("a second run while the marker is fresh: %v, want a refusal", err)
	}
	rep, err := restore(w, file, dst, backup.RestoreOptions{TakeOver: true}) // the operator knows it was killed
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	if !rep.Resumed {
		t.Fatal("the second run did not resume the first")
	}
	mustDecrypt(t, w.keystore(t, dst), cts)
	var n int
	if err := dst.(storage.Snapshotter).Snapshot(ctx, func(r storage.Record) error {
		if r.Key == "restore/in-progress" {
			return errors.New("the restore marker stayed")
		}
		n++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if uint64(n) != rep.Manifest.Records {
		t.Fatalf("%d records after the resumed restore, the backup has %d", n, rep.Manifest.Records)
	}
	// Another backup's restore does not resume this one's marker.
	if _, err := restore(w, backupOf(t, w, src), dst, backup.RestoreOptions{}); err == nil {
		t.Fatal("a non-empty target took another backup without --force")
	}
}

// Clearing a shredded tenant from the target lists by its key prefix,
// which other tenants' records can share ("tenants/t1" lists t10, t11…):
// a full page of records it does not own must not make the restore list
// the same page for ever.
func TestRestoreClearsAShreddedTenantBesideManyWithItsPrefix(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	w := newWorld(t)
	live := memory.New()
	ks := w.keystore(t, live)
	populate(t, ks, "t1")
	if _, err := ks.DeleteTenant(ctx, "t1", 24*time.Hour); err != nil { // shredded on restore: its date passes
		t.Fatal(err)
	}
	file := backupOf(t, w, live)
	w.clock.add(48 * time.Hour)
	dst := memory.New()
	for i := range 600 { // more than a page of records under "tenants/t1" that t1 does not own
		if _, err := dst.Put(ctx, fmt.Sprintf("tenants/t1%04d", i), []byte("{}"), 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := dst.Put(ctx, "keys/t1/leftover", []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	var rep *backup.RestoreReport
	go func() {
		var err error
		rep, err = restore(w, file, dst, backup.RestoreOptions{Force: true})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("the restore still runs after 20s: it lists the same page of other tenants' records again and again")
	}
	if strings.Join(rep.Shredded, ",") != "t1" {
		t.Fatalf("shredded: %v, want t1", rep.Shredded)
	}
	if recs, _ := dst.List(ctx, "keys/t1/", "", 10); len(recs) != 0 {
		t.Fatalf("records of the shredded tenant stay: %v", recs)
	}
	if recs, _ := dst.List(ctx, "tenants/t1", "", 1000); len(recs) != 600 {
		t.Fatalf("%d records of other tenants under the prefix, want all 600", len(recs))
	}
}

// downRoot is a root whose provider cannot be reached.
type downRoot struct{}

func (downRoot) Wrap(context.Context, []byte, []byte) ([]byte, error) {
	return nil, fmt.Errorf("%w: the provider does not answer", root.ErrUnavailable)
}

func (downRoot) Unwrap(context.Context, []byte, []byte) ([]byte, error) {
	return nil, fmt.Errorf("%w: the provider does not answer", root.ErrUnavailable)
}

// An unreachable root is reported as such, not as a damaged backup (which
// an operator might throw away).
func TestAnUnreachableRootIsNotADamagedBackup(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	src := memory.New()
	populate(t, w.keystore(t, src), "a")
	file := backupOf(t, w, src)
	_, err := backup.Read(ctx, bytes.NewReader(file), downRoot{}, nil)
	if errors.Is(err, backup.ErrDamaged) || !errors.Is(err, root.ErrUnavailable) {
		t.Fatalf("reading a backup with the root down: %v, want root.ErrUnavailable and not ErrDamaged", err)
	}
	if _, err := backup.Write(ctx, io.Discard, src, downRoot{}, backup.Options{}); !errors.Is(err, root.ErrUnavailable) {
		t.Fatalf("writing a backup with the root down: %v, want root.ErrUnavailable", err)
	}
}

// A restore never replaces a tombstone by an older one: the target's
// newer tombstone stays, and keeps out the incarnation it covers in any
// later restore.
func TestARestoreKeepsTheNewestTombstone(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	t0 := w.clock.now()
	tomb := func(s storage.Store, created time.Time) {
		b, err := json.Marshal(keystore.Tombstone{Tenant: "acme", CreateTime: created.UTC(), ShredTime: created.Add(time.Hour).UTC()})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Put(ctx, keystore.TombstonePrefix+"acme", b, 0); err != nil {
			t.Fatal(err)
		}
	}
	// Backup A: the tombstone of an early incarnation of acme.
	a := memory.New()
	populate(t, w.keystore(t, a), "other")
	tomb(a, t0.Add(-time.Hour))
	fileA := backupOf(t, w, a)
	// Backup B: acme created again at t5, alive.
	w.clock.add(5 * time.Hour)
	t5 := w.clock.now()
	b := memory.New()
	populate(t, w.keystore(t, b), "acme")
	fileB := backupOf(t, w, b)
	// The target: where acme of t5 was shredded since.
	w.clock.add(time.Hour)
	target := memory.New()
	tomb(target, t5)
	if _, err := restore(w, fileA, target, backup.RestoreOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	ts, err := backup.Tombstones(ctx, target)
	if err != nil || len(ts) != 1 || !ts[0].CreateTime.Equal(t5) {
		t.Fatalf("after restoring an older tombstone: %+v, %v; want acme's of %v kept", ts, err, t5)
	}
	rep, err := restore(w, fileB, target, backup.RestoreOptions{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(rep.Shredded, "acme") {
		t.Fatalf("a backup of the acme the target shredded restored it: shredded %v", rep.Shredded)
	}
	if _, err := target.Get(ctx, keystore.TenantStorageKey("acme")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("acme's record after the restore: %v, want none", err)
	}
}

// A forced restore keeps a backed-up tenant out that a tombstone covers,
// but leaves alone a tenant of the same id in the target created after the
// shred: that is another tenant.
func TestARestoreLeavesATenantCreatedAfterTheShredAlone(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	// The backup: acme's first incarnation, alive when it was taken.
	old := memory.New()
	populate(t, w.keystore(t, old), "acme")
	file := backupOf(t, w, old)
	// The live store: that acme was shredded (its tombstone), and acme was
	// created again since.
	w.clock.add(time.Hour)
	target := memory.New()
	b, err := json.Marshal(keystore.Tombstone{Tenant: "acme", CreateTime: w.clock.now().Add(-time.Hour).UTC(), ShredTime: w.clock.now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := target.Put(ctx, keystore.TombstonePrefix+"acme", b, 0); err != nil {
		t.Fatal(err)
	}
	w.clock.add(time.Hour)
	live := populate(t, w.keystore(t, target), "acme")
	rep, err := restore(w, file, target, backup.RestoreOptions{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(rep.Shredded, "acme") {
		t.Fatalf("the backed-up acme, which the tombstone covers, was restored: shredded %v", rep.Shredded)
	}
	mustDecrypt(t, w.keystore(t, target), live) // the new acme is intact
}

// A tenant deleted after the backup whose date has passed but which the
// scheduler has not shredded yet (no tombstone) stays out of a restore that
// knows the live store, and of a forced restore over it.
func TestATenantDueForShreddingButNotShreddedStaysOut(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	live := memory.New()
	ks := w.keystore(t, live)
	populate(t, ks, "keep", "due")
	file := backupOf(t, w, live)
	if _, err := ks.DeleteTenant(ctx, "due", 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	w.clock.add(48 * time.Hour) // due, but no scheduler ran
	known, err := backup.ShreddedOrDue(ctx, live, w.clock.now())
	if err != nil || len(known) != 1 || known[0].Tenant != "due" {
		t.Fatalf("what the live store says must stay shredded: %v, %v", known, err)
	}
	dst := memory.New()
	rep, err := restore(w, file, dst, backup.RestoreOptions{Tombstones: known})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rep.Shredded, ",") != "due" {
		t.Fatalf("shredded on restore: %v, want due", rep.Shredded)
	}
	if _, err := dst.Get(ctx, "tenants/due"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the due tenant's record in the restored store: %v", err)
	}
	if _, err := restore(w, file, live, backup.RestoreOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := live.Get(ctx, "tenants/due"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the due tenant's record after a forced restore over the live store: %v", err)
	}
}

// A forced restore clears the target's records of a tenant a tombstone it
// knows covers, even when the backup holds nothing of that tenant.
func TestAForcedRestoreClearsATombstonedTenantTheBackupLacks(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	src := memory.New()
	populate(t, w.keystore(t, src), "keep")
	file := backupOf(t, w, src) // holds no tenant "gone"
	target := memory.New()
	kt := w.keystore(t, target)
	populate(t, kt, "gone")
	rec, err := target.Get(ctx, "tenants/gone")
	if err != nil {
		t.Fatal(err)
	}
	info, err := keystore.ParseTenantRecord(rec.Value)
	if err != nil {
		t.Fatal(err)
	}
	ts := keystore.Tombstone{Tenant: "gone", CreateTime: info.CreateTime.UTC(), ShredTime: w.clock.now().UTC()}
	rep, err := restore(w, file, target, backup.RestoreOptions{Force: true, Tombstones: []keystore.Tombstone{ts}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(rep.Shredded, "gone") {
		t.Errorf("the report's kept-shredded tenants %v lack the one cleared from the target", rep.Shredded)
	}
	if _, err := target.Get(ctx, "tenants/gone"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the tombstoned tenant's record after the forced restore: %v", err)
	}
	if recs, _ := target.List(ctx, "keys/gone/", "", 10); len(recs) != 0 {
		t.Fatalf("the tombstoned tenant's keys after the forced restore: %v", recs)
	}
}

// deniedRoot refuses every unwrap as a misconfigured root does (a Vault
// policy without decrypt, say): neither unavailable nor "not authentic".
type deniedRoot struct{ downRoot }

func (deniedRoot) Unwrap(context.Context, []byte, []byte) ([]byte, error) {
	return nil, errors.New("test root: permission denied")
}

// A root that refuses (a misconfiguration) is not a damaged backup either:
// only a data key the root finds not authentic is.
func TestARefusingRootIsNotADamagedBackup(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	src := memory.New()
	populate(t, w.keystore(t, src), "a")
	file := backupOf(t, w, src)
	_, err := backup.Read(ctx, bytes.NewReader(file), deniedRoot{}, nil)
	if err == nil || errors.Is(err, backup.ErrDamaged) || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("reading a backup with a refusing root: %v, want the refusal and not ErrDamaged", err)
	}
}

// A forced restore is refused while a server holds a lease on the target:
// it would serve, and write to, a store half restored.
func TestAForcedRestoreIsRefusedWhileServersRun(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	src := memory.New()
	populate(t, w.keystore(t, src), "a")
	file := backupOf(t, w, src)
	target := memory.New()
	populate(t, w.keystore(t, target), "b")
	l := lease.Lease{Store: target, Key: keystore.LeaseStorageKey, Now: w.clock.now}
	if held, _, err := l.Acquire(ctx, "replica-1", time.Minute); err != nil || !held {
		t.Fatalf("take the lease: %v, %v", held, err)
	}
	if _, err := restore(w, file, target, backup.RestoreOptions{Force: true}); !errors.Is(err, backup.ErrServersRunning) || !strings.Contains(err.Error(), "servers are running") {
		t.Fatalf("a forced restore under a held lease: %v, want it refused", err)
	}
	if _, err := target.Get(ctx, backup.MarkerKey); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the refused restore marked the target: %v", err)
	}
	w.clock.add(2 * time.Minute) // the lease expired: its holder is gone
	if _, err := restore(w, file, target, backup.RestoreOptions{Force: true}); err != nil {
		t.Fatalf("a forced restore once the lease expired: %v", err)
	}
}

// On PostgreSQL the leases are judged by the database's clock, not the
// operator's: a restore run on a machine whose clock is ahead by more than
// a lease's TTL still sees the servers that hold one.
func TestAForcedRestoreSeesHeldLeasesWhateverTheOperatorsClock(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	src := memory.New()
	populate(t, w.keystore(t, src), "a")
	file := backupOf(t, w, src)
	target := pgStore(t)
	l := lease.Lease{Store: target, Key: audit.LeaseStorageKey, Now: time.Now}
	if held, _, err := l.Acquire(ctx, "replica-1", time.Minute); err != nil || !held {
		t.Fatalf("take the lease: %v, %v", held, err)
	}
	w.clock.add(time.Now().Add(10 * time.Minute).Sub(w.clock.now())) // the operator's clock is ahead
	if _, err := restore(w, file, target, backup.RestoreOptions{Force: true}); !errors.Is(err, backup.ErrServersRunning) || !strings.Contains(err.Error(), "servers are running") {
		t.Fatalf("a forced restore under a held lease, the operator's clock ahead: %v, want it refused", err)
	}
}

// A forced restore of a backup that holds a tenant's later incarnation,
// over a store that kept an earlier one the backup's tombstone covers,
// clears the earlier one and restores the later: only the covered
// incarnation is shredded.
func TestAForcedRestoreRestoresALaterIncarnationOverACoveredOne(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	target := memory.New()
	kt := w.keystore(t, target)
	populate(t, kt, "acme") // the first incarnation, kept by the target
	ref := keystore.KeyRef{Tenant: "acme", Key: "only-in-the-first"}
	if _, err := kt.CreateKey(ctx, ref, keystore.KeySpec{Purpose: keystore.PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	rec, err := target.Get(ctx, "tenants/acme")
	if err != nil {
		t.Fatal(err)
	}
	first, err := keystore.ParseTenantRecord(rec.Value)
	if err != nil {
		t.Fatal(err)
	}
	// The backup: the first incarnation's tombstone, and acme created again.
	src := memory.New()
	w.clock.add(time.Hour)
	b, err := json.Marshal(keystore.Tombstone{Tenant: "acme", CreateTime: first.CreateTime.UTC(), ShredTime: w.clock.now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Put(ctx, keystore.TombstonePrefix+"acme", b, 0); err != nil {
		t.Fatal(err)
	}
	w.clock.add(time.Hour)
	second := populate(t, w.keystore(t, src), "acme")
	file := backupOf(t, w, src)

	rep, err := restore(w, file, target, backup.RestoreOptions{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(rep.Shredded, "acme") {
		t.Fatalf("the backup's acme, created after the shred, was kept out: shredded %v", rep.Shredded)
	}
	mustDecrypt(t, w.keystore(t, target), second)
	if _, err := target.Get(ctx, "keys/acme/only-in-the-first"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the first incarnation's key after the restore: %v, want it cleared", err)
	}
}

// hookStore runs hook once, at the first listing of tombstones: in
// Restore, after it has looked at the target and before it claims it.
type hookStore struct {
	*memory.Store
	hook func()
}

func (h *hookStore) List(ctx context.Context, prefix, after string, limit int) ([]storage.Record, error) {
	if f := h.hook; f != nil && prefix == keystore.TombstonePrefix {
		h.hook = nil
		f()
	}
	return h.Store.List(ctx, prefix, after, limit)
}

// Two restores into one store never both write it: one that found the
// target empty and meets it written by another restore (which finished
// meanwhile) refuses and leaves the other's result alone; one whose
// marker another restore replaced while it wrote fails at its end.
func TestTwoRestoresIntoOneStoreDoNotMix(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	srcA, srcB := memory.New(), memory.New()
	ctA := populate(t, w.keystore(t, srcA), "alpha")
	populate(t, w.keystore(t, srcB), "beta")
	fileA, fileB := backupOf(t, w, srcA), backupOf(t, w, srcB)

	target := &hookStore{Store: memory.New()}
	var errA error
	target.hook = func() { _, errA = restore(w, fileA, target.Store, backup.RestoreOptions{}) }
	if _, err := restore(w, fileB, target, backup.RestoreOptions{}); err == nil || !strings.Contains(err.Error(), "written to while this restore read") {
		t.Fatalf("the second restore into a store the first wrote meanwhile: %v, want a refusal", err)
	}
	if errA != nil {
		t.Fatalf("the first restore: %v", errA)
	}
	if _, err := target.Get(ctx, "tenants/beta"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("beta in the target: %v, want none", err)
	}
	if _, err := target.Get(ctx, backup.MarkerKey); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("the marker after the refusal: %v, want the first restore's result unmarked", err)
	}
	mustDecrypt(t, w.keystore(t, target.Store), ctA)

	// A second restore while one writes, of the same backup (a retried
	// job) or, forced, of another, is refused: the marker is fresh, even
	// minutes into a long restore (renewed with each batch).
	big := memory.New()
	populate(t, w.keystore(t, big), "gamma")
	for i := range 1500 { // three batches
		if _, err := big.Put(ctx, fmt.Sprintf("lockout/gamma/pii/%04d", i), []byte("x"), 0); err != nil {
			t.Fatal(err)
		}
	}
	fileBig := backupOf(t, w, big)
	over := memory.New()
	var errSame, errForced error
	batches := 0
	repBig, err := restore(w, fileBig, over, backup.RestoreOptions{Progress: func(uint64) {
		batches++
		w.clock.add(50 * time.Second)
		if batches == 3 {
			_, errSame = restore(w, fileBig, over, backup.RestoreOptions{})
			_, errForced = restore(w, fileB, over, backup.RestoreOptions{Force: true})
		}
	}})
	if err != nil {
		t.Fatalf("the restore running: %v", err)
	}
	if batches < 3 {
		t.Fatalf("%d batches, want at least 3", batches)
	}
	for what, err := range map[string]error{"the same backup": errSame, "another backup, forced": errForced} {
		if !errors.Is(err, backup.ErrRestoreRunning) {
			t.Errorf("a restore of %s while one runs: %v, want ErrRestoreRunning", what, err)
		}
	}
	if repBig.Resumed {
		t.Error("the running restore reported itself resumed")
	}

	// One whose marker went stale (a restore stopped, or stalled) is taken
	// over by a forced restore; if it was only stalled, it writes nothing
	// more: its next batch fails with the marker.
	stalled := memory.New()
	batches = 0
	var errB error
	if _, err := restore(w, fileBig, stalled, backup.RestoreOptions{Progress: func(uint64) {
		batches++
		if batches == 1 {
			w.clock.add(2 * time.Minute)
			_, errB = restore(w, fileB, stalled, backup.RestoreOptions{Force: true})
		}
	}}); err == nil || !strings.Contains(err.Error(), "another restore marked the target") {
		t.Fatalf("a restore whose stale marker another replaced: %v, want it to stop", err)
	}
	if errB != nil {
		t.Fatalf("the forced restore over a stale marker: %v", errB)
	}
	if _, err := stalled.Get(ctx, "lockout/gamma/pii/0900"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a record of the stalled restore's next batch: %v, want none written after the takeover", err)
	}
}

// A marker dated more than a minute ahead (written by a wrong clock) is
// stale: it does not lock the store until that time.
func TestAMarkerFromAClockAheadDoesNotLockTheStore(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	src := memory.New()
	cts := populate(t, w.keystore(t, src), "a")
	file := backupOf(t, w, src)
	first, err := restore(w, file, memory.New(), backup.RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	target := memory.New()
	ahead := fmt.Sprintf("%s\n%d", first.Manifest.ID, w.clock.now().Add(2*time.Hour).UnixNano())
	if _, err := target.Put(ctx, backup.MarkerKey, []byte(ahead), 0); err != nil {
		t.Fatal(err)
	}
	rep, err := restore(w, file, target, backup.RestoreOptions{})
	if err != nil {
		t.Fatalf("a restore over a marker dated two hours ahead: %v", err)
	}
	if !rep.Resumed {
		t.Error("the restore did not take the marker of its backup as its own, interrupted")
	}
	mustDecrypt(t, w.keystore(t, target), cts)
}

// auditEvents records n events of tenant in store's audit trail, then
// integrates and signs them.
func auditEvents(t *testing.T, w *world, store storage.Store, tenant string, from, n int) *audit.Log {
	t.Helper()
	ctx := context.Background()
	l, err := audit.Open(ctx, audit.Config{Store: store, Root: w.root})
	if err != nil {
		t.Fatal(err)
	}
	wr, err := audit.NewWriter(audit.WriterConfig{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	defer wr.Close()
	for i := from; i < from+n; i++ {
		if err := wr.Record(&custosv1.AuditEvent{Time: timestamppb.New(w.clock.now()), RequestId: fmt.Sprintf("req-%d", i), Tenant: tenant, Operation: "encrypt", Code: "OK"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	return l
}

// A forced restore of an older backup over a store whose audit trail went
// on replaces the trail by the backup's: the log then integrates, signs
// and verifies clean. (The later events, node hashes and checkpoints left
// in place made the log refuse to integrate, or to sign, for good.)
func TestAForcedRestoreReplacesTheAuditTrail(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	store := bboltStore(t)
	populate(t, w.keystore(t, store), "acme")
	auditEvents(t, w, store, "acme", 0, 300)
	file := backupOf(t, w, store)
	auditEvents(t, w, store, "acme", 300, 300) // the live trail goes on past the backup
	if _, err := restore(w, file, store, backup.RestoreOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	l := auditEvents(t, w, store, "acme", 600, 10)
	cp, err := l.Latest(ctx)
	if err != nil || cp == nil || cp.Size != 310 {
		t.Fatalf("after the restore and 10 more events: checkpoint %+v, %v; want the backup's 300 and 10", cp, err)
	}
	wantCleanTrail(t, w, store, 310)
}

// wantCleanTrail verifies store's audit trail: events events, no finding.
func wantCleanTrail(t *testing.T, w *world, store storage.Store, events uint64) {
	t.Helper()
	ctx := context.Background()
	v, err := audit.VerifierOf(ctx, store, w.root)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(ctx, store, v)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Findings) != 0 || rep.Events != events {
		t.Fatalf("the trail after the restore: %v events (want %d), %v", rep.Events, events, rep.Findings)
	}
}

// A forced restore of a backup without an audit trail (taken with the
// trail off) leaves the target's trail as it is.
func TestAForcedRestoreOfABackupWithoutATrailKeepsTheTargets(t *testing.T) {
	w := newWorld(t)
	src, store := bboltStore(t), bboltStore(t)
	populate(t, w.keystore(t, src), "acme")
	file := backupOf(t, w, src) // no audit records
	auditEvents(t, w, store, "beta", 0, 20)
	if _, err := restore(w, file, store, backup.RestoreOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	wantCleanTrail(t, w, store, 20)
}

// shredDuringList is a store that shreds one tenant (its tombstone
// written, then its record deleted, as the scheduler does) just before
// the first listing of the tenants: a shred racing ShreddedOrDue on a live
// store.
type shredDuringList struct {
	storage.Store
	tenant string
	once   sync.Once
}

func (s *shredDuringList) List(ctx context.Context, prefix, after string, limit int) ([]storage.Record, error) {
	if prefix == keystore.TenantStoragePrefix {
		var err error
		s.once.Do(func() {
			var rec storage.Record
			if rec, err = s.Store.Get(ctx, keystore.TenantStoragePrefix+s.tenant); err != nil {
				return
			}
			info, perr := keystore.ParseTenantRecord(rec.Value)
			if perr != nil {
				err = perr
				return
			}
			b, _ := json.Marshal(keystore.Tombstone{Tenant: s.tenant, CreateTime: info.CreateTime.UTC(), ShredTime: time.Now().UTC()})
			if _, err = s.Store.Put(ctx, keystore.TombstonePrefix+s.tenant, b, 0); err != nil {
				return
			}
			err = s.Store.Delete(ctx, keystore.TenantStoragePrefix+s.tenant, rec.Version)
		})
		if err != nil {
			return nil, err
		}
	}
	return s.Store.List(ctx, prefix, after, limit)
}

// A tenant shredded while ShreddedOrDue reads a live store is in its
// answer: the tombstones were read first, the tenants after, and a shred in
// between was in neither.
func TestATenantShreddedWhileTheLiveStoreIsReadStaysShredded(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	live := memory.New()
	ks := w.keystore(t, live)
	populate(t, ks, "keep", "gone")
	known, err := backup.ShreddedOrDue(ctx, &shredDuringList{Store: live, tenant: "gone"}, w.clock.now())
	if err != nil {
		t.Fatal(err)
	}
	if len(known) != 1 || known[0].Tenant != "gone" {
		t.Fatalf("what the live store says must stay shredded: %v, want gone's tombstone", known)
	}
}

// A deletion scheduled after the backup was taken, not yet due, survives a
// restore that knows of it (the live store's, through Deletions, or the
// target's own in a forced restore): the tenant comes back scheduled for
// the same date, with the hint the scheduler finds it by, not active with
// the erasure request silently dropped.
func TestARestoreKeepsADeletionScheduledSinceTheBackup(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	live := memory.New()
	ks := w.keystore(t, live)
	populate(t, ks, "keep", "later")
	file := backupOf(t, w, live)
	scheduled, err := ks.DeleteTenant(ctx, "later", 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	w.clock.add(7 * 24 * time.Hour) // scheduled, not due
	tombs, dels, err := backup.Deletions(ctx, live, w.clock.now())
	if err != nil || len(tombs) != 0 || len(dels) != 1 || dels[0].Tenant != "later" {
		t.Fatalf("what the live store says of deletions: %v, %v, %v", tombs, dels, err)
	}
	check := func(t *testing.T, s storage.Store, rep *backup.RestoreReport) {
		t.Helper()
		if strings.Join(rep.Rescheduled, ",") != "later" {
			t.Errorf("rescheduled on restore: %v, want later", rep.Rescheduled)
		}
		got, err := w.keystore(t, s).GetTenant(ctx, "later")
		if err != nil || got.State != keystore.TenantDeleteScheduled || !got.DeleteTime.Equal(scheduled.DeleteTime) {
			t.Errorf("the restored tenant: %+v, %v; want scheduled for deletion at %v", got, err, scheduled.DeleteTime)
		}
		if kept, err := w.keystore(t, s).GetTenant(ctx, "keep"); err != nil || kept.State != keystore.TenantActive {
			t.Errorf("the other tenant: %+v, %v; want it active", kept, err)
		}
		hints, err := s.List(ctx, "due/", "", 100)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, h := range hints {
			found = found || strings.HasSuffix(h.Key, "/t/later")
		}
		if !found {
			t.Errorf("no due hint for the deletion among %d hints", len(hints))
		}
	}
	dst := memory.New()
	rep, err := restore(w, file, dst, backup.RestoreOptions{Tombstones: tombs, Deletions: dels})
	if err != nil {
		t.Fatal(err)
	}
	t.Run("into a new store", func(t *testing.T) { check(t, dst, rep) })
	rep, err = restore(w, file, live, backup.RestoreOptions{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Run("forced over the live store", func(t *testing.T) { check(t, live, rep) })
}

// A manifest too large for a restore to read (it lists every tenant
// scheduled for deletion) fails the backup: Write reported such a backup
// made, and every verify and restore of it then said "damaged".
func TestABackupWhoseManifestARestoreWouldRefuseIsNotMade(t *testing.T) {
	w := newWorld(t)
	s := bboltStore(t)
	ks := w.keystore(t, s)
	populate(t, ks, "a", "b", "c")
	ctx := context.Background()
	for _, tn := range []string{"a", "b", "c"} {
		if _, err := ks.DeleteTenant(ctx, tn, 24*time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	file := backupOf(t, w, s)
	if _, err := backup.Read(ctx, bytes.NewReader(file), w.root, nil); err != nil {
		t.Fatalf("under the limit: %v", err)
	}
	defer backup.SetMaxManifestBytes(300)()
	var buf bytes.Buffer
	_, err := backup.Write(ctx, &buf, s.(storage.Snapshotter), w.root, backup.Options{Source: "test", Now: w.clock.now})
	if err == nil {
		_, rerr := backup.Read(ctx, bytes.NewReader(buf.Bytes()), w.root, nil)
		t.Fatalf("a backup whose manifest is over the limit was made; reading it: %v", rerr)
	}
	if !strings.Contains(err.Error(), "3 tenants scheduled for deletion") {
		t.Fatalf("Write: %v, want the tenants scheduled for deletion named as the cause", err)
	}
}

// A file that cannot be read to its end (an I/O error, a stream its
// sender cut off) is that error, not a damaged backup: exit 5 told the
// operator to throw away a file that may be whole.
func TestAReadErrorIsNotADamagedBackup(t *testing.T) {
	w := newWorld(t)
	src := memory.New()
	populate(t, w.keystore(t, src), "acme")
	file := backupOf(t, w, src)
	eio := errors.New("input/output error")
	for _, at := range []int{0, 10, len(file) / 2, len(file) - 1} {
		in := io.MultiReader(bytes.NewReader(file[:at]), iotest.ErrReader(eio))
		_, err := backup.Read(context.Background(), in, w.root, nil)
		if !errors.Is(err, eio) || errors.Is(err, backup.ErrDamaged) {
			t.Errorf("a read failing after %d of %d bytes: %v, want the read's error, not ErrDamaged", at, len(file), err)
		}
	}
	// Cut short without an error is still a damaged (truncated) file.
	if _, err := backup.Read(context.Background(), bytes.NewReader(file[:len(file)/2]), w.root, nil); !errors.Is(err, backup.ErrDamaged) {
		t.Errorf("a truncated file: %v, want ErrDamaged", err)
	}
}

// A process that writes to a store (a server, custos root rewrap)
// announces itself before it checks for a restore, and a forced restore
// refuses to write beside an announced one, judged by the store's clock:
// of a restore and a server starting together, one sees the other. A
// withdrawn record lets the restore go ahead.
func TestAPresenceRecordRefusesAForcedRestore(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	src := memory.New()
	populate(t, w.keystore(t, src), "a")
	file := backupOf(t, w, src)
	target := pgStore(t)
	populate(t, w.keystore(t, target), "b")
	p, err := backup.Announce(ctx, target, "custos server test")
	if err != nil {
		t.Fatal(err)
	}
	w.clock.add(time.Now().Add(10 * time.Minute).Sub(w.clock.now())) // the operator's clock is ahead
	if _, err := restore(w, file, target, backup.RestoreOptions{Force: true}); !errors.Is(err, backup.ErrServersRunning) || !strings.Contains(err.Error(), "custos server test") {
		t.Fatalf("a forced restore beside an announced server: %v, want it refused naming the server", err)
	}
	if err := p.Withdraw(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := restore(w, file, target, backup.RestoreOptions{Force: true}); err != nil {
		t.Fatalf("a forced restore once the server withdrew: %v", err)
	}
	if recs, err := target.List(ctx, backup.PresencePrefix, "", 10); err != nil || len(recs) != 0 {
		t.Fatalf("presence records after the restore: %v, %v; want none (a backup's are not restored)", recs, err)
	}
}

// A process that announces itself on a store a restore has marked is
// refused, and leaves no presence record behind (which would keep that
// restore, run again, refused).
func TestAnAnnouncementOnAStoreBeingRestoredIsRefused(t *testing.T) {
	ctx := context.Background()
	target := memory.New()
	if _, err := target.Put(ctx, backup.MarkerKey, []byte("some-backup"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := backup.Announce(ctx, target, "custos server test"); !errors.Is(err, backup.ErrRestoring) {
		t.Fatalf("Announce on a store being restored: %v, want ErrRestoring", err)
	}
	if recs, err := target.List(ctx, backup.PresencePrefix, "", 10); err != nil || len(recs) != 0 {
		t.Fatalf("presence records after the refusal: %v, %v; want none", recs, err)
	}
}

// A forced restore into a bbolt file holds the file's lock, so no server
// runs on it: leases (and presence records) a killed server left do not
// refuse it for their TTL.
func TestAForcedRestoreIntoBboltIgnoresWhatAKilledServerLeft(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	src := memory.New()
	populate(t, w.keystore(t, src), "a")
	file := backupOf(t, w, src)
	target := bboltStore(t)
	populate(t, w.keystore(t, target), "b")
	l := lease.Lease{Store: target, Key: keystore.LeaseStorageKey, Now: w.clock.now}
	if held, _, err := l.Acquire(ctx, "killed-replica", time.Minute); err != nil || !held {
		t.Fatalf("take the lease: %v, %v", held, err)
	}
	if _, err := backup.Announce(ctx, target, "killed server"); err != nil {
		t.Fatal(err)
	}
	if _, err := restore(w, file, target, backup.RestoreOptions{Force: true}); err != nil {
		t.Fatalf("a forced restore into a bbolt file a killed server left a lease in: %v", err)
	}
}

// A presence record its process left when it was killed is removed by a
// later start once long expired: one per crash would pile up, and travel in
// every backup.
func TestALongExpiredPresenceRecordIsRemovedAtTheNextStart(t *testing.T) {
	ctx := context.Background()
	store := memory.New()
	old := lease.Lease{Store: store, Key: backup.PresencePrefix + "killed", Now: func() time.Time { return time.Now().Add(-3 * time.Hour) }}
	if held, _, err := old.Acquire(ctx, "killed server", backup.PresenceTTL); err != nil || !held {
		t.Fatalf("write the old record: %v, %v", held, err)
	}
	p, err := backup.Announce(ctx, store, "custos server test")
	if err != nil {
		t.Fatal(err)
	}
	recs, err := store.List(ctx, backup.PresencePrefix, "", 10)
	if err != nil || len(recs) != 1 || recs[0].Key == backup.PresencePrefix+"killed" {
		t.Fatalf("presence records after a start: %v, %v; want only the new one", recs, err)
	}
	if err := p.Withdraw(ctx); err != nil {
		t.Fatal(err)
	}
}
