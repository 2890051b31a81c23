package custos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
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
//
// It holds a presence record while it runs (backup.Announce), so that a
// forced restore does not start beside it and put the backup's older
// wrappings back over what it re-wrapped; one found started anyway (the
// record having lapsed in a storage outage) stops it.
func RewrapRoot(ctx context.Context, store storage.Store, ks *keystore.Service, r root.Root, out io.Writer, byName bool) (err error) {
	p, err := backup.Announce(ctx, store, "custos root rewrap")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		backup.RunPresence(ctx, p, 0, func(_ string, err error) {
			if errors.Is(err, backup.ErrRestoring) {
				cancel(err)
			}
		})
	})
	defer func() {
		cancel(nil)
		wg.Wait()
		if cause := context.Cause(ctx); errors.Is(cause, backup.ErrRestoring) {
			err = cause
		} else if err == nil {
			// A restore begun beside the run (this record not seen: a
			// clock far behind) and not yet noticed would put the
			// older wrappings back: not done.
			uctx, ucancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			err = backup.Unfinished(uctx, store)
			ucancel()
		}
		wctx, wcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer wcancel()
		if werr := p.Withdraw(wctx); werr != nil {
			fmt.Fprintf(out, "the presence record stays until it expires, within %v (a forced restore waits for it): %v\n", backup.PresenceTTL, werr)
		}
	}()
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
