// Package config reads the YAML configuration of `custos serve`. Relative
// paths in the file are resolved against the file's own directory.
// examples/custos.yaml is a commented example.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole configuration.
type Config struct {
	// Listen is the gRPC address, host:port. Default 127.0.0.1:8443.
	Listen string `yaml:"listen"`
	// TLS holds the server certificate and the CA that verifies clients.
	TLS TLS `yaml:"tls"`
	// PolicyFile maps identities to tenants and permissions; reloaded on SIGHUP.
	PolicyFile string `yaml:"policy_file"`
	// Root selects the root key provider.
	Root Root `yaml:"root"`
	// Storage selects the storage backend.
	Storage Storage `yaml:"storage"`
	// Cache bounds unwrapped key material held in memory.
	Cache Cache `yaml:"cache"`
	// Limits bound requests.
	Limits Limits `yaml:"limits"`
	// Log configures structured logging.
	Log Log `yaml:"log"`
	// ShutdownTimeout bounds a graceful stop before open calls are cut. Default 10s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
}

// TLS holds PEM file paths.
type TLS struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
}

// Root selects the root key provider; Type names the one configured.
type Root struct {
	// Type is "local".
	Type  string    `yaml:"type"`
	Local LocalRoot `yaml:"local"`
}

// LocalRoot is a 32-byte key file readable by its owner only (dev and tests).
type LocalRoot struct {
	KeyFile string `yaml:"key_file"`
}

// Storage selects the storage backend; Type names the one configured.
type Storage struct {
	// Type is "bbolt" or "memory" (tests only: nothing survives a restart).
	Type  string      `yaml:"type"`
	Bbolt BboltConfig `yaml:"bbolt"`
}

// BboltConfig is the embedded single-file store.
type BboltConfig struct {
	Path string `yaml:"path"`
}

// Cache bounds unwrapped material in memory.
type Cache struct {
	Size int           `yaml:"size"`
	TTL  time.Duration `yaml:"ttl"`
}

// Limits bound requests; zero takes the server's default.
type Limits struct {
	MaxPlaintextBytes int `yaml:"max_plaintext_bytes"`
	MaxBatchItems     int `yaml:"max_batch_items"`
	MaxMessageBytes   int `yaml:"max_message_bytes"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
}

// Load reads, defaults and validates the file at path.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(b, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes YAML, resolving relative paths against baseDir.
func Parse(b []byte, baseDir string) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, err
	}
	c.setDefaults()
	for _, p := range []*string{&c.TLS.CertFile, &c.TLS.KeyFile, &c.TLS.ClientCAFile, &c.PolicyFile, &c.Root.Local.KeyFile, &c.Storage.Bbolt.Path} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(baseDir, *p)
		}
	}
	return &c, c.validate()
}

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8443"
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
}

func (c *Config) validate() error {
	var errs []error
	need := func(field, v string) {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is required", field))
		}
	}
	need("tls.cert_file", c.TLS.CertFile)
	need("tls.key_file", c.TLS.KeyFile)
	need("tls.client_ca_file", c.TLS.ClientCAFile)
	need("policy_file", c.PolicyFile)
	switch c.Root.Type {
	case "local":
		need("root.local.key_file", c.Root.Local.KeyFile)
	default:
		errs = append(errs, fmt.Errorf("root.type %q is not one of: local", c.Root.Type))
	}
	switch c.Storage.Type {
	case "bbolt":
		need("storage.bbolt.path", c.Storage.Bbolt.Path)
	case "memory":
	default:
		errs = append(errs, fmt.Errorf("storage.type %q is not one of: bbolt, memory", c.Storage.Type))
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level %q is not one of: debug, info, warn, error", c.Log.Level))
	}
	if c.Cache.Size < 0 || c.Cache.TTL < 0 || c.ShutdownTimeout < 0 {
		errs = append(errs, errors.New("cache.size, cache.ttl and shutdown_timeout must not be negative"))
	}
	if c.Limits.MaxPlaintextBytes < 0 || c.Limits.MaxBatchItems < 0 || c.Limits.MaxMessageBytes < 0 {
		errs = append(errs, errors.New("limits must not be negative"))
	}
	return errors.Join(errs...)
}
