// Package local is the root provider for development and tests: a 32-byte
// AES-256 key in a file readable by its owner only. Production deployments
// keep the root in Vault Transit, a cloud KMS or an HSM instead.
package local

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/custos-kms/custos/internal/durable"
	"github.com/custos-kms/custos/keystore/root"
)

// KeySize is the size of the root key file: AES-256.
const KeySize = 32

// Wrapped blobs are formatVersion | 12-byte nonce | AES-256-GCM(ciphertext || tag).
const (
	formatVersion = 0x01
	nonceSize     = 12
	overhead      = 1 + nonceSize + 16
)

// Root is a local root key. It never exposes the key.
type Root struct {
	aead cipher.AEAD
	// path and digest (SHA-256 of the key) let Check tell that the file
	// still holds the key in use.
	path   string
	digest [sha256.Size]byte
}

var (
	_ root.Root    = (*Root)(nil)
	_ root.Checker = (*Root)(nil)
)

// Open loads the root key file at path. It refuses a file that is group- or
// world-accessible, or that does not hold exactly KeySize bytes.
func Open(path string) (*Root, error) {
	key, err := readKeyFile(path)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	return newRoot(path, key)
}

// readKeyFile reads and checks a key file: a regular file of KeySize bytes
// that neither group nor others can read.
func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("local root: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("local root: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("local root: %s has mode %04o; it must not be accessible by group or others (chmod 600)", path, st.Mode().Perm())
	}
	if !st.Mode().IsRegular() || st.Size() != KeySize {
		return nil, fmt.Errorf("local root: %s must be a regular file of exactly %d bytes", path, KeySize)
	}
	key := make([]byte, KeySize)
	if _, err := io.ReadFull(f, key); err != nil {
		clear(key)
		return nil, fmt.Errorf("local root: read %s: %w", path, err)
	}
	return key, nil
}

// Check reads the key file again: it fails if the file is gone,
// unreadable or holds another key. The key loaded at start stays in use
// either way (a replaced file is never silently taken), but a restart
// would fail or use another key, so every tenant would become unreadable:
// restore the file.
func (r *Root) Check(ctx context.Context) error {
	if r.path == "" {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	key, err := readKeyFile(r.path)
	if err != nil {
		return fmt.Errorf("%w: the key in use stays loaded, but a restart would fail; restore the file: %w", root.ErrAtRisk, err)
	}
	d := sha256.Sum256(key)
	clear(key)
	if subtle.ConstantTimeCompare(d[:], r.digest[:]) != 1 {
		return fmt.Errorf("%w: local root: %s no longer holds the key this process loaded; the loaded key stays in use and the file's is refused; restore the original file before any restart", root.ErrAtRisk, r.path)
	}
	return nil
}

// Create writes a fresh random root key to path with mode 0600 and opens it.
// It fails if path exists.
func Create(path string) (*Root, error) {
	key := make([]byte, KeySize)
	defer clear(key)
	if _, err := io.ReadFull(rand.Reader, key); err != nil {
		return nil, fmt.Errorf("local root: generate key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("local root: %w", err)
	}
	if _, err := f.Write(key); err != nil {
		f.Close()
		return nil, fmt.Errorf("local root: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("local root: sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("local root: close %s: %w", path, err)
	}
	// Data wrapped under the new key may be synced next: the key's
	// directory entry must not be the one thing a power loss takes.
	if err := durable.SyncDir(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("local root: %s written: %w", path, err)
	}
	return newRoot(path, key)
}

// OpenOrCreate opens path, creating a fresh key there first if it does not exist.
func OpenOrCreate(path string) (*Root, error) {
	r, err := Create(path)
	if errors.Is(err, fs.ErrExist) {
		return Open(path)
	}
	return r, err
}

func newRoot(path string, key []byte) (*Root, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("local root: %w", err)
	}
	a, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("local root: %w", err)
	}
	return &Root{aead: a, path: path, digest: sha256.Sum256(key)}, nil
}

// Wrap encrypts plaintext under the root key, binding aad.
func (r *Root) Wrap(ctx context.Context, plaintext, aad []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("local root: wrap: %w", err)
	}
	out := make([]byte, 1+nonceSize, overhead+len(plaintext))
	out[0] = formatVersion
	if _, err := io.ReadFull(rand.Reader, out[1:]); err != nil {
		return nil, fmt.Errorf("local root: nonce: %w", err)
	}
	return r.aead.Seal(out, out[1:], plaintext, aad), nil
}

// Unwrap decrypts a blob made by Wrap with the same aad.
func (r *Root) Unwrap(ctx context.Context, wrapped, aad []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("local root: unwrap: %w", err)
	}
	if len(wrapped) < overhead || wrapped[0] != formatVersion {
		return nil, fmt.Errorf("local root: %w", root.ErrNotAuthentic)
	}
	pt, err := r.aead.Open(nil, wrapped[1:1+nonceSize], wrapped[1+nonceSize:], aad)
	if err != nil {
		return nil, fmt.Errorf("local root: %w", root.ErrNotAuthentic)
	}
	return pt, nil
}
