package config_test

import (
	"strings"
	"testing"

	"github.com/custos-kms/custos/internal/config"
)

// withRoot is a valid configuration whose root section is root.
func withRoot(root string) string {
	return `
tls: {cert_file: s.pem, key_file: s-key.pem, client_ca_file: ca.pem}
policy_file: policy.yaml
storage: {type: memory}
root:
` + root
}

func TestParseRootProviders(t *testing.T) {
	t.Run("vault with AppRole resolves its files", func(t *testing.T) {
		c, err := config.Parse([]byte(withRoot(`
  type: vault
  vault:
    address: https://vault.example.com:8200
    namespace: team-a
    key_name: custos-root
    ca_cert_file: vault-ca.pem
    timeout: 5s
    auth:
      approle: {role_id: 3c5d-role, secret_id_file: secrets/secret-id}
`)), "/srv/custos")
		if err != nil {
			t.Fatal(err)
		}
		v := c.Root.Vault
		if v.CACertFile != "/srv/custos/vault-ca.pem" || v.Auth.AppRole.SecretIDFile != "/srv/custos/secrets/secret-id" || v.Namespace != "team-a" || v.Timeout.Seconds() != 5 {
			t.Fatalf("vault section = %+v, approle %+v", v, v.Auth.AppRole)
		}
	})
	t.Run("vault with cert auth resolves the certificate files", func(t *testing.T) {
		c, err := config.Parse([]byte(withRoot(`
  type: vault
  vault:
    address: https://vault:8200
    key_name: k
    auth: {cert: {role: custos, cert_file: c.pem, key_file: /abs/k.pem}}
`)), "/etc/custos")
		if err != nil {
			t.Fatal(err)
		}
		if a := c.Root.Vault.Auth.Cert; a.CertFile != "/etc/custos/c.pem" || a.KeyFile != "/abs/k.pem" {
			t.Fatalf("cert auth = %+v", a)
		}
	})
	t.Run("pkcs11 resolves the PIN file and a module path, not a bare module name", func(t *testing.T) {
		c, err := config.Parse([]byte(withRoot(`
  type: pkcs11
  pkcs11: {module: lib/libhsm.so, token_label: custos, key_label: root, pin_file: hsm-pin}
`)), "/srv")
		if err != nil {
			t.Fatal(err)
		}
		if p := c.Root.PKCS11; p.Module != "/srv/lib/libhsm.so" || p.PINFile != "/srv/hsm-pin" {
			t.Fatalf("pkcs11 = %+v", p)
		}
		c, err = config.Parse([]byte(withRoot(`
  type: pkcs11
  pkcs11: {module: libsofthsm2.so, token_label: custos, key_label: root, pin_env: HSM_PIN}
`)), "/srv")
		if err != nil {
			t.Fatal(err)
		}
		if c.Root.PKCS11.Module != "libsofthsm2.so" {
			t.Fatalf("bare module name rewritten to %q", c.Root.PKCS11.Module)
		}
	})
	t.Run("awskms", func(t *testing.T) {
		if _, err := config.Parse([]byte(withRoot(`
  type: awskms
  awskms: {key_id: "arn:aws:kms:eu-west-1:111122223333:key/abcd", region: eu-west-1}
`)), "/x"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("gcpkms resolves the credentials file", func(t *testing.T) {
		c, err := config.Parse([]byte(withRoot(`
  type: gcpkms
  gcpkms: {key_name: projects/p/locations/l/keyRings/r/cryptoKeys/k, credentials_file: sa.json}
`)), "/x")
		if err != nil {
			t.Fatal(err)
		}
		if c.Root.GCPKMS.CredentialsFile != "/x/sa.json" {
			t.Fatalf("credentials file = %q", c.Root.GCPKMS.CredentialsFile)
		}
	})
}

func TestParseRejectsIncompleteRoots(t *testing.T) {
	cases := map[string]struct{ root, want string }{
		"vault without an address": {`
  type: vault
  vault: {key_name: k, auth: {token_file: t}}`, "root.vault.address"},
		"vault with a bare host": {`
  type: vault
  vault: {address: "vault:8200", key_name: k, auth: {token_file: t}}`, "http(s) URL"},
		"vault over plain http to another host": {`
  type: vault
  vault: {address: "http://vault.internal:8200", key_name: k, auth: {token_file: t}}`, "plain http"},
		"vault without a key": {`
  type: vault
  vault: {address: "https://v", auth: {token_file: t}}`, "root.vault.key_name"},
		"vault without auth": {`
  type: vault
  vault: {address: "https://v", key_name: k}`, "exactly one of auth.token_file"},
		"vault with two auth methods": {`
  type: vault
  vault: {address: "https://v", key_name: k, auth: {token_env: VAULT_TOKEN, cert: {cert_file: c, key_file: k}}}`, "exactly one of auth.token_file"},
		"AppRole without role_id": {`
  type: vault
  vault: {address: "https://v", key_name: k, auth: {approle: {secret_id_env: S}}}`, "auth.approle.role_id"},
		"AppRole without a secret_id source": {`
  type: vault
  vault: {address: "https://v", key_name: k, auth: {approle: {role_id: r}}}`, "secret_id_file"},
		"a literal Vault token": {`
  type: vault
  vault: {address: "https://v", key_name: k, auth: {token: hvs.secret}}`, "token"},
		"cert auth without a key file": {`
  type: vault
  vault: {address: "https://v", key_name: k, auth: {cert: {cert_file: c}}}`, "auth.cert.key_file"},
		"pkcs11 without a PIN source": {`
  type: pkcs11
  pkcs11: {module: m.so, token_label: t, key_label: k}`, "pin_file, pin_env"},
		"a literal PIN": {`
  type: pkcs11
  pkcs11: {module: m.so, token_label: t, key_label: k, pin: "1234"}`, "pin"},
		"pkcs11 without a token label": {`
  type: pkcs11
  pkcs11: {module: m.so, key_label: k, pin_env: P}`, "root.pkcs11.token_label"},
		"awskms without a key": {`
  type: awskms
  awskms: {region: eu-west-1}`, "root.awskms.key_id"},
		"awskms with a negative timeout": {`
  type: awskms
  awskms: {key_id: k, timeout: -1s}`, "root.awskms.timeout"},
		"awskms with a relative endpoint": {`
  type: awskms
  awskms: {key_id: k, endpoint: kms.internal}`, "root.awskms.endpoint"},
		"gcpkms naming a key version": {`
  type: gcpkms
  gcpkms: {key_name: projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1}`, "not a version"},
		"an unknown provider": {`
  type: hsm`, "root.type"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := config.Parse([]byte(withRoot(c.root)), "/x")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, c.want)
			}
		})
	}
}

func TestPlainHTTPVaultIsAllowedOnLoopbackOnly(t *testing.T) {
	for addr, ok := range map[string]bool{
		"http://127.0.0.1:8200": true, "http://localhost:8200": true, "http://[::1]:8200": true,
		"http://10.0.0.5:8200": false, "https://vault.internal:8200": true,
		// A Vault Agent's unix socket, by an absolute path only.
		"unix:///run/vault-agent.sock": true, "unix://run/vault-agent.sock": false,
	} {
		doc := strings.Replace(valid, "root: {type: local, local: {key_file: root.key}}",
			`root: {type: vault, vault: {address: "`+addr+`", key_name: k, auth: {token_file: t}}}`, 1)
		_, err := config.Parse([]byte(doc), "/x")
		if (err == nil) != ok {
			t.Errorf("%s: err = %v, want ok=%v", addr, err, ok)
		}
	}
}

func TestPlainHTTPAWSKMSEndpointIsAllowedOnLoopbackOnly(t *testing.T) {
	for endpoint, ok := range map[string]bool{
		"http://127.0.0.1:4566": true, "http://localhost:4566": true,
		"http://kms.internal:4566": false, "https://vpce-1.kms.eu-west-1.vpce.amazonaws.com": true,
	} {
		doc := strings.Replace(valid, "root: {type: local, local: {key_file: root.key}}",
			`root: {type: awskms, awskms: {key_id: k, region: eu-west-1, endpoint: "`+endpoint+`"}}`, 1)
		_, err := config.Parse([]byte(doc), "/x")
		if (err == nil) != ok {
			t.Errorf("%s: err = %v, want ok=%v", endpoint, err, ok)
		}
	}
}
