package durable

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Pending is a file being written that takes its name only when
// published, so that a process killed before then (kill -9, out of
// memory, a power loss) leaves nothing that looks whole, and nothing a
// later run must find and remove. On Linux it has no name at all until
// then (O_TMPFILE); elsewhere, or on a file system without O_TMPFILE, it
// is a temporary file beside the target ("<target>.partial-*") that Close
// removes unless it was published.
type Pending struct {
	*os.File
	target    string
	named     bool // a temporary name beside the target (the fallback)
	published bool
}

// CreatePending opens a new pending file, readable and writable, with
// mode 0600, in the directory of target.
func CreatePending(target string) (*Pending, error) {
	dir := filepath.Dir(target)
	if f, err := createUnnamed(dir); err == nil {
		return &Pending{File: f, target: target}, nil
	} else if !errors.Is(err, errNoUnnamed) {
		return nil, err
	}
	f, err := os.CreateTemp(dir, filepath.Base(target)+".partial-*")
	if err != nil {
		return nil, err
	}
	return &Pending{File: f, target: target, named: true}, nil
}

// Publish syncs the file, gives it the target's name (replacing what is
// there) and syncs the directory. It leaves the file open.
func (p *Pending) Publish() error {
	if err := p.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", p.target, err)
	}
	if err := p.Chmod(0o600); err != nil {
		return fmt.Errorf("%s: %w", p.target, err)
	}
	from := p.Name()
	if !p.named {
		from = p.target + ".partial-" + rand.Text()
		if err := link(p.File, from); err != nil {
			// Made, but it cannot be linked here (a sandbox, a file
			// system that makes unnamed files but links none): copied
			// to a name instead, rather than lost.
			if from, err = p.copyToName(); err != nil {
				return fmt.Errorf("name %s: %w", p.target, err)
			}
		}
	}
	if err := os.Rename(from, p.target); err != nil {
		if !p.named {
			_ = os.Remove(from)
		}
		return err
	}
	p.published = true
	if err := SyncDir(filepath.Dir(p.target)); err != nil {
		return fmt.Errorf("%s is in place, but its directory could not be synced (a power loss could lose it): %w", p.target, err)
	}
	return nil
}

// copyToName copies the unnamed file to a new temporary file beside the
// target, synced, and returns its name.
func (p *Pending) copyToName() (string, error) {
	if _, err := p.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(filepath.Dir(p.target), filepath.Base(p.target)+".partial-*")
	if err != nil {
		return "", err
	}
	_, err = io.Copy(f, p.File)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// link names an unnamed file (a variable for the tests).
var link = linkUnnamed

// Close closes the file and, unless it was published, removes its
// temporary name (an unnamed file is gone once closed).
func (p *Pending) Close() error {
	err := p.File.Close()
	if p.named && !p.published {
		if rerr := os.Remove(p.Name()); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
			err = rerr
		}
	}
	return err
}

// errNoUnnamed: this system or file system makes no unnamed files.
var errNoUnnamed = errors.New("durable: no unnamed files here")
