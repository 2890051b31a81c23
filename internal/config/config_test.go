package config_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-kms/custos/internal/config"
	"github.com/custos-kms/custos/keystore"
)

const valid = `
listen: 127.0.0.1:0
tls: {cert_file: s.pem, key_file: s-key.pem, client_ca_file: /etc/ca.pem}
policy_file: policy.yaml
root: {type: local, local: {key_file: root.key}}
storage: {type: bbolt, bbolt: {path: data/custos.db}}
cache: {size: 10, ttl: 1m}
`

func TestParseResolvesRelativePathsAndDefaults(t *testing.T) {
	c, err := config.Parse([]byte(valid), "/srv/custos")
	if err != nil {
		t.Fatal(err)
	}
	if c.TLS.CertFile != filepath.Join("/srv/custos", "s.pem") || c.TLS.ClientCAFile != "/etc/ca.pem" || c.Storage.Bbolt.Path != "/srv/custos/data/custos.db" {
		t.Fatalf("paths not resolved: %+v", c)
	}
	if c.Root.Previous != nil {
		t.Fatalf("a previous root that was not configured: %+v", c.Root.Previous)
	}
	p, err := config.Parse([]byte(strings.Replace(valid, "local: {key_file: root.key}}", "local: {key_file: root.key}, previous: {type: local, local: {key_file: old.key}}}", 1)), "/srv/custos")
	if err != nil {
		t.Fatal(err)
	}
	if p.Root.Previous == nil || p.Root.Previous.Local.KeyFile != "/srv/custos/old.key" {
		t.Fatalf("the previous root's key file not resolved: %+v", p.Root.Previous)
	}
	if c.Cache.TTL != time.Minute || c.Log.Level != "info" || c.ShutdownTimeout != 10*time.Second || c.GCPercent != config.DefaultGCPercent {
		t.Fatalf("defaults/durations wrong: %+v", c)
	}
}

func TestParseRejects(t *testing.T) {
	cases := map[string]struct{ yaml, want string }{
		"an unknown field":                 {valid + "bogus: 1\n", "bogus"},
		"an unknown root type":             {strings.Replace(valid, "type: local", "type: nope", 1), "root.type"},
		"an unknown storage":               {strings.Replace(valid, "type: bbolt", "type: nope", 1), "storage.type"},
		"a missing policy file":            {strings.Replace(valid, "policy_file: policy.yaml", "", 1), "policy_file"},
		"a bad log level":                  {valid + "log: {level: loud}\n", "log.level"},
		"a negative audit sync interval":   {valid + "audit: {sync_interval: -1s}\n", "audit.sync_interval"},
		"an audit sync interval over 1m":   {valid + "audit: {sync_interval: 2m}\n", "audit.sync_interval"},
		"an audit sync interval under 1ms": {valid + "audit: {sync_interval: 10us}\n", "audit.sync_interval"},
		"a second YAML document":           {valid + "---\nlog: {level: debug}\n", "more than one YAML document"},
		"an empty file":                    {"", "no settings"},
		"a negative sweep interval":        {valid + "scheduler: {sweep_interval: -1s}\n", "scheduler.sweep_interval must not be negative"},
		"a negative cache size":            {strings.Replace(valid, "cache: {size: 10, ttl: 1m}", "cache: {size: -1, ttl: 1m}", 1), "cache.size must not be negative"},
		"a negative batch limit":           {valid + "limits: {max_batch_items: -1}\n", "limits.max_batch_items must not be negative"},
		// Caught before anything is opened, not by the server after the
		// root logged in and the store was created.
		"a plaintext limit above the API's":      {valid + "limits: {max_plaintext_bytes: 2097152}\n", "limits.max_plaintext_bytes"},
		"a batch limit above the API's":          {valid + "limits: {max_batch_items: 10001}\n", "limits.max_batch_items"},
		"a message limit below a field's":        {valid + "limits: {max_message_bytes: 1024}\n", "limits.max_message_bytes"},
		"a message limit below a larger field's": {valid + "limits: {max_plaintext_bytes: 1048576, max_message_bytes: 1048576}\n", "limits.max_message_bytes"},
		"a negative pool size":                   {strings.Replace(valid, "storage: {type: bbolt, bbolt: {path: data/custos.db}}", "storage: {type: postgres, postgres: {url: postgres://x/y, max_conns: -5}}", 1), "storage.postgres.max_conns"},
		"a sample ratio that is not a number":    {valid + "tracing: {sample_ratio: .nan}\n", "tracing.sample_ratio"},
		// A pool a process cannot hold (each worker an OS thread).
		"too many hash workers":    {valid + "passwords: {hash_workers: 20000}\n", "passwords.hash_workers"},
		"a hash queue of millions": {valid + "passwords: {hash_queue: 100000000}\n", "passwords.hash_queue"},
		// Numbers yaml.v3 would read as other integers: refused, not
		// truncated or read as octal.
		"a fractional integer setting": {valid + "passwords: {hash_workers: 1.5}\n", "line 8: passwords.hash_workers: 1.5 is not a whole number"},
		"an exponent in an integer":    {valid + "limits: {max_batch_items: 1e3}\n", "limits.max_batch_items: 1e3 is not a whole number"},
		"a leading zero in an integer": {strings.Replace(valid, "size: 10,", "size: 010,", 1), "cache.size: 010 has a leading zero"},
		"a fractional uint32 setting":  {valid + "passwords: {max_argon2_iterations: 2.5}\n", "passwords.max_argon2_iterations: 2.5"},
		// Settings that would have no effect: refused, not ignored.
		"a sample ratio without an endpoint": {valid + "tracing: {sample_ratio: 0.5}\n", "sample_ratio set without tracing.endpoint"},
		"a reload interval with SPIFFE":      {strings.Replace(valid, "tls: {cert_file: s.pem, key_file: s-key.pem, client_ca_file: /etc/ca.pem}", "tls: {reload_interval: 1m, spiffe: {workload_api: unix:///run/spire.sock}}", 1), "tls.reload_interval applies to"},
		"a previous root without its key":    {strings.Replace(valid, "local: {key_file: root.key}}", "local: {key_file: root.key}, previous: {type: local}}", 1), "root.previous.local.key_file"},
		"a previous root of a previous root": {strings.Replace(valid, "local: {key_file: root.key}}", "local: {key_file: root.key}, previous: {type: local, local: {key_file: a.key}, previous: {type: local, local: {key_file: b.key}}}}", 1), "root.previous.previous"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := config.Parse([]byte(c.yaml), "/x")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, c.want)
			}
		})
	}
}

// Every keystore setting can be set from the file; unset ones stay zero so
// the keystore's own defaults (the one place they are defined) apply.
func TestEveryKeystoreKnobIsReachable(t *testing.T) {
	c, err := config.Parse([]byte(valid+`
scheduler: {interval: 1m, lease_ttl: 5m, flush_interval: 3s, usage_rotate_threshold: 1000, disabled: true}
passwords: {hash_workers: 3, hash_queue: -1, max_bcrypt_cost: 14, max_argon2_memory_kib: 65536, max_argon2_iterations: 4, max_argon2_parallelism: 2}
`), "/x")
	if err != nil {
		t.Fatal(err)
	}
	s, p := c.Scheduler, c.Passwords
	if s.Interval != time.Minute || s.LeaseTTL != 5*time.Minute || s.FlushInterval != 3*time.Second || s.UsageRotateThreshold != 1000 || !s.Disabled {
		t.Errorf("scheduler = %+v", s)
	}
	if p.HashWorkers != 3 || p.HashQueue != -1 || p.Limits() != (keystore.PasswordLimits{BcryptCost: 14, Argon2MemoryKiB: 65536, Argon2Iterations: 4, Argon2Parallelism: 2}) {
		t.Errorf("passwords = %+v", p)
	}
	c, err = config.Parse([]byte(strings.Replace(valid, "cache: {size: 10, ttl: 1m}", "cache: {unavailable_grace: -1s}", 1)), "/x")
	if err != nil {
		t.Fatal(err)
	}
	if c.Cache.UnavailableGrace != -time.Second || c.Scheduler.Interval != 0 || c.Cache.Size != 0 {
		t.Errorf("unset settings must stay zero for the keystore's defaults: %+v %+v", c.Cache, c.Scheduler)
	}
	if _, err := config.Parse([]byte(valid+"scheduler: {interval: 1m, lease_ttl: 1m}\n"), "/x"); err == nil || !strings.Contains(err.Error(), "lease_ttl") {
		t.Errorf("a lease no longer than the interval: %v", err)
	}
}

// A trailing document separator adds no document to refuse.
func TestATrailingDocumentSeparatorIsAccepted(t *testing.T) {
	for _, tail := range []string{"---\n", "---\n# nothing more\n"} {
		if _, err := config.Parse([]byte(valid+tail), "/x"); err != nil {
			t.Errorf("%q: %v", tail, err)
		}
	}
}

func TestExampleConfigParses(t *testing.T) {
	if _, err := config.Load(filepath.Join("..", "..", "examples", "custos.yaml")); err != nil {
		t.Fatal(err)
	}
}

func TestSchedulerSettingsAreCheckedAgainstTheEffectiveDefaults(t *testing.T) {
	for name, tt := range map[string]struct{ yaml, want string }{
		"a lease shorter than the default interval": {"scheduler: {lease_ttl: 20s}\n", "lease_ttl"},
		"a usage threshold past 2^30":               {"scheduler: {usage_rotate_threshold: 2000000000}\n", "usage_rotate_threshold"},
		"a negative GC target":                      {"gc_percent: -5\n", "gc_percent"},
		"a bcrypt limit past bcrypt's maximum":      {"passwords: {max_bcrypt_cost: 40}\n", "bcrypt cost"},
		"a bcrypt limit below the default policy":   {"passwords: {max_bcrypt_cost: 11}\n", "bcrypt cost"},
		"an argon2id memory limit past 4 GiB":       {"passwords: {max_argon2_memory_kib: 5000000}\n", "argon2 memory"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := config.Parse([]byte(valid+tt.yaml), "/x")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error naming %s", err, tt.want)
			}
		})
	}
}

// FuzzParse: arbitrary configuration files never panic, in parsing or in
// validation.
func FuzzParse(f *testing.F) {
	f.Add([]byte("listen: 127.0.0.1:8443\nstorage:\n  type: bbolt\n  bbolt:\n    path: custos.db\n"))
	f.Add([]byte("limits: {max_message_bytes: 1048576}\n---\n"))
	f.Add([]byte("root: {type: vault, vault: {address: 'https://v:8200'}}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := config.Parse(b, "/nonexistent")
		if err != nil {
			return
		}
		_ = c.Validate() // Parse reads; Load also validates
	})
}

// The default PostgreSQL audit spool is in the server's state directory,
// never in the shared temporary directory.
func TestThePostgresSpoolIsNeverDefaultedIntoTheTempDir(t *testing.T) {
	pg := strings.Replace(valid, "storage: {type: bbolt, bbolt: {path: data/custos.db}}", "storage: {type: postgres, postgres: {url: postgres://x/y}}", 1)
	t.Setenv("STATE_DIRECTORY", "")
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "")
	t.Setenv("TMPDIR", t.TempDir())
	// No default: the server refuses to start (custos.New), and commands
	// that use no spool (backup, restore) go on.
	if c, err := config.Parse([]byte(pg), "/srv/custos"); err != nil {
		t.Fatal(err)
	} else if c.Audit.Spool != "" {
		t.Fatalf("no state directory: spool %q; want none", c.Audit.Spool)
	}
	if _, err := config.Parse([]byte(pg+"audit: {spool: /var/lib/custos/audit.spool}\n"), "/srv/custos"); err != nil {
		t.Fatalf("a spool given: %v", err)
	}
	t.Setenv("STATE_DIRECTORY", "/var/lib/custos")
	if c, err := config.Parse([]byte(pg), "/srv/custos"); err != nil || !strings.HasPrefix(c.Audit.Spool, "/var/lib/custos/") {
		t.Fatalf("with $STATE_DIRECTORY: spool %q, %v", c.Audit.Spool, err)
	}
}
