package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	tlog "github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// AuditEvent is one call to Custos as its audit log recorded it, with its
// place in the log's Merkle tree.
type AuditEvent struct {
	Time        time.Time
	RequestID   string
	Identity    string
	Peer        string
	Tenant      string
	Key         string
	KeyVersions []uint32
	Operation   string
	Method      string
	// Code is the gRPC code's canonical name: OK, PERMISSION_DENIED, …
	Code        string
	Reason      string
	ItemsOK     uint32
	ItemsFailed uint32
	Duration    time.Duration

	// Index is the event's leaf index in the log.
	Index uint64
	// Leaf is the exact bytes the log hashed; the fields above are decoded
	// from it (as protobuf decodes: a field given twice reads as its last
	// value, and fields this client does not know are not shown), so what
	// you read is covered by the proof.
	Leaf []byte
	// Proof is the leaf's inclusion proof in the page's checkpoint.
	Proof [][]byte
}

// AuditCheckpoint is a signed tree head of the audit log.
type AuditCheckpoint struct {
	// Note is the checkpoint in the signed-note format.
	Note   []byte
	Origin string
	Size   uint64
	Root   []byte
	Time   time.Time
}

// AuditFilter selects a tenant's audit events. Zero fields select all.
type AuditFilter struct {
	// Start and End bound the event time: Start <= time < End.
	Start, End time.Time
	// Operation (encrypt, rotate_key, …) and Identity match exactly.
	Operation, Identity string
	// Result: OK, FAILED or a gRPC code name (PERMISSION_DENIED, …).
	Result string
	// StartIndex: only events at or after this leaf index.
	StartIndex uint64
	// PageSize: at most this many events (server default 100, max 1000).
	PageSize int
	// PageToken continues from a previous page.
	PageToken string
}

// AuditPage is one page of a tenant's audit events.
type AuditPage struct {
	Events []AuditEvent
	// Checkpoint is what every proof of the page is against; zero before
	// the log's first checkpoint.
	Checkpoint AuditCheckpoint
	// NextPageToken is empty on the last page.
	NextPageToken string
	// Parent is the tenant the page was asked for ("tenants/{tenant}"):
	// [VerifyAuditEvents] checks that every event is that tenant's.
	Parent string
}

// ListAuditEvents returns one page of the audit events of the tenant parent
// ("tenants/{tenant}"), in log order; the caller needs audit.read on it.
// Verify the page with [VerifyAuditEvents].
func (c *Client) ListAuditEvents(ctx context.Context, parent string, f AuditFilter) (AuditPage, error) {
	op := "list audit events of " + parent
	if f.PageSize < 0 || f.PageSize > math.MaxInt32 {
		return AuditPage{}, localError(op, codes.InvalidArgument, "page size %d out of range", f.PageSize)
	}
	req := &custosv1.ListAuditEventsRequest{
		Parent: parent, Operation: f.Operation, Identity: f.Identity, Result: f.Result,
		PageSize: int32(f.PageSize), PageToken: f.PageToken, StartIndex: f.StartIndex,
	}
	if !f.Start.IsZero() {
		req.StartTime = timestamppb.New(f.Start)
	}
	if !f.End.IsZero() {
		req.EndTime = timestamppb.New(f.End)
	}
	resp, err := c.audit.ListAuditEvents(ctx, req)
	if err != nil {
		return AuditPage{}, c.callError(ctx, op, err)
	}
	page := AuditPage{Checkpoint: checkpointFromProto(resp.GetCheckpoint()), NextPageToken: resp.GetNextPageToken(), Parent: parent}
	for _, r := range resp.GetRecords() {
		ev, err := auditEventFromLeaf(r.GetLeaf())
		if err != nil {
			return AuditPage{}, localError(op, codes.DataLoss, "event %d: %v", r.GetLeafIndex(), err)
		}
		ev.Index, ev.Proof = r.GetLeafIndex(), r.GetInclusionProof()
		page.Events = append(page.Events, ev)
	}
	return page, nil
}

// AuditCheckpoint returns the audit log's latest signed checkpoint and the
// verifier key of the key that signs it (pin it: see [VerifyAuditEvents]).
// If firstSize is not zero, it also returns the proof that the tree of
// firstSize events (an earlier checkpoint you kept) is a prefix of this one;
// check it with [VerifyAuditConsistency].
func (c *Client) AuditCheckpoint(ctx context.Context, parent string, firstSize uint64) (cp AuditCheckpoint, publicKey string, consistency [][]byte, err error) {
	resp, err := c.audit.GetAuditCheckpoint(ctx, &custosv1.GetAuditCheckpointRequest{Parent: parent, FirstSize: firstSize})
	if err != nil {
		return AuditCheckpoint{}, "", nil, c.callError(ctx, "get audit checkpoint", err)
	}
	return checkpointFromProto(resp.GetCheckpoint()), resp.GetPublicKey(), resp.GetConsistencyProof(), nil
}

// VerifyAuditEvents checks a page with nothing but its contents and the
// log's verifier key: the checkpoint must carry a valid signature by
// publicKey, its Origin, Size, Root and Time must be the ones the signature
// covers, and each event's leaf must be included in it. A page without
// events and without a checkpoint (a log not yet signed) verifies; one
// with a checkpoint has it checked. The events must be in log order, none
// twice, and, when the page has a Parent, all of that tenant. Pin publicKey (take it once from
// [Client.AuditCheckpoint] or from your operator and keep it): a key taken
// from the same server on every call proves only that the server is
// consistent with itself. A page is checked on its own: that two pages, or
// a page and a checkpoint you kept, show one history is
// [VerifyAuditConsistency]'s to check.
func VerifyAuditEvents(publicKey string, page AuditPage) error {
	if len(page.Events) == 0 && len(page.Checkpoint.Note) == 0 {
		return nil
	}
	cp, err := VerifyAuditCheckpoint(publicKey, page.Checkpoint.Note)
	if err != nil {
		return err
	}
	if got := page.Checkpoint; got.Origin != cp.Origin || got.Size != cp.Size || !bytes.Equal(got.Root, cp.Root) || !got.Time.Equal(cp.Time) {
		return errors.New("custos: the page's audit checkpoint does not match its signed note")
	}
	tenant, scoped := strings.CutPrefix(page.Parent, "tenants/")
	if page.Parent != "" && !scoped {
		return fmt.Errorf("custos: audit page parent %q is not tenants/{tenant}", page.Parent)
	}
	for i, ev := range page.Events {
		if i > 0 && ev.Index <= page.Events[i-1].Index {
			return fmt.Errorf("custos: audit event %d follows event %d: a page is in log order, each event once", ev.Index, page.Events[i-1].Index)
		}
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, ev.Index, cp.Size, rfc6962.DefaultHasher.HashLeaf(ev.Leaf), ev.Proof, cp.Root); err != nil {
			return fmt.Errorf("custos: audit event %d is not in the signed checkpoint: %w", ev.Index, err)
		}
		decoded, err := auditEventFromLeaf(ev.Leaf)
		if err != nil || !sameEvent(decoded, ev) {
			return fmt.Errorf("custos: audit event %d does not match its leaf", ev.Index)
		}
		if scoped && decoded.Tenant != tenant {
			return fmt.Errorf("custos: audit event %d is tenant %q's, not %q's", ev.Index, decoded.Tenant, tenant)
		}
	}
	return nil
}

// VerifyAuditCheckpoint checks a signed checkpoint with publicKey and
// returns it parsed.
func VerifyAuditCheckpoint(publicKey string, signed []byte) (AuditCheckpoint, error) {
	v, err := note.NewVerifier(publicKey)
	if err != nil {
		return AuditCheckpoint{}, fmt.Errorf("custos: audit public key: %w", err)
	}
	c, rest, _, err := tlog.ParseCheckpoint(signed, v.Name(), v)
	if err != nil {
		return AuditCheckpoint{}, fmt.Errorf("custos: audit checkpoint: %w", err)
	}
	cp := AuditCheckpoint{Note: signed, Origin: c.Origin, Size: c.Size, Root: c.Hash}
	if len(rest) > 5 && string(rest[:5]) == "time " {
		end := len(rest)
		for i, b := range rest {
			if b == '\n' {
				end = i
				break
			}
		}
		cp.Time, _ = time.Parse(time.RFC3339Nano, string(rest[5:end]))
	}
	return cp, nil
}

// VerifyAuditConsistency checks that older is a prefix of newer (both
// signed by publicKey) with the proof [Client.AuditCheckpoint] returned.
func VerifyAuditConsistency(publicKey string, older, newer AuditCheckpoint, consistency [][]byte) error {
	o, err := VerifyAuditCheckpoint(publicKey, older.Note)
	if err != nil {
		return err
	}
	n, err := VerifyAuditCheckpoint(publicKey, newer.Note)
	if err != nil {
		return err
	}
	if o.Size > n.Size {
		return errors.New("custos: the older audit checkpoint is larger than the newer")
	}
	if err := proof.VerifyConsistency(rfc6962.DefaultHasher, o.Size, n.Size, consistency, o.Root, n.Root); err != nil {
		return fmt.Errorf("custos: audit checkpoints are not consistent: %w", err)
	}
	return nil
}

func checkpointFromProto(c *custosv1.AuditCheckpoint) AuditCheckpoint {
	if c == nil {
		return AuditCheckpoint{}
	}
	return AuditCheckpoint{Note: c.GetSignedNote(), Origin: c.GetOrigin(), Size: c.GetSize(), Root: c.GetRootHash(), Time: c.GetTime().AsTime()}
}

// maxAuditLeaf bounds a leaf the client decodes.
const maxAuditLeaf = 16 << 10

func auditEventFromLeaf(leaf []byte) (AuditEvent, error) {
	if len(leaf) > maxAuditLeaf {
		return AuditEvent{}, fmt.Errorf("leaf of %d bytes", len(leaf))
	}
	var e custosv1.AuditEvent
	if err := proto.Unmarshal(leaf, &e); err != nil {
		return AuditEvent{}, err
	}
	return AuditEvent{
		Time: e.GetTime().AsTime(), RequestID: e.GetRequestId(), Identity: e.GetIdentity(), Peer: e.GetPeer(),
		Tenant: e.GetTenant(), Key: e.GetKey(), KeyVersions: e.GetKeyVersions(), Operation: e.GetOperation(),
		Method: e.GetMethod(), Code: e.GetCode(), Reason: e.GetReason(), ItemsOK: e.GetItemsOk(), ItemsFailed: e.GetItemsFailed(),
		Duration: e.GetDuration().AsDuration(), Leaf: leaf,
	}, nil
}

func sameEvent(a, b AuditEvent) bool {
	return slices.Equal(a.KeyVersions, b.KeyVersions) && a.Time.Equal(b.Time) && a.RequestID == b.RequestID && a.Identity == b.Identity && a.Peer == b.Peer &&
		a.Tenant == b.Tenant && a.Key == b.Key && a.Operation == b.Operation && a.Method == b.Method &&
		a.Code == b.Code && a.Reason == b.Reason && a.ItemsOK == b.ItemsOK && a.ItemsFailed == b.ItemsFailed && a.Duration == b.Duration
}
