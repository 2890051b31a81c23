package keystore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/root/roottest"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/memory"
)

func TestRewrapTenantKEKsKeepsEverythingDecryptable(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var refs []keystore.KeyRef
	var cts [][]byte
	for _, tn := range []string{"a", "b", "c"} {
		ref := f.tenantKey(t, tn, "k")
		ct, _, err := f.ks.Encrypt(ctx, ref, []byte("secret-"+tn), nil)
		if err != nil {
			t.Fatal(err)
		}
		refs, cts = append(refs, ref), append(cts, ct)
	}
	before, _ := f.store.Get(ctx, "tenants/a")
	var seen []string
	n, err := f.ks.RewrapTenantKEKs(ctx, func(tn string) { seen = append(seen, tn) })
	if err != nil || n != 3 || len(seen) != 3 {
		t.Fatalf("RewrapTenantKEKs = %d, %v (%v)", n, err, seen)
	}
	after, _ := f.store.Get(ctx, "tenants/a")
	if bytes.Equal(before.Value, after.Value) {
		t.Fatal("tenant record unchanged: KEK not re-wrapped")
	}
	// Running again (as after an interruption) is harmless.
	if _, err := f.ks.RewrapTenantKEKs(ctx, nil); err != nil {
		t.Fatal(err)
	}
	cold := f.open(t)
	for i, ref := range refs {
		pt, _, err := cold.Decrypt(ctx, ref, cts[i], nil)
		if err != nil || string(pt) != "secret-"+ref.Tenant {
			t.Fatalf("decrypt %v after rewrap: %q %v", ref, pt, err)
		}
	}
}

func TestDependenciesReportsTheRoot(t *testing.T) {
	ctx := context.Background()
	lr, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	rt := &switchableRoot{Root: lr}
	f := newFixture(t)
	ks, err := keystore.New(keystore.Config{Storage: f.store, Root: rt})
	if err != nil {
		t.Fatal(err)
	}
	if s, r := ks.Dependencies(ctx); s != nil || r != nil {
		t.Fatalf("healthy: %v %v", s, r)
	}
	rt.down.Store(true)
	if s, r := ks.Dependencies(ctx); s != nil || r == nil {
		t.Fatalf("root down: %v %v", s, r)
	}
}

// fullUntilWritten is a store whose writes failed for lack of space until
// one succeeds, as PostgreSQL's tracker reports it.
type fullUntilWritten struct {
	*memory.Store
	full storage.FullTracker
}

func (f *fullUntilWritten) WriteHealth() error { return f.full.WriteHealth() }

func (f *fullUntilWritten) ProbeWrite(ctx context.Context) error {
	return f.Apply(ctx, []storage.Op{{Key: "health/probe", Value: []byte("x"), Expect: storage.AnyVersion}})
}

func (f *fullUntilWritten) Apply(ctx context.Context, ops []storage.Op) error {
	err := f.Store.Apply(ctx, ops)
	f.full.Note(err)
	return err
}

func (f *fullUntilWritten) Put(ctx context.Context, k string, v []byte, expect uint64) (uint64, error) {
	ver, err := f.Store.Put(ctx, k, v, expect)
	f.full.Note(err)
	return ver, err
}

// Once space is back, the dependency probe's own write clears the "full"
// state: a replica that serves no writes would otherwise stay unready.
func TestTheProbeClearsAFullStoreOnceSpaceIsBack(t *testing.T) {
	ctx := context.Background()
	lr, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	st := &fullUntilWritten{Store: memory.New()}
	st.full.Note(fmt.Errorf("test: %w", storage.ErrFull))
	ks, err := keystore.New(keystore.Config{Storage: st, Root: lr})
	if err != nil {
		t.Fatal(err)
	}
	if s, r := ks.Dependencies(ctx); s != nil || r != nil {
		t.Fatalf("space back, after the probe: storage %v, root %v; want both healthy", s, r)
	}
}

// custos root rewrap runs with no deadline of its own: each of its root
// calls is bounded, so a root that stops answering fails the run instead
// of hanging it.
func TestRewrapBoundsEachRootCall(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.tenantKey(t, "a", "k")
	f.tenantKey(t, "b", "k")
	if _, err := f.ks.SealPageToken(ctx, "a"); err != nil { // makes the page-token key
		t.Fatal(err)
	}
	dr := &roottest.Deadlines{Root: f.root}
	ks, err := keystore.New(keystore.Config{Storage: f.store, Root: dr})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := ks.RewrapTenantKEKs(ctx, nil); err != nil || n != 2 {
		t.Fatalf("RewrapTenantKEKs = %d, %v", n, err)
	}
	if found, _, err := ks.RewrapPageTokenKey(ctx); err != nil || !found {
		t.Fatalf("RewrapPageTokenKey = %v, %v", found, err)
	}
	if dr.Calls.Load() < 6 || dr.Unbounded.Load() != 0 {
		t.Fatalf("%d root calls, %d of them without a deadline", dr.Calls.Load(), dr.Unbounded.Load())
	}
}

// checkFails is a working root whose restart check fails with err.
type checkFails struct {
	*local.Root
	err error
}

func (c checkFails) Check(context.Context) error { return c.err }

// Only a check that found the root at risk logs "ROOT KEY AT RISK"; one
// cut short (its deadline, an outage) reports the root, without the alarm
// that tells an operator to restore the key file.
func TestOnlyARootAtRiskIsLoggedAsAtRisk(t *testing.T) {
	lr, err := local.Create(filepath.Join(t.TempDir(), "root.key"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		err   error
		alarm bool
	}{
		{fmt.Errorf("%w: the key file is gone", root.ErrAtRisk), true},
		{fmt.Errorf("check: %w", context.DeadlineExceeded), false},
		{fmt.Errorf("check: %w", root.ErrUnavailable), false},
	} {
		var logs bytes.Buffer
		ks, err := keystore.New(keystore.Config{Storage: memory.New(), Root: checkFails{lr, tc.err}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		if _, r := ks.Dependencies(t.Context()); !errors.Is(r, tc.err) {
			t.Errorf("check failing with %v: the root's state %v", tc.err, r)
		}
		if got := strings.Contains(logs.String(), "AT RISK"); got != tc.alarm {
			t.Errorf("check failing with %v: logged at risk %v, want %v\n%s", tc.err, got, tc.alarm, logs.String())
		}
	}
}
