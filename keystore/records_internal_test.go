package keystore

import (
	"slices"
	"testing"
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
