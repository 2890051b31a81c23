// Package vaulttest runs the vault root provider (keystore/root/vault)
// against a real Vault: Vault's own in-process test cluster, serving HTTPS
// on loopback. It is a separate module so that Vault's dependency tree
// (about 3,000 go.sum lines) stays out of Custos's go.mod; it holds tests
// only. Run it with `cd test/vault && go test ./...`.
package vaulttest
