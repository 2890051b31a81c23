package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/custos-kms/custos/client"
)

// exampleServer starts the test fake and returns a Config for it, as an
// operator would hand one out, and a function that stops it. In real code
// the Config names the server's address and the caller's PEM files.
func exampleServer() (client.Config, func()) {
	dir, err := os.MkdirTemp("", "custos-example-")
	if err != nil {
		log.Fatal(err)
	}
	env, err := startFake(dir)
	if err != nil {
		log.Fatal(err)
	}
	cfg := client.Config{
		Address:  env.addr,
		CAFile:   env.caFile,
		CertFile: env.certFile,
		KeyFile:  env.keyFile,
	}
	return cfg, func() {
		env.stop()
		os.RemoveAll(dir)
	}
}

// exampleKey connects and creates tenant "acme" with the ENCRYPT key "pii".
func exampleKey(ctx context.Context, cfg client.Config) (*client.Client, string) {
	c, err := client.New(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := c.CreateTenant(ctx, "acme"); err != nil {
		log.Fatal(err)
	}
	k, err := c.CreateKey(ctx, client.TenantName("acme"), "pii", client.KeySpec{Purpose: client.PurposeEncrypt})
	if err != nil {
		log.Fatal(err)
	}
	return c, k.Name
}

func ExampleNew() {
	cfg, stop := exampleServer()
	defer stop()
	ctx := context.Background()

	// cfg is client.Config{Address: "custos.internal:8443", CAFile: "ca.pem",
	// CertFile: "client.pem", KeyFile: "client-key.pem"}.
	c, err := client.New(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	t, err := c.CreateTenant(ctx, "acme")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(t.Name, t.State)
	// Output: tenants/acme ACTIVE
}

func ExampleClient_Encrypt() {
	cfg, stop := exampleServer()
	defer stop()
	ctx := context.Background()
	c, key := exampleKey(ctx, cfg)
	defer c.Close()

	// Bind the ciphertext to the row and column it is stored in.
	ad := client.AssociatedData("users", "42", "email")
	ciphertext, version, err := c.Encrypt(ctx, key, []byte("alice@example.com"), ad)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("encrypted with version", version)

	plaintext, _, err := c.Decrypt(ctx, key, ciphertext, ad)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(plaintext))
	// Output:
	// encrypted with version 1
	// alice@example.com
}

func ExampleClient_Decrypt_movedCiphertext() {
	cfg, stop := exampleServer()
	defer stop()
	ctx := context.Background()
	c, key := exampleKey(ctx, cfg)
	defer c.Close()

	ciphertext, _, err := c.Encrypt(ctx, key, []byte("alice@example.com"), client.AssociatedData("users", "42", "email"))
	if err != nil {
		log.Fatal(err)
	}
	// The ciphertext was copied into user 43's row: it must not decrypt.
	_, _, err = c.Decrypt(ctx, key, ciphertext, client.AssociatedData("users", "43", "email"))
	fmt.Println(errors.Is(err, client.ErrInvalidCiphertext))
	fmt.Println(errors.Is(err, client.ErrInvalidArgument))
	// Output:
	// true
	// true
}

func ExampleClient_EncryptBatch() {
	cfg, stop := exampleServer()
	defer stop()
	ctx := context.Background()
	c, key := exampleKey(ctx, cfg)
	defer c.Close()

	emails := map[string]string{"41": "ann@example.com", "42": "bob@example.com"}
	ids := []string{"41", "42"}
	items := make([]client.EncryptItem, len(ids))
	for i, id := range ids {
		items[i] = client.EncryptItem{Plaintext: []byte(emails[id]), AssociatedData: client.AssociatedData("users", id, "email")}
	}
	results, err := c.EncryptBatch(ctx, key, items)
	if err != nil {
		log.Fatal(err) // the whole call failed
	}
	decrypt := make([]client.DecryptItem, len(results))
	for i, r := range results {
		if r.Err != nil {
			log.Fatalf("user %s: %v", ids[i], r.Err) // only this item failed
		}
		decrypt[i] = client.DecryptItem{Ciphertext: r.Ciphertext, AssociatedData: items[i].AssociatedData}
	}
	// Swap the ciphertexts of the two users: each item fails on its own.
	decrypt[0].Ciphertext, decrypt[1].Ciphertext = decrypt[1].Ciphertext, decrypt[0].Ciphertext
	swapped, err := c.DecryptBatch(ctx, key, decrypt)
	if err != nil {
		log.Fatal(err)
	}
	for i, r := range swapped {
		fmt.Printf("user %s: invalid ciphertext: %v\n", ids[i], errors.Is(r.Err, client.ErrInvalidCiphertext))
	}
	// Output:
	// user 41: invalid ciphertext: true
	// user 42: invalid ciphertext: true
}

func ExampleClient_AllKeys() {
	cfg, stop := exampleServer()
	defer stop()
	ctx := context.Background()
	c, _ := exampleKey(ctx, cfg)
	defer c.Close()
	if _, err := c.CreateKey(ctx, client.TenantName("acme"), "tokens", client.KeySpec{Purpose: client.PurposeEncrypt}); err != nil {
		log.Fatal(err)
	}

	for k, err := range c.AllKeys(ctx, client.TenantName("acme")) {
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(k.Name, k.Purpose, "primary version", k.PrimaryVersion)
	}
	// Output:
	// tenants/acme/keys/pii ENCRYPT primary version 1
	// tenants/acme/keys/tokens ENCRYPT primary version 1
}

func ExampleClient_RotateKey() {
	cfg, stop := exampleServer()
	defer stop()
	ctx := context.Background()
	c, key := exampleKey(ctx, cfg)
	defer c.Close()

	old, _, err := c.Encrypt(ctx, key, []byte("secret"), nil)
	if err != nil {
		log.Fatal(err)
	}
	k, err := c.RotateKey(ctx, key)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("primary version", k.PrimaryVersion)
	for _, v := range k.Versions {
		fmt.Println("version", v.Version, v.State)
	}
	// Ciphertexts of the old version still decrypt.
	_, version, err := c.Decrypt(ctx, key, old, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("decrypted a ciphertext of version", version)
	// Output:
	// primary version 2
	// version 1 ENABLED
	// version 2 ENABLED
	// decrypted a ciphertext of version 1
}

func ExampleAssociatedData() {
	fmt.Printf("% x\n", client.AssociatedData("users", "42"))
	// Output: 00 00 00 05 75 73 65 72 73 00 00 00 02 34 32
}

func ExampleKeyName() {
	fmt.Println(client.TenantName("acme"))
	fmt.Println(client.KeyName("acme", "pii"))
	// Output:
	// tenants/acme
	// tenants/acme/keys/pii
}
