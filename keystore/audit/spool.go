package audit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/custos-kms/custos/internal/durable"
)

// The spool is a local append-only journal of queue records: those the
// store could not take, or, in journal-first mode (bbolt), every one. It
// is a sequence of segment files PATH.<16 hex digits>, each created full
// size and zero-filled, so that an append and its fdatasync change no file
// metadata (about half the cost of appending to a growing file); a segment
// is deleted once everything in it is in the store, and the last one is
// zeroed and reused when everything is.
//
// Each entry: a 4-byte big-endian length n, a 4-byte CRC-32C of the
// payload, then the payload of n bytes: a 2-byte key length, the queue key,
// the queue record's value. An entry is written and synced before the
// events in it are acknowledged; a torn last entry (a crash in the middle
// of writing it) was never acknowledged and is cut off when the spool is
// opened. An entry whose payload fails its CRC while intact entries
// follow it was damaged on disk: it is skipped (its events are lost, and
// logged as such), and the entries after it are kept. A damaged length
// cannot be told from a torn write, and the rest of its segment is cut.

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// syncEntry makes appended entries durable: datasync, replaced by tests
// that count or fail syncs.
var syncEntry = datasync

// errSpoolCorrupt: an entry no longer reads back as written; it cannot be
// shipped.
var errSpoolCorrupt = errors.New("audit: corrupt spool entry")

// maxSpoolEntry bounds one entry's payload when reading it back.
const maxSpoolEntry = 2 + 512 + MaxBatchEvents*(MaxLeafBytes+3) + 1

// segmentBytes: a segment takes no new entries past this size.
const segmentBytes = 8 << 20

// spoolEntry locates one entry not yet shipped.
type spoolEntry struct {
	seg      uint64 // segment number
	off, end int64  // the entry's payload is at [off, end) of the segment
	key      string
}

type segment struct {
	n     uint64
	f     *os.File
	size  int64
	dirty bool // written since its last sync (lazy spools only)
}

type spool struct {
	prefix string
	lock   *os.File   // PATH.lock, flocked while the spool is open
	segs   []*segment // in order; the last takes appends
	// lazy: append leaves syncing to sync, called on a timer (the writer's
	// SyncInterval); an entry is in the operating system, not yet on
	// disk, when append returns.
	lazy bool
	// syncErr is the first failed sync of a lazy spool: what it wrote may
	// be lost, so every later append fails with it.
	syncErr error
}

func (s *spool) segPath(n uint64) string { return segPath(s.prefix, n) }

func segPath(prefix string, n uint64) string { return fmt.Sprintf("%s.%016x", prefix, n) }

// spoolDir splits a spool prefix into its directory and its files' base
// ("…/spool/" names files ".<n>" in that directory).
func spoolDir(prefix string) (dir, base string) {
	dir, base = filepath.Split(prefix)
	if dir == "" {
		dir = "."
	}
	return dir, base
}

// spoolSegments lists the segment files in dir (regular files named
// <base>.<16 hex digits>) by base. The directory is read, not globbed: a
// path holding a glob's special characters ("[") must not hide segments.
func spoolSegments(dir string) (map[string][]uint64, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: spool directory: %w", err)
	}
	segs := map[string][]uint64{}
	for _, de := range des {
		name := de.Name()
		i := strings.LastIndexByte(name, '.')
		if i < 0 || len(name)-i-1 != 16 || !de.Type().IsRegular() {
			continue
		}
		if n, err := strconv.ParseUint(name[i+1:], 16, 64); err == nil {
			segs[name[:i]] = append(segs[name[:i]], n)
		}
	}
	return segs, nil
}

// openSpool opens the spool at prefix (creating its first segment) and
// returns the entries in it, in order; torn is how many bytes of a torn
// last entry it cut off, corrupt how many entries it skipped because they
// no longer read back as written while intact entries follow them.
func openSpool(prefix string) (sp *spool, entries []spoolEntry, torn int64, corrupt int, err error) {
	s := &spool{prefix: prefix}
	lock, err := lockFile(prefix + ".lock")
	if err != nil {
		return nil, nil, 0, 0, fmt.Errorf("audit: spool %s: %w", prefix, err)
	}
	s.lock = lock
	dir, base := spoolDir(prefix)
	all, err := spoolSegments(dir)
	if err != nil {
		s.close()
		return nil, nil, 0, 0, err
	}
	nums := all[base]
	slices.Sort(nums)
	fresh := len(nums) == 0
	if fresh {
		nums = []uint64{1}
	}
	for _, n := range nums {
		f, err := os.OpenFile(s.segPath(n), os.O_RDWR, 0o600)
		if errors.Is(err, os.ErrNotExist) && fresh {
			f, err = createSegment(s.segPath(n))
		}
		if err != nil {
			s.close()
			return nil, nil, 0, 0, fmt.Errorf("audit: open spool: %w", err)
		}
		seg := &segment{n: n, f: f}
		s.segs = append(s.segs, seg)
		st, err := f.Stat()
		if err != nil {
			s.close()
			return nil, nil, 0, 0, fmt.Errorf("audit: spool: %w", err)
		}
		es, good, bad, err := readSegment(f, st.Size(), n)
		corrupt += bad
		if err != nil {
			s.close()
			return nil, nil, 0, 0, err
		}
		if cut, err := nonZero(f, good, st.Size()); err != nil {
			s.close()
			return nil, nil, 0, 0, err
		} else if cut > 0 {
			// A torn or failed write: never acknowledged (in an earlier
			// segment, the writer moved on to a new one after it).
			if err := zero(f, good, st.Size()); err != nil {
				s.close()
				return nil, nil, 0, 0, fmt.Errorf("audit: spool: cut torn tail: %w", err)
			}
			torn += cut
		}
		seg.size = good
		entries = append(entries, es...)
	}
	return s, entries, torn, corrupt, nil
}

// readSegment reads a segment's entries; good is the offset after the last
// whole, intact entry. An entry that fails its checksum while an intact
// entry follows it cannot be a torn write (only the last entry can be):
// it is skipped and counted in corrupt, and reading goes on, so one
// damaged entry does not cost the acknowledged entries after it.
func readSegment(r io.ReaderAt, size int64, n uint64) (entries []spoolEntry, good int64, corrupt int, err error) {
	var off int64
	bad := 0 // damaged entries since the last intact one
	for {
		e, next, err := readEntry(r, size, n, off)
		if err != nil {
			return nil, 0, 0, err
		}
		switch {
		case e != nil:
			entries = append(entries, *e)
			corrupt += bad // an intact entry follows them: damage, not a torn tail
			bad, good = 0, next
		case next > off:
			bad++
		default:
			return entries, good, corrupt, nil
		}
		off = next
	}
}

// readEntry reads the entry at off. It returns the entry and the offset
// after it; no entry and next > off for a whole entry whose payload fails
// its checksum or framing; no entry and next == off where no entry is.
func readEntry(r io.ReaderAt, segSize int64, n uint64, off int64) (e *spoolEntry, next int64, err error) {
	var hdr [8]byte
	if _, err := r.ReadAt(hdr[:], off); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, off, nil
		}
		return nil, off, fmt.Errorf("audit: read spool: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[:4])
	if size < 2 || size > maxSpoolEntry || int64(size) > segSize-off-8 {
		return nil, off, nil // no entry here, or one cut short
	}
	p := make([]byte, size)
	if _, err := r.ReadAt(p, off+8); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, off, nil
		}
		return nil, off, fmt.Errorf("audit: read spool: %w", err)
	}
	next = off + 8 + int64(size)
	if crc32.Checksum(p, crcTable) != binary.BigEndian.Uint32(hdr[4:]) {
		return nil, next, nil
	}
	key, _, ok := splitPayload(p)
	if !ok {
		return nil, next, nil
	}
	return &spoolEntry{seg: n, off: off + 8, end: next, key: string(key)}, next, nil
}

// splitPayload splits an entry's payload into its key (a 2-byte length,
// then the key, never empty) and its value.
func splitPayload(p []byte) (key, value []byte, ok bool) {
	if len(p) < 2 {
		return nil, nil, false
	}
	kl := int(binary.BigEndian.Uint16(p))
	if kl == 0 || 2+kl > len(p) {
		return nil, nil, false
	}
	return p[2 : 2+kl], p[2+kl:], true
}

// append writes one entry to the last segment and, unless the spool is
// lazy, syncs it, starting a new segment when the last is full.
func (s *spool) append(key string, value []byte) (spoolEntry, error) {
	if s.syncErr != nil {
		return spoolEntry{}, s.syncErr
	}
	last := s.segs[len(s.segs)-1]
	if need := int64(8 + 2 + len(key) + len(value)); last.size > 0 && last.size+need > segmentBytes {
		n := last.n + 1
		f, err := createSegment(s.segPath(n))
		if err != nil {
			return spoolEntry{}, fmt.Errorf("audit: new spool segment: %w", err)
		}
		last = &segment{n: n, f: f}
		s.segs = append(s.segs, last)
	}
	p := make([]byte, 8, 8+2+len(key)+len(value))
	p = binary.BigEndian.AppendUint16(p, uint16(len(key)))
	p = append(p, key...)
	p = append(p, value...)
	binary.BigEndian.PutUint32(p[:4], uint32(len(p)-8))
	binary.BigEndian.PutUint32(p[4:8], crc32.Checksum(p[8:], crcTable))
	if err := writeAt(last.f, p, last.size); err != nil {
		// Best effort: no half entry stays behind (a start cuts a torn
		// tail anyway, and the next entry is written over it). The sync
		// after it may be the one to report that earlier, unsynced
		// entries of a lazy spool never reached the disk (the kernel
		// reports a writeback error once): only that failure stops the
		// spool, not a write that fails while the disk is full.
		_ = writeZeros(last.f, last.size, last.size+int64(len(p)))
		if serr := syncEntry(last.f); serr != nil && s.lazy {
			s.syncErr = fmt.Errorf("audit: sync spool: %w", serr)
		}
		return spoolEntry{}, fmt.Errorf("audit: write spool: %w", err)
	}
	if s.lazy {
		last.dirty = true
	} else if err := syncEntry(last.f); err != nil {
		_ = zero(last.f, last.size, last.size+int64(len(p)))
		return spoolEntry{}, fmt.Errorf("audit: sync spool: %w", err)
	}
	e := spoolEntry{seg: last.n, off: last.size + 8, end: last.size + int64(len(p)), key: key}
	last.size += int64(len(p))
	return e, nil
}

// sync makes what a lazy spool wrote since its last sync durable. After a
// failure it keeps failing, and so does append: the kernel may have
// dropped the unsynced pages, so nothing more is acknowledged.
func (s *spool) sync() error {
	if s.syncErr != nil {
		return s.syncErr
	}
	for _, seg := range s.segs {
		if !seg.dirty {
			continue
		}
		if err := syncEntry(seg.f); err != nil {
			s.syncErr = fmt.Errorf("audit: sync spool: %w", err)
			return s.syncErr
		}
		seg.dirty = false
	}
	return nil
}

// read returns an entry's queue record value.
func (s *spool) read(e spoolEntry) ([]byte, error) {
	for _, seg := range s.segs {
		if seg.n == e.seg {
			p := make([]byte, 8+e.end-e.off)
			if _, err := seg.f.ReadAt(p, e.off-8); err != nil {
				return nil, fmt.Errorf("audit: read spool: %w", err)
			}
			if binary.BigEndian.Uint32(p) != uint32(e.end-e.off) || crc32.Checksum(p[8:], crcTable) != binary.BigEndian.Uint32(p[4:]) {
				return nil, fmt.Errorf("audit: spool entry at %d of segment %d changed on disk: %w", e.off, e.seg, errSpoolCorrupt)
			}
			key, value, ok := splitPayload(p[8:])
			if !ok || string(key) != e.key {
				return nil, fmt.Errorf("audit: spool entry at %d of segment %d changed on disk: %w", e.off, e.seg, errSpoolCorrupt)
			}
			return value, nil
		}
	}
	return nil, fmt.Errorf("audit: spool segment %d is gone", e.seg)
}

// release deletes the segments before seg (everything in them is in the
// store); with everything shipped (seg 0), it empties the last one.
func (s *spool) release(seg uint64) error {
	for len(s.segs) > 1 && (seg == 0 || s.segs[0].n < seg) {
		old := s.segs[0]
		old.f.Close()
		if err := os.Remove(s.segPath(old.n)); err != nil {
			return fmt.Errorf("audit: remove shipped spool segment: %w", err)
		}
		s.segs = s.segs[1:]
	}
	if seg == 0 && s.segs[0].size > 0 {
		if err := zero(s.segs[0].f, 0, s.segs[0].size); err != nil {
			// Part of it may read as zeros now, and an entry appended
			// after them would be cut as a torn tail at the next start:
			// later entries go to a new segment, and this one (all
			// shipped) goes at the next release. Without a new one, the
			// spool takes no more entries.
			if f, nerr := createSegment(s.segPath(s.segs[0].n + 1)); nerr != nil {
				s.syncErr = fmt.Errorf("audit: empty spool: %w", err)
			} else {
				s.segs = append(s.segs, &segment{n: s.segs[0].n + 1, f: f})
			}
			return fmt.Errorf("audit: empty spool: %w", err)
		}
		s.segs[0].size, s.segs[0].dirty = 0, false // zero synced it
	}
	return nil
}

// createSegment creates a zero-filled segment file of segmentBytes and
// makes it and its directory entry durable.
func createSegment(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if err := zero(f, 0, segmentBytes); err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	if err := durable.SyncDir(filepath.Dir(path)); err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	return f, nil
}

// zero overwrites [from, to) of f with zeros and syncs it.
func zero(f *os.File, from, to int64) error {
	if err := writeZeros(f, from, to); err != nil {
		return err
	}
	return datasync(f)
}

// writeZeros overwrites [from, to) of f with zeros, without syncing.
func writeZeros(f *os.File, from, to int64) error {
	z := make([]byte, min(to-from, 1<<20))
	for off := from; off < to; off += int64(len(z)) {
		if err := writeAt(f, z[:min(int64(len(z)), to-off)], off); err != nil {
			return err
		}
	}
	return nil
}

// writeAt writes p at off; a variable so that tests can make writes fail
// as a full disk does.
var writeAt = func(f *os.File, p []byte, off int64) error {
	_, err := f.WriteAt(p, off)
	return err
}

// nonZero returns how many bytes from the first non-zero byte in
// [from, to) of f to to, or 0 if they are all zero.
func nonZero(f *os.File, from, to int64) (int64, error) {
	buf := make([]byte, 1<<20)
	for off := from; off < to; off += int64(len(buf)) {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), to-off)], off)
		for i, b := range buf[:n] {
			if b != 0 {
				return to - (off + int64(i)), nil
			}
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("audit: read spool: %w", err)
		}
	}
	return 0, nil
}

// bytes is the spool's size on disk.
func (s *spool) bytes() int64 {
	var n int64
	for _, seg := range s.segs {
		n += seg.size
	}
	return n
}

func (s *spool) close() error {
	var first error
	if s.lock != nil {
		s.lock.Close() // releases the flock
	}
	for _, seg := range s.segs {
		if err := seg.f.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// StrandedSpool is another spool beside one and the events it holds.
type StrandedSpool struct {
	Path   string // its prefix, as audit.spool names it
	Events int    // entries not shipped (each a batch of one or more events)
}

// StrandedSpools lists the other spools in prefix's directory that hold
// entries not shipped, reading them without taking their locks or
// changing them. A PostgreSQL server's default spool is named after its
// listen address, and a journal after audit.spool: one started with
// another leaves the events of the earlier one where no server ships them.
// A spool a running server uses is listed too while it holds entries.
func StrandedSpools(prefix string) ([]StrandedSpool, error) {
	dir, base := spoolDir(prefix)
	segs, err := spoolSegments(dir)
	if err != nil {
		return nil, err
	}
	var out []StrandedSpool
	for b, ns := range segs {
		if b == base {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, b+".lock")); err != nil {
			continue // not a spool's
		}
		events := 0
		for _, n := range ns {
			f, err := os.Open(segPath(filepath.Join(dir, b), n))
			if err != nil {
				continue
			}
			if st, err := f.Stat(); err == nil {
				es, _, _, _ := readSegment(f, st.Size(), n)
				events += len(es)
			}
			f.Close()
		}
		if events > 0 {
			out = append(out, StrandedSpool{Path: filepath.Join(dir, b), Events: events})
		}
	}
	slices.SortFunc(out, func(a, b StrandedSpool) int { return strings.Compare(a.Path, b.Path) })
	return out, nil
}
