package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/grpc/codes"
)

// Fields are a record's fields by name: plaintexts to encrypt, or
// ciphertexts to decrypt.
type Fields map[string][]byte

// FieldCipher encrypts the fields of one record, each bound to the record's
// id and its own name (AssociatedData(recordID, field)), so that no
// ciphertext can be moved to another record or another column of the same
// name unnoticed. The binding names neither the table nor the key's
// tenant: a field of record 42 in one table opens as the same field of
// record 42 in another under the same key; use a key per table, or record
// ids that name their table ("customers/42"). Decryption fails on the
// first field (in name order) that fails, naming it.
//
// Do not use it with an ENCRYPT_DETERMINISTIC key for columns searched by
// equality: the record id in the binding makes equal values of different
// records encrypt differently.
//
// Remote ([Client.Fields]) it sends all of a record's fields in one batch
// call; local ([Envelope.Fields]) it seals them in-process.
type FieldCipher struct {
	c    *Client
	name string
	env  *Envelope
}

// Fields returns the remote record helper for the key name.
func (c *Client) Fields(name string) *FieldCipher { return &FieldCipher{c: c, name: name} }

// Fields returns the local record helper of the envelope's key.
func (e *Envelope) Fields() *FieldCipher { return &FieldCipher{c: e.c, name: e.name, env: e} }

// Encrypt encrypts every field of the record recordID (which must not be
// empty).
func (f *FieldCipher) Encrypt(ctx context.Context, recordID string, fields Fields) (Fields, error) {
	// op names the call in errors; not the record id: it is associated data.
	const op = "encrypt the fields of a record"
	if f.env != nil {
		return localFields(ctx, op, recordID, fields, f.env.Encrypt)
	}
	return batchFields(ctx, op, recordID, fields,
		func(pt, aad []byte) EncryptItem { return EncryptItem{Plaintext: pt, AssociatedData: aad} },
		func(ctx context.Context, items []EncryptItem) ([]EncryptResult, error) {
			return f.c.EncryptBatch(ctx, f.name, items)
		},
		func(r EncryptResult) ([]byte, error) { return r.Ciphertext, r.Err })
}

// Decrypt decrypts every field of the record recordID. A ciphertext of
// another record or another field fails with [ErrInvalidCiphertext].
func (f *FieldCipher) Decrypt(ctx context.Context, recordID string, fields Fields) (Fields, error) {
	const op = "decrypt the fields of a record"
	if f.env != nil {
		return localFields(ctx, op, recordID, fields, f.env.Decrypt)
	}
	names, err := fieldNames(op, recordID, fields)
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		if len(fields[n]) == 0 {
			// Truncated to nothing (a NULL column): a truncated
			// ciphertext, as local mode says, where the service would
			// refuse a malformed request.
			return nil, fmt.Errorf("field %s: %w", n, invalidLocal(op))
		}
	}
	return batchFields(ctx, op, recordID, fields,
		func(ct, aad []byte) DecryptItem { return DecryptItem{Ciphertext: ct, AssociatedData: aad} },
		func(ctx context.Context, items []DecryptItem) ([]DecryptResult, error) {
			return f.c.DecryptBatch(ctx, f.name, items)
		},
		func(r DecryptResult) ([]byte, error) { return r.Plaintext, r.Err })
}

// localFields maps every field of a record through apply (the envelope),
// field by field, each bound to AssociatedData(recordID, its name). The
// first failing field fails the record, named in the error.
func localFields(ctx context.Context, op, recordID string, fields Fields,
	apply func(ctx context.Context, in, aad []byte) ([]byte, error)) (Fields, error) {
	names, err := fieldNames(op, recordID, fields)
	if err != nil {
		return nil, err
	}
	out := make(Fields, len(fields))
	for _, n := range names {
		v, err := apply(ctx, fields[n], AssociatedData(recordID, n))
		if err != nil {
			return nil, fmt.Errorf("field %s: %w", n, err)
		}
		out[n] = v
	}
	return out, nil
}

// batchFields sends every field of a record in one batch call, made by
// item from the field and AssociatedData(recordID, its name); result gives
// each item's output or error. The first failing field fails the record,
// named in the error.
func batchFields[I, R any](ctx context.Context, op, recordID string, fields Fields,
	item func(in, aad []byte) I,
	call func(ctx context.Context, items []I) ([]R, error),
	result func(R) ([]byte, error)) (Fields, error) {
	names, err := fieldNames(op, recordID, fields)
	if err != nil {
		return nil, err
	}
	out := make(Fields, len(fields))
	if len(names) == 0 {
		return out, nil
	}
	items := make([]I, len(names))
	for i, n := range names {
		items[i] = item(fields[n], AssociatedData(recordID, n))
	}
	res, err := call(ctx, items)
	if err != nil {
		return nil, err
	}
	for i, n := range names {
		v, err := result(res[i])
		if err != nil {
			return nil, fmt.Errorf("field %s: %w", n, err)
		}
		out[n] = v
	}
	return out, nil
}

func fieldNames(op, recordID string, fields Fields) ([]string, error) {
	if recordID == "" {
		return nil, localError(op, codes.InvalidArgument, "a record id is required: it binds each field to its record")
	}
	names := make([]string, 0, len(fields))
	for n := range fields {
		if n == "" {
			return nil, localError(op, codes.InvalidArgument, "a field needs a name")
		}
		names = append(names, n)
	}
	slices.Sort(names)
	return names, nil
}

// BlindIndexValues returns what to store beside an encrypted value to find
// it by equality, and what to look for: store is its MAC under the key's
// primary version; query holds its MAC under every enabled version, so rows
// stored before a rotation are still found:
//
//	SELECT … WHERE email_idx = ANY($1)   -- $1 = query
//
// Rows keep the MAC they were stored with until they are written again.
func (c *Client) BlindIndexValues(ctx context.Context, name string, data []byte) (store []byte, query [][]byte, err error) {
	entries, err := c.BlindIndex(ctx, name, data)
	if err != nil {
		return nil, nil, err
	}
	// The primary is the newest version (a rotation adds it) and is never
	// disabled, so it is the highest version the index answers with.
	var primary uint32
	for _, e := range entries {
		query = append(query, e.MAC)
		if e.Version > primary {
			primary, store = e.Version, e.MAC
		}
	}
	if store == nil {
		return nil, nil, errors.New("custos: blind index: the service returned no MAC")
	}
	return bytes.Clone(store), query, nil
}
