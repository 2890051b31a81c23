package testkit

import (
	"context"
	"encoding/base64"
	"regexp"
	"testing"
	"time"

	"github.com/custos-kms/custos/client"
)

// crossCheckLine is what the examples in other languages print: a key name
// and, in base64, the ciphertext of "alice@example.com" they made under
// the associated data ("customer-42", "email"), encoded as they encode it.
var crossCheckLine = regexp.MustCompile(`(?m)^cross-check: (\S+) (\S+)$`)

// CrossCheck decrypts with c, under client.AssociatedData, the ciphertext
// an example in another language printed in out, and fails the test unless
// it reads back: the two encode associated data alike, so a field one
// writes the other reads.
func CrossCheck(t testing.TB, c *client.Client, out string) {
	t.Helper()
	m := crossCheckLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no cross-check line in the output:\n%s", out)
	}
	ct, err := base64.StdEncoding.DecodeString(m[2])
	if err != nil {
		t.Fatalf("cross-check ciphertext: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pt, _, err := c.Decrypt(ctx, m[1], ct, client.AssociatedData("customer-42", "email"))
	if err != nil || string(pt) != "alice@example.com" {
		t.Fatalf("the Go client decrypting the example's field under client.AssociatedData: %q, %v", pt, err)
	}
}
