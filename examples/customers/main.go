// Command customers keeps a customers table (custos_example_customers) in
// PostgreSQL with encrypted
// email and IBAN columns (client local mode: envelopes) and a blind-index
// column to find customers by email, then rotates the keys under it.
//
// Start `custos dev` (make run) in another terminal and point it at a
// PostgreSQL database where it may drop and create the table
// custos_example_customers:
//
//	go run ./examples/customers --pg 'postgres://user:pass@localhost:5432/db'
//
// It inserts 10,000 customers, looks one up by email through the blind
// index, rotates both keys, keeps looking up, rewraps every row (only the
// data keys are re-wrapped; the bulk stays) and re-stores the blind index
// under the new version, disables the old versions, and shows everything
// still works.
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/custos-kms/custos/client"
)

func main() {
	dev := flag.String("dev-dir", ".custos-dev", "directory of `custos dev` (CA and client certificate)")
	addr := flag.String("addr", "127.0.0.1:8443", "Custos address")
	pg := flag.String("pg", os.Getenv("DATABASE_URL"), "PostgreSQL connection string (env DATABASE_URL)")
	n := flag.Int("customers", 10000, "how many customers to insert")
	flag.Parse()
	if *pg == "" {
		log.Fatal("customers: --pg (or DATABASE_URL) is required")
	}
	if err := run(context.Background(), os.Stdout, *addr, *dev, *pg, *n); err != nil {
		log.Fatal(err)
	}
}

const (
	pii = "pii"       // ENCRYPT key of the email and IBAN columns
	idx = "email-idx" // MAC key of the email blind index
)

func run(ctx context.Context, out io.Writer, addr, dev, pgURL string, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	c, err := client.New(ctx, client.Config{Address: addr,
		CAFile: filepath.Join(dev, "ca.pem"), CertFile: filepath.Join(dev, "client.pem"), KeyFile: filepath.Join(dev, "client-key.pem")})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := ensureKeys(ctx, c); err != nil {
		return err
	}
	db, err := pgxpool.New(ctx, pgURL)
	if err != nil {
		return err
	}
	defer db.Close()
	// A table of its own name, made afresh on every run: the example never
	// touches a table of yours.
	if _, err := db.Exec(ctx, `
		DROP TABLE IF EXISTS custos_example_customers;
		CREATE TABLE custos_example_customers (id bigint PRIMARY KEY, email bytea NOT NULL, iban bytea NOT NULL, email_idx bytea NOT NULL);
		CREATE INDEX ON custos_example_customers (email_idx);`); err != nil {
		return err
	}
	piiName, idxName := client.KeyName("acme", pii), client.KeyName("acme", idx)
	env := c.Envelope(piiName, client.EnvelopeOptions{})
	fields := env.Fields()

	// 1. Insert: fields sealed locally, the blind index from the service.
	start := time.Now()
	rows := make([][]any, n)
	err = parallel(ctx, n, func(ctx context.Context, i int) error {
		id := recordID(int64(i))
		email := emailOf(i)
		ct, err := fields.Encrypt(ctx, id, client.Fields{"email": []byte(email), "iban": []byte(fmt.Sprintf("DE89%018d", i))})
		if err != nil {
			return err
		}
		store, _, err := c.BlindIndexValues(ctx, idxName, []byte(email))
		if err != nil {
			return err
		}
		rows[i] = []any{int64(i), ct["email"], ct["iban"], store}
		return nil
	})
	if err != nil {
		return err
	}
	if _, err := db.CopyFrom(ctx, pgx.Identifier{"custos_example_customers"}, []string{"id", "email", "iban", "email_idx"}, pgx.CopyFromRows(rows)); err != nil {
		return err
	}
	fmt.Fprintf(out, "inserted %d customers with encrypted email and IBAN in %v\n", n, time.Since(start).Round(time.Millisecond))

	lookup := func(when string) error {
		email := emailOf(n / 2)
		_, query, err := c.BlindIndexValues(ctx, idxName, []byte(email))
		if err != nil {
			return err
		}
		var id int64
		ct := client.Fields{}
		var e, b []byte
		if err := db.QueryRow(ctx, `SELECT id, email, iban FROM custos_example_customers WHERE email_idx = ANY($1)`, query).Scan(&id, &e, &b); err != nil {
			return fmt.Errorf("look up a customer by its email's blind index: %w", err) // not the email: errors end up in logs
		}
		ct["email"], ct["iban"] = e, b
		pt, err := fields.Decrypt(ctx, recordID(id), ct)
		if err != nil {
			return err
		}
		if string(pt["email"]) != email {
			return fmt.Errorf("%s: customer %d's email does not decrypt to the one looked up", when, id)
		}
		// Not the values: what a service prints ends up in logs.
		fmt.Fprintf(out, "%s: found customer %d by email through %d index value(s); email and IBAN decrypted\n", when, id, len(query))
		return nil
	}
	if err := lookup("lookup"); err != nil {
		return err
	}

	// 2. Rotate both keys: old rows still decrypt and are still found.
	// Each key's own primary: run after the README's walkthrough, pii is a
	// version ahead of email-idx.
	primary := map[string]uint32{}
	for _, name := range []string{piiName, idxName} {
		k, err := c.RotateKey(ctx, name)
		if err != nil {
			return err
		}
		primary[name] = k.PrimaryVersion
	}
	fmt.Fprintf(out, "rotated pii to version %d and email-idx to version %d\n", primary[piiName], primary[idxName])
	// Writers seal with the data key they hold until its MaxAge (5 min):
	// before the rewrap, every writer purges it (here, the one writer) or
	// the rewrap waits MaxAge, so that no row is written under the old
	// version behind the rewrap's back (docs/client.md).
	env.Purge()
	if err := lookup("after rotation"); err != nil {
		return err
	}

	// 3. Rewrap every row in the background: the service re-wraps each
	// field's data key under version 2 (the bulk stays), and the blind
	// index is stored again under version 2.
	start = time.Now()
	rewrapAll := func() (int64, error) {
		var wrote atomic.Int64
		err := parallel(ctx, n, func(ctx context.Context, i int) error {
			// A row changed by its service between the read and the
			// write (the write checks) is read and rewrapped again; one
			// that keeps changing stops the job before the old version
			// is retired.
			for range 3 {
				w, err := rewrapRow(ctx, db, c, fields, piiName, idxName, primary, i)
				if errors.Is(err, errRowChanged) {
					continue
				}
				if w {
					wrote.Add(1)
				}
				return err
			}
			return fmt.Errorf("customer %d changed during each of 3 rewraps: run the rewrap again before retiring the old version", i)
		})
		return wrote.Load(), err
	}
	rewrapped, err := rewrapAll()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "rewrapped %d rows under pii version %d in %v (data keys re-wrapped, bulk unchanged)\n", rewrapped, primary[piiName], time.Since(start).Round(time.Millisecond))
	// The check: a pass that writes nothing shows every row under the
	// primary versions (a row written under the old ones behind the first
	// pass, by a write in flight at the rotation, is moved by this one).
	for pass := 1; ; pass++ {
		moved, err := rewrapAll()
		if err != nil {
			return err
		}
		if moved == 0 {
			fmt.Fprintln(out, "check: every row under the primary versions")
			break
		}
		if pass == 3 {
			return fmt.Errorf("%d rows were still written under the old versions in the third check: purge every writer's data keys first", moved)
		}
		fmt.Fprintf(out, "check: moved %d rows written under the old versions behind the pass before\n", moved)
	}

	// 4. Retire the old version of both keys: nothing needs it any more.
	for _, name := range []string{piiName, idxName} {
		if _, err := c.DisableKeyVersion(ctx, name, primary[name]-1); err != nil {
			return err
		}
	}
	fields = c.Envelope(piiName, client.EnvelopeOptions{}).Fields() // no cached data keys of the old version
	fmt.Fprintf(out, "disabled version %d of pii and version %d of email-idx\n", primary[piiName]-1, primary[idxName]-1)
	return lookup("after retiring the old versions")
}

func ensureKeys(ctx context.Context, c *client.Client) error {
	if _, err := c.CreateTenant(ctx, "acme"); err != nil && !errors.Is(err, client.ErrAlreadyExists) {
		return err
	}
	for key, purpose := range map[string]client.Purpose{pii: client.PurposeEncrypt, idx: client.PurposeMAC} {
		if _, err := c.CreateKey(ctx, client.TenantName("acme"), key, client.KeySpec{Purpose: purpose}); err != nil && !errors.Is(err, client.ErrAlreadyExists) {
			return err
		}
	}
	return nil
}

// emailOf is customer i's email.
func emailOf(i int) string { return fmt.Sprintf("customer%d@example.com", i) }

// recordID is the id a customer row's fields are bound to: the table's
// name with the row's key, since the pii key may serve other tables (a
// field of row 42 of another table must not open as this one's).
func recordID(id int64) string { return "custos_example_customers/" + strconv.FormatInt(id, 10) }

// errRowChanged: the row changed after it was read (its service wrote it
// meanwhile); read it again.
var errRowChanged = errors.New("the row changed while it was rewrapped")

// rewrapRow moves customer i's fields and blind index to the keys' primary
// versions, and reports whether it wrote the row: not when everything was
// under them already (or the row is gone). errRowChanged: nothing written.
func rewrapRow(ctx context.Context, db *pgxpool.Pool, c *client.Client, fields *client.FieldCipher, piiName, idxName string, primary map[string]uint32, i int) (bool, error) {
	id := recordID(int64(i))
	var e, b, idx []byte
	err := db.QueryRow(ctx, `SELECT email, iban, email_idx FROM custos_example_customers WHERE id = $1`, int64(i)).Scan(&e, &b, &idx)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil // deleted by its service meanwhile: nothing left to move
	}
	if err != nil {
		return false, err
	}
	res, err := c.RewrapBatch(ctx, piiName, []client.RewrapItem{
		{Ciphertext: e, AssociatedData: client.AssociatedData(id, "email")},
		{Ciphertext: b, AssociatedData: client.AssociatedData(id, "iban")},
	})
	if err != nil {
		return false, err
	}
	for _, r := range res {
		if r.Err != nil {
			return false, r.Err
		}
	}
	pt, err := fields.Decrypt(ctx, id, client.Fields{"email": res[0].Ciphertext})
	if err != nil {
		return false, err
	}
	store, _, err := c.BlindIndexValues(ctx, idxName, pt["email"])
	if err != nil {
		return false, err
	}
	// The versions the service answered under: a replica that has not yet
	// seen the rotation (about a second after it; longer while it cannot
	// read storage) returns the old version's bytes unchanged, which
	// would pass for "moved".
	for _, r := range res {
		if r.Version < primary[piiName] {
			return false, fmt.Errorf("customer %d: the service answered under %s version %d, not the primary %d (a replica that has not seen the rotation yet): run the rewrap again", i, piiName, r.Version, primary[piiName])
		}
	}
	if v := blindIndexVersion(store); v < primary[idxName] {
		return false, fmt.Errorf("customer %d: the blind index came under %s version %d, not the primary %d (a replica that has not seen the rotation yet): run the rewrap again", i, idxName, v, primary[idxName])
	}
	if bytes.Equal(res[0].Ciphertext, e) && bytes.Equal(res[1].Ciphertext, b) && bytes.Equal(store, idx) {
		return false, nil // under the primary versions already
	}
	// Only if the row is still what was read: a concurrent change of the
	// customer wins over the rewrap.
	tag, err := db.Exec(ctx, `UPDATE custos_example_customers SET email = $2, iban = $3, email_idx = $4 WHERE id = $1 AND email = $5 AND iban = $6`,
		int64(i), res[0].Ciphertext, res[1].Ciphertext, store, e, b)
	if err != nil {
		return false, err
	}
	if tag.RowsAffected() != 1 {
		return false, errRowChanged
	}
	return true, nil
}

// blindIndexVersion is the key version of a blind index entry (a MAC:
// 0x01 | version, 4 bytes big-endian | tag; docs/formats.md), 0 if it is
// not one.
func blindIndexVersion(mac []byte) uint32 {
	if len(mac) < 5 || mac[0] != 0x01 {
		return 0
	}
	return binary.BigEndian.Uint32(mac[1:5])
}

// parallel runs fn for 0…n-1, 16 at a time, and returns the first error;
// after one, no more are started and fn's context is cancelled.
func parallel(ctx context.Context, n int, fn func(context.Context, int) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i := range n {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error { return fn(gctx, i) })
	}
	return g.Wait()
}
