package vaulttest

import (
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/builtin/credential/approle"
	"github.com/hashicorp/vault/builtin/credential/cert"
	"github.com/hashicorp/vault/builtin/logical/transit"
	vaulthttp "github.com/hashicorp/vault/http"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/vault"
)

// The Transit key and the policy a Custos token needs: update on encrypt
// and decrypt, read on the key (New checks its type). docs/roots.md shows
// the same policy.
const (
	keyName = "custos-root"
	policy  = `
path "transit/encrypt/custos-root" { capabilities = ["update"] }
path "transit/decrypt/custos-root" { capabilities = ["update"] }
path "transit/keys/custos-root"    { capabilities = ["read"] }
`
)

// testVault is a one-node Vault test cluster with Transit mounted, an
// aes256-gcm96 key named keyName, and the policy "custos".
type testVault struct {
	cluster *vault.TestCluster
	core    *vault.TestClusterCore
	admin   *api.Client // root token
	addr    string
	caFile  string
}

func startVault(t *testing.T) *testVault {
	t.Helper()
	cluster := vault.NewTestCluster(t, &vault.CoreConfig{
		LogicalBackends: map[string]logical.Factory{"transit": transit.Factory},
		CredentialBackends: map[string]logical.Factory{
			"approle": approle.Factory,
			"cert":    cert.Factory,
		},
	}, &vault.TestClusterOptions{
		HandlerFunc: vaulthttp.Handler,
		NumCores:    1,
		Logger:      hclog.NewNullLogger(),
	})
	t.Cleanup(cluster.Cleanup)
	core := cluster.Cores[0]
	vault.TestWaitActive(t, core.Core)
	admin := core.Client
	if err := admin.Sys().Mount("transit", &api.MountInput{Type: "transit"}); err != nil {
		t.Fatalf("mount transit: %v", err)
	}
	if _, err := admin.Logical().Write("transit/keys/"+keyName, map[string]any{"type": "aes256-gcm96"}); err != nil {
		t.Fatalf("create key: %v", err)
	}
	if err := admin.Sys().PutPolicy("custos", policy); err != nil {
		t.Fatalf("write policy: %v", err)
	}
	return &testVault{
		cluster: cluster,
		core:    core,
		admin:   admin,
		addr:    admin.Address(),
		caFile:  cluster.CACertPEMFile,
	}
}

// token creates a token with the given policies.
func (v *testVault) token(t *testing.T, policies ...string) string {
	t.Helper()
	s, err := v.admin.Auth().Token().Create(&api.TokenCreateRequest{Policies: policies, NoDefaultPolicy: true})
	if err != nil {
		t.Fatalf("create token: %v", err)
	}
	return s.Auth.ClientToken
}

// seal seals the node; unseal unseals it and waits until it is active.
func (v *testVault) seal(t *testing.T) {
	t.Helper()
	v.core.Seal(t)
}

func (v *testVault) unseal(t *testing.T) {
	t.Helper()
	v.cluster.UnsealCore(t, v.core)
	vault.TestWaitActive(t, v.core.Core)
}

// liveTokens counts the live tokens created by logins at path (say
// "auth/approle/login").
func (v *testVault) liveTokens(t *testing.T, path string) int {
	t.Helper()
	s, err := v.admin.Logical().List("auth/token/accessors")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	keys, _ := s.Data["keys"].([]any)
	for _, k := range keys {
		info, err := v.admin.Auth().Token().LookupAccessor(k.(string))
		if err != nil {
			continue // revoked meanwhile
		}
		if p, _ := info.Data["path"].(string); p == path {
			n++
		}
	}
	return n
}
