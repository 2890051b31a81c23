package keystore

import (
	"bytes"
	"context"
	"slices"
	"testing"

	"github.com/tink-crypto/tink-go/v2/keyset"
)

func TestVersionFindsEachVersionWhereverTheRecordKeepsIt(t *testing.T) {
	records := map[string][]uint32{
		"numbered from 1":     {1, 2, 3, 4},
		"out of order":        {3, 1, 4, 2},
		"a gap":               {1, 2, 4, 5},
		"not starting at one": {7, 8},
		"empty":               nil,
	}
	for name, versions := range records {
		t.Run(name, func(t *testing.T) {
			rec := &keyRecord{}
			for _, v := range versions {
				rec.Versions = append(rec.Versions, versionRecord{Version: v, EncryptCount: uint64(v) * 10})
			}
			for _, v := range versions {
				vr, ok := rec.version(v)
				if !ok || vr.Version != v || vr.EncryptCount != uint64(v)*10 {
					t.Fatalf("version(%d) = %+v, %v", v, vr, ok)
				}
				vr.EncryptCount++ // the pointer is into the record
				if again, _ := rec.version(v); again.EncryptCount != uint64(v)*10+1 {
					t.Fatalf("version(%d) did not point into the record", v)
				}
			}
			for _, v := range []uint32{0, 3, 6, 9, 1 << 31, ^uint32(0)} {
				if slices.Contains(versions, v) {
					continue
				}
				if vr, ok := rec.version(v); ok {
					t.Fatalf("version(%d) found %+v in %v", v, vr, versions)
				}
			}
		})
	}
}

// A keyset sealed before the purpose was bound (binding 0) still opens,
// and its next keyset change seals it with the purpose.
func TestALegacyKeysetBindingOpensAndIsUpgraded(t *testing.T) {
	ctx := context.Background()
	s, hs, open := newReviewSvc(t)
	ref, ct := setupRotated(t, s)
	kek, _, err := s.m.activeTenant(ctx, ref.Tenant)
	if err != nil {
		t.Fatal(err)
	}
	rec, ver, err := s.readKey(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Binding != keysetBindsPurpose {
		t.Fatalf("a new key's binding is %d", rec.Binding)
	}
	h, err := openKeyset(kek, ref, rec)
	if err != nil {
		t.Fatal(err)
	}
	rec.Binding = keysetBindsName
	var buf bytes.Buffer
	if err := h.WriteWithAssociatedData(keyset.NewBinaryWriter(&buf), kek, []byte("custos:key:"+ref.Tenant+"/"+ref.Key)); err != nil {
		t.Fatal(err)
	}
	rec.Keyset = buf.Bytes()
	b, err := encodeRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hs.Put(ctx, keyStorageKey(ref), b, ver); err != nil {
		t.Fatal(err)
	}
	cold := open()
	if _, _, err := cold.Decrypt(ctx, ref, ct, nil); err != nil {
		t.Fatalf("decrypt under a legacy binding: %v", err)
	}
	if _, err := cold.RotateKey(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if rec, _, err = cold.readKey(ctx, ref); err != nil || rec.Binding != keysetBindsPurpose {
		t.Fatalf("binding after a rotation: %d, %v; want %d", rec.Binding, err, keysetBindsPurpose)
	}
	if _, _, err := open().Decrypt(ctx, ref, ct, nil); err != nil {
		t.Fatalf("decrypt after the upgrade: %v", err)
	}
}
