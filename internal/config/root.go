package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/custos-kms/custos/keystore/root"
)

// Root selects the root key provider; Type names the one configured and
// only that section is read. docs/roots.md describes each provider.
type Root struct {
	// Type is "local", "vault", "pkcs11", "awskms" or "gcpkms".
	Type   string     `yaml:"type"`
	Local  LocalRoot  `yaml:"local"`
	Vault  VaultRoot  `yaml:"vault"`
	PKCS11 PKCS11Root `yaml:"pkcs11"`
	AWSKMS AWSKMSRoot `yaml:"awskms"`
	GCPKMS GCPKMSRoot `yaml:"gcpkms"`
	// Previous is the root a deployment moves from (another provider, or
	// another key of one without versions: local, pkcs11): it unwraps
	// what it wrapped until custos root rewrap has re-wrapped everything
	// under this root, then is removed. It wraps nothing.
	Previous *Root `yaml:"previous"`
}

// LocalRoot is a 32-byte key file readable by its owner only (dev and tests).
type LocalRoot struct {
	KeyFile string `yaml:"key_file"`
}

// VaultRoot is a Vault (or OpenBao) Transit key.
type VaultRoot struct {
	// Address is Vault's URL, e.g. https://vault.example.com:8200.
	Address string `yaml:"address"`
	// Namespace is a Vault Enterprise namespace; empty for none.
	Namespace string `yaml:"namespace"`
	// Mount is the Transit mount path. Default "transit".
	Mount string `yaml:"mount"`
	// KeyName is the Transit key, of type aes256-gcm96.
	KeyName string `yaml:"key_name"`
	// CACertFile verifies Vault's certificate; empty uses the system roots.
	CACertFile string `yaml:"ca_cert_file"`
	// Timeout bounds each request to Vault. Default 30s.
	Timeout time.Duration `yaml:"timeout"`
	// MaxRetries is how often the Vault client retries a failed request.
	// Default 0: the keystore has its own policy.
	MaxRetries int `yaml:"max_retries"`
	// AllowKeyExport accepts a Transit key created exportable or with
	// allow_plaintext_backup, whose material Vault hands to anyone its
	// policies let read transit/export or transit/backup. Default false:
	// such a key is refused at start (as root.previous it is accepted
	// with a warning, so a deployment can move off it).
	AllowKeyExport bool `yaml:"allow_key_export"`
	// Auth is exactly one authentication method.
	Auth VaultAuth `yaml:"auth"`
}

// VaultAuth is exactly one Vault authentication method. Secrets come from
// files or environment variables, never from this file.
type VaultAuth struct {
	// TokenFile holds a token (e.g. written by Vault Agent); re-read when
	// Vault refuses the token.
	TokenFile string `yaml:"token_file"`
	// TokenEnv names an environment variable holding a token.
	TokenEnv string         `yaml:"token_env"`
	AppRole  *VaultAppRole  `yaml:"approle"`
	Cert     *VaultCertAuth `yaml:"cert"`
}

// VaultAppRole logs in with AppRole.
type VaultAppRole struct {
	// Mount is the auth method's path. Default "approle".
	Mount  string `yaml:"mount"`
	RoleID string `yaml:"role_id"`
	// SecretIDFile holds the secret_id, read at each login; or SecretIDEnv.
	SecretIDFile string `yaml:"secret_id_file"`
	SecretIDEnv  string `yaml:"secret_id_env"`
}

// VaultCertAuth logs in with a TLS client certificate.
type VaultCertAuth struct {
	// Mount is the auth method's path. Default "cert".
	Mount string `yaml:"mount"`
	// Role is the certificate role's name; empty lets Vault match one.
	Role     string `yaml:"role"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// PKCS11Root is an AES-256 key in a PKCS#11 token (an HSM).
type PKCS11Root struct {
	// Module is the PKCS#11 library. A bare file name is left to the
	// dynamic loader's search path; a relative path with a directory is
	// resolved against the config file's directory.
	Module     string `yaml:"module"`
	TokenLabel string `yaml:"token_label"`
	KeyLabel   string `yaml:"key_label"`
	// PINFile holds the user PIN; or PINEnv names a variable holding it.
	PINFile string `yaml:"pin_file"`
	PINEnv  string `yaml:"pin_env"`
	// MaxSessions bounds open sessions. Default 4.
	MaxSessions int `yaml:"max_sessions"`
}

// AWSKMSRoot is a symmetric AWS KMS key. Credentials come from the SDK's
// default chain (environment, profile, instance or task role).
type AWSKMSRoot struct {
	// KeyID is the key ARN or an alias ARN.
	KeyID string `yaml:"key_id"`
	// Region; empty takes it from the default chain.
	Region string `yaml:"region"`
	// Profile selects a shared config profile.
	Profile string `yaml:"profile"`
	// Endpoint overrides the KMS endpoint URL (e.g. a VPC endpoint).
	Endpoint string `yaml:"endpoint"`
	// MaxAttempts bounds the SDK's attempts per call. Default: the SDK's (3).
	MaxAttempts int `yaml:"max_attempts"`
	// Timeout bounds each call, its attempts included. Default 30s.
	Timeout time.Duration `yaml:"timeout"`
}

// GCPKMSRoot is a Cloud KMS symmetric CryptoKey.
type GCPKMSRoot struct {
	// KeyName is projects/P/locations/L/keyRings/R/cryptoKeys/K.
	KeyName string `yaml:"key_name"`
	// CredentialsFile is a service account key file; empty uses
	// Application Default Credentials.
	CredentialsFile string `yaml:"credentials_file"`
	// Endpoint overrides the API endpoint (host:port).
	Endpoint string `yaml:"endpoint"`
}

// resolvePaths makes the selected provider's relative file paths relative
// to baseDir.
func (r *Root) resolvePaths(baseDir string) {
	for _, p := range r.paths() {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(baseDir, *p)
		}
	}
}

// paths are the root's path settings, the previous root's too.
func (r *Root) paths() []*string {
	paths := []*string{&r.Local.KeyFile, &r.Vault.CACertFile, &r.Vault.Auth.TokenFile, &r.PKCS11.PINFile, &r.GCPKMS.CredentialsFile}
	if a := r.Vault.Auth.AppRole; a != nil {
		paths = append(paths, &a.SecretIDFile)
	}
	if c := r.Vault.Auth.Cert; c != nil {
		paths = append(paths, &c.CertFile, &c.KeyFile)
	}
	if strings.Contains(r.PKCS11.Module, "/") {
		paths = append(paths, &r.PKCS11.Module)
	}
	if r.Previous != nil {
		paths = append(paths, r.Previous.paths()...)
	}
	return paths
}

// validate checks the selected provider's required fields, and those of
// the previous root if one is set.
func (r *Root) validate() []error {
	errs := r.validateAt("root")
	if p := r.Previous; p != nil {
		if p.Previous != nil {
			errs = append(errs, errors.New("root.previous.previous: one previous root only (finish moving from it first: custos root rewrap)"))
		}
		errs = append(errs, p.validateAt("root.previous")...)
	}
	return errs
}

// validateAt checks the selected provider's required fields, naming them
// under at ("root", "root.previous").
func (r *Root) validateAt(at string) []error {
	var errs []error
	need := func(field, v string) {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s.%s.%s is required", at, r.Type, field))
		}
	}
	exactlyOne := func(what string, set ...bool) {
		n := 0
		for _, s := range set {
			if s {
				n++
			}
		}
		if n != 1 {
			errs = append(errs, fmt.Errorf("%s.%s needs exactly one of %s", at, r.Type, what))
		}
	}
	notNegative := func(field string, v int64) {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s.%s.%s must not be negative", at, r.Type, field))
		}
	}
	switch r.Type {
	case "local":
		need("key_file", r.Local.KeyFile)
	case "vault":
		v := r.Vault
		need("address", v.Address)
		if sock, ok := strings.CutPrefix(v.Address, "unix://"); ok {
			// A Vault Agent's (or Vault Proxy's) listener on a unix socket.
			if !filepath.IsAbs(sock) {
				errs = append(errs, fmt.Errorf("%s.vault.address: a unix socket needs an absolute path, e.g. unix:///run/vault-agent.sock", at))
			}
		} else if err := endpointErr(at+".vault.address", v.Address, "https://vault.example.com:8200", "a local Vault Agent"); err != nil {
			errs = append(errs, err)
		}
		need("key_name", v.KeyName)
		notNegative("timeout", int64(v.Timeout))
		notNegative("max_retries", int64(v.MaxRetries))
		a := v.Auth
		exactlyOne("auth.token_file, auth.token_env, auth.approle, auth.cert", a.TokenFile != "", a.TokenEnv != "", a.AppRole != nil, a.Cert != nil)
		if ar := a.AppRole; ar != nil {
			need("auth.approle.role_id", ar.RoleID)
			exactlyOne("auth.approle.secret_id_file, auth.approle.secret_id_env", ar.SecretIDFile != "", ar.SecretIDEnv != "")
		}
		if c := a.Cert; c != nil {
			need("auth.cert.cert_file", c.CertFile)
			need("auth.cert.key_file", c.KeyFile)
		}
	case "pkcs11":
		p := r.PKCS11
		need("module", p.Module)
		need("token_label", p.TokenLabel)
		need("key_label", p.KeyLabel)
		exactlyOne("pin_file, pin_env", p.PINFile != "", p.PINEnv != "")
		notNegative("max_sessions", int64(p.MaxSessions))
	case "awskms":
		need("key_id", r.AWSKMS.KeyID)
		notNegative("max_attempts", int64(r.AWSKMS.MaxAttempts))
		notNegative("timeout", int64(r.AWSKMS.Timeout))
		if err := endpointErr(at+".awskms.endpoint", r.AWSKMS.Endpoint, "https://vpce-….kms.eu-west-1.vpce.amazonaws.com", "a local emulator"); err != nil {
			errs = append(errs, err)
		}
	case "gcpkms":
		need("key_name", r.GCPKMS.KeyName)
		if k := r.GCPKMS.KeyName; k != "" && (!strings.HasPrefix(k, "projects/") || strings.Contains(k, "/cryptoKeyVersions/")) {
			errs = append(errs, errors.New(at+".gcpkms.key_name must be projects/P/locations/L/keyRings/R/cryptoKeys/K (a CryptoKey, not a version)"))
		}
	default:
		errs = append(errs, fmt.Errorf("%s.type %q is not one of: local, vault, pkcs11, awskms, gcpkms", at, r.Type))
	}
	return errs
}

// EnvToken returns the Vault token held in the variable TokenEnv names, or
// "" when TokenEnv is not set. It fails when the variable is empty.
func (a VaultAuth) EnvToken() (string, error) {
	return fromEnv("root.vault.auth.token_env", a.TokenEnv)
}

// EnvSecretID returns the secret_id held in the variable SecretIDEnv names,
// or "" when SecretIDEnv is not set. It fails when the variable is empty.
func (a VaultAppRole) EnvSecretID() (string, error) {
	return fromEnv("root.vault.auth.approle.secret_id_env", a.SecretIDEnv)
}

func fromEnv(field, name string) (string, error) {
	if name == "" {
		return "", nil
	}
	if v := os.Getenv(name); v != "" {
		return v, nil
	}
	return "", fmt.Errorf("%s: $%s is unset or empty", field, name)
}

// endpointErr checks a root's endpoint URL (empty: not set): http(s), with
// a host, and plain http only to a loopback address (local names what
// listens there), since tenant KEKs and credentials would cross the
// network in clear.
func endpointErr(field, endpoint, example, local string) error {
	if endpoint == "" {
		return nil
	}
	switch err := root.CheckEndpoint(endpoint); {
	case errors.Is(err, root.ErrPlainHTTP):
		return fmt.Errorf("%s: plain http is allowed only to a loopback address (%s); use https", field, local)
	case err != nil:
		return fmt.Errorf("%s must be an http(s) URL, e.g. %s", field, example)
	}
	return nil
}
