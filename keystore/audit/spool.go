package audit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
)

// The spool is a local append-only file of queue records the store could
// not take. Each entry: a 4-byte big-endian length n, a 4-byte CRC-32C of
// the payload, then the payload of n bytes: a 2-byte key length, the
// queue key, the queue record's value. An entry is written and synced
// before the events in it are acknowledged; a torn last entry (a crash in
// the middle of writing it) was never acknowledged and is cut off when the
// spool is opened.

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// maxSpoolEntry bounds one entry's payload when reading it back.
const maxSpoolEntry = 2 + 512 + MaxBatchEvents*(MaxLeafBytes+3) + 1

type spoolEntry struct {
	key   string
	value []byte
	end   int64 // file offset just past the entry
}

type spool struct {
	f    *os.File
	size int64
}

// openSpool opens (creating) the spool at path and reads its entries,
// cutting off a torn tail. It returns the entries not yet shipped.
func openSpool(path string) (*spool, []spoolEntry, int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("audit: open spool: %w", err)
	}
	entries, good, err := readSpool(f, 0)
	if err != nil {
		f.Close()
		return nil, nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, 0, fmt.Errorf("audit: spool: %w", err)
	}
	torn := st.Size() - good
	if torn > 0 {
		if err := f.Truncate(good); err != nil {
			f.Close()
			return nil, nil, 0, fmt.Errorf("audit: spool: cut torn tail: %w", err)
		}
	}
	return &spool{f: f, size: good}, entries, torn, nil
}

// readSpool reads the entries from offset on; good is the offset after the
// last whole, intact entry.
func readSpool(r io.ReaderAt, from int64) (entries []spoolEntry, good int64, err error) {
	off := from
	var hdr [8]byte
	for {
		if _, err := r.ReadAt(hdr[:], off); err != nil {
			if errors.Is(err, io.EOF) {
				return entries, off, nil
			}
			return nil, 0, fmt.Errorf("audit: read spool: %w", err)
		}
		n := binary.BigEndian.Uint32(hdr[:4])
		if n < 2 || n > maxSpoolEntry {
			return entries, off, nil
		}
		p := make([]byte, n)
		if _, err := r.ReadAt(p, off+8); err != nil {
			if errors.Is(err, io.EOF) {
				return entries, off, nil
			}
			return nil, 0, fmt.Errorf("audit: read spool: %w", err)
		}
		if crc32.Checksum(p, crcTable) != binary.BigEndian.Uint32(hdr[4:]) {
			return entries, off, nil
		}
		kl := int(binary.BigEndian.Uint16(p))
		if kl == 0 || 2+kl > len(p) {
			return entries, off, nil
		}
		off += 8 + int64(n)
		entries = append(entries, spoolEntry{key: string(p[2 : 2+kl]), value: p[2+kl:], end: off})
	}
}

// append writes one entry and syncs it.
func (s *spool) append(key string, value []byte) error {
	p := make([]byte, 8, 8+2+len(key)+len(value))
	p = binary.BigEndian.AppendUint16(p, uint16(len(key)))
	p = append(p, key...)
	p = append(p, value...)
	binary.BigEndian.PutUint32(p[:4], uint32(len(p)-8))
	binary.BigEndian.PutUint32(p[4:8], crc32.Checksum(p[8:], crcTable))
	if _, err := s.f.WriteAt(p, s.size); err != nil {
		return fmt.Errorf("audit: write spool: %w", err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("audit: sync spool: %w", err)
	}
	s.size += int64(len(p))
	return nil
}

// reset empties the spool once everything in it has been shipped.
func (s *spool) reset() error {
	if err := s.f.Truncate(0); err != nil {
		return fmt.Errorf("audit: empty spool: %w", err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("audit: sync spool: %w", err)
	}
	s.size = 0
	return nil
}
