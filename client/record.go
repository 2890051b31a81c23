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
// ciphertext can be moved to another record or another column unnoticed.
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
	return f.each(ctx, "encrypt the fields of a record", recordID, fields,
		func(ctx context.Context, pt, aad []byte) ([]byte, error) { return f.env.Encrypt(ctx, pt, aad) },
		func(ctx context.Context, pts, aads [][]byte) ([][]byte, []error, error) {
			items := make([]EncryptItem, len(pts))
			for i := range pts {
				items[i] = EncryptItem{Plaintext: pts[i], AssociatedData: aads[i]}
			}
			res, err := f.c.EncryptBatch(ctx, f.name, items)
			if err != nil {
				return nil, nil, err
			}
			outs, errs := make([][]byte, len(res)), make([]error, len(res))
			for i, r := range res {
				outs[i], errs[i] = r.Ciphertext, r.Err
			}
			return outs, errs, nil
		})
}

// Decrypt decrypts every field of the record recordID. A ciphertext of
// another record or another field fails with [ErrInvalidCiphertext].
func (f *FieldCipher) Decrypt(ctx context.Context, recordID string, fields Fields) (Fields, error) {
	return f.each(ctx, "decrypt the fields of a record", recordID, fields,
		func(ctx context.Context, ct, aad []byte) ([]byte, error) { return f.env.Decrypt(ctx, ct, aad) },
		func(ctx context.Context, cts, aads [][]byte) ([][]byte, []error, error) {
			items := make([]DecryptItem, len(cts))
			for i := range cts {
				items[i] = DecryptItem{Ciphertext: cts[i], AssociatedData: aads[i]}
			}
			res, err := f.c.DecryptBatch(ctx, f.name, items)
			if err != nil {
				return nil, nil, err
			}
			outs, errs := make([][]byte, len(res)), make([]error, len(res))
			for i, r := range res {
				outs[i], errs[i] = r.Plaintext, r.Err
			}
			return outs, errs, nil
		})
}

// each maps every field of a record through local (the envelope, field by
// field) or, without an envelope, through one remote batch call, binding
// each to AssociatedData(recordID, its name). The first failing field
// fails the record, named in the error.
func (f *FieldCipher) each(ctx context.Context, op, recordID string, fields Fields,
	local func(ctx context.Context, in, aad []byte) ([]byte, error),
	remote func(ctx context.Context, ins, aads [][]byte) ([][]byte, []error, error)) (Fields, error) {
	names, err := fieldNames(op, recordID, fields)
	if err != nil {
		return nil, err
	}
	out := make(Fields, len(fields))
	if len(names) == 0 {
		return out, nil
	}
	ins, aads := make([][]byte, len(names)), make([][]byte, len(names))
	for i, n := range names {
		ins[i], aads[i] = fields[n], AssociatedData(recordID, n)
	}
	if f.env != nil {
		for i, n := range names {
			v, err := local(ctx, ins[i], aads[i])
			if err != nil {
				return nil, fmt.Errorf("field %s: %w", n, err)
			}
			out[n] = v
		}
		return out, nil
	}
	outs, errs, err := remote(ctx, ins, aads)
	if err != nil {
		return nil, err
	}
	for i, n := range names {
		if errs[i] != nil {
			return nil, fmt.Errorf("field %s: %w", n, errs[i])
		}
		out[n] = outs[i]
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
