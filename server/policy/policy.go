// Package policy decides who may do what to which tenant. It denies by
// default: a call is allowed only if some rule grants the permission to the
// caller's identity for the tenant.
//
// # File format
//
// A policy is one YAML document with a list of rules:
//
//	rules:
//	  # The dev client may do anything to any tenant.
//	  - identities: ["spiffe://custos.dev/dev-client"]
//	    tenants: ["*"]
//	    permissions: ["*"]
//	  # Every billing workload may encrypt and decrypt for acme and team-*.
//	  - identities: ["spiffe://example.org/billing/*"]
//	    tenants: ["acme", "team-*"]
//	    permissions: [encrypt, decrypt]
//	  # A certificate without a SPIFFE ID is known by its common name.
//	  - identities: ["ops-admin"]
//	    tenants: ["*"]
//	    permissions: [tenants.admin, keys.read, keys.write, keys.rotate, audit.read]
//
// Each rule needs non-empty identities, tenants and permissions lists. A rule
// grants each of its permissions to each matching identity for each matching
// tenant; rules add up, and nothing is ever denied explicitly.
//
// Identities and tenants are globs in which '*' matches any run of
// characters, '/' included, and every other character matches only itself.
// There are no other metacharacters and no escapes. Matching takes time
// linear in the lengths of the glob and the name. Identities are SPIFFE IDs
// or certificate common names, compared exactly (case-sensitively); tenant
// globs may use only the characters of tenant ids (a-z, 0-9, '-') and '*'.
//
// Permissions are encrypt, decrypt, rewrap, datakey, mac, hash, keys.read,
// keys.write, keys.rotate, tenants.admin, audit.read, or "*" for all of them.
//
// Loading fails, naming the rule and the problem, on unknown fields, unknown
// permission names, empty lists, or a file without rules; a deny-everything
// policy is therefore never loaded by accident, for example from a file
// truncated while being edited.
//
// # Reloading
//
// A Holder keeps the current Policy and swaps it atomically on Reload, or on
// SIGHUP with WatchSIGHUP. Calls in flight keep the Policy they started
// with; an invalid file leaves the previous policy in force.
package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"gopkg.in/yaml.v3"
)

// Permission names an operation a rule can grant.
type Permission string

// The permissions a policy can grant.
const (
	Encrypt      Permission = "encrypt"       // Encrypt, EncryptBatch
	Decrypt      Permission = "decrypt"       // Decrypt, DecryptBatch
	Rewrap       Permission = "rewrap"        // Rewrap and its batch form
	DataKey      Permission = "datakey"       // GenerateDataKey
	MAC          Permission = "mac"           // ComputeMac, VerifyMac, BlindIndex
	Hash         Permission = "hash"          // HashPassword, VerifyPassword
	KeysRead     Permission = "keys.read"     // GetKey, ListKeys
	KeysWrite    Permission = "keys.write"    // CreateKey, UpdateKey, key version state changes
	KeysRotate   Permission = "keys.rotate"   // RotateKey
	TenantsAdmin Permission = "tenants.admin" // Create/Get/List/Delete/UndeleteTenant
	AuditRead    Permission = "audit.read"    // ListAuditEvents

	// All, written "*" in a policy file, grants every permission above. It
	// is not itself a permission to check: Allowed(…, All) is always false.
	All Permission = "*"
)

// permissions lists the grantable permissions; a permission's bit in a
// permSet is 1 << its index here.
var permissions = [...]Permission{
	Encrypt, Decrypt, Rewrap, DataKey, MAC, Hash,
	KeysRead, KeysWrite, KeysRotate, TenantsAdmin, AuditRead,
}

// Permissions returns every grantable permission, All excluded.
func Permissions() []Permission {
	return append([]Permission(nil), permissions[:]...)
}

type permSet uint16

const allPerms permSet = 1<<len(permissions) - 1

func permBit(p Permission) permSet {
	for i, q := range permissions {
		if p == q {
			return 1 << i
		}
	}
	return 0
}

// Valid reports whether p is a grantable permission (All excluded).
func (p Permission) Valid() bool { return permBit(p) != 0 }

// Policy is an immutable, parsed policy. It is safe for concurrent use.
type Policy struct {
	rules []rule
}

type rule struct {
	identities []glob
	tenants    []glob
	perms      permSet
}

// Allowed reports whether identity may exercise perm on tenant. It is false
// unless some rule grants it; in particular it is false for an empty
// identity or tenant, and for a perm that is not Valid (including All).
func (p *Policy) Allowed(identity, tenant string, perm Permission) bool {
	bit := permBit(perm)
	if p == nil || bit == 0 || identity == "" || tenant == "" {
		return false
	}
	for i := range p.rules {
		r := &p.rules[i]
		if r.perms&bit != 0 && matchAny(r.identities, identity) && matchAny(r.tenants, tenant) {
			return true
		}
	}
	return false
}

// AllowedAny reports whether some rule grants perm to identity for at least
// one tenant glob. It gates operations not scoped to one tenant, such as
// ListTenants; their results must still be filtered with Allowed, tenant by
// tenant.
func (p *Policy) AllowedAny(identity string, perm Permission) bool {
	bit := permBit(perm)
	if p == nil || bit == 0 || identity == "" {
		return false
	}
	for i := range p.rules {
		r := &p.rules[i]
		if r.perms&bit != 0 && matchAny(r.identities, identity) {
			return true
		}
	}
	return false
}

// Load reads and parses the policy file at path. See the package
// documentation for the format.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// Parse parses a policy document. See the package documentation for the
// format.
func Parse(data []byte) (*Policy, error) {
	var doc policyFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("policy: empty document; a policy needs at least one rule")
		}
		return nil, fmt.Errorf("policy: %w", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("policy: more than one YAML document")
	}
	if len(doc.Rules) == 0 {
		return nil, errors.New("policy: no rules; a policy needs at least one rule")
	}
	p := &Policy{rules: make([]rule, 0, len(doc.Rules))}
	for i := range doc.Rules {
		n := &doc.Rules[i]
		r, err := parseRule(n)
		if err != nil {
			return nil, fmt.Errorf("policy: rules[%d] (line %d): %w", i, n.Line, err)
		}
		p.rules = append(p.rules, r)
	}
	return p, nil
}

// policyFile is the top level of a policy document. Rules are kept as nodes
// and checked one by one by parseRule, so that errors can name the rule.
type policyFile struct {
	Rules []yaml.Node `yaml:"rules"`
}

// parseRule checks the fields of one rule by hand, so that errors can name
// the rule, and compiles it.
func parseRule(n *yaml.Node) (rule, error) {
	n = resolveAlias(n)
	if n.Kind != yaml.MappingNode {
		return rule{}, errors.New("a rule must be a mapping with identities, tenants and permissions")
	}
	var fields struct{ identities, tenants, permissions []string }
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i].Value, n.Content[i+1]
		var dst *[]string
		switch key {
		case "identities":
			dst = &fields.identities
		case "tenants":
			dst = &fields.tenants
		case "permissions":
			dst = &fields.permissions
		default:
			return rule{}, fmt.Errorf("unknown field %q (want identities, tenants, permissions)", key)
		}
		if seen[key] {
			return rule{}, fmt.Errorf("field %q given twice", key)
		}
		seen[key] = true
		if val = resolveAlias(val); val.Kind != yaml.SequenceNode {
			return rule{}, fmt.Errorf("%s must be a list", key)
		}
		if err := val.Decode(dst); err != nil {
			return rule{}, fmt.Errorf("%s: %w", key, err)
		}
	}

	var r rule
	var err error
	if r.identities, err = compileGlobs("identities", fields.identities, nil); err != nil {
		return rule{}, err
	}
	if r.tenants, err = compileGlobs("tenants", fields.tenants, validTenantGlob); err != nil {
		return rule{}, err
	}
	if len(fields.permissions) == 0 {
		return rule{}, errors.New("permissions is missing or empty")
	}
	for j, name := range fields.permissions {
		p := Permission(name)
		switch {
		case p == All:
			r.perms = allPerms
		case p.Valid():
			r.perms |= permBit(p)
		default:
			return rule{}, fmt.Errorf("permissions[%d]: unknown permission %q (want one of %s, or \"*\")", j, name, permissionList())
		}
	}
	return r, nil
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func compileGlobs(field string, patterns []string, check func(string) error) ([]glob, error) {
	if len(patterns) == 0 {
		return nil, fmt.Errorf("%s is missing or empty", field)
	}
	globs := make([]glob, 0, len(patterns))
	for j, s := range patterns {
		if s == "" {
			return nil, fmt.Errorf("%s[%d] is empty", field, j)
		}
		if check != nil {
			if err := check(s); err != nil {
				return nil, fmt.Errorf("%s[%d] %q: %w", field, j, s, err)
			}
		}
		globs = append(globs, compileGlob(s))
	}
	return globs, nil
}

// validTenantGlob rejects tenant globs that could never match a tenant id,
// such as "Acme" or "acme_corp", which are almost certainly typos.
func validTenantGlob(s string) error {
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '*') {
			return fmt.Errorf("can never match a tenant id (only a-z, 0-9, '-' and '*' may appear)")
		}
	}
	return nil
}

func permissionList() string {
	names := make([]string, len(permissions))
	for i, p := range permissions {
		names[i] = string(p)
	}
	return strings.Join(names, ", ")
}
