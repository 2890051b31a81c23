package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	tlog "github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/keystore/audit"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// lyingSource answers GetAuditCheckpoint with what it was told to: a
// server showing different histories.
type lyingSource map[uint64]client.AuditCheckpoint

func (l lyingSource) AuditCheckpoint(_ context.Context, _ string, firstSize uint64) (client.AuditCheckpoint, string, [][]byte, error) {
	return l[firstSize], "", nil, nil
}

// newLogKey makes a log signing key and its verifier key.
func newLogKey(t *testing.T) (note.Signer, string) {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, "custos-audit")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	return signer, vkey
}

// signedCheckpoint signs a checkpoint of size over a made-up root.
func signedCheckpoint(t *testing.T, signer note.Signer, vkey string, size uint64, seed string) client.AuditCheckpoint {
	t.Helper()
	root := sha256.Sum256([]byte(seed))
	return signedCheckpointOf(t, signer, vkey, size, root[:])
}

// signedCheckpointOf signs a checkpoint of size over root.
func signedCheckpointOf(t *testing.T, signer note.Signer, vkey string, size uint64, root []byte) client.AuditCheckpoint {
	t.Helper()
	text := string(tlog.Checkpoint{Origin: signer.Name(), Size: size, Hash: root}.Marshal()) + "time " + time.Now().UTC().Format(time.RFC3339Nano) + "\n"
	signed, err := note.Sign(&note.Note{Text: text}, signer)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := client.VerifyAuditCheckpoint(vkey, signed)
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

// Two pages whose checkpoints are of different histories are refused, even
// when the server answers the consistency check with one checkpoint's note
// under the other's size and root (fields the note does not vouch for).
func TestPagesShowingDifferentHistoriesAreRefused(t *testing.T) {
	signer, vkey := newLogKey(t)
	a := signedCheckpoint(t, signer, vkey, 100, "history one")
	b := signedCheckpoint(t, signer, vkey, 120, "history two")
	lie := a
	lie.Size, lie.Root = b.Size, b.Root // a's note, b's fields
	cmd := &cobra.Command{}
	cmd.SetContext(t.Context())
	v := &pageVerifier{cmd: cmd, call: func() (context.Context, context.CancelFunc) { return context.WithCancel(cmd.Context()) }, cl: lyingSource{a.Size: lie, b.Size: b}, parent: "tenants/acme", tenant: "acme", pub: vkey, verify: true}
	if err := v.consistent(a, b); err == nil {
		t.Fatal("two checkpoints of different histories passed as one")
	}
	// Answered with one latest checkpoint for both, the proofs fail.
	v.cl = lyingSource{a.Size: b, b.Size: b}
	if err := v.consistent(a, b); err == nil || !strings.Contains(err.Error(), "different histories") {
		t.Fatalf("two checkpoints of different histories and no proof: %v, want them reported as such", err)
	}
}

// Pages follow each other in log order: a page showing an event again (or
// an earlier one) after a later page is refused, as a server repeating or
// reordering events across pages would otherwise pass.
func TestAPageShowingAnEventAgainIsRefused(t *testing.T) {
	signer, vkey := newLogKey(t)
	var leaves [][]byte
	var events []client.AuditEvent
	t0 := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	for i := range 2 {
		leaf, err := audit.Marshal(&custosv1.AuditEvent{Time: timestamppb.New(t0), RequestId: fmt.Sprint("r", i), Tenant: "acme", Operation: "encrypt", Code: "OK"})
		if err != nil {
			t.Fatal(err)
		}
		leaves = append(leaves, leaf)
	}
	h := rfc6962.DefaultHasher
	h0, h1 := h.HashLeaf(leaves[0]), h.HashLeaf(leaves[1])
	cp := signedCheckpointOf(t, signer, vkey, 2, h.HashChildren(h0, h1))
	for i, p := range [][][]byte{{h1}, {h0}} {
		events = append(events, client.AuditEvent{Index: uint64(i), Proof: p, Leaf: leaves[i], Time: t0, RequestID: fmt.Sprint("r", i), Tenant: "acme", Operation: "encrypt", Code: "OK"})
	}
	cmd := &cobra.Command{}
	cmd.SetContext(t.Context())
	v := &pageVerifier{cmd: cmd, call: func() (context.Context, context.CancelFunc) { return context.WithCancel(cmd.Context()) }, cl: lyingSource{}, parent: "tenants/acme", tenant: "acme", pub: vkey, verify: true}
	page := func(evs ...client.AuditEvent) client.AuditPage {
		return client.AuditPage{Events: evs, Checkpoint: cp, Parent: "tenants/acme"}
	}
	if err := v.check(page(events[1])); err != nil {
		t.Fatalf("the first page: %v", err)
	}
	if err := v.check(page(events[1])); err == nil {
		t.Fatal("a page showing the previous page's event again verified")
	}
	if err := v.check(page(events[0])); err == nil {
		t.Fatal("a page showing an earlier event after a later page verified")
	}
}

// stalledSource answers no checkpoint until its caller gives up.
type stalledSource struct{}

func (stalledSource) AuditCheckpoint(ctx context.Context, _ string, _ uint64) (client.AuditCheckpoint, string, [][]byte, error) {
	<-ctx.Done()
	return client.AuditCheckpoint{}, "", nil, ctx.Err()
}

// audit tail bounds each of its checkpoint calls by --timeout, as its
// listings: a server that stops answering them hung it until Ctrl-C.
func TestTailsCheckpointCallsAreBounded(t *testing.T) {
	signer, vkey := newLogKey(t)
	a := signedCheckpoint(t, signer, vkey, 100, "history one")
	b := signedCheckpoint(t, signer, vkey, 120, "history one, longer")
	cmd := &cobra.Command{}
	cmd.SetContext(t.Context())
	call := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(cmd.Context(), 50*time.Millisecond)
	}
	done := make(chan error, 2)
	go func() {
		v := &pageVerifier{cmd: cmd, call: call, cl: stalledSource{}, parent: "tenants/acme", tenant: "acme", pub: vkey, verify: true}
		done <- v.consistent(a, b)
	}()
	go func() {
		_, err := newPageVerifier(cmd, call, stalledSource{}, "tenants/acme", "", true)
		done <- err
	}()
	for range 2 {
		select {
		case err := <-done:
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("a stalled checkpoint call: %v, want its deadline", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a stalled checkpoint call still waiting after 10s")
		}
	}
}

// An audit listing with no event still names its columns in text and
// table output, and writes nothing in JSON (one object per event).
func TestAnEmptyAuditTableNamesItsColumns(t *testing.T) {
	for output, want := range map[string]string{"text": "INDEX", "table": "INDEX", "json": ""} {
		var b strings.Builder
		p := newEventPrinter(&b, output)
		p.flush()
		p.flush()
		if got := b.String(); !strings.HasPrefix(got, want) || strings.Count(got, "INDEX") > 1 || (want == "" && got != "") {
			t.Errorf("-o %s with no event: %q", output, got)
		}
	}
}

// pollRecorder is a ListAuditEvents that finds nothing matching in a log
// of checkpoint size 500, and records where each poll starts.
type pollRecorder struct {
	starts []uint64
	stop   context.CancelFunc
}

func (r *pollRecorder) ListAuditEvents(_ context.Context, _ string, f client.AuditFilter) (client.AuditPage, error) {
	r.starts = append(r.starts, f.StartIndex)
	if len(r.starts) == 2 {
		r.stop()
	}
	return client.AuditPage{Checkpoint: client.AuditCheckpoint{Size: 500}}, nil
}

// A tail whose filter matched nothing yet starts its next poll past what
// the last one read (the page's checkpoint): it started again from the
// beginning, re-reading the tenant's whole history every interval.
func TestAuditTailPollsFromWhereTheLastPollEnded(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	r := &pollRecorder{stop: cancel}
	call := func() (context.Context, context.CancelFunc) { return context.WithCancel(ctx) }
	err := tailEvents(ctx, call, r, "tenants/acme", client.AuditFilter{PageSize: 1000, Operation: "rotate_key"}, &pageVerifier{}, newEventPrinter(io.Discard, "text"), time.Millisecond, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.starts) != 2 || r.starts[1] < 500 {
		t.Fatalf("polls started at %v; want the second at 500 or after", r.starts)
	}
}

// rolledBackSource answers GetAuditCheckpoint as a server whose log was
// rolled back below a size a page showed: first_size beyond the latest.
type rolledBackSource struct{}

func (rolledBackSource) AuditCheckpoint(context.Context, string, uint64) (client.AuditCheckpoint, string, [][]byte, error) {
	return client.AuditCheckpoint{}, "", nil, &client.Error{Code: codes.InvalidArgument, Message: "first_size 120 is beyond the latest checkpoint's size"}
}

// A log rolled back between two pages is a finding (exit 1, "different
// histories"), not an invalid argument (exit 5) that names none.
func TestALogRolledBackBetweenPagesIsAFinding(t *testing.T) {
	signer, vkey := newLogKey(t)
	a := signedCheckpoint(t, signer, vkey, 100, "one")
	b := signedCheckpoint(t, signer, vkey, 120, "two")
	cmd := &cobra.Command{}
	cmd.SetContext(t.Context())
	v := &pageVerifier{cmd: cmd, call: func() (context.Context, context.CancelFunc) { return context.WithCancel(cmd.Context()) }, cl: rolledBackSource{}, parent: "tenants/acme", tenant: "acme", pub: vkey, verify: true}
	err := v.consistent(a, b)
	if err == nil || exitCode(err) != exitOther || !strings.Contains(err.Error(), "different histories") {
		t.Fatalf("consistency check against a rolled-back log: %v (exit %d); want a finding, exit %d", err, exitCode(err), exitOther)
	}
}
