package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/internal/custos"
	"github.com/custos-kms/custos/internal/durable"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/backup"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/bbolt"
	"github.com/custos-kms/custos/server"
)

func newBackupCmd() *cobra.Command {
	var path, out string
	cmd := &cobra.Command{
		Use:   "backup --config FILE --out PATH",
		Short: "Write a consistent, encrypted backup of the whole store while servers keep serving",
		Long: `custos backup reads the store named in the config in one consistent snapshot
(a bbolt read transaction, a PostgreSQL repeatable-read transaction) and
streams every record, as the store holds it (wrapped keys, metadata, audit
log), into one file encrypted and authenticated under a data key wrapped by
the root. "-" writes to standard output. See docs/backup.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageError{fmt.Errorf("--out is required (a file, or - for standard output)")}
			}
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			if err := notAConfiguredFile("--out", out, path, cfg); err != nil {
				return err
			}
			var w io.Writer = cmd.OutOrStdout()
			var f *os.File
			var pending *durable.Pending
			if out != "-" {
				// Named only when whole, so that a failed or killed backup
				// never leaves a file that looks whole, nor a partial copy
				// of the store that no one removes.
				if pending, err = durable.CreatePending(out); err != nil {
					return err
				}
				defer pending.Close()
				f, w = pending.File, pending.File
			}
			p := newProgress(cmd.ErrOrStderr(), "backup")
			m, err := writeBackup(cmd, cfg, w, f, p)
			p.done()
			if err != nil {
				return err
			}
			if pending != nil {
				if err := pending.Publish(); err != nil {
					return fmt.Errorf("backup: %w", err)
				}
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "backup %s: %d records (%d bytes), %d tenants %s, taken %s from %s\n",
				m.ID, m.Records, m.Bytes, m.TenantCount(), m.Summary(), m.Created.Format(time.RFC3339), m.Source)
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "config", "custos.yaml", "configuration file (storage and root)")
	cmd.Flags().StringVar(&out, "out", "", `backup file to write, or "-" for standard output`)
	cmd.AddCommand(newBackupVerifyCmd())
	return cmd
}

func newBackupVerifyCmd() *cobra.Command {
	var path, in string
	cmd := &cobra.Command{
		Use:   "verify --config FILE --in PATH",
		Short: "Read and authenticate a whole backup without restoring it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			r, err := custos.OpenRoot(cmd.Context(), cfg, custos.NewLogger(cmd.ErrOrStderr(), "warn"))
			if err != nil {
				return err
			}
			defer custos.CloseRoot(r)
			f, err := os.Open(in)
			if err != nil {
				return err
			}
			defer f.Close()
			m, err := backup.Read(cmd.Context(), f, r, nil)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "backup %s is whole and authentic: %d records (%d bytes), %d tenants %s, taken %s from %s\n",
				m.ID, m.Records, m.Bytes, m.TenantCount(), m.Summary(), m.Created.Format(time.RFC3339), m.Source)
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "config", "custos.yaml", "configuration file (its root unwraps the backup's data key)")
	cmd.Flags().StringVar(&in, "in", "", "backup file")
	_ = cmd.MarkFlagRequired("in")
	return cmd
}

func newRestoreCmd() *cobra.Command {
	var path, in, tombsFrom string
	var force, takeOver bool
	var maxAge time.Duration
	cmd := &cobra.Command{
		Use:   "restore --config FILE --in PATH",
		Short: "Restore a backup into the (empty) store named in the config, of either backend",
		Long: `custos restore reads the whole backup once to authenticate it, and writes
nothing unless it is whole, authentic, made under this root, younger than
--max-age and dated no more than an hour ahead of this clock. It then writes every record into the store named in the config,
which must be empty (or --force). Tenants whose deletion date has passed, and
tenants with a tombstone in the target or in --tombstones-from, stay shredded;
a deletion scheduled there since the backup stays scheduled. An interrupted restore is finished by running it again. Restoring a bbolt
backup into PostgreSQL (or back) is the migration between the two. See
docs/backup.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if in == "" {
				return usageError{fmt.Errorf("--in is required")}
			}
			var f *os.File
			if in == "-" {
				// Two passes: the first authenticates, the second writes,
				// so standard input is copied to a file first. Its name
				// goes at once: the open file is all the passes need, and
				// a restore killed midway leaves no copy of the store.
				tmp, err := os.CreateTemp("", "custos-restore-*")
				if err != nil {
					return err
				}
				if err := os.Remove(tmp.Name()); err != nil {
					tmp.Close()
					return err
				}
				defer tmp.Close()
				if err := copyUntilDone(cmd.Context(), tmp, cmd.InOrStdin()); err != nil {
					return err
				}
				if _, err := tmp.Seek(0, io.SeekStart); err != nil {
					return err
				}
				f = tmp
			}
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			logger := custos.NewLogger(cmd.ErrOrStderr(), "warn")
			opts := backup.RestoreOptions{Force: force, MaxAge: maxAge, TakeOver: takeOver}
			if tombsFrom != "" {
				if opts.Tombstones, opts.Deletions, err = tombstonesFrom(cmd.Context(), tombsFrom); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "%d tombstones and %d scheduled deletions read from %s\n", len(opts.Tombstones), len(opts.Deletions), tombsFrom)
			}
			p := newProgress(cmd.ErrOrStderr(), "restore")
			opts.Progress = func(n uint64) { p.update(n, 0) }
			if f == nil {
				// Opened once: every pass reads the same file, even if
				// another is renamed over its path meanwhile.
				if f, err = os.Open(in); err != nil {
					return err
				}
				defer f.Close()
			}
			// The backup is authenticated with the root alone, before the
			// target is opened: a refused backup leaves the target as it
			// was (no bbolt file created, no PostgreSQL schema migrated).
			rt, err := custos.OpenRoot(cmd.Context(), cfg, logger)
			if err != nil {
				return err
			}
			defer custos.CloseRoot(rt)
			a, err := backup.Authenticate(cmd.Context(), f, rt, opts)
			if err != nil {
				return err
			}
			store, err := custos.OpenStorage(cmd.Context(), cfg, logger)
			if err != nil {
				return err
			}
			defer store.Close()
			rep, err := a.Restore(cmd.Context(), store)
			p.done()
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if rep.Resumed {
				fmt.Fprintln(w, "resumed an interrupted restore of this backup")
			}
			fmt.Fprintf(w, "restored backup %s (taken %s): %d records written, %d left out\n", rep.Manifest.ID, rep.Manifest.Created.Format(time.RFC3339), rep.Written, rep.Skipped)
			if len(rep.Shredded) > 0 {
				fmt.Fprintf(w, "kept shredded (not restored): %s\n", strings.Join(rep.Shredded, ", "))
			}
			if len(rep.Rescheduled) > 0 {
				fmt.Fprintf(w, "restored with the deletion scheduled since the backup: %s\n", strings.Join(rep.Rescheduled, ", "))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "config", "custos.yaml", "configuration file of the target (storage and root)")
	cmd.Flags().StringVar(&in, "in", "", `backup file, or "-" for standard input`)
	cmd.Flags().BoolVar(&force, "force", false, "write into a store that already holds records (its audit trail gives way to the backup's)")
	cmd.Flags().BoolVar(&takeOver, "take-over", false, "the restore whose marker was renewed within the last minute was stopped (killed): take its marker over now instead of waiting")
	cmd.Flags().DurationVar(&maxAge, "max-age", backup.DefaultMaxAge, "refuse backups older than this, and those dated more than an hour ahead (negative, such as -1h: no limit)")
	cmd.Flags().StringVar(&tombsFrom, "tombstones-from", "", "the config of another store (the live deployment) whose tombstones and scheduled deletions count too")
	return cmd
}

// notAConfiguredFile refuses an output path that names the configuration
// file, a file it names (the store, a key file…) or one the server makes
// beside them (the audit spool's segments, the export's rotated files),
// also through a link: a backup renamed over the bbolt file replaced the
// live store, and over the root's key file would leave every backup
// unreadable.
func notAConfiguredFile(flag, out, configPath string, cfg *config.Config) error {
	if out == "" || out == "-" {
		return nil
	}
	o := canonicalPath(out)
	refuse := func(f string) error {
		return usageError{fmt.Errorf("%s %s is %s, which the configuration uses: name another file", flag, out, f)}
	}
	oi, oerr := os.Stat(out)
	for _, f := range append(cfg.Files(), configPath) {
		if o == canonicalPath(f) {
			return refuse(f)
		}
		if fi, err := os.Stat(f); oerr == nil && err == nil && os.SameFile(oi, fi) { // a hard link
			return refuse(f)
		}
	}
	for _, p := range cfg.FilePrefixes() {
		// The prefix's directory resolved, its last part kept as text.
		if strings.HasPrefix(o, filepath.Join(canonicalPath(filepath.Dir(p)), filepath.Base(p))) {
			return refuse(p + "…")
		}
	}
	return nil
}

// canonicalPath is p absolute and clean, with its links resolved: p's own
// if it exists, else its directory's.
func canonicalPath(p string) string {
	abs, err := filepath.Abs(p)
	if err != nil {
		return filepath.Clean(p)
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		return r
	}
	if d, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
		return filepath.Join(d, filepath.Base(abs))
	}
	return abs
}

// writeBackup writes the backup: from the store directly, or, when the
// store is a bbolt file a running server holds, from that server's ops
// listener (GET /backup), checked here with the root before it is kept.
func writeBackup(cmd *cobra.Command, cfg *config.Config, w io.Writer, f *os.File, p *progress) (*backup.Manifest, error) {
	ctx := cmd.Context()
	if err := bboltFileExists(cfg); err != nil {
		return nil, err
	}
	d, closeDirect, err := custos.OpenDirect(ctx, cfg, custos.NewLogger(cmd.ErrOrStderr(), "warn"))
	if errors.Is(err, bbolt.ErrLocked) && cfg.Ops.Listen != "off" {
		return backupFromServer(cmd, cfg, w, f, p)
	}
	if err != nil {
		return nil, err
	}
	defer closeDirect()
	sn, ok := d.Store.(storage.Snapshotter)
	if !ok {
		return nil, fmt.Errorf("storage %s cannot take a snapshot", cfg.Storage.Type)
	}
	return backup.Write(ctx, w, sn, d.Root, backup.Options{Source: cfg.Storage.Type, Progress: p.update})
}

// backupStall is how long a server taking a backup may send nothing (its
// answer, then each part of it) before custos backup gives up (exit 7):
// a backup has no deadline as a whole, however large the store.
var backupStall = 2 * time.Minute

// errBackupStalled is why: the server stopped sending.
var errBackupStalled = fmt.Errorf("the server sent nothing for a while: %w", errRetryLater)

// stallReader reads r with stall armed while each read waits, so that
// only the server's silence counts, not the time this side takes with
// what it received (a slow --out, the root's unwraps while checking).
type stallReader struct {
	r     io.Reader
	stall *time.Timer
	after time.Duration // the silence allowed
}

func (s stallReader) Read(b []byte) (int, error) {
	s.stall.Reset(s.after)
	defer s.stall.Stop()
	return s.r.Read(b)
}

func backupFromServer(cmd *cobra.Command, cfg *config.Config, w io.Writer, f *os.File, p *progress) (*backup.Manifest, error) {
	ctx, cancel := context.WithCancelCause(cmd.Context())
	defer cancel(nil)
	fmt.Fprintf(cmd.ErrOrStderr(), "the bbolt file is held by a running server: taking the backup through its ops listener %s\n", cfg.Ops.Listen)
	// The root first: the server bounds each write of the backup (30 s),
	// and an open that takes that long (a Vault login retried, a slow
	// HSM) would have it abort the stream; a root that does not open
	// needs no backup taken.
	r, err := custos.OpenRoot(ctx, cfg, custos.NewLogger(cmd.ErrOrStderr(), "warn"))
	if err != nil {
		return nil, err
	}
	defer custos.CloseRoot(r)
	stall := time.AfterFunc(backupStall, func() { cancel(errBackupStalled) })
	defer stall.Stop()
	req, err := opsRequest(ctx, cfg, http.MethodGet, "/backup")
	if err != nil {
		return nil, err
	}
	resp, err := opsClient.Do(req)
	stall.Stop() // armed again by each read of the answer
	if err != nil {
		return nil, fmt.Errorf("backup through the server: %w", opsDialErr(ctx, cfg, err))
	}
	defer resp.Body.Close()
	resp.Body = struct {
		io.Reader
		io.Closer
	}{stallReader{resp.Body, stall, backupStall}, resp.Body}
	if resp.StatusCode != http.StatusOK {
		return nil, opsAnswerErr(cfg, "backup", resp, resp.Body, "the server does not serve backups; set ops.backup: true in its configuration and restart it (a .custos-dev/custos.yaml written before this version lacks it)")
	}
	if f == nil {
		// Streamed on: checked with the root as it passes, and the command
		// fails if it does not check out.
		pr, pw := io.Pipe()
		checked := make(chan error, 1)
		var m *backup.Manifest
		go func() {
			var err error
			m, err = backup.Read(ctx, pr, r, nil)
			_, _ = io.Copy(io.Discard, pr)
			checked <- err
		}()
		_, err := io.Copy(io.MultiWriter(w, pw), io.TeeReader(resp.Body, progressWriter{p}))
		pw.CloseWithError(err)
		if cerr := <-checked; err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("backup through the server: %w", stalled(ctx, err))
		}
		return m, nil
	}
	if _, err := io.Copy(w, io.TeeReader(resp.Body, progressWriter{p})); err != nil {
		return nil, fmt.Errorf("backup through the server: %w", stalled(ctx, err))
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return backup.Read(ctx, f, r, nil)
}

// copyUntilDone copies r to w until r ends or ctx does (Ctrl-C: main's
// signal context catches the signal, and a read of a pipe that never
// closes would wait for ever; the copy goes on until the process ends,
// writing to a file the caller removes).
func copyUntilDone(ctx context.Context, w io.Writer, r io.Reader) error {
	_, err := untilDone(ctx, func() (int64, error) { return io.Copy(w, r) })
	return err
}

// stalled is err, or errBackupStalled or errRewrapStalled if that is why
// ctx ended.
func stalled(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); errors.Is(cause, errBackupStalled) || errors.Is(cause, errRewrapStalled) {
		return cause
	}
	return err
}

// progressWriter reports bytes received.
type progressWriter struct{ p *progress }

func (pw progressWriter) Write(b []byte) (int, error) {
	pw.p.received += uint64(len(b))
	pw.p.update(0, pw.p.received)
	return len(b), nil
}

// tombstonesFrom reads the tombstones and scheduled deletions of the store
// another config names, without writing to it: a bbolt file opened
// read-only (it must exist, and its server must be stopped), a PostgreSQL
// database without migrations.
func tombstonesFrom(ctx context.Context, path string) ([]keystore.Tombstone, []keystore.Deletion, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, nil, fmt.Errorf("--tombstones-from: %w", err)
	}
	s, err := custos.OpenStorageReadOnly(ctx, cfg, slog.New(slog.DiscardHandler))
	if errors.Is(err, bbolt.ErrLocked) {
		err = fmt.Errorf("%w (stop its server first)", err)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("--tombstones-from: %w", err)
	}
	defer s.Close()
	return backup.Deletions(ctx, s, time.Now())
}

// progress draws a one-line progress report on a terminal, and nothing
// otherwise.
type progress struct {
	received uint64
	w        io.Writer
	what     string
	tty      bool
	last     time.Time
	any      bool
}

func newProgress(w io.Writer, what string) *progress {
	p := &progress{w: w, what: what}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *progress) update(records, bytes uint64) {
	if !p.tty || time.Since(p.last) < 200*time.Millisecond {
		return
	}
	p.last, p.any = time.Now(), true
	if bytes > 0 {
		fmt.Fprintf(p.w, "\r%s: %d records, %.1f MB", p.what, records, float64(bytes)/1e6)
	} else {
		fmt.Fprintf(p.w, "\r%s: %d records", p.what, records)
	}
}

func (p *progress) done() {
	if p.any {
		fmt.Fprintln(p.w)
	}
}

// bboltFileExists refuses a configured bbolt file that does not exist, for
// the commands that read a store (backup, audit verify, root rewrap): bbolt
// would create it, and a mistyped path would become a new, empty store
// backed up, verified or re-wrapped with success.
func bboltFileExists(cfg *config.Config) error {
	if cfg.Storage.Type != "bbolt" {
		return nil
	}
	if _, err := os.Stat(cfg.Storage.Bbolt.Path); err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	return nil
}

// opsRequest is a request to the ops listener of cfg (a server holding its
// bbolt file) naming that file, by absolute path, in server.StoreFileHeader:
// a server holding another file (an ops.listen that reaches the wrong one)
// refuses instead of answering for its own.
func opsRequest(ctx context.Context, cfg *config.Config, method, path string) (*http.Request, error) {
	store, err := filepath.Abs(cfg.Storage.Bbolt.Path) // the server resolves it in its own directory
	if err != nil {
		return nil, err
	}
	// url.URL escapes what an address may hold that a URL may not (an IPv6
	// zone's "%").
	u := url.URL{Scheme: "http", Host: cfg.Ops.Listen, Path: path}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set(server.StoreFileHeader, store)
	return req, nil
}

// opsClient asks the ops listener directly, never through a proxy of the
// environment (HTTP_PROXY would get ops.listen's non-loopback addresses,
// and the store's path with them).
var opsClient = &http.Client{Transport: func() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	return t
}()}

// opsDialErr is the error of a request to the ops listener that got no
// answer: the stall; or, when the connection was refused or reset (the
// file is locked, so whatever holds it is not a server answering there:
// one without an ops listener, one shutting down, another command), exit
// 7, retry later; anything else (a name that does not resolve, something
// that is not an ops listener) as it is.
func opsDialErr(ctx context.Context, cfg *config.Config, err error) error {
	if cause := context.Cause(ctx); cause != nil {
		return stalled(ctx, err)
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) {
		return fmt.Errorf("the bbolt file is locked, and nothing answers on ops.listen %s (a server without an ops listener, one shutting down, or another command holds it): %w (%w)", cfg.Ops.Listen, err, errRetryLater)
	}
	return fmt.Errorf("ops.listen %s: %w", cfg.Ops.Listen, err)
}

// opsAnswerErr is the error of an answer other than 200 from the ops
// listener to what (backup, root rewrap), its text read from body:
// 503 and 429 are "retry later" (exit 7), 404 says notServed, 409 that
// ops.listen reaches a server holding another file.
func opsAnswerErr(cfg *config.Config, what string, resp *http.Response, body io.Reader, notServed string) error {
	text, _ := io.ReadAll(io.LimitReader(body, 4096))
	err := fmt.Errorf("%s through the server: %s: %s", what, resp.Status, strings.TrimSpace(string(text)))
	switch resp.StatusCode {
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
		return fmt.Errorf("%w (%w)", err, errRetryLater)
	case http.StatusNotFound:
		return fmt.Errorf("%w: %s", err, notServed)
	case http.StatusConflict:
		return fmt.Errorf("%w: the server at ops.listen %s is not the one holding %s; check ops.listen in the configuration", err, cfg.Ops.Listen, cfg.Storage.Bbolt.Path)
	}
	return err
}
