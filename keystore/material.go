package keystore

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"slices"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/aead/subtle"
	"github.com/tink-crypto/tink-go/v2/daead"
	"github.com/tink-crypto/tink-go/v2/daead/aessiv"
	"github.com/tink-crypto/tink-go/v2/key"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/mac"
	"github.com/tink-crypto/tink-go/v2/mac/hmac"
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

// newKEK draws a fresh key of kekSize bytes (a tenant KEK, the page-token
// key) for the caller to wrap under the root and clear.
func (s *Service) newKEK() ([]byte, error) {
	raw := make([]byte, kekSize)
	if _, err := io.ReadFull(s.rand, raw); err != nil {
		return nil, err
	}
	return raw, nil
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
	case PurposeEncryptDeterministic:
		// AES-SIV with a 64-byte key: two AES-256 keys (S2V and CTR).
		params, err := aessiv.NewParameters(64, aessiv.VariantTink)
		if err != nil {
			return nil, err
		}
		b, err := secretdata.NewBytesFromRand(64)
		if err != nil {
			return nil, err
		}
		return aessiv.NewKey(b, version, params)
	case PurposeMAC, PurposePassword:
		params, err := hmac.NewParameters(hmac.ParametersOpts{
			KeySizeInBytes: 32, TagSizeInBytes: 32, HashType: hmac.SHA256, Variant: hmac.VariantTink,
		})
		if err != nil {
			return nil, err
		}
		b, err := secretdata.NewBytesFromRand(32)
		if err != nil {
			return nil, err
		}
		return hmac.NewKey(b, params, version)
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

// sealKeyset encrypts h under the tenant KEK into rec.Keyset, bound to the
// key's name and to its purpose (rec.Binding keysetBindsPurpose).
func sealKeyset(h *keyset.Handle, kek tink.AEAD, ref KeyRef, rec *keyRecord) error {
	rec.Binding = keysetBindsPurpose
	aad, err := keysetAAD(ref, rec)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := h.WriteWithAssociatedData(keyset.NewBinaryWriter(&buf), kek, aad); err != nil {
		return fmt.Errorf("seal keyset: %w", err)
	}
	rec.Keyset = buf.Bytes()
	return nil
}

// openKeyset decrypts rec's sealed keyset. A keyset sealed for another
// tenant, key or purpose, or tampered with, fails with ErrIntegrity.
func openKeyset(kek tink.AEAD, ref KeyRef, rec *keyRecord) (*keyset.Handle, error) {
	aad, err := keysetAAD(ref, rec)
	if err != nil {
		return nil, err
	}
	h, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(rec.Keyset)), kek, aad)
	if err != nil {
		return nil, fmt.Errorf("%w: keyset of %s", ErrIntegrity, ref)
	}
	return h, nil
}

// primitives are what a key's keyset does, by purpose. Tink's keyset
// primitives use only the keyset's enabled keys: encrypt and compute with the
// primary, decrypt and verify with any enabled key named by the prefix.
type primitives struct {
	aead  tink.AEAD              // PurposeEncrypt
	daead tink.DeterministicAEAD // PurposeEncryptDeterministic
	mac   tink.MAC               // PurposeMAC, PurposePassword
	macs  map[uint32]tink.MAC    // PurposeMAC, PurposePassword: each enabled version alone
	order []uint32               // the keys of macs: primary first, then newest to oldest
}

func newPrimitives(p Purpose, h *keyset.Handle) (primitives, error) {
	var out primitives
	var err error
	switch p {
	case PurposeEncrypt:
		out.aead, err = aead.New(h)
	case PurposeEncryptDeterministic:
		out.daead, err = daead.New(h)
	case PurposeMAC, PurposePassword:
		if out.mac, err = mac.New(h); err == nil {
			out.macs, out.order, err = versionMACs(h)
		}
	default:
		return primitives{}, fmt.Errorf("%w: purpose %v not supported", ErrIntegrity, p)
	}
	if err != nil {
		return primitives{}, fmt.Errorf("%v primitive: %w", p, err)
	}
	return out, nil
}

// versionMACs returns a MAC primitive for each enabled key of h alone, and
// their versions: primary first, then newest to oldest.
func versionMACs(h *keyset.Handle) (map[uint32]tink.MAC, []uint32, error) {
	macs := make(map[uint32]tink.MAC, h.Len())
	var primary uint32
	var others []uint32
	for i := range h.Len() {
		e, err := h.Entry(i)
		if err != nil {
			return nil, nil, err
		}
		if e.KeyStatus() != keyset.Enabled {
			continue
		}
		m := keyset.NewManager()
		id, err := m.AddKey(e.Key())
		if err != nil {
			return nil, nil, err
		}
		if err := m.SetPrimary(id); err != nil {
			return nil, nil, err
		}
		one, err := m.Handle()
		if err != nil {
			return nil, nil, err
		}
		if macs[id], err = mac.New(one); err != nil {
			return nil, nil, err
		}
		if e.IsPrimary() {
			primary = id
		} else {
			others = append(others, id)
		}
	}
	slices.Sort(others)
	slices.Reverse(others)
	return macs, append([]uint32{primary}, others...), nil
}
