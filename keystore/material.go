package keystore

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/aead/subtle"
	"github.com/tink-crypto/tink-go/v2/key"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/secretdata"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// Tink's output prefix: one start byte then the 4-byte big-endian key id. Custos
// gives every key version the Tink key id equal to its version number, so the
// prefix names the version and decrypt needs no version argument.
const (
	tinkStartByte  = 0x01
	tinkPrefixSize = 5
)

// kekSize is the size of a tenant KEK: AES-256.
const kekSize = 32

// versionOf reads the key version from a Tink-prefixed ciphertext.
func versionOf(ciphertext []byte) (uint32, bool) {
	if len(ciphertext) < tinkPrefixSize || ciphertext[0] != tinkStartByte {
		return 0, false
	}
	return binary.BigEndian.Uint32(ciphertext[1:tinkPrefixSize]), true
}

// newKEKAEAD returns the AEAD a tenant KEK wraps keysets with.
func newKEKAEAD(kek []byte) (tink.AEAD, error) {
	if len(kek) != kekSize {
		return nil, fmt.Errorf("%w: tenant KEK has %d bytes, want %d", ErrIntegrity, len(kek), kekSize)
	}
	a, err := subtle.NewAESGCM(kek)
	if err != nil {
		return nil, fmt.Errorf("tenant KEK: %w", err)
	}
	return a, nil
}

// newVersionKey returns fresh Tink key material for purpose p whose Tink key
// id is version. Randomness comes from crypto/rand through Tink.
func newVersionKey(p Purpose, version uint32) (key.Key, error) {
	switch p {
	case PurposeEncrypt:
		params, err := aesgcm.NewParameters(aesgcm.ParametersOpts{
			KeySizeInBytes: 32, IVSizeInBytes: 12, TagSizeInBytes: 16, Variant: aesgcm.VariantTink,
		})
		if err != nil {
			return nil, err
		}
		b, err := secretdata.NewBytesFromRand(32)
		if err != nil {
			return nil, err
		}
		return aesgcm.NewKey(b, version, params)
	}
	return nil, fmt.Errorf("%w: purpose %v not supported", ErrInvalidArgument, p)
}

// addVersion returns h (nil for a new key) with a new primary version.
func addVersion(h *keyset.Handle, p Purpose, version uint32) (*keyset.Handle, error) {
	k, err := newVersionKey(p, version)
	if err != nil {
		return nil, fmt.Errorf("new key version: %w", err)
	}
	m := keyset.NewManager()
	if h != nil {
		m = keyset.NewManagerFromHandle(h)
	}
	id, err := m.AddKey(k)
	if err != nil {
		return nil, fmt.Errorf("add key version: %w", err)
	}
	if id != version {
		return nil, fmt.Errorf("add key version: tink id %d, want %d", id, version)
	}
	if err := m.SetPrimary(id); err != nil {
		return nil, fmt.Errorf("set primary version: %w", err)
	}
	return m.Handle()
}

// sealKeyset encrypts h under the tenant KEK, bound to the key's name.
func sealKeyset(h *keyset.Handle, kek tink.AEAD, ref KeyRef) ([]byte, error) {
	var buf bytes.Buffer
	if err := h.WriteWithAssociatedData(keyset.NewBinaryWriter(&buf), kek, keysetAAD(ref)); err != nil {
		return nil, fmt.Errorf("seal keyset: %w", err)
	}
	return buf.Bytes(), nil
}

// openKeyset decrypts a sealed keyset. A keyset sealed for another tenant or
// key, or tampered with, fails with ErrIntegrity.
func openKeyset(sealed []byte, kek tink.AEAD, ref KeyRef) (*keyset.Handle, error) {
	h, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(sealed)), kek, keysetAAD(ref))
	if err != nil {
		return nil, fmt.Errorf("%w: keyset of %s", ErrIntegrity, ref)
	}
	return h, nil
}

// primitives are what a key's keyset does, by purpose.
type primitives struct {
	aead tink.AEAD // PurposeEncrypt
}

func newPrimitives(p Purpose, h *keyset.Handle) (primitives, error) {
	switch p {
	case PurposeEncrypt:
		a, err := aead.New(h)
		if err != nil {
			return primitives{}, fmt.Errorf("aead primitive: %w", err)
		}
		return primitives{aead: a}, nil
	}
	return primitives{}, fmt.Errorf("%w: purpose %v not supported", ErrIntegrity, p)
}
