package client_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/client/clienttest"
)

func TestVerifyAuditEventsWithTheAnswersAlone(t *testing.T) {
	srv := clienttest.StartWith(t, clienttest.Options{})
	c := srv.Client(t)
	ctx := t.Context()
	for _, tn := range []string{"a", "b"} {
		if _, err := c.CreateTenant(ctx, tn); err != nil {
			t.Fatal(err)
		}
		if _, err := c.CreateKey(ctx, client.TenantName(tn), "k", client.KeySpec{Purpose: client.PurposeEncrypt}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.Encrypt(ctx, client.KeyName(tn, "k"), []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	var page client.AuditPage
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if page, err = c.ListAuditEvents(ctx, client.TenantName("a"), client.AuditFilter{}); err != nil {
			t.Fatal(err)
		}
		if len(page.Events) >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(page.Events) < 3 {
		t.Fatalf("tenant a has %d events, want CreateTenant, CreateKey and Encrypt", len(page.Events))
	}
	cp, pub, _, err := c.AuditCheckpoint(ctx, client.TenantName("a"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Size < page.Checkpoint.Size {
		t.Fatalf("latest checkpoint %d is older than the page's %d", cp.Size, page.Checkpoint.Size)
	}
	if err := client.VerifyAuditEvents(pub, page); err != nil {
		t.Fatalf("VerifyAuditEvents: %v", err)
	}
	for _, ev := range page.Events {
		if ev.Tenant != "a" {
			t.Fatalf("tenant a's page holds an event of %q", ev.Tenant)
		}
	}
	// Tampering with what the server said is caught.
	bad := page
	bad.Events = append([]client.AuditEvent(nil), page.Events...)
	bad.Events[0].Leaf = bytes.Clone(bad.Events[0].Leaf)
	bad.Events[0].Leaf[len(bad.Events[0].Leaf)-1] ^= 1
	if err := client.VerifyAuditEvents(pub, bad); err == nil {
		t.Fatal("a changed leaf verified")
	}
	bad.Events = append([]client.AuditEvent(nil), page.Events...)
	bad.Events[0].Operation = "nothing_to_see"
	if err := client.VerifyAuditEvents(pub, bad); err == nil {
		t.Fatal("an event that does not match its leaf verified")
	}
	_, other, err := note.GenerateKey(rand.Reader, "custos-audit")
	if err != nil {
		t.Fatal(err)
	}
	if err := client.VerifyAuditEvents(other, page); err == nil {
		t.Fatal("a page verified under another key")
	}
	// A page repeats no event and keeps log order.
	bad.Events = []client.AuditEvent{page.Events[0], page.Events[0]}
	if err := client.VerifyAuditEvents(pub, bad); err == nil {
		t.Fatal("a page showing one event twice verified")
	}
	bad.Events = []client.AuditEvent{page.Events[1], page.Events[0]}
	if err := client.VerifyAuditEvents(pub, bad); err == nil {
		t.Fatal("a page out of log order verified")
	}
	// Tenant b's real event, in a page of tenant a, does not verify.
	pageB, err := c.ListAuditEvents(ctx, client.TenantName("b"), client.AuditFilter{})
	if err != nil || len(pageB.Events) == 0 {
		t.Fatalf("tenant b's events: %d, %v", len(pageB.Events), err)
	}
	if page.Parent != "tenants/a" {
		t.Fatalf("the page's parent is %q", page.Parent)
	}
	mixed := pageB
	mixed.Parent = page.Parent
	if err := client.VerifyAuditEvents(pub, mixed); err == nil {
		t.Fatal("tenant b's events verified as a page of tenant a")
	}
	// The page's checkpoint fields are the ones its note signs.
	for what, change := range map[string]func(*client.AuditCheckpoint){
		"size":   func(c *client.AuditCheckpoint) { c.Size-- },
		"root":   func(c *client.AuditCheckpoint) { c.Root = bytes.Clone(c.Root); c.Root[0] ^= 1 },
		"origin": func(c *client.AuditCheckpoint) { c.Origin += "-x" },
		"time":   func(c *client.AuditCheckpoint) { c.Time = c.Time.Add(time.Hour) },
	} {
		bad := page
		change(&bad.Checkpoint)
		if err := client.VerifyAuditEvents(pub, bad); err == nil {
			t.Errorf("a page whose checkpoint %s differs from its signed note verified", what)
		}
	}
	// A page without events still has its checkpoint checked.
	if err := client.VerifyAuditEvents(pub, client.AuditPage{Checkpoint: page.Checkpoint}); err != nil {
		t.Fatalf("an empty page with a good checkpoint: %v", err)
	}
	forged := page.Checkpoint
	forged.Note = []byte("custos-audit\n99\nAAAA\n")
	if err := client.VerifyAuditEvents(pub, client.AuditPage{Checkpoint: forged}); err == nil {
		t.Fatal("an empty page with an unsigned checkpoint verified")
	}
	if err := client.VerifyAuditEvents(pub, client.AuditPage{}); err != nil {
		t.Fatalf("an empty page of a log not yet signed: %v", err)
	}
	// The log only grows: the page's checkpoint is a prefix of the latest.
	later, _, proof, err := c.AuditCheckpoint(ctx, client.TenantName("a"), page.Checkpoint.Size)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.VerifyAuditConsistency(pub, page.Checkpoint, later, proof); err != nil {
		t.Fatalf("VerifyAuditConsistency: %v", err)
	}
	// A bad filter is refused with the field named.
	_, err = c.ListAuditEvents(ctx, client.TenantName("a"), client.AuditFilter{Operation: "nope"})
	if !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("unknown operation: %v, want ErrInvalidArgument", err)
	}
}
