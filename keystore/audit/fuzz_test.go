package audit

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

// FuzzDecodeBatch: a queue record's value never panics the decoder, and
// what it accepts re-encodes to the same bytes.
func FuzzDecodeBatch(f *testing.F) {
	f.Add(encodeBatch([][]byte{[]byte("a"), {}, bytes.Repeat([]byte{7}, 300)}))
	f.Add([]byte{batchFormat, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		leaves, err := decodeBatch(b)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeBatch(leaves), b) {
			t.Fatalf("decode/encode changed %x", b)
		}
	})
}

// FuzzDecodeIndexes: a tenant view record never panics the decoder, and
// what it accepts is strictly ascending and re-encodes to the same bytes.
func FuzzDecodeIndexes(f *testing.F) {
	f.Add(appendIndexes(nil, []uint64{0, 1, 5, 1 << 40}))
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		idx, ok := decodeIndexes(b)
		if !ok {
			return
		}
		for i := 1; i < len(idx); i++ {
			if idx[i] <= idx[i-1] {
				t.Fatalf("not ascending: %v", idx)
			}
		}
		if !bytes.Equal(appendIndexes(nil, idx), b) {
			t.Fatalf("decode/encode changed %x", b)
		}
	})
}

// FuzzSpoolSegment: any bytes in a spool segment open without a panic,
// and the entries read back lie within the file.
func FuzzSpoolSegment(f *testing.F) {
	dir := f.TempDir()
	s, _, _, _, err := openSpool(filepath.Join(dir, "seed"))
	if err != nil {
		f.Fatal(err)
	}
	if _, err := s.append("audit/q/w/0000000000000001", encodeBatch([][]byte{[]byte("x")})); err != nil {
		f.Fatal(err)
	}
	seed := make([]byte, 64)
	if _, err := s.segs[0].f.ReadAt(seed, 0); err != nil {
		f.Fatal(err)
	}
	s.close()
	f.Add(seed)
	f.Add([]byte{0, 0, 0, 9, 1, 2, 3, 4, 0, 1, 'k'})
	f.Fuzz(func(t *testing.T, b []byte) {
		prefix := filepath.Join(t.TempDir(), "spool")
		if err := os.WriteFile(prefix+".0000000000000001", b, 0o600); err != nil {
			t.Fatal(err)
		}
		sp, entries, _, _, err := openSpool(prefix)
		if err != nil {
			return
		}
		defer sp.close()
		for _, e := range entries {
			if e.off < 0 || e.end > int64(len(b)) || e.off > e.end {
				t.Fatalf("entry %+v outside the %d-byte file", e, len(b))
			}
			if _, err := sp.read(e); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// A damaged length field is checked against what the segment holds before
// anything is allocated for it: a 16-byte file claiming a 60 MiB entry
// allocates nothing near that.
func TestASpoolEntryLengthIsBoundedByTheSegment(t *testing.T) {
	b := make([]byte, 16)
	binary.BigEndian.PutUint32(b, 60<<20)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	entries, _, _, err := readSegment(bytes.NewReader(b), int64(len(b)), 1)
	runtime.ReadMemStats(&after)
	if err != nil || len(entries) != 0 {
		t.Fatalf("readSegment: %v, %v", entries, err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Fatalf("reading a 16-byte segment allocated %d bytes", grew)
	}
}

// FuzzCheckpointAndTreeState: signed checkpoints and the stored tree state
// never panic on arbitrary bytes; a checkpoint that verifies names a size
// and a root of the tree's hash length, and pruned no more than its size.
func FuzzCheckpointAndTreeState(f *testing.F) {
	skey, vkey, err := note.GenerateKey(rand.Reader, "custos-test")
	if err != nil {
		f.Fatal(err)
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		f.Fatal(err)
	}
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		f.Fatal(err)
	}
	signed, err := note.Sign(&note.Note{Text: "custos-test\n3\n" + base64.StdEncoding.EncodeToString(make([]byte, 32)) + "\ntime 2026-11-27T00:00:00Z\npruned 1\n"}, signer)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(signed)
	f.Add([]byte(`{"format":1,"size":3,"range":["AAAA"]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if cp, err := ParseCheckpoint(b, verifier); err == nil {
			if len(cp.Root) != hashLen || cp.Pruned > cp.Size {
				t.Fatalf("accepted checkpoint of size %d, pruned %d, root of %d bytes", cp.Size, cp.Pruned, len(cp.Root))
			}
		}
		if st, err := parseTree(b); err == nil {
			// The range is checked where it is used; it must not panic.
			_, _ = rangeFactory.NewRange(0, st.Size, st.Range)
		}
	})
}
