package audit

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/transparency-dev/merkle/compact"
)

// Storage keys. Indexes and counters are 16 lower-case hex digits, so that
// keys sort in numeric order.
const (
	prefix        = "audit/"
	queuePrefix   = prefix + "q/"       // q/<writer>/<counter>: a batch of events not yet in the tree
	leafPrefix    = prefix + "l/"       // l/<index>: the leaf at index
	tenantPrefix  = prefix + "t/"       // t/<tenant>/<last index>: indexes of the tenant's leaves (one record per integration)
	nodePrefix    = prefix + "n/"       // n/<level>/<strip>: the hashes of up to 256 nodes of a level
	cpPrefix      = prefix + "c/"       // c/<size>: the signed checkpoint of that size
	shippedPrefix = prefix + "shipped/" // shipped/<writer>: the last counter of writer in the tree
	treeKey       = prefix + "tree"     // the tree's state
	signingKeyKey = prefix + "signing-key"
	leaseKey      = LeaseStorageKey
)

// LeaseStorageKey is the integration lease's storage key.
const LeaseStorageKey = prefix + "lease"

// StoragePrefix starts the storage key of every record of the audit trail.
const StoragePrefix = prefix

func hex16(n uint64) string {
	var b [16]byte
	return string(appendHex16(b[:0], n))
}

// appendHex16 appends n as 16 lower-case hex digits (fmt's %016x).
func appendHex16(b []byte, n uint64) []byte {
	var be [8]byte
	return hex.AppendEncode(b, binary.BigEndian.AppendUint64(be[:0], n))
}

// parseHex16 parses s as hex16 writes it, and nothing else: upper-case
// digits would name a second key for one index, sorting elsewhere.
func parseHex16(s string) (uint64, bool) {
	if len(s) != 16 {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 16, 64)
	var b [16]byte
	return n, err == nil && string(appendHex16(b[:0], n)) == s
}

func leafKey(i uint64) string {
	var b [len(leafPrefix) + 16]byte
	return string(appendHex16(append(b[:0], leafPrefix...), i))
}
func tenantKey(t string, i uint64) string { return tenantPrefix + t + "/" + hex16(i) }
func cpKey(size uint64) string            { return cpPrefix + hex16(size) }
func queueKey(writer string, n uint64) string {
	return queuePrefix + writer + "/" + hex16(n)
}

// stripLen is how many node hashes one strip record holds.
const stripLen = 256

// stripKey is the key of the strip holding node id.
func stripKey(id compact.NodeID) string {
	return fmt.Sprintf("%s%016x", levelPrefix(id.Level), id.Index/stripLen)
}

// levelPrefix is the prefix of the strips of one level of the tree.
func levelPrefix(level uint) string { return fmt.Sprintf("%s%02x/", nodePrefix, level) }

// appendIndexes encodes a tenant view record: the indexes, ascending, as
// uvarint deltas from 0.
func appendIndexes(b []byte, idx []uint64) []byte {
	var prev uint64
	for _, i := range idx {
		b = binary.AppendUvarint(b, i-prev)
		prev = i
	}
	return b
}

// decodeIndexes reverses appendIndexes, checking every length.
func decodeIndexes(b []byte) ([]uint64, bool) {
	var out []uint64
	var prev uint64
	for len(b) > 0 {
		d, n := uvarint(b)
		if n <= 0 || (len(out) > 0 && d == 0) || d > ^uint64(0)-prev {
			return nil, false
		}
		prev += d
		out = append(out, prev)
		b = b[n:]
	}
	return out, true
}

// parseQueueKey returns a queue key's writer and counter.
func parseQueueKey(k string) (writer string, n uint64, ok bool) {
	writer, c, ok := strings.Cut(strings.TrimPrefix(k, queuePrefix), "/")
	if !ok || writer == "" {
		return "", 0, false
	}
	n, ok = parseHex16(c)
	return writer, n, ok
}
