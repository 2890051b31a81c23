// Command fieldencryption encrypts a customer's PII fields with Custos.
//
// Start `custos dev` (make run) in another terminal, then:
//
//	go run ./examples/fieldencryption
//
// It creates tenant "acme" and key "pii" if missing, encrypts an email and an
// IBAN with associated data = record id + field name, prints the ciphertexts,
// decrypts them, and shows that a ciphertext moved to another field (wrong
// associated data) does not decrypt.
package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"log"
	"path/filepath"
	"time"

	"github.com/custos-kms/custos/client"
)

func main() {
	dev := flag.String("dev-dir", ".custos-dev", "directory of `custos dev` (CA and client certificate)")
	addr := flag.String("addr", "127.0.0.1:8443", "Custos address")
	flag.Parse()
	if err := run(*addr, *dev); err != nil {
		log.Fatal(err)
	}
}

func run(addr, dev string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c, err := client.New(ctx, client.Config{
		Address:  addr,
		CAFile:   filepath.Join(dev, "ca.pem"),
		CertFile: filepath.Join(dev, "client.pem"),
		KeyFile:  filepath.Join(dev, "client-key.pem"),
	})
	if err != nil {
		return err
	}
	defer c.Close()

	// Tenant "acme" and its key "pii", created once.
	if _, err := c.CreateTenant(ctx, "acme"); err != nil && !errors.Is(err, client.ErrAlreadyExists) {
		return fmt.Errorf("create tenant: %w", err)
	}
	key := client.KeyName("acme", "pii")
	if _, err := c.CreateKey(ctx, client.TenantName("acme"), "pii", client.KeySpec{Purpose: client.PurposeEncrypt}); err != nil && !errors.Is(err, client.ErrAlreadyExists) {
		return fmt.Errorf("create key: %w", err)
	}

	// One customer record; each field's ciphertext is bound to the record id
	// and the field name, so it cannot be swapped into another row or column.
	const recordID = "customer-42"
	fields := []struct{ name, value string }{
		{"email", "alice@example.com"},
		{"iban", "DE89 3704 0044 0532 0130 00"},
	}
	stored := map[string][]byte{}
	for _, f := range fields {
		ad := client.AssociatedData(recordID, f.name)
		ct, v, err := c.Encrypt(ctx, key, []byte(f.value), ad)
		if err != nil {
			return fmt.Errorf("encrypt %s: %w", f.name, err)
		}
		stored[f.name] = ct
		fmt.Printf("%-5s encrypted with version %d: %s\n", f.name, v, base64.StdEncoding.EncodeToString(ct))
	}
	for _, f := range fields {
		pt, _, err := c.Decrypt(ctx, key, stored[f.name], client.AssociatedData(recordID, f.name))
		if err != nil {
			return fmt.Errorf("decrypt %s: %w", f.name, err)
		}
		if string(pt) != f.value {
			return fmt.Errorf("decrypt %s: not the value encrypted", f.name)
		}
		// Not the value: what a service prints ends up in logs.
		fmt.Printf("%-5s decrypted to the value encrypted\n", f.name)
	}

	// The email's ciphertext presented as the IBAN field: refused.
	_, _, err = c.Decrypt(ctx, key, stored["email"], client.AssociatedData(recordID, "iban"))
	if !errors.Is(err, client.ErrInvalidCiphertext) {
		return fmt.Errorf("expected ErrInvalidCiphertext for the wrong associated data, got %v", err)
	}
	fmt.Printf("email ciphertext under the iban field's associated data: refused (%v)\n", err)
	return nil
}
