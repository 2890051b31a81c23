package keystore

import (
	"testing"
	"unicode/utf8"
)

// FuzzStoredRecords: the decoders of what storage holds (tenant and key
// records, tombstones, due hints) never panic on arbitrary bytes, and a
// record they accept encodes back to a record they accept as the same.
func FuzzStoredRecords(f *testing.F) {
	f.Add([]byte(`{"format":1,"state":1,"create_time":"2026-01-01T00:00:00Z","wrapped_kek":"AQ=="}`))
	f.Add([]byte(`{"format":1,"purpose":4,"primary":1,"versions":[{"version":1,"state":1}],"binding":1,"keyset":"AQ=="}`))
	f.Add([]byte(`{"format":1,"versions":null}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := decodeTenant(b); err == nil {
			again, err := encodeRecord(r)
			if err != nil {
				t.Fatalf("an accepted tenant record does not encode: %v", err)
			}
			if _, err := decodeTenant(again); err != nil {
				t.Fatalf("an accepted tenant record, encoded again, is refused: %v", err)
			}
		}
		if r, err := decodeKey(b); err == nil {
			again, err := encodeRecord(r)
			if err != nil {
				t.Fatalf("an accepted key record does not encode: %v", err)
			}
			if _, err := decodeKey(again); err != nil {
				t.Fatalf("an accepted key record, encoded again, is refused: %v", err)
			}
			_ = r.maxVersion()
		}
		_, _ = ParseTombstone(b)
		if at, kind, name, ok := parseDueKey(string(b)); ok && dueStorageKey(at, kind, name) != string(b) && at.Unix() >= 0 {
			// Only the canonical form (zero-padded seconds) is written;
			// others are read as the same hint.
			if _, k2, n2, ok2 := parseDueKey(dueStorageKey(at, kind, name)); !ok2 || k2 != kind || n2 != name {
				t.Fatalf("hint %q reads back as %q %q", b, k2, n2)
			}
		}
	})
}

// FuzzNamesAndPageTokens: resource names and page tokens callers send
// never panic, and what is accepted is what the service makes.
func FuzzNamesAndPageTokens(f *testing.F) {
	f.Add("tenants/acme/keys/pii", "acme")
	f.Add(encodePageToken("acme"), "acme")
	f.Add(encodeKeysPageToken("acme", "pii"), "acme")
	f.Add("tenants//keys/", "")
	f.Fuzz(func(t *testing.T, s, tenant string) {
		if ref, err := ParseKeyName(s); err == nil && ref.String() != s {
			t.Fatalf("ParseKeyName(%q) = %v, which names %q", s, ref, ref.String())
		}
		if id, err := ParseTenantName(s); err == nil && "tenants/"+id != s {
			t.Fatalf("ParseTenantName(%q) = %q", s, id)
		}
		// An accepted token names a valid id, and the token the service
		// makes for that id reads back as it (base64 lets a few spellings
		// of one token through; they mean the same).
		if id, err := decodePageToken(s); err == nil && id != "" {
			if again, err := decodePageToken(encodePageToken(id)); !ValidID(id) || err != nil || again != id {
				t.Fatalf("page token %q decodes to %q", s, id)
			}
		}
		if id, err := decodeKeysPageToken(s, tenant); err == nil && id != "" {
			if again, err := decodeKeysPageToken(encodeKeysPageToken(tenant, id), tenant); !ValidID(id) || err != nil || again != id {
				t.Fatalf("keys page token %q decodes to %q", s, id)
			}
		}
		if _, err := ParseKeyName(s); err != nil && !utf8.ValidString(err.Error()) {
			t.Fatalf("the refusal of a name is not valid UTF-8: %q", err.Error())
		}
	})
}
