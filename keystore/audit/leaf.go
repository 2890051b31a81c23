package audit

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/transparency-dev/merkle/rfc6962"
	"google.golang.org/protobuf/proto"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// MaxLeafBytes bounds one encoded event. Events hold names and codes, never
// payloads; a few hundred bytes is typical.
const MaxLeafBytes = 16 << 10

// MaxBatchEvents bounds the events of one queue record.
const MaxBatchEvents = 4096

// batchFormat is the first byte of a queue record's value.
const batchFormat = 1

// Marshal returns an event's leaf: its deterministic protobuf encoding,
// the exact bytes the log hashes.
func Marshal(ev *custosv1.AuditEvent) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("audit: encode event: %w", err)
	}
	if len(b) > MaxLeafBytes {
		return nil, fmt.Errorf("audit: event of %d bytes is larger than %d", len(b), MaxLeafBytes)
	}
	return b, nil
}

// Unmarshal decodes a leaf.
func Unmarshal(leaf []byte) (*custosv1.AuditEvent, error) {
	if len(leaf) > MaxLeafBytes {
		return nil, fmt.Errorf("audit: leaf of %d bytes is larger than %d", len(leaf), MaxLeafBytes)
	}
	ev := new(custosv1.AuditEvent)
	if err := proto.Unmarshal(leaf, ev); err != nil {
		return nil, fmt.Errorf("audit: decode leaf: %w", err)
	}
	return ev, nil
}

// LeafHash is the RFC 6962 hash of a leaf: SHA-256(0x00 || leaf).
func LeafHash(leaf []byte) []byte { return rfc6962.DefaultHasher.HashLeaf(leaf) }

// encodeBatch is a queue record's value: the format byte, then each leaf
// as a uvarint length and its bytes.
func encodeBatch(leaves [][]byte) []byte {
	n := 1
	for _, l := range leaves {
		n += binary.MaxVarintLen32 + len(l)
	}
	b := make([]byte, 1, n)
	b[0] = batchFormat
	for _, l := range leaves {
		b = binary.AppendUvarint(b, uint64(len(l)))
		b = append(b, l...)
	}
	return b
}

var errBadBatch = errors.New("audit: malformed queue record")

// decodeBatch reverses encodeBatch, checking every length before use.
func decodeBatch(b []byte) ([][]byte, error) {
	if len(b) == 0 || b[0] != batchFormat {
		return nil, fmt.Errorf("%w: unknown format", errBadBatch)
	}
	b = b[1:]
	var leaves [][]byte
	for len(b) > 0 {
		n, k := uvarint(b)
		if k <= 0 || n > MaxLeafBytes || n > uint64(len(b)-k) {
			return nil, fmt.Errorf("%w: bad leaf length", errBadBatch)
		}
		if len(leaves) == MaxBatchEvents {
			return nil, fmt.Errorf("%w: more than %d events", errBadBatch, MaxBatchEvents)
		}
		leaves = append(leaves, b[k:k+int(n)])
		b = b[k+int(n):]
	}
	return leaves, nil
}

// uvarint is binary.Uvarint accepting only the shortest encoding, so that
// a value has one encoding.
func uvarint(b []byte) (uint64, int) {
	v, n := binary.Uvarint(b)
	if n > 0 && n != uvarintLen(v) {
		return 0, -1
	}
	return v, n
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}
