package client_test

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"log"
	"strings"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/client/clienttest"
)

// exampleServer starts a real in-process Custos (package clienttest) and
// returns a Config for it, as an operator would hand one out, and a function
// that stops it. In real code the Config names the server's address and the
// caller's PEM files.
func exampleServer() (client.Config, func()) {
	srv, err := clienttest.New(clienttest.Options{})
	if err != nil {
		log.Fatal(err)
	}
	return srv.Config(), srv.Close
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

func ExampleClient_Password() {
	cfg, stop := exampleServer()
	defer stop()
	ctx := context.Background()
	c, err := client.New(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateTenant(ctx, "acme"); err != nil {
		log.Fatal(err)
	}
	// The default policy is bcrypt with cost 12; 10 keeps the example fast.
	k, err := c.CreateKey(ctx, client.TenantName("acme"), "logins", client.KeySpec{
		Purpose:        client.PurposePassword,
		PasswordPolicy: &client.PasswordPolicy{BcryptCost: 10},
	})
	if err != nil {
		log.Fatal(err)
	}
	pw := c.Password(k.Name)

	// Sign-up: store the hash, never the password.
	hash, err := pw.Hash(ctx, []byte("correct horse battery staple"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(hash[:strings.Index(hash, "$$")]) // algorithm and pepper version

	// Login.
	match, needsRehash, err := pw.Verify(ctx, []byte("correct horse battery staple"), hash)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("match:", match, "needs rehash:", needsRehash)
	match, _, err = pw.Verify(ctx, []byte("Tr0ub4dor&3"), hash)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("wrong password matches:", match)

	// Once the pepper key is rotated, old hashes still verify but should be
	// replaced, which is possible only while the password is at hand.
	if _, err := c.RotateKey(ctx, k.Name); err != nil {
		log.Fatal(err)
	}
	match, needsRehash, err = pw.Verify(ctx, []byte("correct horse battery staple"), hash)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("match:", match, "needs rehash:", needsRehash)
	if match && needsRehash {
		if hash, err = pw.Hash(ctx, []byte("correct horse battery staple")); err != nil {
			log.Fatal(err)
		}
		fmt.Println(hash[:strings.Index(hash, "$$")]) // store it
	}
	// Output:
	// $custos-bcrypt$v=1
	// match: true needs rehash: false
	// wrong password matches: false
	// match: true needs rehash: true
	// $custos-bcrypt$v=2
}

func ExampleClient_BlindIndex() {
	cfg, stop := exampleServer()
	defer stop()
	ctx := context.Background()
	c, err := client.New(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateTenant(ctx, "acme"); err != nil {
		log.Fatal(err)
	}
	k, err := c.CreateKey(ctx, client.TenantName("acme"), "email-idx", client.KeySpec{Purpose: client.PurposeMAC})
	if err != nil {
		log.Fatal(err)
	}
	// emailIdx stands for an indexed column: blind index -> user id. The
	// email itself would be stored encrypted in another column.
	emailIdx := map[string]string{}
	index := func(email string) []client.BlindIndexEntry {
		entries, err := c.BlindIndex(ctx, k.Name, []byte(strings.ToLower(email)))
		if err != nil {
			log.Fatal(err)
		}
		return entries
	}

	// Insert: store the primary version's MAC, the first entry.
	emailIdx[string(index("Alice@Example.com")[0].MAC)] = "user-42"

	// Later the key is rotated; rows indexed before still carry version 1.
	if _, err := c.RotateKey(ctx, k.Name); err != nil {
		log.Fatal(err)
	}

	// Look up with every entry, as WHERE email_idx IN (...) would.
	entries := index("alice@example.com")
	for _, e := range entries {
		id, found := emailIdx[string(e.MAC)]
		fmt.Printf("version %d: found %q\n", e.Version, id)
		if found && e.Version != entries[0].Version {
			// Reindex lazily under the primary, so that version 1 can be
			// disabled once every row has moved.
			delete(emailIdx, string(e.MAC))
			emailIdx[string(entries[0].MAC)] = id
		}
	}
	_, found := emailIdx[string(entries[0].MAC)]
	fmt.Println("reindexed under the primary:", found)
	// Output:
	// version 2: found ""
	// version 1: found "user-42"
	// reindexed under the primary: true
}

func ExampleClient_GenerateDataKey() {
	cfg, stop := exampleServer()
	defer stop()
	ctx := context.Background()
	c, key := exampleKey(ctx, cfg)
	defer c.Close()

	// Encrypt a large blob locally with a data key; only the 32-byte key
	// travels to and from Custos.
	ad := client.AssociatedData("uploads", "report.pdf")
	dk, err := c.GenerateDataKey(ctx, key, ad)
	if err != nil {
		log.Fatal(err)
	}
	sealed := sealLocally(dk.Plaintext, []byte("a large file's contents"))
	clear(dk.Plaintext)
	// Store dk.Wrapped next to sealed.

	// Later, to read the blob (this needs the datakey permission):
	dataKey, err := c.DecryptDataKey(ctx, key, dk.Wrapped, ad)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(openLocally(dataKey, sealed)))
	// Output: a large file's contents
}

// sealLocally encrypts with AES-256-GCM: nonce || ciphertext.
func sealLocally(key, plaintext []byte) []byte {
	aead := newGCM(key)
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		log.Fatal(err)
	}
	return aead.Seal(nonce, nonce, plaintext, nil)
}

// openLocally decrypts what sealLocally made.
func openLocally(key, sealed []byte) []byte {
	aead := newGCM(key)
	n := aead.NonceSize()
	plaintext, err := aead.Open(nil, sealed[:n], sealed[n:], nil)
	if err != nil {
		log.Fatal(err)
	}
	return plaintext
}

func newGCM(key []byte) cipher.AEAD {
	block, err := aes.NewCipher(key)
	if err != nil {
		log.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		log.Fatal(err)
	}
	return aead
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

// Fields encrypted locally (client local mode): one GenerateDataKey per
// data key, then AES-256-GCM in the process; the service's Decrypt reads
// the same ciphertexts.
func ExampleClient_Envelope() {
	ctx := context.Background()
	c, err := client.New(ctx, client.Config{Address: "127.0.0.1:8443",
		CAFile: ".custos-dev/ca.pem", CertFile: ".custos-dev/client.pem", KeyFile: ".custos-dev/client-key.pem"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	pii := c.Envelope(client.KeyName("acme", "pii"), client.EnvelopeOptions{}) // defaults: 5 min, 2^20 fields, 1 GiB per data key
	ad := client.AssociatedData("customer-42", "email")
	ct, err := pii.Encrypt(ctx, []byte("alice@example.com"), ad)
	if err != nil {
		log.Fatal(err)
	}
	pt, err := pii.Decrypt(ctx, ct, ad)
	if err != nil {
		log.Fatal(err)
	}
	_ = pt
}
