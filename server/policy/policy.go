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
// Each rule needs non-empty identities and tenants lists, and permissions,
// rate_limits or both. A rule grants each of its permissions to each
// matching identity for each matching tenant; rules add up, and nothing is
// ever denied explicitly. An optional name labels the rule in metrics and
// logs (default "rules[N]").
//
// # Rate limits
//
// A rule may limit the calls of the identities it matches:
//
//	rules:
//	  - name: billing
//	    identities: ["spiffe://example.org/billing/*"]
//	    tenants: ["acme"]
//	    permissions: [encrypt, decrypt]
//	    rate_limits:
//	      - requests_per_second: 200   # tokens added per second (> 0)
//	        burst: 400                 # bucket size (≥ 1)
//	      - class: hashing             # only HashPassword/VerifyPassword
//	        requests_per_second: 5
//	        burst: 10
//	        per_tenant: true           # a bucket per identity and tenant
//
// Each limit is a token bucket per identity (or per identity and tenant with
// per_tenant). A call is limited by every limit of every rule whose
// identities match the caller and whose tenants match the call's tenant
// (calls naming no tenant, such as ListTenants, by the rules matching the
// identity); it proceeds only if each of those buckets holds enough tokens.
// A class narrows a limit to one kind of call: data (the data plane of
// CryptoService but password hashing), control (KeyService and
// AuditService) or hashing (HashPassword, VerifyPassword); without a class
// it counts every call (of Custos's services: health and reflection are
// never limited). A batch call takes one token per item.
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
// SIGHUP with ReloadOn. Calls in flight keep the Policy they started
// with; an invalid file leaves the previous policy in force.
package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"

	"github.com/custos-kms/custos/internal/yamlint"
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
	AuditRead    Permission = "audit.read"    // ListAuditEvents, GetAuditCheckpoint

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

// Class is a kind of call that a rate limit can be narrowed to.
type Class string

// The classes of calls.
const (
	ClassData    Class = "data"    // CryptoService, password hashing excepted
	ClassControl Class = "control" // KeyService, AuditService
	ClassHashing Class = "hashing" // HashPassword, VerifyPassword
)

// RateLimit is one token bucket limit of a rule. It is immutable.
type RateLimit struct {
	// Rule names the rule (its name, or "rules[N]"): a bounded label for
	// metrics, never an identity.
	Rule string
	// ID tells the limit apart from every other across reloads: the same
	// rule (name, identities, tenants) and class give the same ID, so
	// buckets survive a reload that only changes rates. Unnamed rules are
	// named by position: name a rule to keep its buckets when rules above
	// it are added or removed.
	ID string
	// Class narrows the limit to one kind of call; empty means every call.
	Class Class
	// PerSecond is how many tokens the bucket gains each second.
	PerSecond float64
	// Burst is the bucket's size.
	Burst int
	// PerTenant gives each (identity, tenant) its own bucket.
	PerTenant bool
}

// Policy is an immutable, parsed policy. It is safe for concurrent use.
type Policy struct {
	rules []rule
	// limited reports whether any rule has a rate limit.
	limited bool
}

type rule struct {
	identities []glob
	tenants    []glob
	perms      permSet
	limits     []*RateLimit
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

// HasRateLimits reports whether any rule limits calls.
func (p *Policy) HasRateLimits() bool { return p != nil && p.limited }

// RateLimits calls fn with each rate limit that applies to a call of class
// by identity on tenant (empty for calls naming no tenant), until fn returns
// false.
func (p *Policy) RateLimits(identity, tenant string, class Class, fn func(*RateLimit) bool) {
	if !p.HasRateLimits() || identity == "" {
		return
	}
	for i := range p.rules {
		r := &p.rules[i]
		if len(r.limits) == 0 || !matchAny(r.identities, identity) || (tenant != "" && !matchAny(r.tenants, tenant)) {
			continue
		}
		for _, l := range r.limits {
			if (l.Class == "" || l.Class == class) && !fn(l) {
				return
			}
		}
	}
}

// AllRateLimits returns every rate limit of every rule.
func (p *Policy) AllRateLimits() []*RateLimit {
	if p == nil {
		return nil
	}
	var out []*RateLimit
	for i := range p.rules {
		out = append(out, p.rules[i].limits...)
	}
	return out
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
	names := map[string]bool{}
	ids := map[string]int{} // limits' bucket ids, made unique
	budget := maxEntries
	for i := range doc.Rules {
		n := &doc.Rules[i]
		r, name, err := parseRule(n, i, &budget)
		if err == nil && names[name] {
			err = fmt.Errorf("name %q is used by another rule", name)
		}
		if err != nil {
			if name != "" && name != fmt.Sprintf("rules[%d]", i) {
				return nil, fmt.Errorf("policy: rules[%d] %q (line %d): %w", i, name, n.Line, err)
			}
			return nil, fmt.Errorf("policy: rules[%d] (line %d): %w", i, n.Line, err)
		}
		names[name] = true
		for _, l := range r.limits {
			// Unnamed rules with the same globs and class: the second one's
			// limit is "#2", and so on, in file order.
			seen := ids[l.ID]
			ids[l.ID] = seen + 1
			if seen > 0 {
				l.ID = fmt.Sprintf("%s #%d", l.ID, seen+1)
			}
		}
		p.rules = append(p.rules, r)
		p.limited = p.limited || len(r.limits) > 0
	}
	return p, nil
}

// policyFile is the top level of a policy document. Rules are kept as nodes
// and checked one by one by parseRule, so that errors can name the rule.
type policyFile struct {
	Rules []yaml.Node `yaml:"rules"`
}

// parseRule checks the fields of one rule by hand, so that errors can name
// the rule, and compiles it. It returns the rule's name (default
// "rules[index]") even with an error.
func parseRule(n *yaml.Node, index int, budget *int) (rule, string, error) {
	name := fmt.Sprintf("rules[%d]", index)
	explicit := false
	n = resolveAlias(n)
	if n.Kind != yaml.MappingNode {
		return rule{}, name, errors.New("a rule must be a mapping with identities, tenants and permissions")
	}
	var fields struct{ identities, tenants, permissions []string }
	var limits []yaml.Node
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i].Value, resolveAlias(n.Content[i+1])
		if seen[key] {
			return rule{}, name, fmt.Errorf("field %q given twice", key)
		}
		seen[key] = true
		var dst *[]string
		switch key {
		case "name":
			if val.Kind != yaml.ScalarNode || val.Value == "" {
				return rule{}, name, errors.New("name must be a non-empty string")
			}
			name, explicit = val.Value, true
			continue
		case "rate_limits":
			if val.Kind != yaml.SequenceNode {
				return rule{}, name, errors.New("rate_limits must be a list")
			}
			if err := spend(budget, len(val.Content)); err != nil {
				return rule{}, name, err
			}
			limits = make([]yaml.Node, len(val.Content))
			for j, c := range val.Content {
				limits[j] = *c
			}
			continue
		case "identities":
			dst = &fields.identities
		case "tenants":
			dst = &fields.tenants
		case "permissions":
			dst = &fields.permissions
		default:
			return rule{}, name, fmt.Errorf("unknown field %q (want name, identities, tenants, permissions, rate_limits)", key)
		}
		if val.Kind != yaml.SequenceNode {
			return rule{}, name, fmt.Errorf("%s must be a list", key)
		}
		if err := spend(budget, len(val.Content)); err != nil {
			return rule{}, name, err
		}
		if err := val.Decode(dst); err != nil {
			return rule{}, name, fmt.Errorf("%s: %w", key, err)
		}
	}

	var r rule
	var err error
	if r.identities, err = compileGlobs("identities", fields.identities, validIdentityGlob); err != nil {
		return rule{}, name, err
	}
	if r.tenants, err = compileGlobs("tenants", fields.tenants, validTenantGlob); err != nil {
		return rule{}, name, err
	}
	if len(fields.permissions) == 0 && len(limits) == 0 {
		return rule{}, name, errors.New("permissions is missing or empty (a rule needs permissions, rate_limits or both)")
	}
	if seen["permissions"] && len(fields.permissions) == 0 {
		return rule{}, name, errors.New("permissions is empty")
	}
	for j, pname := range fields.permissions {
		p := Permission(pname)
		switch {
		case p == All:
			r.perms = allPerms
		case p.Valid():
			r.perms |= permBit(p)
		default:
			return rule{}, name, fmt.Errorf("permissions[%d]: unknown permission %q (want one of %s, or \"*\")", j, pname, permissionList())
		}
	}
	classes := map[Class]bool{}
	for j := range limits {
		l, err := parseRateLimit(&limits[j])
		if err != nil {
			return rule{}, name, fmt.Errorf("rate_limits[%d]: %w", j, err)
		}
		if classes[l.Class] {
			return rule{}, name, fmt.Errorf("rate_limits[%d]: a second limit for class %q", j, classOrAll(l.Class))
		}
		classes[l.Class] = true
		l.Rule = name
		// The globs make an edited rule start with new buckets. A rule's
		// own name keeps two rules with the same globs apart; unnamed ones
		// are told apart by Parse, not by their position, so that adding
		// or moving another rule keeps their buckets.
		idName := "unnamed"
		if explicit {
			idName = "name " + name
		}
		l.ID = fmt.Sprintf("%s %q %q %s %v", idName, fields.identities, fields.tenants, l.Class, l.PerTenant)
		r.limits = append(r.limits, l)
	}
	return r, name, nil
}

// rateLimitFile is one entry of a rule's rate_limits.
type rateLimitFile struct {
	Class             string   `yaml:"class"`
	RequestsPerSecond *float64 `yaml:"requests_per_second"`
	Burst             *int     `yaml:"burst"`
	PerTenant         bool     `yaml:"per_tenant"`
}

func parseRateLimit(n *yaml.Node) (*RateLimit, error) {
	if n.Kind != yaml.MappingNode {
		return nil, errors.New("must be a mapping with requests_per_second and burst")
	}
	var f rateLimitFile
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key := n.Content[i].Value
		switch key {
		case "class", "requests_per_second", "burst", "per_tenant":
		default:
			return nil, fmt.Errorf("unknown field %q (want class, requests_per_second, burst, per_tenant)", key)
		}
		if seen[key] {
			return nil, fmt.Errorf("field %q given twice", key)
		}
		seen[key] = true
	}
	if err := n.Decode(&f); err != nil {
		return nil, err
	}
	if err := yamlint.Check(n, reflect.TypeOf(f)); err != nil {
		return nil, err
	}
	l := &RateLimit{Class: Class(f.Class), PerTenant: f.PerTenant}
	switch l.Class {
	case "", ClassData, ClassControl, ClassHashing:
	default:
		return nil, fmt.Errorf("unknown class %q (want data, control or hashing, or no class for every call)", f.Class)
	}
	switch {
	case f.RequestsPerSecond == nil:
		return nil, errors.New("requests_per_second is missing")
	case !(*f.RequestsPerSecond > 0) || math.IsInf(*f.RequestsPerSecond, 0):
		return nil, fmt.Errorf("requests_per_second %v must be a positive number", *f.RequestsPerSecond)
	case f.Burst == nil:
		return nil, errors.New("burst is missing")
	case *f.Burst < 1:
		return nil, fmt.Errorf("burst %d must be at least 1", *f.Burst)
	case *f.Burst > maxBurst:
		return nil, fmt.Errorf("burst %d is above %d", *f.Burst, maxBurst)
	}
	l.PerSecond, l.Burst = *f.RequestsPerSecond, *f.Burst
	return l, nil
}

// maxBurst bounds a rate limit's bucket.
const maxBurst = 1 << 30

func classOrAll(c Class) string {
	if c == "" {
		return "every call"
	}
	return string(c)
}

// maxEntries bounds a policy's identities, tenants, permissions and rate
// limits over all its rules, an alias counted each time it is expanded:
// YAML aliases would otherwise let a small file expand into a policy too
// large to compile.
const maxEntries = 100_000

// spend takes n entries from the policy's budget.
func spend(budget *int, n int) error {
	if *budget -= n; *budget < 0 {
		return fmt.Errorf("the policy has more than %d entries (identities, tenants, permissions and rate limits over all rules, aliases expanded)", maxEntries)
	}
	return nil
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

// validIdentityGlob rejects SPIFFE ID globs that could never match a
// SPIFFE ID, such as one with an upper-case trust domain or a trailing
// slash: each '*' is taken as one letter (which any star may match) and the
// result must parse as a SPIFFE ID. Common-name globs are not checked.
func validIdentityGlob(s string) error {
	if len(s) < len("spiffe://") || !strings.EqualFold(s[:len("spiffe://")], "spiffe://") {
		return nil
	}
	if _, err := spiffeid.FromString(strings.ReplaceAll(s, "*", "x")); err != nil {
		return fmt.Errorf("can never match a SPIFFE ID (%v)", err)
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
