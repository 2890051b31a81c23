package client

import (
	"context"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"google.golang.org/grpc/codes"
)

// ComputeMAC returns the HMAC-SHA256 of data (0 bytes to 1 MiB) under the
// primary version of the MAC key named name, and that version. The MAC is
// a 5-byte prefix naming the version followed by the 32-byte HMAC, so
// [Client.VerifyMAC] needs no version argument. The same data and version
// always give the same MAC.
//
// It needs the mac permission, and fails with [ErrWrongPurpose] for a key
// that is not [PurposeMAC].
func (c *Client) ComputeMAC(ctx context.Context, name string, data []byte) (mac []byte, version uint32, err error) {
	resp, err := c.crypto.ComputeMac(ctx, &custosv1.ComputeMacRequest{Name: name, Data: data})
	if err != nil {
		return nil, 0, c.callError(ctx, "compute MAC with "+name, err)
	}
	if len(resp.GetMac()) == 0 {
		return nil, 0, localError("compute MAC with "+name, codes.Internal, "response has no MAC")
	}
	return resp.GetMac(), resp.GetKeyVersion(), nil
}

// VerifyMAC reports whether mac, from [Client.ComputeMAC] or
// [Client.BlindIndex], is a valid MAC of data under any enabled version of
// the key named name at or above its minimum decryption version; the
// server compares in constant time. A MAC that does not verify — wrong
// data, another key, a disabled or destroyed version, malformed bytes — is
// false with a nil error; errors are for calls that could not be checked
// (unknown key, wrong purpose, permission…).
//
// An empty MAC (a NULL column) or one longer than any MAC (1 KiB) is
// false too: the call is made with a byte in its place that no MAC
// starts with, so that the key and the caller's permission are still
// checked (the service refuses such a field as malformed).
func (c *Client) VerifyMAC(ctx context.Context, name string, data, mac []byte) (bool, error) {
	if len(mac) == 0 || len(mac) > maxMACBytes {
		mac = notAMAC
	}
	resp, err := c.crypto.VerifyMac(ctx, &custosv1.VerifyMacRequest{Name: name, Data: data, Mac: mac})
	if err != nil {
		return false, c.callError(ctx, "verify MAC with "+name, err)
	}
	return resp.GetValid(), nil
}

// BlindIndex returns the MAC of data (0 bytes to 64 KiB) under every enabled
// version of the MAC key named name at or above its minimum decryption
// version: the primary version first, then the others from newest to
// oldest; there is always at least one. Each entry's MAC is exactly what [Client.ComputeMAC] returns under
// that version.
//
// A blind index lets a service look up rows by a value it stores only
// encrypted (an email address, a national id) without a deterministic
// ciphertext. To use it across key rotations:
//
//   - when writing a row, store the first entry's MAC (the primary's) in the
//     row's index column;
//   - when looking up, compute the entries of the value searched for and
//     match any of them, e.g. WHERE email_idx IN ($1, $2, …), so rows
//     indexed before a rotation are still found;
//   - when a row is found through an entry that is not the first, store the
//     first entry's MAC in it (reindex lazily), so that once every row is
//     reindexed the old version can be disabled — it then drops out of the
//     entries.
//
// Normalize the value first (case, whitespace) if lookups should ignore
// such differences: equal bytes give equal MACs, nothing more.
func (c *Client) BlindIndex(ctx context.Context, name string, data []byte) ([]BlindIndexEntry, error) {
	op := "blind index with " + name
	resp, err := c.crypto.BlindIndex(ctx, &custosv1.BlindIndexRequest{Name: name, Data: data})
	if err != nil {
		return nil, c.callError(ctx, op, err)
	}
	if len(resp.GetEntries()) == 0 {
		// The primary is always enabled, so there is always one entry;
		// callers may rely on entries[0].
		return nil, localError(op, codes.Internal, "response has no entries")
	}
	for _, e := range resp.GetEntries() {
		if len(e.GetMac()) == 0 {
			// Stored, every row would get the same empty index.
			return nil, localError(op, codes.Internal, "response has an entry without its MAC")
		}
	}
	return blindIndexFromProto(resp.GetEntries()), nil
}

// maxMACBytes is the longest MAC the service takes in VerifyMac (the
// server's maxMACBytes, server/validate.go: change both), and notAMAC a MAC
// that never verifies (no MAC format starts with 0x00).
const maxMACBytes = 1024

var notAMAC = []byte{0}
