package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/audit"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/lease"
)

// DefaultMaxAge is how old a backup may be for Restore by default: the
// deletion period SaaS providers commonly promise, so that a tenant
// shredded meanwhile cannot come back from an older copy.
const DefaultMaxAge = 90 * 24 * time.Hour

// maxClockSkew is how far in the future a backup may be dated before its
// age is taken as unknown and the backup refused like a too old one.
const maxClockSkew = time.Hour

// MarkerKey is the record a restore in progress leaves in the target, so
// that an interrupted restore of the same backup can be run again (and a
// server refuses to start on a store half restored).
const MarkerKey = "restore/in-progress"

const markerKey = MarkerKey

// restoreBatch and restoreBatchBytes bound one target write.
const (
	restoreBatch      = 500
	restoreBatchBytes = 8 << 20
)

// RestoreOptions configure Restore.
type RestoreOptions struct {
	// Force restores into a store that already holds records (they are
	// overwritten where the backup has the same keys, kept otherwise; but
	// the target's audit trail, which the backup's replaces whole when it
	// has one).
	Force bool
	// MaxAge refuses older backups, and those dated more than an hour
	// ahead (ErrTooOld). Default DefaultMaxAge; negative: no limit.
	MaxAge time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Progress, if set, is called as records are written.
	Progress func(records uint64)
	// Tombstones are shredded tenants known elsewhere (the live store of
	// the deployment, a newer backup): they stay shredded too.
	Tombstones []keystore.Tombstone
	// Deletions are deletions scheduled elsewhere (the live store): a
	// restored tenant of the same incarnation keeps them, as it keeps
	// those the target has, rather than come back active.
	Deletions []keystore.Deletion
	// TakeOver takes a marker renewed within the last minute as a restore
	// that was stopped (the operator knows it: killed, its machine gone),
	// not as one running. If that restore is in fact running, it writes
	// nothing more once this one claims the marker.
	TakeOver bool
}

// RestoreReport says what a restore did.
type RestoreReport struct {
	Manifest *Manifest
	// Written is how many records were written.
	Written uint64
	// Shredded lists the tenants not restored: their deletion date passed
	// or the target holds their tombstone.
	Shredded []string
	// Rescheduled lists the tenants restored with a deletion scheduled
	// since the backup was taken (in the target or opts.Deletions).
	Rescheduled []string
	// Skipped counts records left out on purpose: the shredded tenants'
	// records and leases.
	Skipped uint64
	// Resumed is set when the restore continued one interrupted before.
	Resumed bool
}

// Restore restores the backup that open reads into target. It reads the
// whole file once to authenticate it before writing anything, refuses a
// backup older than MaxAge and a target that holds records (unless Force,
// or unless it is an interrupted restore of the same backup), then reads it
// again and writes every record, except those of tenants that must stay
// shredded and the leases (whose holders are gone). Run again after an
// interruption, it completes with the same result. It is Authenticate
// followed by Authenticated.Restore.
func Restore(ctx context.Context, in io.ReadSeeker, target storage.Store, r root.Root, opts RestoreOptions) (*RestoreReport, error) {
	a, err := Authenticate(ctx, in, r, opts)
	if err != nil {
		return nil, err
	}
	return a.Restore(ctx, target)
}

// Authenticated is a backup read whole and found authentic under its root
// and young enough, that nothing has been written from yet.
type Authenticated struct {
	in       io.ReadSeeker
	r        root.Root
	opts     RestoreOptions
	m        *Manifest
	tombs    []keystore.Tombstone // the backup's
	hasTrail bool                 // the backup holds an audit trail (more than a lease)
}

// Manifest is the authenticated backup's manifest.
func (a *Authenticated) Manifest() *Manifest { return a.m }

// Authenticate reads the whole backup that in holds once, checking it
// under r, and refuses one older than opts.MaxAge. It needs no target, so
// a command can check a backup before it opens (and migrates) the store
// it restores into.
func Authenticate(ctx context.Context, in io.ReadSeeker, r root.Root, opts RestoreOptions) (*Authenticated, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxAge == 0 {
		opts.MaxAge = DefaultMaxAge
	}
	a := &Authenticated{in: in, r: r, opts: opts}
	// Collect the backup's tombstones; write nothing.
	m, err := readAll(ctx, in, r, nil, func(key string, value []byte) error {
		if strings.HasPrefix(key, audit.StoragePrefix) && key != audit.LeaseStorageKey {
			a.hasTrail = true
		}
		if strings.HasPrefix(key, keystore.TombstonePrefix) {
			if ts, err := keystore.ParseTombstone(value); err == nil {
				a.tombs = append(a.tombs, ts)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	age := opts.Now().Sub(m.Created)
	if opts.MaxAge > 0 && age > opts.MaxAge {
		return nil, fmt.Errorf("%w: taken %s, %v ago, the maximum is %v (tenants shredded since could come back; --max-age overrides)", ErrTooOld, m.Created.Format(time.RFC3339), age.Round(time.Hour), opts.MaxAge)
	}
	if opts.MaxAge > 0 && -age > maxClockSkew {
		// Dated by a clock that was ahead: it would pass the maximum age
		// for as long again as that clock's lead.
		return nil, fmt.Errorf("%w: taken %s, %v in the future by this clock (the clock of the machine that took it was ahead); its age cannot be told (--max-age=-1h overrides)", ErrTooOld, m.Created.Format(time.RFC3339), (-age).Round(time.Minute))
	}
	a.m = m
	return a, nil
}

// Restore writes the authenticated backup into target, as the package's
// Restore does after authenticating: it reads the backup again, and fails
// if it no longer matches what Authenticate read.
func (a *Authenticated) Restore(ctx context.Context, target storage.Store) (*RestoreReport, error) {
	in, r, m, opts, hasTrail := a.in, a.r, a.m, a.opts, a.hasTrail
	apply, ok := target.(storage.Applier)
	if !ok {
		return nil, fmt.Errorf("backup: storage %T cannot write in batches", target)
	}
	now := opts.Now()
	rep := &RestoreReport{Manifest: m}

	// 1. The backup was authenticated (Authenticate).
	// 2. The target: empty, or this backup's interrupted restore. The
	// marker's version, read first, is what claiming the target (step 4)
	// expects to find.
	prev, err := target.Get(ctx, markerKey)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("backup: read the target store: %w", err)
	}
	pm := parseMarker(prev.Value)
	if prev.Version != 0 && !pm.renewed.IsZero() && !opts.TakeOver {
		t, err := clockOf(ctx, target, opts.Now)
		if err != nil {
			return nil, err
		}
		// A marker dated more than markerFresh ahead was written by a
		// clock that was wrong: stale, or it could lock the store for as
		// long. (Taking over a restore that is in fact running is safe:
		// it then writes nothing more.)
		if age := t.Sub(pm.renewed); age < markerFresh && age > -markerFresh {
			return nil, fmt.Errorf("%w (of backup %s, its marker renewed at %s by the store's clock); if it was stopped, run again a minute after that, or now with --take-over", ErrRestoreRunning, pm.id, pm.renewed.UTC().Format(time.RFC3339))
		}
	}
	existing, err := target.List(ctx, "", "", 2)
	if err != nil {
		return nil, fmt.Errorf("backup: read the target store: %w", err)
	}
	empty := len(existing) == 0
	if !empty {
		switch {
		case prev.Version != 0 && pm.id == m.ID:
			rep.Resumed = true
		case !opts.Force:
			return nil, ErrTargetNotEmpty
		}
		t, err := clockOf(ctx, target, opts.Now)
		if err != nil {
			return nil, err
		}
		if err := noServers(ctx, target, t); err != nil {
			return nil, err
		}
	}

	// 3. Which tenants stay shredded: deleted by now per the manifest, or
	// with a tombstone (in the backup, the target or opts) that covers the
	// backed-up tenant (created no later than the tombstone's tenant).
	shred := map[string]bool{}
	// keep are the tombstones the target gets for the tenants kept out, so
	// that a later restore of an older backup into it keeps them out too.
	keep := map[string]keystore.Tombstone{}
	for _, t := range m.Deleting {
		if !t.DeleteTime.IsZero() && !now.Before(t.DeleteTime) {
			shred[t.ID] = true
			keep[t.ID] = keystore.Tombstone{Tenant: t.ID, CreateTime: t.CreateTime.UTC(), ShredTime: now.UTC()}
		}
	}
	tombs := slices.Concat(a.tombs, opts.Tombstones)
	targetTombs, targetDeletions, err := Deletions(ctx, target, now)
	if err != nil {
		return nil, err
	}
	// The earliest deletion scheduled for each tenant, by the target or
	// opts: carried onto the backup's record of the same incarnation.
	deletions := map[string]keystore.Deletion{}
	for _, d := range slices.Concat(targetDeletions, opts.Deletions) {
		if cur, ok := deletions[d.Tenant]; !ok || d.CreateTime.After(cur.CreateTime) ||
			(d.CreateTime.Equal(cur.CreateTime) && d.DeleteTime.Before(cur.DeleteTime)) {
			deletions[d.Tenant] = d
		}
	}
	// newest is each tenant's newest tombstone (the latest incarnation
	// shredded) from the backup, opts and the target: the one the target
	// keeps, so that a restore never replaces a tombstone by an older one.
	// inTarget marks the tenants whose newest tombstone the target holds.
	newest, inTarget := map[string]keystore.Tombstone{}, map[string]bool{}
	for i, ts := range slices.Concat(targetTombs, tombs) { // the target's first: kept on a tie (tombs: the backup's and opts')
		if cur, ok := newest[ts.Tenant]; !ok || ts.CreateTime.After(cur.CreateTime) {
			newest[ts.Tenant], inTarget[ts.Tenant] = ts, i < len(targetTombs)
		}
	}
	inBackup := map[string]bool{} // the tombstoned tenants the backup holds
	if len(newest) > 0 {
		// The backed-up tenants' creation times, read for the tombstoned
		// ones only (tenant records sort after key records, so this is a
		// pass of its own).
		if _, err := readAll(ctx, in, r, m, func(key string, value []byte) error {
			t, ok := keystore.TenantOfStorageKey(key)
			if _, tombstoned := newest[t]; !ok || !tombstoned {
				return nil
			}
			inBackup[t] = true
			info, err := keystore.ParseTenantRecord(value)
			if err != nil {
				return fmt.Errorf("backup: tenant %s: %w", t, err)
			}
			if ts := newest[t]; ts.Covers(info.CreateTime) {
				shred[t] = true
				keep[t] = ts
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	// A tenant the target holds that a known tombstone covers goes too,
	// whether or not the backup holds it (a forced restore of a newer
	// backup over a store that kept a shredded tenant's records). Its
	// records in the target are cleared; the backup's, of a later
	// incarnation the tombstone does not cover, are still restored.
	clearTarget := maps.Clone(shred)
	for t, ts := range newest {
		if shred[t] {
			continue
		}
		rec, err := target.Get(ctx, keystore.TenantStorageKey(t))
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("backup: read the target's tenant %s: %w", t, err)
		}
		if info, err := keystore.ParseTenantRecord(rec.Value); err == nil && ts.Covers(info.CreateTime) {
			clearTarget[t] = true
			keep[t] = ts
		}
	}
	// Reported: the tenants left out of the backup's records, and those
	// cleared from the target that the backup does not bring back.
	for t := range clearTarget {
		if shred[t] || !inBackup[t] {
			rep.Shredded = append(rep.Shredded, t)
		}
	}
	slices.Sort(rep.Shredded)

	// 4. Write, marked as in progress: the shredded tenants' tombstones
	// first, then their records already in the target go (a forced
	// restore, an interrupted one re-run after a deletion date passed),
	// then the backup's records.
	ours, err := claim(ctx, target, apply, m.ID, prev, empty, opts.Now)
	if err != nil {
		return nil, err
	}
	// write applies ops with the marker renewed in the same transaction,
	// expecting the version this restore wrote last: a restore whose
	// marker another took over (its own was stale) writes nothing more. A
	// marker renewed within markerFresh tells a second run (of any backup)
	// that this restore is running.
	lastRenew := opts.Now() // by this machine's clock: when to renew
	write := func(ops []storage.Op) error {
		t, err := clockOf(ctx, target, opts.Now)
		if err != nil {
			return err
		}
		val := marker{m.ID, t}.encode()
		// Every other op expects any version: a conflict is the marker's.
		if err := apply.Apply(ctx, append(ops, storage.Op{Key: markerKey, Value: val, Expect: ours})); err != nil {
			if errors.Is(err, storage.ErrConflict) {
				return errTakenOver
			}
			return fmt.Errorf("backup: write the target: %w", err)
		}
		rec, err := target.Get(ctx, markerKey)
		if err != nil {
			return fmt.Errorf("backup: read the target's marker: %w", err)
		}
		if !bytes.Equal(rec.Value, val) {
			return errTakenOver
		}
		ours, lastRenew = rec.Version, opts.Now()
		return nil
	}
	var ops []storage.Op
	size := 0
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		if err := write(ops); err != nil {
			return err
		}
		rep.Written += uint64(len(ops))
		ops, size = ops[:0], 0
		if opts.Progress != nil {
			opts.Progress(rep.Written)
		}
		return nil
	}
	add := func(op storage.Op) error {
		ops = append(ops, op)
		size += len(op.Key) + len(op.Value)
		if len(ops) == restoreBatch || size >= restoreBatchBytes {
			return flush()
		}
		return nil
	}
	addTombstone := func(ts keystore.Tombstone) error {
		b, _ := json.Marshal(ts)
		return add(storage.Op{Key: keystore.TombstonePrefix + ts.Tenant, Value: b, Expect: storage.AnyVersion})
	}
	// clearPrefix deletes the target's records under p, but those keep
	// says to keep. It pages on, never back to the start: what a page
	// deletes is only deleted when the batch is flushed.
	clearPrefix := func(p string, keep func(key string) bool) error {
		for after := ""; ; {
			recs, err := target.List(ctx, p, after, restoreBatch)
			if err != nil {
				return err
			}
			for _, rec := range recs {
				if keep == nil || !keep(rec.Key) {
					ops = append(ops, storage.Op{Key: rec.Key, Delete: true, Expect: storage.AnyVersion})
				}
			}
			if err := flush(); err != nil {
				return err
			}
			if len(recs) < restoreBatch {
				return nil
			}
			after = recs[len(recs)-1].Key
		}
	}
	for _, t := range slices.Sorted(maps.Keys(clearTarget)) {
		if err := addTombstone(keep[t]); err != nil {
			return nil, err
		}
		if err := flush(); err != nil { // the tombstone before any delete
			return nil, err
		}
		// A tenant of this id in the target that the tombstone does not
		// cover (created after the shred) is another tenant: it stays.
		if rec, err := target.Get(ctx, keystore.TenantStorageKey(t)); err == nil {
			if info, err := keystore.ParseTenantRecord(rec.Value); err == nil && !keep[t].Covers(info.CreateTime) {
				continue
			}
		} else if !errors.Is(err, storage.ErrNotFound) {
			return nil, fmt.Errorf("backup: read the target's tenant %s: %w", t, err)
		}
		for _, p := range keystore.TenantScopedPrefixes(t) {
			if err := clearPrefix(p, nil); err != nil {
				return nil, fmt.Errorf("backup: clear shredded tenant %s: %w", t, err)
			}
		}
		// The tenant record last: a restore interrupted before it finds
		// the covered tenant again when run again, and clears the rest.
		if err := add(storage.Op{Key: keystore.TenantStorageKey(t), Delete: true, Expect: storage.AnyVersion}); err != nil {
			return nil, err
		}
		if err := flush(); err != nil {
			return nil, err
		}
	}
	if !empty && hasTrail {
		// The target's audit trail gives way to the backup's whole: one
		// of a later history (a forced restore over the live deployment)
		// would leave events, node hashes and checkpoints past the
		// backup's tree, which the log could neither extend nor sign.
		// The events the target recorded since the backup leave the
		// trail; a tenant's kept checkpoint shows the rollback. A backup
		// without a trail (audit off) leaves the target's as it is.
		if err := clearPrefix(audit.StoragePrefix, func(key string) bool { return key == audit.LeaseStorageKey }); err != nil {
			return nil, fmt.Errorf("backup: clear the target's audit trail: %w", err)
		}
	}
	rep.Written = 0
	if _, err := readAll(ctx, in, r, m, func(key string, value []byte) error {
		if key == markerKey || skipKey(key, shred) {
			rep.Skipped++
			if opts.Now().Sub(lastRenew) >= markerRenew { // a long run of skipped records
				return write(nil)
			}
			return nil
		}
		if strings.HasPrefix(key, keystore.TombstonePrefix) {
			if _, err := keystore.ParseTombstone(value); err == nil {
				return nil // the newest of each tenant's is written below
			}
		}
		if t, ok := keystore.TenantOfStorageKey(key); ok {
			if d, ok := deletions[t]; ok {
				v, hintKey, hint, changed, err := keystore.WithDeletion(value, d)
				if err != nil {
					return fmt.Errorf("backup: tenant %s: %w", t, err)
				}
				if changed {
					value = v
					rep.Rescheduled = append(rep.Rescheduled, t)
					if err := add(storage.Op{Key: hintKey, Value: hint, Expect: storage.AnyVersion}); err != nil {
						return err
					}
				}
			}
		}
		return add(storage.Op{Key: key, Value: value, Expect: storage.AnyVersion})
	}); err != nil {
		return nil, err
	}
	// The other tenants' newest tombstones, where the target does not
	// hold that one already.
	for _, t := range slices.Sorted(maps.Keys(newest)) {
		if clearTarget[t] || inTarget[t] {
			continue
		}
		if err := addTombstone(newest[t]); err != nil {
			return nil, err
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if err := apply.Apply(ctx, []storage.Op{{Key: markerKey, Delete: true, Expect: ours}}); err != nil {
		if errors.Is(err, storage.ErrConflict) {
			return nil, errTakenOver
		}
		return nil, fmt.Errorf("backup: unmark the target: %w", err)
	}
	return rep, nil
}

var (
	// ErrTargetNotEmpty refuses a restore into a store that holds
	// records, unless forced.
	ErrTargetNotEmpty = errors.New("backup: the target store is not empty; restore into an empty store, or pass --force to write over it")
	// ErrRestoreRunning refuses a restore that met another one writing to
	// the same target: retry once it has finished (or its marker is stale).
	ErrRestoreRunning = errors.New("backup: another restore is writing to the target store; let it finish (or stop it), then run this one again")
	// ErrServersRunning refuses a forced restore over a store on which
	// servers run (one holds a lease).
	ErrServersRunning = errors.New("backup: servers are running on the target store")
	// ErrTooOld refuses a backup older than RestoreOptions.MaxAge, or dated
	// more than an hour ahead of the restore's clock (its age unknown).
	ErrTooOld = errors.New("backup: older than the maximum age")
	// errTakenOver stops a restore whose marker another one replaced.
	errTakenOver = errors.New("backup: another restore marked the target while this one wrote to it: the target holds records of both; restore one backup again with --force, alone")
)

// A restore renews its marker with every batch it writes, and every
// markerRenew through long runs of records it skips; a marker renewed
// within markerFresh is a restore running, which another refuses to take
// over (an interrupted restore is resumed once its marker is older).
const (
	markerRenew = 10 * time.Second
	markerFresh = time.Minute
)

// marker is the marker record's content: the backup being restored and
// when its restore last renewed it ("ID\nUNIX-NANOS"; a marker of a
// version before renewals holds the ID alone).
type marker struct {
	id      string
	renewed time.Time
}

func parseMarker(v []byte) marker {
	id, ts, ok := strings.Cut(string(v), "\n")
	m := marker{id: id}
	if n, err := strconv.ParseInt(ts, 10, 64); ok && err == nil {
		m.renewed = time.Unix(0, n)
	}
	return m
}

func (m marker) encode() []byte {
	return []byte(m.id + "\n" + strconv.FormatInt(m.renewed.UnixNano(), 10))
}

// MarkerBackupID is the id of the backup whose restore left the marker
// value v.
func MarkerBackupID(v []byte) string { return parseMarker(v).id }

// clockOf is the target store's clock where it has one (PostgreSQL's, so
// that restores on machines whose clocks differ agree), else now.
func clockOf(ctx context.Context, target storage.Store, now func() time.Time) (time.Time, error) {
	if c, ok := target.(storage.Clock); ok {
		t, err := c.Now(ctx)
		if err != nil {
			return time.Time{}, fmt.Errorf("backup: read the target store's clock: %w", err)
		}
		return t, nil
	}
	return now(), nil
}

// claim marks the target as being restored, by compare-and-swap on the
// marker as step 2 read it (prev), so that of two restores started
// together only one writes; and returns the marker's version, which
// unmarking expects. Then, with the marker in place (servers starting now
// refuse the store), it checks what step 2 saw still holds: a target that
// was empty holds nothing else now (another restore did not write and
// finish meanwhile), and no server holds a lease. If not, it puts the
// marker back as it was.
func claim(ctx context.Context, target storage.Store, apply storage.Applier, id string, prev storage.Record, empty bool, now func() time.Time) (uint64, error) {
	t, err := clockOf(ctx, target, now)
	if err != nil {
		return 0, err
	}
	ours, err := target.Put(ctx, markerKey, marker{id, t}.encode(), prev.Version)
	if errors.Is(err, storage.ErrConflict) {
		return 0, ErrRestoreRunning
	}
	if err != nil {
		return 0, fmt.Errorf("backup: mark the target: %w", err)
	}
	check := noServers(ctx, target, t)
	if check == nil && empty {
		recs, err := target.List(ctx, "", "", 2)
		switch {
		case err != nil:
			check = fmt.Errorf("backup: read the target store: %w", err)
		case len(recs) != 1 || recs[0].Key != markerKey:
			check = errors.New("backup: the target store was written to while this restore read the backup (another restore, or a server); restore into an empty store, or pass --force to write over it")
		}
	}
	if check == nil {
		return ours, nil
	}
	undo := storage.Op{Key: markerKey, Delete: true, Expect: ours}
	if prev.Version != 0 {
		undo = storage.Op{Key: markerKey, Value: prev.Value, Expect: ours}
	}
	if err := apply.Apply(ctx, []storage.Op{undo}); err != nil {
		return 0, fmt.Errorf("%w (and putting the target's marker back failed: %w)", check, err)
	}
	return 0, check
}

// noServers refuses a target on which servers are running: they would
// serve, and write to, a store half restored (they check for a restore
// only at start), and could shred a tenant the restore then writes back.
// A server (and custos root rewrap) holds a presence record while it runs
// (Announce), and a lease while it schedules or integrates the trail;
// both are judged at now (the store's clock where it has one: clockOf).
func noServers(ctx context.Context, target storage.Store, now time.Time) error {
	if x, ok := target.(storage.Exclusive); ok && x.Exclusive() {
		// Opened by this process alone (a bbolt file, locked while
		// open): no server runs on it, whatever leases a killed one
		// left behind.
		return nil
	}
	if err := presentWriters(ctx, target, now); err != nil {
		return err
	}
	for _, key := range []string{keystore.LeaseStorageKey, audit.LeaseStorageKey} {
		holder, until, held, err := lease.Lease{Store: target, Key: key, Now: func() time.Time { return now }}.Holder(ctx)
		if err != nil {
			return fmt.Errorf("backup: read the target store: %w", err)
		}
		if held {
			return fmt.Errorf("%w (%s is held by %s until %s): stop them before restoring over it", ErrServersRunning, key, holder, until.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// skipKey: the leases and presence records (their holders are gone) and
// shredded tenants' records.
func skipKey(key string, shred map[string]bool) bool {
	if key == keystore.LeaseStorageKey || key == audit.LeaseStorageKey || strings.HasPrefix(key, PresencePrefix) {
		return true
	}
	for _, p := range []string{"tenants/", "keys/", "lockout/"} {
		if rest, ok := strings.CutPrefix(key, p); ok {
			t, _, _ := strings.Cut(rest, "/")
			return shred[t] && keystore.TenantOwnsStorageKey(t, key)
		}
	}
	return false
}

// readAll reads the backup from its start; with want set, the file must
// still be that backup (same id and digest) or the pass fails.
func readAll(ctx context.Context, in io.ReadSeeker, r root.Root, want *Manifest, fn func(string, []byte) error) (*Manifest, error) {
	if _, err := in.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("backup: rewind: %w", err)
	}
	m, err := Read(ctx, in, r, fn)
	if err != nil {
		return nil, err
	}
	if want != nil && (m.ID != want.ID || m.Digest != want.Digest) {
		return nil, fmt.Errorf("%w: the file changed while it was being restored", ErrDamaged)
	}
	return m, nil
}

// Summary is a manifest's tenant states, for reports.
func (m *Manifest) Summary() string {
	b, _ := json.Marshal(m.TenantStates)
	return string(b)
}

// TenantCount is how many tenants the backup holds.
func (m *Manifest) TenantCount() int {
	n := 0
	for _, c := range m.TenantStates {
		n += c
	}
	return n
}

// ShreddedOrDue lists what a store says must stay shredded (for
// RestoreOptions.Tombstones, and the target of a restore): its tombstones,
// and one made up at now for each tenant scheduled for deletion whose date
// has passed but that the scheduler has not shredded yet (its server was
// down, or the shred keeps failing), which would otherwise come back. The
// tenants are read before the tombstones: a shred writes the tombstone
// before it deletes the tenant record, so a tenant shredded while this
// reads is seen in one or the other (the other order could miss it in
// both, on a live store).
func ShreddedOrDue(ctx context.Context, s storage.Store, now time.Time) ([]keystore.Tombstone, error) {
	tombs, _, err := Deletions(ctx, s, now)
	return tombs, err
}

// Deletions reads what a store says of deletions: ShreddedOrDue's
// tombstones, and the deletions it has scheduled that are not due yet
// (for RestoreOptions.Deletions).
func Deletions(ctx context.Context, s storage.Store, now time.Time) (tombs []keystore.Tombstone, scheduled []keystore.Deletion, err error) {
	var out []keystore.Tombstone
	for after := ""; ; {
		recs, err := s.List(ctx, keystore.TenantStoragePrefix, after, 1000)
		if err != nil {
			return nil, nil, fmt.Errorf("backup: list tenants: %w", err)
		}
		for _, rec := range recs {
			after = rec.Key
			t, ok := keystore.TenantOfStorageKey(rec.Key)
			if !ok {
				continue
			}
			info, err := keystore.ParseTenantRecord(rec.Value)
			if err != nil {
				return nil, nil, fmt.Errorf("backup: tenant %s: %w", t, err)
			}
			if info.State != keystore.TenantDeleteScheduled || info.DeleteTime.IsZero() {
				continue
			}
			if now.Before(info.DeleteTime) {
				scheduled = append(scheduled, keystore.Deletion{Tenant: t, CreateTime: info.CreateTime, DeleteTime: info.DeleteTime})
			} else {
				out = append(out, keystore.Tombstone{Tenant: t, CreateTime: info.CreateTime.UTC(), ShredTime: now.UTC()})
			}
		}
		if len(recs) < 1000 {
			break
		}
	}
	stored, err := Tombstones(ctx, s)
	if err != nil {
		return nil, nil, err
	}
	return append(out, stored...), scheduled, nil
}

// Tombstones lists the tombstones a store holds (for
// RestoreOptions.Tombstones).
func Tombstones(ctx context.Context, s storage.Store) ([]keystore.Tombstone, error) {
	var out []keystore.Tombstone
	for after := ""; ; {
		recs, err := s.List(ctx, keystore.TombstonePrefix, after, 1000)
		if err != nil {
			return nil, fmt.Errorf("backup: list tombstones: %w", err)
		}
		for _, rec := range recs {
			if ts, err := keystore.ParseTombstone(rec.Value); err == nil {
				out = append(out, ts)
			}
			after = rec.Key
		}
		if len(recs) < 1000 {
			return out, nil
		}
	}
}
