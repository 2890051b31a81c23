package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/renameio/v2"
	"github.com/spf13/cobra"
	"golang.org/x/mod/sumdb/note"

	"github.com/custos-kms/custos/client"
	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/custos"
	"github.com/custos-kms/custos/keystore/audit"
)

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Read, follow and verify the audit trail"}
	cmd.AddCommand(newAuditVerifyCmd())
	var c conn
	var tenant, operation, identity, result, output, publicKey string
	// Each command has its own --since: one variable for both would take
	// the default of the command registered last.
	var listSince, tailSince, until time.Duration
	var limit int
	var verify bool
	filterFlags := func(sub *cobra.Command) {
		c.flags(sub)
		f := sub.Flags()
		f.StringVar(&tenant, "tenant", "", "tenant whose events to read (required)")
		f.StringVar(&operation, "operation", "", "only this operation (encrypt, rotate_key, …)")
		f.StringVar(&identity, "identity", "", "only this caller identity")
		f.StringVar(&result, "result", "", "only OK, FAILED or one gRPC code (PERMISSION_DENIED, …)")
		f.StringVarP(&output, "output", "o", "text", "text (a table), table, or json (one JSON object per line)")
		f.StringVar(&publicKey, "public-key", "", "verify against this pinned log key (note verifier key; implies --verify); default: the server's")
		_ = sub.MarkFlagRequired("tenant")
	}
	filter := func(since time.Duration) client.AuditFilter {
		f := client.AuditFilter{Operation: operation, Identity: identity, Result: result}
		if since > 0 {
			f.Start = time.Now().Add(-since)
		}
		if until > 0 {
			f.End = time.Now().Add(-until)
		}
		return f
	}
	list := &cobra.Command{
		Use:   "list --tenant T",
		Short: "List a tenant's audit events, oldest first (through the API; needs audit.read)",
		Args:  cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error {
			if limit < 1 {
				return usageError{fmt.Errorf("--limit %d: want at least 1", limit)}
			}
			return checkAuditFlags(output, publicKey)
		},
		RunE: c.run(func(cmd *cobra.Command, cl *client.Client, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			ctx, parent := cmd.Context(), tenantName(tenant)
			pv, err := newPageVerifier(cmd, func() (context.Context, context.CancelFunc) { return c.callContext(cmd) }, cl, parent, publicKey, verify)
			if err != nil {
				return err
			}
			f := filter(listSince)
			f.PageSize = min(limit, 1000)
			p := newEventPrinter(cmd.OutOrStdout(), output)
			n, more := 0, false
			for n < limit {
				page, err := cl.ListAuditEvents(ctx, parent, f)
				if err != nil {
					p.flush() // the rows of the pages before it
					return err
				}
				if err := pv.check(page); err != nil {
					p.flush()
					return err
				}
				for i, ev := range page.Events {
					p.print(ev)
					n++
					if n == limit {
						more = i < len(page.Events)-1
						break
					}
				}
				if f.PageToken = page.NextPageToken; f.PageToken == "" {
					break
				}
			}
			// A full page comes with a token whether or not anything
			// follows: ask for one more event to know (a page the
			// server's scan budget cut short may be empty and still
			// have a token; a few are followed).
			for probe, tries := f, 0; n == limit && !more && probe.PageToken != "" && tries < 8; tries++ {
				probe.PageSize = 1
				page, err := cl.ListAuditEvents(ctx, parent, probe)
				if err != nil {
					break // the rows are printed; the note is only a hint
				}
				more, probe.PageToken = len(page.Events) > 0, page.NextPageToken
			}
			if err := p.flush(); err != nil {
				return err
			}
			if more {
				// Oldest first: what was left out is the newest.
				fmt.Fprintf(cmd.ErrOrStderr(), "stopped at --limit %d: newer events follow; raise --limit, or narrow with --since and the filters\n", limit)
			}
			if pv.verify && output == "text" {
				against := "the pinned key"
				if publicKey == "" {
					against = "the key this server sent, which proves only that the server agrees with itself (pin the key with --public-key)"
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "%d events verified against %s: each is tenant %s's and in the log's signed checkpoint, and every page's checkpoint is consistent with the others\n", n, against, pv.tenant)
			}
			return nil
		}),
	}
	filterFlags(list)
	list.Flags().DurationVar(&listSince, "since", 0, "only events of the last DURATION (e.g. 24h)")
	list.Flags().DurationVar(&until, "until", 0, "only events older than DURATION ago")
	list.Flags().IntVar(&limit, "limit", 1000, "print at most this many events")
	list.Flags().BoolVar(&verify, "verify", false, "check each event's inclusion proof and tenant, each checkpoint's signature, and that the pages' checkpoints show one history")

	var interval time.Duration
	var includeReads bool
	tail := &cobra.Command{
		Annotations: map[string]string{ownTimeout: "true"},
		Use:         "tail --tenant T",
		Short:       "Follow a tenant's audit events as the log signs them (Ctrl-C to stop)",
		Args:        cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error {
			if interval <= 0 {
				return usageError{fmt.Errorf("--interval %v: want a positive duration", interval)}
			}
			return checkAuditFlags(output, publicKey)
		},
		RunE: c.run(func(cmd *cobra.Command, cl *client.Client, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			ctx, parent := cmd.Context(), tenantName(tenant)
			call := func() (context.Context, context.CancelFunc) { return c.callContext(cmd) }
			pv, err := newPageVerifier(cmd, call, cl, parent, publicKey, verify)
			if err != nil {
				if stoppedByInterrupt(ctx, err) {
					return nil // Ctrl-C while fetching the key
				}
				return err
			}
			f := filter(tailSince)
			f.PageSize = 1000
			p := newEventPrinter(cmd.OutOrStdout(), output)
			return tailEvents(ctx, call, cl, parent, f, pv, p, interval, !includeReads && operation == "")
		}),
	}
	filterFlags(tail)
	tail.Flags().DurationVar(&tailSince, "since", 10*time.Minute, "start with the events of the last DURATION")
	tail.Flags().DurationVar(&interval, "interval", 2*time.Second, "how often to ask for new events")
	tail.Flags().BoolVar(&verify, "verify", false, "check each event's inclusion proof and tenant, each checkpoint's signature, and that the pages' checkpoints show one history")
	tail.Flags().BoolVar(&includeReads, "include-reads", false, "also print reads of the audit trail (tail's own polls among them)")
	cmd.AddCommand(list, tail)
	return cmd
}

// auditLister answers ListAuditEvents: *client.Client.
type auditLister interface {
	ListAuditEvents(ctx context.Context, parent string, f client.AuditFilter) (client.AuditPage, error)
}

// tailEvents polls parent's events from f on every interval until ctx
// ends, printing each once; hideReads leaves out reads of the trail (its
// own polls among them).
func tailEvents(ctx context.Context, call callContext, cl auditLister, parent string, f client.AuditFilter, pv *pageVerifier, p *eventPrinter, interval time.Duration, hideReads bool) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		cctx, cancel := call()
		page, err := cl.ListAuditEvents(cctx, parent, f)
		cancel()
		if err != nil {
			if stoppedByInterrupt(ctx, err) {
				return nil
			}
			return err
		}
		if err := pv.check(page); err != nil {
			if stoppedByInterrupt(ctx, err) {
				return nil // Ctrl-C, during the check as between polls
			}
			return err
		}
		for _, ev := range page.Events {
			f.StartIndex = ev.Index + 1
			if hideReads && (ev.Operation == "list_audit_events" || ev.Operation == "get_audit_checkpoint") {
				continue // our own polls, and other readers of the trail
			}
			p.print(ev)
		}
		if err := p.flush(); err != nil {
			return err // nobody reads what follows
		}
		if f.PageToken = page.NextPageToken; f.PageToken != "" {
			continue
		}
		// The listing read every event the page's checkpoint covers: the
		// next poll starts past them, not again from the last event that
		// matched (a selective filter re-read the whole history on every
		// poll).
		f.StartIndex = max(f.StartIndex, page.Checkpoint.Size)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// auditKey returns the key to verify with: the pinned one, or the server's
// (said on stderr, since it proves only the server's self-consistency),
// asked for within the context call gives.
func auditKey(cmd *cobra.Command, call callContext, cl checkpointSource, parent, pinned string, verify bool) (string, error) {
	if !verify {
		return "", nil
	}
	if pinned != "" {
		if _, err := note.NewVerifier(pinned); err != nil {
			return "", usageError{fmt.Errorf("--public-key: %w", err)}
		}
		return pinned, nil
	}
	ctx, cancel := call()
	defer cancel()
	_, pub, _, err := cl.AuditCheckpoint(ctx, parent, 0)
	if err != nil {
		return "", err
	}
	if pub == "" {
		return "", nil // no checkpoint yet, so no event to verify either
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "verifying with the server's log key %s (pin it with --public-key)\n", pub)
	return pub, nil
}

// callContext gives the context of one call: bounded by --timeout in a
// command that bounds its calls one by one (audit tail).
type callContext func() (context.Context, context.CancelFunc)

// checkpointSource answers GetAuditCheckpoint: *client.Client.
type checkpointSource interface {
	AuditCheckpoint(ctx context.Context, parent string, firstSize uint64) (cp client.AuditCheckpoint, publicKey string, consistency [][]byte, err error)
}

// pageVerifier verifies the pages of one listing (or of one tail's polls)
// when asked to: each page on its own (VerifyAuditEvents), each event as
// the requested tenant's, and every page's checkpoint consistent with the
// newest seen before, so that no two pages show different histories.
type pageVerifier struct {
	cmd            *cobra.Command
	call           callContext
	cl             checkpointSource
	parent, tenant string
	pinned, pub    string
	verify         bool
	last           *client.AuditCheckpoint // the newest checkpoint verified so far
	seen           bool                    // an event was verified: lastIndex is its index
	lastIndex      uint64
}

func newPageVerifier(cmd *cobra.Command, call callContext, cl checkpointSource, parent, pinned string, verify bool) (*pageVerifier, error) {
	verify = verify || pinned != "" // a pinned key is for checking with: it implies --verify
	pub, err := auditKey(cmd, call, cl, parent, pinned, verify)
	if err != nil {
		return nil, err
	}
	// The events name the bare id, whichever form --tenant took.
	id := strings.TrimPrefix(parent, "tenants/")
	return &pageVerifier{cmd: cmd, call: call, cl: cl, parent: parent, tenant: id, pinned: pinned, pub: pub, verify: verify}, nil
}

// check verifies a page, fetching the server's key if the log had none
// when the command started.
func (v *pageVerifier) check(page client.AuditPage) error {
	if !v.verify || len(page.Events) == 0 {
		return nil
	}
	if v.pub == "" {
		var err error
		if v.pub, err = auditKey(v.cmd, v.call, v.cl, v.parent, v.pinned, v.verify); err != nil {
			return err
		}
		if v.pub == "" {
			return errors.New("the server returned events but no log key")
		}
	}
	// VerifyAuditEvents also checks that every event is the tenant's.
	page.Parent = v.parent
	if err := client.VerifyAuditEvents(v.pub, page); err != nil {
		return err
	}
	// Pages follow each other in log order: none shows an event again.
	if first := page.Events[0].Index; v.seen && first <= v.lastIndex {
		return fmt.Errorf("audit event %d comes after event %d, in an earlier page", first, v.lastIndex)
	}
	v.seen, v.lastIndex = true, page.Events[len(page.Events)-1].Index
	cp := page.Checkpoint
	if v.last != nil {
		if err := v.consistent(*v.last, cp); err != nil {
			return err
		}
		if cp.Size < v.last.Size {
			return nil
		}
	}
	v.last = &cp
	return nil
}

// consistent checks that a and b (both verified) are prefixes of one log:
// each is proved a prefix of the server's latest checkpoint, taken twice
// until both proofs are to the same one.
func (v *pageVerifier) consistent(a, b client.AuditCheckpoint) error {
	if a.Size == b.Size && bytes.Equal(a.Root, b.Root) {
		return nil
	}
	checkpoint := func(size uint64) (client.AuditCheckpoint, [][]byte, error) {
		ctx, cancel := v.call()
		defer cancel()
		cp, _, proof, err := v.cl.AuditCheckpoint(ctx, v.parent, size)
		if errors.Is(err, client.ErrInvalidArgument) {
			// size is a checkpoint a page showed: the log's latest is
			// now smaller (rolled back), a finding, not a bad argument.
			return cp, nil, fmt.Errorf("the pages show different histories: a page showed a checkpoint of %d events, and the server's latest is now smaller (%v)", size, err)
		}
		return cp, proof, err
	}
	for range 3 {
		la, pa, err := checkpoint(a.Size)
		if err != nil {
			return err
		}
		lb, pb, err := checkpoint(b.Size)
		if err != nil {
			return err
		}
		if !bytes.Equal(la.Note, lb.Note) {
			continue // the log grew between the two answers (the notes are what is verified; the other fields are not)
		}
		if err := client.VerifyAuditConsistency(v.pub, a, la, pa); err != nil {
			return fmt.Errorf("the pages show different histories: %w", err)
		}
		if err := client.VerifyAuditConsistency(v.pub, b, lb, pb); err != nil {
			return fmt.Errorf("the pages show different histories: %w", err)
		}
		return nil
	}
	return errors.New("the audit log kept growing while its pages' checkpoints were checked against each other; run again")
}

type eventPrinter struct {
	out  io.Writer
	tw   *tabwriter.Writer
	json bool
	head bool
	err  error // the first failed write of a JSON line
}

func newEventPrinter(w io.Writer, output string) *eventPrinter {
	return &eventPrinter{out: w, tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0), json: output == "json"}
}

func (p *eventPrinter) print(ev client.AuditEvent) {
	if p.json {
		line := struct {
			Index uint64 `json:"index"`
			audit.ExportLine
		}{ev.Index, audit.ExportLine{
			Time: ev.Time.UTC(), RequestID: ev.RequestID, Identity: ev.Identity, Peer: ev.Peer, Tenant: ev.Tenant, Key: ev.Key,
			KeyVersions: ev.KeyVersions, Operation: ev.Operation, Method: ev.Method, Code: ev.Code, Reason: ev.Reason,
			ItemsOK: ev.ItemsOK, ItemsFailed: ev.ItemsFailed, DurationMS: float64(ev.Duration.Microseconds()) / 1000,
		}}
		b, _ := json.Marshal(line)
		if _, err := fmt.Fprintf(p.out, "%s\n", b); err != nil && p.err == nil {
			p.err = err
		}
		return
	}
	p.header()
	key := ev.Key
	if key == "" {
		key = "-"
	}
	fmt.Fprintf(p.tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ev.Index, ev.Time.UTC().Format(time.RFC3339), cellText(ev.Identity), cellText(ev.Operation), cellText(key), cell(ev.KeyVersions), cellText(ev.Code), cellText(ev.RequestID))
}

// header writes the table's header once, before the first row or, when
// there is none, at the first flush: an empty table still names its columns.
func (p *eventPrinter) header() {
	if !p.head && !p.json {
		fmt.Fprintln(p.tw, "INDEX\tTIME\tIDENTITY\tOPERATION\tKEY\tVERSIONS\tCODE\tREQUEST_ID")
		p.head = true
	}
}

// flush writes the rows printed so far; its error is the output's first
// failed write (a JSON line's, or the table's).
func (p *eventPrinter) flush() error {
	p.header()
	if err := p.tw.Flush(); err != nil {
		return err
	}
	return p.err
}

func newAuditVerifyCmd() *cobra.Command {
	var path, publicKey, keptPath, savePath string
	cmd := &cobra.Command{
		Use:   "verify --config FILE",
		Short: "Recompute the audit log's tree from the store and check every checkpoint",
		Long: `Works on the store directly (like root rewrap): on PostgreSQL with the servers
running or not; on bbolt, whose file one process holds at a time, with the server stopped.
It recomputes every leaf hash and the tree, checks each signed checkpoint's
signature and that it is a prefix of the log, and reports every modified,
deleted, reordered or inserted event with its index. Exits non-zero on any
finding. The log key is the one wrapped under the root, unless --public-key
pins another.

The stored checkpoints cannot show a log rolled back to an older state as a
whole. --save-checkpoint FILE keeps the latest checkpoint of a clean run;
give it to the next run with --checkpoint FILE, which then reports a log
that is not an extension of it. Run it as
  custos audit verify --config FILE --checkpoint kept.note --save-checkpoint kept.note
(a missing --checkpoint file is allowed on the first run).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var v note.Verifier
			if publicKey != "" { // a usage error before anything is read
				var err error
				if v, err = note.NewVerifier(publicKey); err != nil {
					return usageError{fmt.Errorf("--public-key: %w", err)}
				}
			}
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			if err := notAConfiguredFile("--save-checkpoint", savePath, path, cfg); err != nil {
				return err
			}
			if err := bboltFileExists(cfg); err != nil {
				return err
			}
			d, closeDirect, err := custos.OpenDirect(cmd.Context(), cfg, custos.NewLogger(os.Stderr, cfg.Log.Level))
			if err != nil {
				return err
			}
			defer closeDirect()
			if v == nil {
				if v, err = audit.VerifierOf(cmd.Context(), d.Store, d.Root); err != nil {
					return err
				}
			}
			var kept [][]byte
			if keptPath != "" {
				b, err := readBounded(keptPath, maxKeptCheckpoint)
				switch {
				case errors.Is(err, os.ErrNotExist) && keptPath == savePath:
					fmt.Fprintf(cmd.ErrOrStderr(), "no kept checkpoint at %s yet: this run keeps one\n", keptPath)
				case err != nil:
					return fmt.Errorf("--checkpoint: %w", err)
				case len(b) > maxKeptCheckpoint:
					return fmt.Errorf("--checkpoint: %s holds more than %d bytes, more than a checkpoint", keptPath, maxKeptCheckpoint)
				default:
					kept = append(kept, b)
				}
			}
			start := time.Now()
			rep, err := audit.Verify(cmd.Context(), d.Store, v, kept...)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, f := range rep.Findings {
				fmt.Fprintln(out, f)
			}
			fmt.Fprintf(out, "audit log: %d events (%d checked by hash after retention), %d signed checkpoints, latest of size %d; %d findings (%v)\n",
				rep.Events+rep.Pruned, rep.Pruned, rep.Checkpoints, rep.Size, len(rep.Findings), time.Since(start).Round(time.Millisecond))
			if len(rep.Findings) > 0 {
				return fmt.Errorf("the audit log failed verification: %d findings", len(rep.Findings))
			}
			if savePath != "" && len(rep.Latest) > 0 {
				if err := renameio.WriteFile(savePath, rep.Latest, 0o644); err != nil {
					return fmt.Errorf("--save-checkpoint: %w", err)
				}
				fmt.Fprintf(out, "kept the checkpoint of size %d in %s\n", rep.Size, savePath)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "config", "custos.yaml", "configuration file")
	cmd.Flags().StringVar(&publicKey, "public-key", "", "verify the checkpoints with this log key instead of the one wrapped under the root")
	cmd.Flags().StringVar(&keptPath, "checkpoint", "", "a checkpoint kept from an earlier run (--save-checkpoint): report a log that is not an extension of it")
	cmd.Flags().StringVar(&savePath, "save-checkpoint", "", "after a clean run, keep the latest checkpoint in this file")
	return cmd
}

// readBounded reads the file at path, up to max+1 bytes: more than max
// means it is too large, without reading all of it (--checkpoint
// /dev/zero).
func readBounded(path string, max int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, int64(max)+1))
}

// maxKeptCheckpoint bounds a kept checkpoint file (a signed note of a few
// lines).
const maxKeptCheckpoint = 64 << 10

// stoppedByInterrupt reports whether err is a call cut short by the user's
// interrupt (ctx is the command's, which Ctrl-C ends), not a failure met
// as it came, such as a verification finding.
func stoppedByInterrupt(ctx context.Context, err error) bool {
	return ctx.Err() != nil && errors.Is(err, context.Canceled)
}

// checkAuditFlags checks audit list's and tail's -o and --public-key
// before anything is dialled or read: a usage error (exit 2) whatever the
// connection files.
func checkAuditFlags(output, publicKey string) error {
	if err := checkOutput(output); err != nil {
		return err
	}
	if publicKey != "" {
		if _, err := note.NewVerifier(publicKey); err != nil {
			return usageError{fmt.Errorf("--public-key: %w", err)}
		}
	}
	return nil
}
