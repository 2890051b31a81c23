package custos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/keystore"
	"github.com/custos-kms/custos/keystore/root"
	"github.com/custos-kms/custos/keystore/root/awskms"
	"github.com/custos-kms/custos/keystore/root/gcpkms"
	"github.com/custos-kms/custos/keystore/root/local"
	"github.com/custos-kms/custos/keystore/root/pkcs11"
	vaultroot "github.com/custos-kms/custos/keystore/root/vault"
	"github.com/custos-kms/custos/keystore/storage"
	"github.com/custos-kms/custos/keystore/storage/bbolt"
	"github.com/custos-kms/custos/keystore/storage/memory"
	"github.com/custos-kms/custos/keystore/storage/postgres"
)

// rootOpenTimeout bounds opening a root: Vault and PKCS#11 check their key
// before they return.
const rootOpenTimeout = time.Minute

// OpenRoot opens the configured root provider, giving up when ctx ends
// (a signal) or after rootOpenTimeout. The cloud KMS clients are built
// without a call. Close it with CloseRoot. logger receives what the
// provider does in the background (Vault's token renewals). With
// root.previous set it opens both, and the root it returns also unwraps
// what the previous one wrapped (root.WithPrevious).
func OpenRoot(ctx context.Context, cfg *config.Config, logger *slog.Logger) (root.Root, error) {
	ctx, cancel := context.WithTimeout(ctx, rootOpenTimeout)
	defer cancel()
	cur, err := openRoot(ctx, cfg.Root, logger, false)
	if err != nil || cfg.Root.Previous == nil {
		return cur, err
	}
	prev, err := openRoot(ctx, *cfg.Root.Previous, logger, true)
	if err != nil {
		CloseRoot(cur)
		return nil, fmt.Errorf("root.previous: %w", err)
	}
	return root.WithPrevious(cur, prev), nil
}

// openRoot opens the root rc configures. A previous root (one being moved
// off) is opened even if its key could be exported: moving off it is the
// remedy.
func openRoot(ctx context.Context, rc config.Root, logger *slog.Logger, previous bool) (root.Root, error) {
	switch rc.Type {
	case "local":
		return local.Open(rc.Local.KeyFile)
	case "vault":
		v := rc.Vault
		token, err := v.Auth.EnvToken()
		if err != nil {
			return nil, err
		}
		auth := vaultroot.Auth{Token: token, TokenFile: v.Auth.TokenFile}
		if a := v.Auth.AppRole; a != nil {
			secretID, err := a.EnvSecretID()
			if err != nil {
				return nil, err
			}
			auth.AppRole = &vaultroot.AppRole{Mount: a.Mount, RoleID: a.RoleID, SecretID: secretID, SecretIDFile: a.SecretIDFile}
		}
		if c := v.Auth.Cert; c != nil {
			auth.Cert = &vaultroot.Cert{Mount: c.Mount, Role: c.Role, CertFile: c.CertFile, KeyFile: c.KeyFile}
		}
		return vaultroot.New(ctx, vaultroot.Config{
			Address:        v.Address,
			Namespace:      v.Namespace,
			Mount:          v.Mount,
			KeyName:        v.KeyName,
			CACertFile:     v.CACertFile,
			Auth:           auth,
			Timeout:        v.Timeout,
			MaxRetries:     v.MaxRetries,
			AllowKeyExport: v.AllowKeyExport || previous,
			Logger:         logger,
		})
	case "pkcs11":
		p := rc.PKCS11
		return pkcs11.New(ctx, pkcs11.Config{
			Module:      p.Module,
			TokenLabel:  p.TokenLabel,
			KeyLabel:    p.KeyLabel,
			PINFile:     p.PINFile,
			PINEnv:      p.PINEnv,
			MaxSessions: p.MaxSessions,
		})
	case "awskms":
		a := rc.AWSKMS
		return awskms.New(ctx, awskms.Config{KeyID: a.KeyID, Region: a.Region, Profile: a.Profile, Endpoint: a.Endpoint, MaxAttempts: a.MaxAttempts, Timeout: a.Timeout})
	case "gcpkms":
		g := rc.GCPKMS
		// The client keeps the context for its lifetime (credential refresh).
		return gcpkms.New(context.Background(), gcpkms.Config{KeyName: g.KeyName, CredentialsFile: g.CredentialsFile, Endpoint: g.Endpoint})
	}
	return nil, fmt.Errorf("root type %q is not supported", rc.Type)
}

// CloseRoot releases what a root holds (an HSM session pool, a KMS
// connection), if anything.
func CloseRoot(r root.Root) {
	if c, ok := r.(io.Closer); ok {
		_ = c.Close()
	}
}

// OpenStorage opens the configured storage backend.
func OpenStorage(ctx context.Context, cfg *config.Config, logger *slog.Logger) (storage.Store, error) {
	return openStorage(ctx, cfg, logger, false)
}

// OpenStorageReadOnly opens the configured store to read it without
// writing to it: a bbolt file read-only (it must exist, and a server that
// holds it makes this fail with bbolt.ErrLocked), a PostgreSQL database
// without migrations.
func OpenStorageReadOnly(ctx context.Context, cfg *config.Config, logger *slog.Logger) (storage.Store, error) {
	return openStorage(ctx, cfg, logger, true)
}

func openStorage(ctx context.Context, cfg *config.Config, logger *slog.Logger, readOnly bool) (storage.Store, error) {
	switch cfg.Storage.Type {
	case "bbolt":
		return bbolt.Open(cfg.Storage.Bbolt.Path, bbolt.Options{ReadOnly: readOnly})
	case "postgres":
		url, err := cfg.Storage.Postgres.PostgresURL()
		if err != nil {
			return nil, err
		}
		return postgres.Open(ctx, postgres.Config{URL: url, MaxConns: cfg.Storage.Postgres.MaxConns, NoMigrate: readOnly, Logger: logger})
	case "memory":
		if readOnly {
			return nil, errors.New("storage memory holds nothing to read")
		}
		return memory.New(), nil
	}
	return nil, fmt.Errorf("storage type %q is not supported", cfg.Storage.Type)
}

// KeystoreConfig is the keystore configuration cfg describes, over store
// and rt. Unset settings stay zero and take the keystore's defaults.
func KeystoreConfig(cfg *config.Config, store storage.Store, rt root.Root, logger *slog.Logger) keystore.Config {
	return keystore.Config{
		Storage:              store,
		Root:                 rt,
		CacheSize:            cfg.Cache.Size,
		CacheTTL:             cfg.Cache.TTL,
		UnavailableGrace:     cfg.Cache.UnavailableGrace,
		UsageRotateThreshold: cfg.Scheduler.UsageRotateThreshold,
		PasswordLimits:       cfg.Passwords.Limits(),
		Logger:               logger,
	}
}

// Direct is the configured store and root, opened by a command that works
// on the store directly (custos root rewrap, custos audit verify), with a
// keystore over them.
type Direct struct {
	Store    storage.Store
	Root     root.Root
	Keystore *keystore.Service
}

// OpenDirect opens the configured root and storage and builds a keystore
// over them. close closes the store and the root. The root comes first: a
// root that fails leaves the store untouched (no migration, no new file).
func OpenDirect(ctx context.Context, cfg *config.Config, logger *slog.Logger) (d *Direct, close func(), err error) {
	rt, err := OpenRoot(ctx, cfg, logger)
	if err != nil {
		return nil, nil, err
	}
	store, err := OpenStorage(ctx, cfg, logger)
	if err != nil {
		CloseRoot(rt)
		return nil, nil, err
	}
	ks, err := keystore.New(KeystoreConfig(cfg, store, rt, logger))
	if err != nil {
		store.Close()
		CloseRoot(rt)
		return nil, nil, err
	}
	return &Direct{Store: store, Root: rt, Keystore: ks}, func() { store.Close(); CloseRoot(rt) }, nil
}

// OpenKeystore is OpenDirect for commands that need only the keystore.
func OpenKeystore(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*keystore.Service, func(), error) {
	d, closeFn, err := OpenDirect(ctx, cfg, logger)
	if err != nil {
		return nil, nil, err
	}
	return d.Keystore, closeFn, nil
}
