// Package envelope is the format of fields encrypted locally with a data
// key from Custos (client local mode): AES-256-GCM under a key derived from
// the data key, with a commitment to the data key checked before
// decryption, so that no ciphertext decrypts under two data keys.
// docs/formats.md specifies it; testdata/envelope-vectors.json has test
// vectors.
//
// Layout (format 1):
//
//	byte 0          0xE5, the format byte (a service ciphertext starts with
//	                Tink's 0x01 prefix, so the two are never confused)
//	bytes 1–2       W, the wrapped data key's length, big-endian (1–4096)
//	W bytes         the wrapped data key, as GenerateDataKey returned it (a
//	                service ciphertext naming its key version)
//	32 bytes        the commitment: HMAC-SHA256(data key, "custos envelope v1 commit")
//	12 bytes        the nonce
//	the rest        AES-256-GCM ciphertext and 16-byte tag, under
//	                HKDF-SHA256(data key, info "custos envelope v1 encrypt"),
//	                with the caller's associated data
//
// What is bound, and how: the caller's associated data by GCM; the format
// by the key derivation (the format's own label); the data key by the
// commitment, checked before decryption, and by the key derivation. The
// wrapped key is authenticated by its own AEAD (under the tenant's key),
// and a wrapping of any other data key fails the commitment check; it is
// not in the GCM associated data, so that a rewrap (a new wrapping of the
// same data key under the key's newest version) keeps the bulk as it is.
package envelope

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
)

// Format is the first byte of every envelope of this format.
const Format byte = 0xE5

// Sizes of the parts.
const (
	DataKeySize    = 32
	CommitmentSize = 32
	NonceSize      = 12
	TagSize        = 16
	// MaxWrappedKey bounds the wrapped data key.
	MaxWrappedKey = 4096
	headerFixed   = 1 + 2
)

// DataKeyContext is the associated data Custos wraps envelope data keys
// with (GenerateDataKey's associated_data): envelope data keys are never
// confused with data keys a caller uses otherwise.
const DataKeyContext = "custos envelope v1"

// DataKeyAADPrefix separates wrapped data keys from encrypted fields: the
// service wraps a data key with associated data DataKeyAADPrefix followed by
// the caller's, and refuses fields whose associated data starts with it.
const DataKeyAADPrefix = "custos:datakey:"

// MaxAssociatedData is the most associated data the service takes with a
// field (its API's limit); local mode keeps to it, so that the service can
// decrypt and rewrap every envelope.
const MaxAssociatedData = 65536

// ReservedAssociatedData reports associated data that fields may not use,
// locally or on the service: DataKeyAADPrefix and anything after it, and
// DataKeyContext. A field can then never be taken for a data key's
// wrapping, by the service or by a client that unwraps through Decrypt.
func ReservedAssociatedData(ad []byte) bool {
	return bytes.HasPrefix(ad, []byte(DataKeyAADPrefix)) || string(ad) == DataKeyContext
}

const (
	commitLabel = "custos envelope v1 commit"
	encLabel    = "custos envelope v1 encrypt"
)

// ErrInvalid is returned for every envelope that is malformed or does not
// authenticate, with no detail (one generic failure).
var ErrInvalid = errors.New("envelope: invalid ciphertext")

// Key is a data key ready to seal and open envelopes: its commitment and
// derived AEAD, computed once.
type Key struct {
	wrapped    []byte
	commitment [CommitmentSize]byte
	aead       cipher.AEAD
}

// NewKey prepares data key dk (32 bytes) with its wrapping.
func NewKey(dk, wrapped []byte) (*Key, error) {
	if len(dk) != DataKeySize {
		return nil, fmt.Errorf("envelope: data key of %d bytes, want %d", len(dk), DataKeySize)
	}
	if len(wrapped) == 0 || len(wrapped) > MaxWrappedKey {
		return nil, fmt.Errorf("envelope: wrapped data key of %d bytes", len(wrapped))
	}
	k := &Key{wrapped: append([]byte(nil), wrapped...)}
	m := hmac.New(sha256.New, dk)
	m.Write([]byte(commitLabel))
	m.Sum(k.commitment[:0])
	ek, err := hkdf.Key(sha256.New, dk, nil, encLabel, 32)
	if err != nil {
		return nil, err
	}
	defer clear(ek)
	block, err := aes.NewCipher(ek)
	if err != nil {
		return nil, err
	}
	if k.aead, err = cipher.NewGCM(block); err != nil {
		return nil, err
	}
	return k, nil
}

// Wrapped is the key's wrapping as the envelopes carry it.
func (k *Key) Wrapped() []byte { return k.wrapped }

// Commitment is the key's commitment: it identifies the data key, whatever
// wrapping of it an envelope carries.
func (k *Key) Commitment() []byte { return k.commitment[:] }

// Overhead is how many bytes an envelope adds to its plaintext.
func (k *Key) Overhead() int {
	return headerFixed + len(k.wrapped) + CommitmentSize + NonceSize + TagSize
}

// Seal encrypts plaintext bound to associatedData with a random nonce. It
// allocates the output only.
func (k *Key) Seal(plaintext, associatedData []byte) ([]byte, error) {
	out := make([]byte, 0, k.Overhead()+len(plaintext))
	out = k.appendHeader(out)
	nonce := out[len(out) : len(out)+NonceSize]
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return k.seal(out, nonce, plaintext, associatedData), nil
}

func (k *Key) appendHeader(out []byte) []byte {
	out = append(out, Format)
	out = binary.BigEndian.AppendUint16(out, uint16(len(k.wrapped)))
	out = append(out, k.wrapped...)
	return append(out, k.commitment[:]...)
}

func (k *Key) seal(out, nonce, plaintext, aad []byte) []byte {
	out = out[:len(out)+NonceSize]
	return k.aead.Seal(out, nonce, plaintext, aad)
}

// Envelope is a parsed envelope.
type Envelope struct {
	Wrapped    []byte
	commitment []byte
	nonce      []byte
	body       []byte
}

// IsEnvelope reports whether ciphertext is in this format (by its first
// byte only; Parse checks the rest).
func IsEnvelope(ciphertext []byte) bool { return len(ciphertext) > 0 && ciphertext[0] == Format }

// Parse splits an envelope into its parts, checking every length before
// use. The parts alias ciphertext.
func Parse(ciphertext []byte) (*Envelope, error) {
	if len(ciphertext) < headerFixed || ciphertext[0] != Format {
		return nil, ErrInvalid
	}
	w := int(binary.BigEndian.Uint16(ciphertext[1:3]))
	rest := ciphertext[headerFixed:]
	if w == 0 || w > MaxWrappedKey || len(rest) < w+CommitmentSize+NonceSize+TagSize {
		return nil, ErrInvalid
	}
	return &Envelope{
		Wrapped:    rest[:w],
		commitment: rest[w : w+CommitmentSize],
		nonce:      rest[w+CommitmentSize : w+CommitmentSize+NonceSize],
		body:       rest[w+CommitmentSize+NonceSize:],
	}, nil
}

// Open decrypts the envelope with key k, the data key its wrapped key
// unwraps to: the commitment must match k's (in constant time) before
// anything is decrypted.
func (e *Envelope) Open(k *Key, associatedData []byte) ([]byte, error) {
	if subtle.ConstantTimeCompare(e.commitment, k.commitment[:]) != 1 {
		return nil, ErrInvalid
	}
	pt, err := k.aead.Open(nil, e.nonce, e.body, associatedData)
	if err != nil {
		return nil, ErrInvalid
	}
	return pt, nil
}

// Commitment is the envelope's commitment to its data key.
func (e *Envelope) Commitment() []byte { return e.commitment }

// Rewrapped returns the envelope with its data key's wrapping replaced by
// wrapped (a new wrapping of the same data key): the bulk stays.
func Rewrapped(ciphertext, wrapped []byte) ([]byte, error) {
	e, err := Parse(ciphertext)
	if err != nil {
		return nil, err
	}
	if len(wrapped) == 0 || len(wrapped) > MaxWrappedKey {
		return nil, ErrInvalid
	}
	out := make([]byte, 0, len(ciphertext)-len(e.Wrapped)+len(wrapped))
	out = append(out, Format)
	out = binary.BigEndian.AppendUint16(out, uint16(len(wrapped)))
	out = append(out, wrapped...)
	out = append(out, e.commitment...)
	out = append(out, e.nonce...)
	return append(out, e.body...), nil
}
