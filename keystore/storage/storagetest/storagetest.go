// Package storagetest is the conformance suite every storage.Store backend
// must pass. A backend's tests call Test with a function that opens a new,
// empty store:
//
//	func TestConformance(t *testing.T) {
//		storagetest.Test(t, func(t *testing.T) storage.Store { return memory.New() })
//	}
//
// Backends that implement storage.Watcher also run TestWatch.
package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/custos-kms/custos/keystore/storage"
)

// Test runs the conformance suite against the stores open returns. open is
// called once per sub-test and must return a new, empty store. Test closes
// the store when the sub-test ends, so open should only arrange cleanup of
// anything else it creates, such as files.
func Test(t *testing.T, open func(t *testing.T) storage.Store) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil && !errors.Is(err, storage.ErrClosed) {
					t.Errorf("Close: %v", err)
				}
			})
			c.run(t, s)
		})
	}
}

var cases = []struct {
	name string
	run  func(t *testing.T, s storage.Store)
}{
	{"Get of a missing key returns ErrNotFound", testGetMissing},
	{"Put with expect 0 creates a record that Get returns", testCreate},
	{"Put with expect 0 on an existing key returns ErrConflict and keeps the value", testCreateExisting},
	{"Put with a version on a missing key returns ErrConflict", testPutMissingWithVersion},
	{"Put with a stale version returns ErrConflict and keeps the value", testPutStale},
	{"Put with the current version stores a greater version", testUpdate},
	{"versions increase across different keys", testVersionsAcrossKeys},
	{"an empty value round-trips", testEmptyValue},
	{"a key of MaxKeyLen bytes and a value of MaxValueLen bytes are stored", testMaxSizes},
	{"Delete with the wrong version returns ErrConflict and keeps the record", testDeleteWrongVersion},
	{"Delete of a missing key returns ErrNotFound", testDeleteMissing},
	{"Delete with the current version removes the record", testDelete},
	{"a deleted and recreated key gets a version greater than any before", testRecreate},
	{"List returns records in byte-wise key order", testListOrder},
	{"List returns only keys with the prefix that sort after after", testListFilter},
	{"List pages through every key exactly once", testListPaging},
	{"List compares prefix and after byte-wise, even inside a multi-byte character", testListBytewiseArguments},
	{"invalid arguments return ErrInvalid", testInvalid},
	{"mutating a slice passed to Put does not change the stored value", testPutCopies},
	{"mutating a returned Value does not change the stored value", testGetCopies},
	{"concurrent read-modify-CAS increments lose no updates", testConcurrentIncrements},
	{"concurrent creates of one key let exactly one succeed", testConcurrentCreates},
	{"methods after Close return ErrClosed", testClosed},
	{"a cancelled context fails every method with context.Canceled", testCancelled},
	{"Apply makes all its writes", testApply},
	{"Apply with one failing version check makes none of its writes", testApplyConflict},
	{"Apply refuses a key named twice and an empty batch", testApplyInvalid},
	{"Snapshot sees every record once, in order, as it was when it began", testSnapshot},
}

func testGetMissing(t *testing.T, s storage.Store) {
	_, err := s.Get(t.Context(), "missing")
	wantErr(t, err, storage.ErrNotFound, `Get("missing")`)
}

func testCreate(t *testing.T, s storage.Store) {
	v := mustPut(t, s, "k", "hello", 0)
	if v == 0 {
		t.Fatalf(`Put("k", expect 0) = version 0, want > 0`)
	}
	wantRecord(t, s, "k", "hello", v)
}

func testCreateExisting(t *testing.T, s storage.Store) {
	v := mustPut(t, s, "k", "first", 0)
	_, err := s.Put(t.Context(), "k", []byte("second"), 0)
	wantErr(t, err, storage.ErrConflict, `Put("k", expect 0) on an existing key`)
	wantRecord(t, s, "k", "first", v)
}

func testPutMissingWithVersion(t *testing.T, s storage.Store) {
	v := mustPut(t, s, "other", "x", 0)
	_, err := s.Put(t.Context(), "k", []byte("x"), v)
	wantErr(t, err, storage.ErrConflict, fmt.Sprintf(`Put("k", expect %d) on a missing key`, v))
	_, err = s.Get(t.Context(), "k")
	wantErr(t, err, storage.ErrNotFound, `Get("k") after a failed Put`)
}

func testPutStale(t *testing.T, s storage.Store) {
	v1 := mustPut(t, s, "k", "one", 0)
	v2 := mustPut(t, s, "k", "two", v1)
	_, err := s.Put(t.Context(), "k", []byte("three"), v1)
	wantErr(t, err, storage.ErrConflict, fmt.Sprintf(`Put("k", expect %d) with stale version`, v1))
	wantRecord(t, s, "k", "two", v2)
}

func testUpdate(t *testing.T, s storage.Store) {
	v1 := mustPut(t, s, "k", "one", 0)
	v2 := mustPut(t, s, "k", "two", v1)
	if v2 <= v1 {
		t.Fatalf("update returned version %d, want > %d", v2, v1)
	}
	wantRecord(t, s, "k", "two", v2)
	v3 := mustPut(t, s, "k", "three", v2)
	if v3 <= v2 {
		t.Fatalf("second update returned version %d, want > %d", v3, v2)
	}
	wantRecord(t, s, "k", "three", v3)
}

func testVersionsAcrossKeys(t *testing.T, s storage.Store) {
	var last uint64
	for i := range 5 {
		key := fmt.Sprintf("k%d", i)
		v := mustPut(t, s, key, "x", 0)
		if v <= last {
			t.Fatalf("Put(%q) returned version %d, want > %d (the previous Put's)", key, v, last)
		}
		last = mustPut(t, s, key, "y", v)
	}
}

func testEmptyValue(t *testing.T, s storage.Store) {
	v := mustPut(t, s, "k", "", 0)
	wantRecord(t, s, "k", "", v)
	v, err := s.Put(t.Context(), "k", nil, v)
	if err != nil {
		t.Fatalf(`Put("k", nil) = %v`, err)
	}
	wantRecord(t, s, "k", "", v)
}

func testMaxSizes(t *testing.T, s storage.Store) {
	key := strings.Repeat("k", storage.MaxKeyLen)
	value := bytes.Repeat([]byte("0123456789abcdef"), storage.MaxValueLen/16)
	v, err := s.Put(t.Context(), key, value, 0)
	if err != nil {
		t.Fatalf("Put(MaxKeyLen key, MaxValueLen value) = %v", err)
	}
	r, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(MaxKeyLen key) = %v", err)
	}
	if r.Key != key || r.Version != v || !bytes.Equal(r.Value, value) {
		t.Fatalf("Get(MaxKeyLen key) = key of %d bytes, value of %d bytes, version %d; want %d, %d, %d",
			len(r.Key), len(r.Value), r.Version, len(key), len(value), v)
	}
}

func testDeleteWrongVersion(t *testing.T, s storage.Store) {
	v := mustPut(t, s, "k", "x", 0)
	for _, wrong := range []uint64{0, v + 1000} {
		err := s.Delete(t.Context(), "k", wrong)
		wantErr(t, err, storage.ErrConflict, fmt.Sprintf(`Delete("k", expect %d) of version %d`, wrong, v))
	}
	wantRecord(t, s, "k", "x", v)
}

func testDeleteMissing(t *testing.T, s storage.Store) {
	v := mustPut(t, s, "other", "x", 0)
	for _, expect := range []uint64{0, v} {
		err := s.Delete(t.Context(), "missing", expect)
		wantErr(t, err, storage.ErrNotFound, fmt.Sprintf(`Delete("missing", expect %d)`, expect))
	}
}

func testDelete(t *testing.T, s storage.Store) {
	v := mustPut(t, s, "k", "x", 0)
	if err := s.Delete(t.Context(), "k", v); err != nil {
		t.Fatalf(`Delete("k", expect %d) = %v`, v, err)
	}
	_, err := s.Get(t.Context(), "k")
	wantErr(t, err, storage.ErrNotFound, `Get("k") after Delete`)
	err = s.Delete(t.Context(), "k", v)
	wantErr(t, err, storage.ErrNotFound, `second Delete("k")`)
}

func testRecreate(t *testing.T, s storage.Store) {
	v1 := mustPut(t, s, "k", "one", 0)
	v2 := mustPut(t, s, "k", "two", v1)
	other := mustPut(t, s, "other", "x", 0)
	if err := s.Delete(t.Context(), "k", v2); err != nil {
		t.Fatalf(`Delete("k", expect %d) = %v`, v2, err)
	}
	_, err := s.Put(t.Context(), "k", []byte("stale"), v2)
	wantErr(t, err, storage.ErrConflict, fmt.Sprintf(`Put("k", expect %d) after Delete`, v2))
	v3 := mustPut(t, s, "k", "three", 0)
	if highest := max(v1, v2, other); v3 <= highest {
		t.Fatalf("recreated key got version %d, want > %d (the highest version handed out before)", v3, highest)
	}
	for _, old := range []uint64{v1, v2} {
		_, err := s.Put(t.Context(), "k", []byte("stale"), old)
		wantErr(t, err, storage.ErrConflict, fmt.Sprintf(`Put("k", expect %d) with a version from before the Delete`, old))
		err = s.Delete(t.Context(), "k", old)
		wantErr(t, err, storage.ErrConflict, fmt.Sprintf(`Delete("k", expect %d) with a version from before the Delete`, old))
	}
	wantRecord(t, s, "k", "three", v3)
}

func testListOrder(t *testing.T, s storage.Store) {
	// Byte-wise order, unlike most collations, puts upper case first, does
	// not ignore punctuation and puts multi-byte UTF-8 last.
	keys := []string{
		"k/b", "k/a", "k/B", "k/A", "k/ab", "k/a-b", "k/a_b", "k/a b", "k/aB",
		"k/é", "k/z", "k/~", "k/0", "k/a/b", "k/a.b", "k/\u00e9a", "k/\U0001F511",
	}
	versions := map[string]uint64{}
	for _, k := range keys {
		versions[k] = mustPut(t, s, k, "v:"+k, 0)
	}
	mustPut(t, s, "j", "outside", 0)
	mustPut(t, s, "l", "outside", 0)

	got, err := s.List(t.Context(), "k/", "", 100)
	if err != nil {
		t.Fatalf(`List("k/", "", 100) = %v`, err)
	}
	want := slices.Sorted(slices.Values(keys))
	if !slices.Equal(recordKeys(got), want) {
		t.Fatalf("List keys = %q\nwant %q", recordKeys(got), want)
	}
	for _, r := range got {
		if string(r.Value) != "v:"+r.Key || r.Version != versions[r.Key] {
			t.Errorf("List record %q = value %q, version %d; want %q, %d", r.Key, r.Value, r.Version, "v:"+r.Key, versions[r.Key])
		}
	}
}

func testListFilter(t *testing.T, s storage.Store) {
	// "_" and "%" catch prefixes passed to SQL LIKE unescaped.
	keys := []string{
		"key", "keys/", "keys/a", "keys/a/1", "keys/a/2", "keys/ab/x", "keys/b/1",
		"a_1", "ab1", "a%1", "aX", `a\1`,
	}
	for _, k := range keys {
		mustPut(t, s, k, "v:"+k, 0)
	}
	for _, c := range []struct {
		prefix, after string
		limit         int
		want          []string
	}{
		{"keys/a/", "", 100, []string{"keys/a/1", "keys/a/2"}},
		{"keys/a", "", 100, []string{"keys/a", "keys/a/1", "keys/a/2", "keys/ab/x"}},
		{"keys/", "", 100, []string{"keys/", "keys/a", "keys/a/1", "keys/a/2", "keys/ab/x", "keys/b/1"}},
		{"keys/", "", 2, []string{"keys/", "keys/a"}},
		{"a_", "", 100, []string{"a_1"}},
		{"a%", "", 100, []string{"a%1"}},
		{`a\`, "", 100, []string{`a\1`}},
		{"", "", 100, slices.Sorted(slices.Values(keys))},
		{"", "keys/a/2", 100, []string{"keys/ab/x", "keys/b/1"}},
		{"nope", "", 100, nil},
		{"keys/a/", "keys/a/1", 100, []string{"keys/a/2"}},
		{"keys/a/", "keys/a/0", 100, []string{"keys/a/1", "keys/a/2"}},
		{"keys/a/", "a", 100, []string{"keys/a/1", "keys/a/2"}},
		{"keys/a/", "keys/a/2", 100, nil},
		{"keys/a/", "keys/b", 100, nil},
		{"keys/a", "keys/a/", 100, []string{"keys/a/1", "keys/a/2", "keys/ab/x"}},
	} {
		t.Run(fmt.Sprintf("prefix %q after %q limit %d", c.prefix, c.after, c.limit), func(t *testing.T) {
			got, err := s.List(t.Context(), c.prefix, c.after, c.limit)
			if err != nil {
				t.Fatalf("List = %v", err)
			}
			if !slices.Equal(recordKeys(got), c.want) {
				t.Errorf("List keys = %q, want %q", recordKeys(got), c.want)
			}
		})
	}
}

func testListPaging(t *testing.T, s storage.Store) {
	const n, limit = 25, 10
	mustPut(t, s, "pag", "outside", 0)
	mustPut(t, s, "pagf", "outside", 0)
	var want []string
	versions := map[string]uint64{}
	for i := range n {
		// Put in reverse so insertion order is not key order.
		k := fmt.Sprintf("page/%02d", n-1-i)
		versions[k] = mustPut(t, s, k, "v:"+k, 0)
		want = append(want, k)
	}
	slices.Sort(want)

	var got []string
	after := ""
	for pages := 0; ; pages++ {
		if pages > n {
			t.Fatalf("still paging after %d pages; got %q so far", pages, got)
		}
		page, err := s.List(t.Context(), "page/", after, limit)
		if err != nil {
			t.Fatalf("List(%q, %q, %d) = %v", "page/", after, limit, err)
		}
		if len(page) > limit {
			t.Fatalf("List returned %d records, more than limit %d", len(page), limit)
		}
		if len(page) == 0 {
			break
		}
		for _, r := range page {
			if r.Version != versions[r.Key] || string(r.Value) != "v:"+r.Key {
				t.Errorf("List record %q = value %q, version %d; want %q, %d", r.Key, r.Value, r.Version, "v:"+r.Key, versions[r.Key])
			}
			got = append(got, r.Key)
		}
		after = page[len(page)-1].Key
	}
	if !slices.Equal(got, want) {
		t.Fatalf("paged keys = %q\nwant %q", got, want)
	}
}

func testListBytewiseArguments(t *testing.T, s storage.Store) {
	// "é" is "\xc3\xa9", "ê" "\xc3\xaa", "ÿ" "\xc3\xbf", "Ā" "\xc4\x80". A backend
	// that can only pass valid UTF-8 to its database must still honour
	// prefixes and after keys that end inside a character.
	keys := []string{"k/z", "k/é", "k/ê", "k/ÿ", "k/Ā", "k/\U0010FFFF"}
	for _, k := range keys {
		mustPut(t, s, k, "v:"+k, 0)
	}
	for _, c := range []struct {
		prefix, after string
		want          []string
	}{
		{"k/\xc3", "", []string{"k/é", "k/ê", "k/ÿ"}},
		{"k/\xc3\xa9", "", []string{"k/é"}},
		{"k/", "k/\xc3", []string{"k/é", "k/ê", "k/ÿ", "k/Ā", "k/\U0010FFFF"}},
		{"k/", "k/\xc3\xaa", []string{"k/ÿ", "k/Ā", "k/\U0010FFFF"}},
		{"k/", "k/\xc3\xff", []string{"k/Ā", "k/\U0010FFFF"}},
		{"k/\xc3", "k/\xc3\xaa\x00", []string{"k/ÿ"}},
		{"k/\xf4", "", []string{"k/\U0010FFFF"}},
		{"k/\xf4\x90", "", nil},
		{"k/\xff", "", nil},
		{"k/", "k/\xff", nil},
		{"k\x00", "", nil},
		{"", "k/\U0010FFFF\xff", nil},
	} {
		t.Run(fmt.Sprintf("prefix %q after %q", c.prefix, c.after), func(t *testing.T) {
			got, err := s.List(t.Context(), c.prefix, c.after, 100)
			if err != nil {
				t.Fatalf("List = %v", err)
			}
			if !slices.Equal(recordKeys(got), c.want) {
				t.Errorf("List keys = %q, want %q", recordKeys(got), c.want)
			}
		})
	}
}

func testInvalid(t *testing.T, s storage.Store) {
	long := strings.Repeat("k", storage.MaxKeyLen+1)
	big := make([]byte, storage.MaxValueLen+1)
	for _, c := range []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"Get of an empty key", func(ctx context.Context) error { _, err := s.Get(ctx, ""); return err }},
		{"Get of a key longer than MaxKeyLen", func(ctx context.Context) error { _, err := s.Get(ctx, long); return err }},
		{"Put of an empty key", func(ctx context.Context) error { _, err := s.Put(ctx, "", []byte("x"), 0); return err }},
		{"Put of a key longer than MaxKeyLen", func(ctx context.Context) error { _, err := s.Put(ctx, long, []byte("x"), 0); return err }},
		{"Put of a value longer than MaxValueLen", func(ctx context.Context) error { _, err := s.Put(ctx, "k", big, 0); return err }},
		// Keys are valid UTF-8 without NUL (what PostgreSQL text holds), on
		// every backend: a bbolt store must restore into PostgreSQL.
		{"Put of a key that is not UTF-8", func(ctx context.Context) error { _, err := s.Put(ctx, "bad\xff", []byte("x"), 0); return err }},
		{"Put of a key holding NUL", func(ctx context.Context) error { _, err := s.Put(ctx, "a\x00b", []byte("x"), 0); return err }},
		{"Get of a key that is not UTF-8", func(ctx context.Context) error { _, err := s.Get(ctx, "bad\xff"); return err }},
		{"Delete of a key holding NUL", func(ctx context.Context) error { return s.Delete(ctx, "a\x00b", 1) }},
		{"Delete of an empty key", func(ctx context.Context) error { return s.Delete(ctx, "", 1) }},
		{"Delete of a key longer than MaxKeyLen", func(ctx context.Context) error { return s.Delete(ctx, long, 1) }},
		{"List with limit 0", func(ctx context.Context) error { _, err := s.List(ctx, "", "", 0); return err }},
		{"List with a negative limit", func(ctx context.Context) error { _, err := s.List(ctx, "", "", -1); return err }},
	} {
		t.Run(c.name, func(t *testing.T) {
			wantErr(t, c.call(t.Context()), storage.ErrInvalid, c.name)
		})
	}
	got, err := s.List(t.Context(), "", "", 100)
	if err != nil {
		t.Fatalf("List after invalid calls = %v", err)
	}
	if len(got) != 0 {
		t.Fatalf("invalid calls stored %q", recordKeys(got))
	}
}

func testPutCopies(t *testing.T, s storage.Store) {
	buf := []byte("original")
	v, err := s.Put(t.Context(), "k", buf, 0)
	if err != nil {
		t.Fatalf("Put = %v", err)
	}
	copy(buf, "XXXXXXXX")
	wantRecord(t, s, "k", "original", v)

	buf = []byte("updated")
	v, err = s.Put(t.Context(), "k", buf, v)
	if err != nil {
		t.Fatalf("Put = %v", err)
	}
	copy(buf, "XXXXXXX")
	wantRecord(t, s, "k", "updated", v)
}

func testGetCopies(t *testing.T, s storage.Store) {
	v := mustPut(t, s, "k", "original", 0)
	r := mustGet(t, s, "k")
	copy(r.Value, "XXXXXXXX")
	wantRecord(t, s, "k", "original", v)

	list, err := s.List(t.Context(), "", "", 10)
	if err != nil || len(list) != 1 {
		t.Fatalf("List = %d records, %v; want 1, nil", len(list), err)
	}
	copy(list[0].Value, "XXXXXXXX")
	wantRecord(t, s, "k", "original", v)
}

func testConcurrentIncrements(t *testing.T, s storage.Store) {
	const workers, increments, maxAttempts = 8, 50, 10000
	mustPut(t, s, "counter", "0", 0)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range increments {
				if err := increment(t.Context(), s, "counter", maxAttempts); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	r := mustGet(t, s, "counter")
	if want := strconv.Itoa(workers * increments); string(r.Value) != want {
		t.Fatalf("counter = %q, want %q", r.Value, want)
	}
}

// increment adds one to the decimal counter under key, retrying on conflict.
func increment(ctx context.Context, s storage.Store, key string, maxAttempts int) error {
	for range maxAttempts {
		r, err := s.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("Get(%q) = %w", key, err)
		}
		n, err := strconv.Atoi(string(r.Value))
		if err != nil {
			return fmt.Errorf("counter value %q: %w", r.Value, err)
		}
		_, err = s.Put(ctx, key, []byte(strconv.Itoa(n+1)), r.Version)
		if errors.Is(err, storage.ErrConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("Put(%q, expect %d) = %w", key, r.Version, err)
		}
		return nil
	}
	return fmt.Errorf("increment of %q still conflicting after %d attempts", key, maxAttempts)
}

func testConcurrentCreates(t *testing.T, s storage.Store) {
	const workers = 8
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		winners []string
	)
	for i := range workers {
		value := fmt.Sprintf("worker %d", i)
		wg.Go(func() {
			v, err := s.Put(t.Context(), "once", []byte(value), 0)
			switch {
			case err == nil:
				mu.Lock()
				winners = append(winners, value)
				mu.Unlock()
				if v == 0 {
					t.Errorf("Put returned version 0 without error")
				}
			case !errors.Is(err, storage.ErrConflict):
				t.Errorf("Put(%q, expect 0) = %v, want nil or ErrConflict", "once", err)
			}
		})
	}
	wg.Wait()
	if len(winners) != 1 {
		t.Fatalf("%d creates succeeded (%q), want exactly 1", len(winners), winners)
	}
	if r := mustGet(t, s, "once"); string(r.Value) != winners[0] {
		t.Fatalf("stored value %q, want the winner's %q", r.Value, winners[0])
	}
}

func testClosed(t *testing.T, s storage.Store) {
	v := mustPut(t, s, "k", "x", 0)
	if err := s.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	ctx := t.Context()
	_, err := s.Get(ctx, "k")
	wantErr(t, err, storage.ErrClosed, "Get after Close")
	_, err = s.Put(ctx, "k", []byte("y"), v)
	wantErr(t, err, storage.ErrClosed, "Put after Close")
	_, err = s.Put(ctx, "new", []byte("y"), 0)
	wantErr(t, err, storage.ErrClosed, "Put of a new key after Close")
	err = s.Delete(ctx, "k", v)
	wantErr(t, err, storage.ErrClosed, "Delete after Close")
	_, err = s.List(ctx, "", "", 10)
	wantErr(t, err, storage.ErrClosed, "List after Close")
	wantErr(t, s.Close(), storage.ErrClosed, "second Close")
}

func testCancelled(t *testing.T, s storage.Store) {
	v := mustPut(t, s, "k", "x", 0)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := s.Get(ctx, "k")
	wantErr(t, err, context.Canceled, "Get with a cancelled context")
	_, err = s.Put(ctx, "k", []byte("y"), v)
	wantErr(t, err, context.Canceled, "Put with a cancelled context")
	_, err = s.Put(ctx, "new", []byte("y"), 0)
	wantErr(t, err, context.Canceled, "Put of a new key with a cancelled context")
	err = s.Delete(ctx, "k", v)
	wantErr(t, err, context.Canceled, "Delete with a cancelled context")
	_, err = s.List(ctx, "", "", 10)
	wantErr(t, err, context.Canceled, "List with a cancelled context")

	wantRecord(t, s, "k", "x", v)
	_, err = s.Get(t.Context(), "new")
	wantErr(t, err, storage.ErrNotFound, "Get of a key a cancelled Put tried to create")
}

func mustPut(t *testing.T, s storage.Store, key, value string, expect uint64) uint64 {
	t.Helper()
	v, err := s.Put(t.Context(), key, []byte(value), expect)
	if err != nil {
		t.Fatalf("Put(%q, expect %d) = %v", key, expect, err)
	}
	return v
}

func mustGet(t *testing.T, s storage.Store, key string) storage.Record {
	t.Helper()
	r, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%q) = %v", key, err)
	}
	return r
}

// wantRecord fails t unless Get(key) returns value and version.
func wantRecord(t *testing.T, s storage.Store, key, value string, version uint64) {
	t.Helper()
	r := mustGet(t, s, key)
	if r.Key != key || string(r.Value) != value || r.Version != version {
		t.Fatalf("Get(%q) = {Key: %q, Value: %q, Version: %d}, want {Key: %q, Value: %q, Version: %d}",
			key, r.Key, r.Value, r.Version, key, value, version)
	}
}

// wantErr fails t unless errors.Is(err, target).
func wantErr(t *testing.T, err, target error, what string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: error %v, want one wrapping %v", what, err, target)
	}
}

func recordKeys(rs []storage.Record) []string {
	var keys []string
	for _, r := range rs {
		keys = append(keys, r.Key)
	}
	return keys
}

func applier(t *testing.T, s storage.Store) storage.Applier {
	t.Helper()
	a, ok := s.(storage.Applier)
	if !ok {
		t.Fatalf("%T does not implement storage.Applier", s)
	}
	return a
}

func testApply(t *testing.T, s storage.Store) {
	ctx := context.Background()
	a := applier(t, s)
	v1 := mustPut(t, s, "a/update", "old", 0)
	mustPut(t, s, "a/delete", "gone", 0)
	mustPut(t, s, "a/overwrite", "old", 0)
	v4 := mustPut(t, s, "a/delete-checked", "gone", 0)
	err := a.Apply(ctx, []storage.Op{
		{Key: "a/create", Value: []byte("new"), Expect: 0},
		{Key: "a/update", Value: []byte("new"), Expect: v1},
		{Key: "a/delete", Delete: true, Expect: storage.AnyVersion},
		{Key: "a/delete-checked", Delete: true, Expect: v4},
		{Key: "a/overwrite", Value: []byte("new"), Expect: storage.AnyVersion},
		{Key: "a/upsert", Value: []byte("new"), Expect: storage.AnyVersion},
		{Key: "a/delete-missing", Delete: true, Expect: storage.AnyVersion},
	})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	for _, k := range []string{"a/create", "a/update", "a/overwrite", "a/upsert"} {
		if r := mustGet(t, s, k); string(r.Value) != "new" || r.Version <= v4 {
			t.Errorf("%s = %q version %d, want \"new\" at a version above %d", k, r.Value, r.Version, v4)
		}
	}
	for _, k := range []string{"a/delete", "a/delete-checked", "a/delete-missing"} {
		_, err := s.Get(ctx, k)
		wantErr(t, err, storage.ErrNotFound, "Get "+k)
	}
}

func testApplyConflict(t *testing.T, s storage.Store) {
	ctx := context.Background()
	a := applier(t, s)
	v := mustPut(t, s, "b/kept", "old", 0)
	mustPut(t, s, "b/exists", "old", 0)
	for name, bad := range map[string]storage.Op{
		"stale version":         {Key: "b/kept", Value: []byte("new"), Expect: v + 1000},
		"create of an existing": {Key: "b/exists", Value: []byte("new"), Expect: 0},
		"delete of a missing":   {Key: "b/missing", Delete: true, Expect: 7},
		"update of a missing":   {Key: "b/missing", Value: []byte("new"), Expect: 7},
	} {
		err := a.Apply(ctx, []storage.Op{
			{Key: "b/created", Value: []byte("new"), Expect: 0},
			{Key: "b/upsert", Value: []byte("new"), Expect: storage.AnyVersion},
			bad,
		})
		wantErr(t, err, storage.ErrConflict, name)
		for _, k := range []string{"b/created", "b/upsert"} {
			_, err := s.Get(ctx, k)
			wantErr(t, err, storage.ErrNotFound, name+": Get "+k)
		}
		wantRecord(t, s, "b/kept", "old", v)
	}
}

func testApplyInvalid(t *testing.T, s storage.Store) {
	ctx := context.Background()
	a := applier(t, s)
	err := a.Apply(ctx, []storage.Op{{Key: "c/x", Value: []byte("1"), Expect: storage.AnyVersion}, {Key: "c/x", Delete: true, Expect: storage.AnyVersion}})
	wantErr(t, err, storage.ErrInvalid, "a key named twice")
	wantErr(t, a.Apply(ctx, nil), storage.ErrInvalid, "no writes")
	err = a.Apply(ctx, []storage.Op{{Key: "c/x", Value: []byte("1"), Expect: storage.AnyVersion}, {Key: "c/bad\xff", Value: []byte("1"), Expect: storage.AnyVersion}})
	wantErr(t, err, storage.ErrInvalid, "a key that is not UTF-8")
	_, err = s.Get(ctx, "c/x")
	wantErr(t, err, storage.ErrNotFound, "Get c/x")
}

func testSnapshot(t *testing.T, s storage.Store) {
	ctx := context.Background()
	sn, ok := s.(storage.Snapshotter)
	if !ok {
		t.Fatalf("%T does not implement storage.Snapshotter", s)
	}
	for i := range 50 {
		mustPut(t, s, fmt.Sprintf("s/%03d", i), "v1", 0)
	}
	var keys []string
	err := sn.Snapshot(ctx, func(r storage.Record) error {
		if len(keys) == 0 {
			// Writes during the snapshot are not seen by it.
			rec := mustGet(t, s, "s/049")
			if _, err := s.Put(ctx, "s/049", []byte("v2"), rec.Version); err != nil {
				return err
			}
			if _, err := s.Put(ctx, "s/050", []byte("new"), 0); err != nil {
				return err
			}
		}
		if r.Key == "s/049" && string(r.Value) != "v1" {
			return fmt.Errorf("snapshot saw a later write: %q", r.Value)
		}
		keys = append(keys, r.Key)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 50 || keys[0] != "s/000" || keys[49] != "s/049" {
		t.Fatalf("snapshot saw %d keys (%v…): want s/000…s/049 once each", len(keys), keys[:min(3, len(keys))])
	}
	stop := errors.New("stop")
	if err := sn.Snapshot(ctx, func(storage.Record) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("Snapshot returned %v, want fn's error", err)
	}
}
