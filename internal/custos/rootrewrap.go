package custos

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/audit"
	"github.com/custos-kms/custos/keystore/backup"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/storage"
)

// RewrapRoot re-wraps under r's current version every tenant KEK of ks,
// then the audit log's signing key and ListTenants' page-token key, in
// store, writing a line to out for each step (custos root rewrap's
// output): with byName, one naming each tenant; else, for a caller who may
// not read tenant names (the ops listener's), a count at most every
// progressEvery. It refuses a store a restore has not finished. Each
// tenant is updated with compare-and-swap, so an interrupted run is simply
// started again. custos root rewrap runs it on the store directly, and a
// server holding a bbolt file for its POST /root/rewrap.
func RewrapRoot(ctx context.Context, store storage.Store, ks *keystore.Service, r root.Root, out io.Writer, byName bool) error {
	if err := backup.Unfinished(ctx, store); err != nil {
		return err
	}
	done, last := 0, time.Now()
	n, err := ks.RewrapTenantKEKs(ctx, func(tenant string) {
		done++
		switch {
		case byName:
			fmt.Fprintf(out, "re-wrapped tenants/%s\n", tenant)
		case time.Since(last) >= progressEvery:
			fmt.Fprintf(out, "%d tenant KEKs re-wrapped so far\n", done)
			last = time.Now()
		}
	})
	fmt.Fprintf(out, "%d tenant KEKs re-wrapped\n", n)
	if err != nil {
		return err
	}
	switch found, err := audit.RewrapSigningKey(ctx, store, r); {
	case err != nil:
		return err
	case found:
		fmt.Fprintln(out, "audit signing key re-wrapped")
	}
	found, replaced, err := ks.RewrapPageTokenKey(ctx)
	switch {
	case err != nil:
		return err
	case replaced:
		fmt.Fprintln(out, "page-token key replaced (the root no longer opened it): ListTenants page tokens out now are void; restart the servers")
	case found:
		fmt.Fprintln(out, "page-token key re-wrapped")
	}
	return nil
}

// progressEvery spaces the counts RewrapRoot writes without names.
const progressEvery = 2 * time.Second
