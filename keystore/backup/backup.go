// Package backup writes and restores whole-store backups: every record the
// store holds (wrapped KEKs, wrapped keysets, metadata, lockout, audit and
// tombstone records — never unwrapped material), from one consistent
// snapshot taken while servers keep serving, into one file that is
// encrypted and authenticated as a whole under a data key wrapped by the
// root. docs/backup.md describes the format and the guarantees.
//
// File layout (format 1):
//
//	magic "custos-backup\x00v1\n"
//	uint32 big-endian n, then n bytes: the backup's Tink streaming-AEAD
//	  keyset (AES256_GCM_HKDF_1MB), encrypted by the root with the magic as
//	  associated data
//	the Tink streaming-AEAD ciphertext of the body, with the magic and the
//	  encrypted keyset as associated data
//
// The body is a sequence of frames, each a type byte, a uvarint length and
// that many bytes: type 1, a record (uvarint key length, key, value); type
// 2, last, the manifest (JSON). Streaming AEAD authenticates every 1 MiB
// segment and the end, so a flipped bit, a reordering or a truncation
// anywhere fails the read.
package backup

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/streamingaead"

	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/storage"
)

// Format is the backup file format this package writes.
const Format = 1

const magic = "custos-backup\x00v1\n"

// Frame types.
const (
	frameRecord   = 1
	frameManifest = 2
)

// Limits of what a backup file may hold; larger is refused as damaged.
const (
	maxKeysetBytes = 64 << 10
	maxFrameBytes  = storage.MaxKeyLen + storage.MaxValueLen + 16
)

// maxManifestBytes bounds the manifest, which lists every tenant scheduled
// for deletion (about 190 bytes each): Write refuses to make a backup whose
// manifest Read would refuse. A variable for the tests.
var maxManifestBytes = 256 << 20

// ErrDamaged is wrapped by the error of a backup that is truncated, was
// changed, or was not made under this root.
var ErrDamaged = errors.New("backup: damaged, truncated, or not made under this deployment's root")

// ErrUnknownFormat is wrapped by the error of a backup in a format this
// version does not read (a later version's), in its header or manifest.
var ErrUnknownFormat = errors.New("backup: a format this version does not read")

// Manifest describes a backup; it is the body's last frame, so it is
// encrypted and authenticated with everything else.
type Manifest struct {
	Format int `json:"format"`
	// ID is random, 128 bits, hex.
	ID string `json:"id"`
	// Created is when the snapshot was taken.
	Created time.Time `json:"created"`
	// Source names the store backed up (its type).
	Source string `json:"source"`
	// Records and Bytes count the records and their key and value bytes.
	Records uint64 `json:"records"`
	Bytes   uint64 `json:"bytes"`
	// Digest is the hex SHA-256 of the record frames, in order.
	Digest string `json:"digest"`
	// TenantStates counts the tenants by state at the snapshot.
	TenantStates map[string]int `json:"tenant_states"`
	// Deleting lists the tenants scheduled for deletion at the snapshot,
	// with their deletion dates, so that a restore shreds those whose date
	// has passed. (Active tenants are not listed: the manifest stays small
	// however many tenants there are.)
	Deleting []Tenant `json:"deleting,omitempty"`
}

// Tenant is one tenant's state in a manifest.
type Tenant struct {
	ID         string    `json:"id"`
	State      string    `json:"state"`
	CreateTime time.Time `json:"create_time"`
	DeleteTime time.Time `json:"delete_time,omitzero"`
}

// rootAEAD lets the root encrypt the backup's keyset (tink.AEAD).
type rootAEAD struct {
	ctx context.Context
	r   root.Root
	// err is the root's own error: Tink formats it into its own with %v,
	// so errors.Is no longer finds root.ErrUnavailable there.
	err error
}

func (a *rootAEAD) Encrypt(pt, aad []byte) ([]byte, error) {
	ct, err := a.r.Wrap(a.ctx, pt, aad)
	a.err = err
	return ct, err
}

func (a *rootAEAD) Decrypt(ct, aad []byte) ([]byte, error) {
	pt, err := a.r.Unwrap(a.ctx, ct, aad)
	a.err = err
	return pt, err
}

// ErrRestoring refuses to back up a store that holds an unfinished
// restore (restore/in-progress): the backup would look whole, and a
// restore of it would drop the marker and start a server on half a store.
var ErrRestoring = errors.New("backup: the store holds an unfinished restore (restore/in-progress); finish or repeat the restore first")

// Unfinished checks store for an unfinished restore: an error wrapping
// ErrRestoring that names the backup, or the storage's error when the
// check could not be made (a store not checked must not be served or
// changed as if whole); nil when there is none. A server checks before it
// serves, custos root rewrap before it re-wraps (a restore run again
// would put the backup's older wrappings back).
func Unfinished(ctx context.Context, store storage.Store) error {
	rec, err := store.Get(ctx, MarkerKey)
	switch {
	case err == nil:
		return fmt.Errorf("%w (backup %s)", ErrRestoring, MarkerBackupID(rec.Value))
	case errors.Is(err, storage.ErrNotFound):
		return nil
	default:
		return fmt.Errorf("storage: checking for an unfinished restore: %w", err)
	}
}

// Options configure Write.
type Options struct {
	// Source names the store in the manifest.
	Source string
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Progress, if set, is called every few thousand records with the
	// records and bytes written so far.
	Progress func(records, bytes uint64)
}

// Write streams a backup of store to w: one consistent snapshot, never
// held in memory.
func Write(ctx context.Context, w io.Writer, store storage.Snapshotter, r root.Root, opts Options) (*Manifest, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	h, err := keyset.NewHandle(streamingaead.AES256GCMHKDF1MBKeyTemplate())
	if err != nil {
		return nil, fmt.Errorf("backup: data key: %w", err)
	}
	var ks bytes.Buffer
	wrap := &rootAEAD{ctx: ctx, r: r}
	if err := h.WriteWithAssociatedData(keyset.NewBinaryWriter(&ks), wrap, []byte(magic)); err != nil {
		return nil, fmt.Errorf("backup: wrap the data key under the root: %w", cmp.Or(wrap.err, err))
	}
	sa, err := streamingaead.New(h)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	hdr := append([]byte(magic), binary.BigEndian.AppendUint32(nil, uint32(ks.Len()))...)
	hdr = append(hdr, ks.Bytes()...)
	if _, err := bw.Write(hdr); err != nil {
		return nil, fmt.Errorf("backup: write: %w", err)
	}
	enc, err := sa.NewEncryptingWriter(bw, append([]byte(magic), ks.Bytes()...))
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	m := &Manifest{Format: Format, ID: hex.EncodeToString(id[:]), Created: opts.Now().UTC(), Source: opts.Source, TenantStates: map[string]int{}}
	digest := sha256.New()
	body := bufio.NewWriterSize(enc, 1<<20)
	var frame []byte
	err = store.Snapshot(ctx, func(rec storage.Record) error {
		if rec.Key == MarkerKey {
			return ErrRestoring
		}
		frame = appendRecordFrame(frame[:0], rec.Key, rec.Value)
		digest.Write(frame)
		if _, err := body.Write(frame); err != nil {
			return fmt.Errorf("backup: write: %w", err)
		}
		m.Records++
		m.Bytes += uint64(len(rec.Key) + len(rec.Value))
		if t, ok := keystore.TenantOfStorageKey(rec.Key); ok {
			info, err := keystore.ParseTenantRecord(rec.Value)
			if err != nil {
				return fmt.Errorf("backup: tenant %s: %w", t, err)
			}
			m.TenantStates[info.State.String()]++
			if info.State == keystore.TenantDeleteScheduled {
				m.Deleting = append(m.Deleting, Tenant{ID: t, State: info.State.String(), CreateTime: info.CreateTime, DeleteTime: info.DeleteTime})
			}
		}
		if opts.Progress != nil && m.Records%4096 == 0 {
			opts.Progress(m.Records, m.Bytes)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	m.Digest = hex.EncodeToString(digest.Sum(nil))
	mb, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(mb) > maxManifestBytes {
		return nil, fmt.Errorf("backup: the manifest would be %d bytes (%d tenants scheduled for deletion), over the %d a restore reads: no backup was made", len(mb), len(m.Deleting), maxManifestBytes)
	}
	frame = append(frame[:0], frameManifest)
	frame = binary.AppendUvarint(frame, uint64(len(mb)))
	frame = append(frame, mb...)
	if _, err := body.Write(frame); err != nil {
		return nil, fmt.Errorf("backup: write: %w", err)
	}
	if err := body.Flush(); err != nil {
		return nil, fmt.Errorf("backup: write: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("backup: write: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("backup: write: %w", err)
	}
	if opts.Progress != nil {
		opts.Progress(m.Records, m.Bytes)
	}
	return m, nil
}

func appendRecordFrame(b []byte, key string, value []byte) []byte {
	n := uint64(binary.PutUvarint(make([]byte, binary.MaxVarintLen64), uint64(len(key))) + len(key) + len(value))
	b = append(b, frameRecord)
	b = binary.AppendUvarint(b, n)
	b = binary.AppendUvarint(b, uint64(len(key)))
	b = append(b, key...)
	return append(b, value...)
}

// Read reads the backup in r, calling fn for every record in order, and
// returns its manifest once the whole file is read and authenticated.
// Records reach fn before the end is authenticated: to act only on a good
// file, read it once with a nil fn (Verify), then again.
//
// A file that cannot be read (an I/O error, a stream cut off by its
// sender) is that error, not ErrDamaged: the file may be whole.
func Read(ctx context.Context, in io.Reader, r root.Root, fn func(key string, value []byte) error) (*Manifest, error) {
	src := &sourceReader{r: in}
	m, err := read(ctx, src, r, fn)
	if src.err != nil && errors.Is(err, ErrDamaged) {
		return nil, fmt.Errorf("backup: read: %w", src.err)
	}
	return m, err
}

// sourceReader keeps the first error of r other than the end of file.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(b []byte) (int, error) {
	n, err := s.r.Read(b)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

func read(ctx context.Context, in io.Reader, r root.Root, fn func(key string, value []byte) error) (*Manifest, error) {
	br := bufio.NewReaderSize(in, 1<<20)
	head := make([]byte, len(magic)+4)
	if _, err := io.ReadFull(br, head); err != nil {
		return nil, fmt.Errorf("%w: no header: %v", ErrDamaged, err)
	}
	if string(head[:len(magic)]) != magic {
		if bytes.HasPrefix(head, []byte("custos-backup\x00")) {
			return nil, fmt.Errorf("%w: format %q is not one this version reads (1)", ErrUnknownFormat, bytes.TrimSpace(head[len("custos-backup\x00"):len(magic)]))
		}
		return nil, fmt.Errorf("%w: not a Custos backup", ErrDamaged)
	}
	n := binary.BigEndian.Uint32(head[len(magic):])
	if n == 0 || n > maxKeysetBytes {
		return nil, fmt.Errorf("%w: bad data key length", ErrDamaged)
	}
	ks := make([]byte, n)
	if _, err := io.ReadFull(br, ks); err != nil {
		return nil, fmt.Errorf("%w: truncated data key: %v", ErrDamaged, err)
	}
	unwrap := &rootAEAD{ctx: ctx, r: r}
	h, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(ks)), unwrap, []byte(magic))
	if err != nil {
		switch {
		case errors.Is(unwrap.err, root.ErrUnavailable):
			return nil, fmt.Errorf("backup: the root cannot be reached to unwrap the backup's data key: %w", unwrap.err)
		case unwrap.err != nil && ctx.Err() != nil:
			return nil, fmt.Errorf("backup: unwrap the backup's data key: %w", ctx.Err())
		case unwrap.err != nil && !errors.Is(unwrap.err, root.ErrNotAuthentic):
			// A refusal (a denied policy, a TLS or credential problem):
			// the configuration is at fault, not the file.
			return nil, fmt.Errorf("backup: the root refused to unwrap the backup's data key (check the root's configuration and permissions): %w", unwrap.err)
		}
		return nil, fmt.Errorf("%w: the root does not unwrap its data key (%v)", ErrDamaged, err)
	}
	sa, err := streamingaead.New(h)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDamaged, err)
	}
	dec, err := sa.NewDecryptingReader(br, append([]byte(magic), ks...))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDamaged, err)
	}
	body := bufio.NewReaderSize(dec, 1<<20)
	digest := sha256.New()
	var records, nbytes uint64
	var frame []byte
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		typ, err := body.ReadByte()
		if err != nil {
			return nil, fmt.Errorf("%w: ends before its manifest (%v)", ErrDamaged, err)
		}
		size, err := binary.ReadUvarint(body)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrDamaged, err)
		}
		switch typ {
		case frameRecord:
			if size > maxFrameBytes {
				return nil, fmt.Errorf("%w: record of %d bytes", ErrDamaged, size)
			}
			frame = append(frame[:0], frameRecord)
			frame = binary.AppendUvarint(frame, size)
			start := len(frame)
			frame = append(frame, make([]byte, size)...)
			if _, err := io.ReadFull(body, frame[start:]); err != nil {
				return nil, fmt.Errorf("%w: %v", ErrDamaged, err)
			}
			p := frame[start:]
			kl, k := binary.Uvarint(p)
			if k <= 0 || kl == 0 || kl > storage.MaxKeyLen || kl > uint64(len(p)-k) {
				return nil, fmt.Errorf("%w: bad record key", ErrDamaged)
			}
			digest.Write(frame)
			records++
			nbytes += uint64(len(p) - k)
			if fn != nil {
				key, value := string(p[k:k+int(kl)]), p[k+int(kl):]
				if err := fn(key, bytes.Clone(value)); err != nil {
					return nil, err
				}
			}
		case frameManifest:
			if size > uint64(maxManifestBytes) {
				return nil, fmt.Errorf("%w: manifest of %d bytes", ErrDamaged, size)
			}
			mb := make([]byte, size)
			if _, err := io.ReadFull(body, mb); err != nil {
				return nil, fmt.Errorf("%w: %v", ErrDamaged, err)
			}
			// The end must be authenticated: nothing after the manifest.
			if _, err := body.ReadByte(); !errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("%w: data after the manifest or a bad end (%v)", ErrDamaged, err)
			}
			var m Manifest
			if err := json.Unmarshal(mb, &m); err != nil {
				return nil, fmt.Errorf("%w: manifest: %v", ErrDamaged, err)
			}
			if m.Format != Format {
				return nil, fmt.Errorf("%w: manifest format %d is not one this version reads (%d)", ErrUnknownFormat, m.Format, Format)
			}
			if m.Records != records || m.Bytes != nbytes || m.Digest != hex.EncodeToString(digest.Sum(nil)) {
				return nil, fmt.Errorf("%w: the records do not match the manifest", ErrDamaged)
			}
			return &m, nil
		default:
			return nil, fmt.Errorf("%w: unknown frame %d", ErrDamaged, typ)
		}
	}
}
