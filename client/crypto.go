package client

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"google.golang.org/grpc/codes"
)

// Encrypt encrypts plaintext (1 byte to 1 MiB) under the primary version of
// the key named name ("tenants/{tenant}/keys/{key}") and returns the
// ciphertext and the version that made it. The ciphertext names its version,
// so Decrypt needs only the key name.
//
// associatedData is authenticated but not encrypted: Decrypt must be given
// the same bytes. Bind the ciphertext to where it is stored — at least the
// record id and the field name, e.g. AssociatedData("users", id, "email") —
// so that it cannot be moved to another row or column. nil means no
// associated data, and then Decrypt must be given none.
//
// A key of purpose [PurposeEncrypt] gives a new ciphertext every time. A key
// of purpose [PurposeEncryptDeterministic] gives the same ciphertext for the
// same plaintext and associated data, so a column can be searched for
// equality by encrypting the value searched for; keep the associated data
// the same for every row of such a column (the table and column name, not
// the record id), or equal values will not compare equal.
//
// It fails with [ErrNotFound] for an unknown key, [ErrTenantDeleted] for a
// tenant scheduled for deletion and [ErrWrongPurpose] for a key that does
// not encrypt.
func (c *Client) Encrypt(ctx context.Context, name string, plaintext, associatedData []byte) (ciphertext []byte, version uint32, err error) {
	resp, err := c.crypto.Encrypt(ctx, &custosv1.EncryptRequest{Name: name, Plaintext: plaintext, AssociatedData: associatedData})
	if err != nil {
		return nil, 0, c.callError(ctx, "encrypt with "+name, err)
	}
	if len(resp.GetCiphertext()) == 0 {
		// A misbehaving proxy's OK: stored, it would stand for the field.
		return nil, 0, localError("encrypt with "+name, codes.Internal, "response has no ciphertext")
	}
	return resp.GetCiphertext(), resp.GetKeyVersion(), nil
}

// Decrypt decrypts a ciphertext made by Encrypt or EncryptBatch with the key
// named name, given the associated data it was encrypted with, and returns
// the plaintext and the key version that had encrypted it.
//
// It fails with [ErrInvalidCiphertext] (which is also [ErrInvalidArgument])
// if the ciphertext was tampered with, was made by another key, or the
// associated data differs — the server does not say which. It fails with
// [ErrKeyVersionDisabled], [ErrKeyVersionDestroyed] or [ErrKeyVersionTooOld]
// if the version that made it may no longer decrypt. A wrapped data key is
// not a field, and fails with [ErrInvalidCiphertext] too, even for a
// caller that holds the datakey permission: [Client.DecryptDataKey]
// unwraps those.
func (c *Client) Decrypt(ctx context.Context, name string, ciphertext, associatedData []byte) (plaintext []byte, version uint32, err error) {
	resp, err := c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: name, Ciphertext: ciphertext, AssociatedData: associatedData})
	if err != nil {
		return nil, 0, c.callError(ctx, "decrypt with "+name, err)
	}
	if resp.GetDataKey() {
		// A wrapped key put where a field belongs: its key is no field
		// value to show.
		clear(resp.GetPlaintext())
		return nil, 0, notAuthentic("decrypt with "+name, "the ciphertext is a wrapped data key, not a field")
	}
	if len(resp.GetPlaintext()) == 0 {
		// No plaintext is empty (the service encrypts none).
		return nil, 0, localError("decrypt with "+name, codes.Internal, "response has no plaintext")
	}
	return resp.GetPlaintext(), resp.GetKeyVersion(), nil
}

// EncryptBatch encrypts many fields under the key named name in one call;
// see [Client.Encrypt] for the rules of each item. It returns one result per
// item, in order. An item that fails has its own Err and does not fail the
// others; the returned error is for the call as a whole (unknown key,
// permission, too many items…), and then there are no results. The API
// allows at most 10000 items per call, a server may allow fewer. An empty
// batch returns no results without calling the server.
func (c *Client) EncryptBatch(ctx context.Context, name string, items []EncryptItem) ([]EncryptResult, error) {
	op := "encrypt batch with " + name
	if len(items) == 0 {
		return nil, nil
	}
	resp, err := c.crypto.EncryptBatch(ctx, &custosv1.EncryptBatchRequest{Name: name, Items: encryptItemsToProto(items)})
	if err != nil {
		return nil, c.callError(ctx, op, err)
	}
	if n := len(resp.GetResults()); n != len(items) {
		return nil, localError(op, codes.Internal, "server returned %d results for %d items", n, len(items))
	}
	out := make([]EncryptResult, len(items))
	for i, r := range resp.GetResults() {
		out[i] = encryptResultFromProto(r)
		if out[i].Err != nil {
			out[i].Err = fmt.Errorf("custos: %s: item %d: %w", op, i, out[i].Err)
		}
	}
	return out, nil
}

// DecryptBatch decrypts many ciphertexts with the key named name in one
// call; see [Client.Decrypt] for the rules of each item. It returns one
// result per item, in order. An item that fails has its own Err (for
// example [ErrInvalidCiphertext]) and does not fail the others; the returned
// error is for the call as a whole, and then there are no results. The API
// allows at most 10000 items per call, a server may allow fewer. An empty
// batch returns no results without calling the server.
func (c *Client) DecryptBatch(ctx context.Context, name string, items []DecryptItem) ([]DecryptResult, error) {
	op := "decrypt batch with " + name
	if len(items) == 0 {
		return nil, nil
	}
	resp, err := c.crypto.DecryptBatch(ctx, &custosv1.DecryptBatchRequest{Name: name, Items: decryptItemsToProto(items)})
	if err != nil {
		return nil, c.callError(ctx, op, err)
	}
	if n := len(resp.GetResults()); n != len(items) {
		return nil, localError(op, codes.Internal, "server returned %d results for %d items", n, len(items))
	}
	out := make([]DecryptResult, len(items))
	for i, r := range resp.GetResults() {
		out[i] = decryptResultFromProto(r)
		if out[i].Err != nil {
			out[i].Err = fmt.Errorf("custos: %s: item %d: %w", op, i, out[i].Err)
		}
	}
	return out, nil
}

// Rewrap re-encrypts a ciphertext of the key named name under the key's
// primary version, inside the server: the plaintext never leaves it, and
// the caller needs only the rewrap permission. associatedData is the
// associated data the ciphertext was made with; the new ciphertext is bound
// to the same bytes. It returns the new ciphertext and the primary version.
// A ciphertext the primary version already made comes back unchanged, the
// same bytes, so rewrapping is idempotent and cheap to repeat. Rewrap works
// on ciphertexts of ENCRYPT and ENCRYPT_DETERMINISTIC keys, and on data keys
// wrapped by [Client.GenerateDataKey] — give it the associated data given
// to GenerateDataKey.
//
// Use it after [Client.RotateKey] to move stored ciphertexts to the new
// version, before raising the minimum decryption version or destroying the
// old one. It fails like [Client.Decrypt] when the ciphertext cannot be
// decrypted.
func (c *Client) Rewrap(ctx context.Context, name string, ciphertext, associatedData []byte) ([]byte, uint32, error) {
	resp, err := c.crypto.Rewrap(ctx, &custosv1.RewrapRequest{Name: name, Ciphertext: ciphertext, AssociatedData: associatedData})
	if err != nil {
		return nil, 0, c.callError(ctx, "rewrap with "+name, err)
	}
	if len(resp.GetCiphertext()) == 0 {
		// Written back, it would replace the row's only copy.
		return nil, 0, localError("rewrap with "+name, codes.Internal, "response has no ciphertext")
	}
	return resp.GetCiphertext(), resp.GetKeyVersion(), nil
}

// RewrapBatch rewraps many ciphertexts of the key named name in one call;
// see [Client.Rewrap] for the rules of each item. It returns one result per
// item, in order. An item that fails has its own Err (for example
// [ErrInvalidCiphertext] or [ErrKeyVersionDisabled]) and does not fail the
// others; the returned error is for the call as a whole, and then there are
// no results. The API allows at most 10000 items per call, a server may
// allow fewer. An empty batch returns no results without calling the
// server.
func (c *Client) RewrapBatch(ctx context.Context, name string, items []RewrapItem) ([]RewrapResult, error) {
	op := "rewrap batch with " + name
	if len(items) == 0 {
		return nil, nil
	}
	resp, err := c.crypto.RewrapBatch(ctx, &custosv1.RewrapBatchRequest{Name: name, Items: rewrapItemsToProto(items)})
	if err != nil {
		return nil, c.callError(ctx, op, err)
	}
	if n := len(resp.GetResults()); n != len(items) {
		return nil, localError(op, codes.Internal, "server returned %d results for %d items", n, len(items))
	}
	out := make([]RewrapResult, len(items))
	for i, r := range resp.GetResults() {
		out[i] = rewrapResultFromProto(r)
		if out[i].Err != nil {
			out[i].Err = fmt.Errorf("custos: %s: item %d: %w", op, i, out[i].Err)
		}
	}
	return out, nil
}

// AssociatedData encodes parts, such as a table, a record id and a field
// name, as associated data for Encrypt and Decrypt. Each part is written as
// its length in bytes, a 4-byte big-endian unsigned integer, followed by its
// bytes:
//
//	AssociatedData("users", "42") = 00 00 00 05 'u' 's' 'e' 'r' 's' 00 00 00 02 '4' '2'
//
// The encoding is unambiguous — ("ab", "c") and ("a", "bc") differ, and so
// do ("a") and ("a", "") — and simple to reproduce in any language. With no
// parts it returns an empty slice, which the server treats as no associated
// data. The order of parts matters; keep it fixed per field. It panics if a
// part is 4 GiB or longer (the API allows 64 KiB of associated data).
func AssociatedData(parts ...string) []byte {
	n := 0
	for _, p := range parts {
		if uint64(len(p)) > math.MaxUint32 {
			panic("custos: AssociatedData: part longer than 4 GiB")
		}
		n += 4 + len(p)
	}
	b := make([]byte, 0, n)
	for _, p := range parts {
		b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	return b
}
