package keystore

import (
	"context"
	"errors"
	"fmt"
)

// MACEntry is the MAC of a value under one key version.
type MACEntry struct {
	Version uint32
	MAC     []byte
}

// ComputeMAC returns the HMAC-SHA256 of data under the primary version of a
// MAC key: a 5-byte prefix naming the version, then the 32-byte tag.
func (s *Service) ComputeMAC(ctx context.Context, ref KeyRef, data []byte) ([]byte, uint32, error) {
	e, err := s.macKey(ctx, ref, "compute MAC")
	if err != nil {
		return nil, 0, err
	}
	m, err := e.prim.mac.ComputeMAC(data)
	if err != nil {
		return nil, 0, fmt.Errorf("compute MAC with %s: %w", ref, err)
	}
	return m, e.rec.Primary, nil
}

// VerifyMAC reports whether mac is a valid MAC of data under an enabled
// version at or above the key's minimum decryption version. The comparison
// is constant time (Tink compares with hmac.Equal).
func (s *Service) VerifyMAC(ctx context.Context, ref KeyRef, data, mac []byte) (bool, error) {
	e, err := s.macKey(ctx, ref, "verify MAC")
	if err != nil {
		return false, err
	}
	v, ok := versionOf(mac)
	if !ok {
		return false, nil
	}
	if _, known := e.rec.version(v); !known {
		// Maybe rotated on another replica: reload once, bounded like
		// Decrypt. A version storage does not know either is not a valid
		// MAC; a reload that fails (an outage, the key deleted) is the
		// caller's error, never a MAC reported invalid.
		fresh, err := s.entryKnowing(ctx, e, v)
		switch {
		case errors.Is(err, ErrInvalidCiphertext):
			return false, nil
		case err != nil:
			return false, err
		}
		e = fresh
	}
	vr, known := e.rec.version(v)
	if !known || vr.State != VersionEnabled || v < e.rec.MinDecryptionVersion {
		return false, nil
	}
	return e.prim.mac.VerifyMAC(mac, data) == nil, nil
}

// A blind index hashes its data once per version, and a key rotated for
// years (a rotation period of an hour is allowed) keeps every version it
// did not disable; what one call may cost is bounded.
const (
	// MaxBlindIndexVersions bounds the versions one blind index is
	// computed under (its audit event lists them all).
	MaxBlindIndexVersions = 1024
	// MaxBlindIndexBytes bounds the bytes one blind index hashes: the
	// data's length times the versions (32 versions of 64 KiB; an e-mail
	// address reaches MaxBlindIndexVersions first).
	MaxBlindIndexBytes = 2 << 20
)

// BlindIndex returns the MAC of data under every enabled version at or above
// the minimum decryption version, primary first, then newest to oldest. Each
// MAC is exactly what ComputeMAC returns under that version, so rows indexed
// before a rotation are still found after it. A call that would pass
// MaxBlindIndexVersions or MaxBlindIndexBytes is refused (ErrWrongState).
func (s *Service) BlindIndex(ctx context.Context, ref KeyRef, data []byte) ([]MACEntry, error) {
	e, err := s.macKey(ctx, ref, "blind index")
	if err != nil {
		return nil, err
	}
	indexed := func(v uint32) bool {
		vr, ok := e.rec.version(v)
		return ok && vr.State == VersionEnabled && v >= e.rec.MinDecryptionVersion
	}
	n := 0
	for _, v := range e.prim.order {
		if indexed(v) {
			n++
		}
	}
	if n > MaxBlindIndexVersions || int64(n)*int64(max(len(data), 1)) > MaxBlindIndexBytes {
		// The data's length stays out of the message (it is logged).
		return nil, fmt.Errorf("blind index with %s: %d enabled versions at or above the minimum decryption version, too many for this value (at most %d versions, and %d bytes hashed in all); raise min_decryption_version or disable old versions once rows are indexed anew: %w",
			ref, n, MaxBlindIndexVersions, MaxBlindIndexBytes, ErrWrongState)
	}
	out := make([]MACEntry, 0, n)
	for _, v := range e.prim.order {
		if !indexed(v) {
			continue
		}
		m, err := e.prim.macs[v].ComputeMAC(data)
		if err != nil {
			return nil, fmt.Errorf("blind index with %s version %d: %w", ref, v, err)
		}
		out = append(out, MACEntry{Version: v, MAC: m})
	}
	return out, nil
}

func (s *Service) macKey(ctx context.Context, ref KeyRef, op string) (*keyEntry, error) {
	e, err := s.m.key(ctx, ref)
	if err != nil {
		return nil, err
	}
	if e.rec.Purpose != PurposeMAC {
		return nil, wrongPurpose(op, e, PurposeMAC)
	}
	return e, nil
}
