package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/client/clienttest"
	"github.com/custos-kms/custos/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// The example, as a user runs it: a real in-process Custos laid out like
// `custos dev`'s directory and a throwaway PostgreSQL; twice, since a
// second run finds the keys already there (and rotated). pii starts a
// version ahead, as the README's walkthrough leaves it.
func TestRunAgainstARealServerAndPostgreSQL(t *testing.T) {
	srv := clienttest.Start(t)
	url := pgtest.Start(t).NewDatabase(t)
	c := srv.Client(t)
	ctx := context.Background()
	if _, err := c.CreateTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateKey(ctx, client.TenantName("acme"), "pii", client.KeySpec{Purpose: client.PurposeEncrypt}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RotateKey(ctx, client.KeyName("acme", "pii")); err != nil {
		t.Fatal(err)
	}
	for run, versions := range []string{
		"rotated pii to version 3 and email-idx to version 2\n",
		"rotated pii to version 4 and email-idx to version 3\n",
	} {
		var out bytes.Buffer
		if err := runExample(t, srv, url, &out); err != nil {
			t.Fatalf("run %d: %v\n%s", run+1, err, out.String())
		}
		for _, want := range []string{"inserted 10000 customers", "lookup: found customer 5000", versions, "after rotation: found customer 5000 by email through 2 index value(s)", "rewrapped 10000 rows", "check: every row under the primary versions", "after retiring the old versions"} {
			if !strings.Contains(out.String(), want) {
				t.Fatalf("run %d: output lacks %q:\n%s", run+1, want, out.String())
			}
		}
		t.Logf("run %d:\n%s", run+1, out.String())
	}
}

func runExample(t *testing.T, srv *clienttest.Server, url string, out *bytes.Buffer) error {
	return run(context.Background(), out, srv.Addr, srv.Dir, url, 10000)
}
