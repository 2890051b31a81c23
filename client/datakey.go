package client

import (
	"context"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"google.golang.org/grpc/codes"
)

// DataKeySize is the length in bytes of a data key: an AES-256 key.
const DataKeySize = 32

// GenerateDataKey returns a fresh 256-bit data key, in plaintext and
// wrapped under the primary version of the ENCRYPT key named name, for
// encrypting data locally (envelope encryption): encrypt with
// DataKey.Plaintext, store DataKey.Wrapped next to the data, and forget the
// plaintext. [Client.DecryptDataKey] unwraps it later. associatedData is
// bound to the wrapped key as with [Client.Encrypt]: DecryptDataKey must be
// given the same bytes.
//
// It needs the datakey permission, and fails with [ErrWrongPurpose] for a
// key that is not [PurposeEncrypt].
func (c *Client) GenerateDataKey(ctx context.Context, name string, associatedData []byte) (DataKey, error) {
	op := "generate data key with " + name
	resp, err := c.crypto.GenerateDataKey(ctx, &custosv1.GenerateDataKeyRequest{Name: name, AssociatedData: associatedData})
	if err != nil {
		return DataKey{}, c.callError(ctx, op, err)
	}
	if len(resp.GetWrapped()) == 0 {
		clear(resp.GetPlaintext())
		return DataKey{}, localError(op, codes.Internal, "response has no wrapped key")
	}
	if n := len(resp.GetPlaintext()); n != DataKeySize {
		// Never hand out a short key as if it were an AES-256 key.
		clear(resp.GetPlaintext())
		return DataKey{}, localError(op, codes.Internal, "response has a %d-byte data key, want %d", n, DataKeySize)
	}
	return DataKey{Plaintext: resp.GetPlaintext(), Wrapped: resp.GetWrapped(), Version: resp.GetKeyVersion()}, nil
}

// GenerateWrappedDataKey is [Client.GenerateDataKey] without the plaintext:
// the server returns only the wrapped key and the version that wrapped it,
// for a key to be unwrapped later, perhaps by another service that holds
// the datakey permission.
func (c *Client) GenerateWrappedDataKey(ctx context.Context, name string, associatedData []byte) (wrapped []byte, version uint32, err error) {
	op := "generate wrapped data key with " + name
	resp, err := c.crypto.GenerateDataKey(ctx, &custosv1.GenerateDataKeyRequest{Name: name, AssociatedData: associatedData, WrappedOnly: true})
	if err != nil {
		return nil, 0, c.callError(ctx, op, err)
	}
	clear(resp.GetPlaintext()) // the server sends none; never keep one
	if len(resp.GetWrapped()) == 0 {
		return nil, 0, localError(op, codes.Internal, "response has no wrapped key")
	}
	return resp.GetWrapped(), resp.GetKeyVersion(), nil
}

// DecryptDataKey unwraps a data key made by [Client.GenerateDataKey] or
// [Client.GenerateWrappedDataKey] with the key named name, given the same
// associated data, and returns its 32 bytes.
//
// It calls the Decrypt RPC, which unwraps data keys only for callers that
// hold the datakey permission on the tenant: a caller with only the decrypt
// permission gets [ErrInvalidCiphertext], as it does for a wrong key or
// wrong associated data. A field ciphertext from [Client.Encrypt] is not a
// data key and fails with [ErrInvalidCiphertext] too, even for a caller
// that holds both permissions (the server says which kind it decrypted): a
// caller allowed only to encrypt cannot pass 32 bytes of its choosing off
// as a data key.
func (c *Client) DecryptDataKey(ctx context.Context, name string, wrapped, associatedData []byte) ([]byte, error) {
	op := "decrypt data key with " + name
	resp, err := c.crypto.Decrypt(ctx, &custosv1.DecryptRequest{Name: name, Ciphertext: wrapped, AssociatedData: associatedData})
	if err != nil {
		return nil, c.callError(ctx, op, err)
	}
	if !resp.GetDataKey() || len(resp.GetPlaintext()) != DataKeySize {
		clear(resp.GetPlaintext())
		return nil, notAuthentic(op, "the ciphertext is not a wrapped data key (or the server predates DecryptResponse.data_key: upgrade it)")
	}
	return resp.GetPlaintext(), nil
}
