package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const examplePolicy = `
rules:
  - identities: ["spiffe://custos.dev/dev-client"]
    tenants: ["*"]
    permissions: ["*"]
  - identities: ["spiffe://example.org/billing/*"]
    tenants: ["acme", "team-*"]
    permissions: [encrypt, decrypt]
  - identities: ["only-a"]
    tenants: ["a"]
    permissions: [encrypt, keys.read]
  - identities: ["auditor"]
    tenants: ["acme"]
    permissions: [audit.read]
`

func mustParse(t *testing.T, doc string) *Policy {
	t.Helper()
	p, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func TestAllowed(t *testing.T) {
	p := mustParse(t, examplePolicy)
	tests := []struct {
		name             string
		identity, tenant string
		perm             Permission
		want             bool
	}{
		{"an unknown identity is denied", "spiffe://custos.dev/stranger", "acme", Encrypt, false},
		{"the dev client may do anything anywhere", "spiffe://custos.dev/dev-client", "whatever", TenantsAdmin, true},
		{"'*' grants every permission", "spiffe://custos.dev/dev-client", "acme", AuditRead, true},
		{"an identity glob matches across '/'", "spiffe://example.org/billing/eu/worker-7", "acme", Decrypt, true},
		{"an identity glob matches a single segment", "spiffe://example.org/billing/api", "acme", Encrypt, true},
		{"an identity glob does not match its bare prefix's sibling", "spiffe://example.org/billingx", "acme", Encrypt, false},
		{"an identity glob is anchored at the start", "spiffe://evil.org/spiffe://example.org/billing/x", "acme", Encrypt, false},
		{"a tenant glob matches", "spiffe://example.org/billing/api", "team-blue", Encrypt, true},
		{"a tenant glob needs its prefix", "spiffe://example.org/billing/api", "teamblue", Encrypt, false},
		{"a tenant outside the globs is denied", "spiffe://example.org/billing/api", "globex", Encrypt, false},
		{"a permission not granted is denied", "spiffe://example.org/billing/api", "acme", Rewrap, false},
		{"an identity allowed only tenant a may use a", "only-a", "a", Encrypt, true},
		{"an identity allowed only tenant a is denied tenant b", "only-a", "b", Encrypt, false},
		{"an identity allowed only tenant a is denied a tenant sharing its prefix", "only-a", "ab", Encrypt, false},
		{"identity matching is exact, not case-insensitive", "ONLY-A", "a", Encrypt, false},
		{"identity matching is exact, not a prefix match", "only-a2", "a", Encrypt, false},
		{"an empty identity is denied", "", "acme", Encrypt, false},
		{"an empty tenant is denied even by '*'", "spiffe://custos.dev/dev-client", "", Encrypt, false},
		{"asking for All is never allowed", "spiffe://custos.dev/dev-client", "acme", All, false},
		{"an unknown permission is never allowed", "spiffe://custos.dev/dev-client", "acme", Permission("keys.delete"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Allowed(tt.identity, tt.tenant, tt.perm); got != tt.want {
				t.Errorf("Allowed(%q, %q, %q) = %v, want %v", tt.identity, tt.tenant, tt.perm, got, tt.want)
			}
		})
	}
}

func TestAllowedAny(t *testing.T) {
	p := mustParse(t, examplePolicy)
	tests := []struct {
		name     string
		identity string
		perm     Permission
		want     bool
	}{
		{"an admin may list tenants", "spiffe://custos.dev/dev-client", TenantsAdmin, true},
		{"an identity with a permission for one tenant has it somewhere", "only-a", KeysRead, true},
		{"an identity without the permission anywhere is denied", "only-a", TenantsAdmin, false},
		{"an unknown identity is denied", "nobody", Encrypt, false},
		{"All is never allowed", "spiffe://custos.dev/dev-client", All, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.AllowedAny(tt.identity, tt.perm); got != tt.want {
				t.Errorf("AllowedAny(%q, %q) = %v, want %v", tt.identity, tt.perm, got, tt.want)
			}
		})
	}
}

func TestNilPolicyDeniesEverything(t *testing.T) {
	var p *Policy
	if p.Allowed("a", "b", Encrypt) || p.AllowedAny("a", Encrypt) {
		t.Error("nil policy allowed a call")
	}
}

func TestEveryPermissionCanBeGranted(t *testing.T) {
	for _, perm := range Permissions() {
		p := mustParse(t, "rules:\n  - identities: [x]\n    tenants: [t]\n    permissions: ["+string(perm)+"]\n")
		for _, other := range Permissions() {
			if got := p.Allowed("x", "t", other); got != (other == perm) {
				t.Errorf("granting %q: Allowed(%q) = %v", perm, other, got)
			}
		}
	}
}

func TestParseRejectsInvalidPolicies(t *testing.T) {
	rule := func(body string) string {
		return "rules:\n  - identities: [x]\n    tenants: [t]\n    permissions: [encrypt]\n  - " + body + "\n"
	}
	tests := []struct {
		name string
		doc  string
		want string // substring of the error
	}{
		{"an empty file", "", "empty document"},
		{"a comment-only file", "# nothing yet\n", "empty document"},
		{"no rules", "rules: []\n", "no rules"},
		{"null rules", "rules:\n", "no rules"},
		{"an unknown top-level field", "rules: []\nrole: admin\n", "field role not found"},
		{"an unknown permission", rule("{identities: [x], tenants: [t], permissions: [encrypt, encrpyt]}"), `rules[1] (line 5): permissions[1]: unknown permission "encrpyt"`},
		{"an unknown rule field", rule("{identities: [x], tenants: [t], permissions: [encrypt], tenant: [y]}"), `rules[1] (line 5): unknown field "tenant"`},
		{"a duplicated rule field", rule("{identities: [x], tenants: [t], permissions: [encrypt], tenants: [y]}"), `rules[1] (line 5):`},
		{"empty identities", rule("{identities: [], tenants: [t], permissions: [encrypt]}"), "rules[1] (line 5): identities is missing or empty"},
		{"missing tenants", rule("{identities: [x], permissions: [encrypt]}"), "rules[1] (line 5): tenants is missing or empty"},
		{"empty permissions", rule("{identities: [x], tenants: [t], permissions: []}"), "rules[1] (line 5): permissions is missing or empty"},
		{"an empty identity glob", rule(`{identities: [""], tenants: [t], permissions: [encrypt]}`), "rules[1] (line 5): identities[0] is empty"},
		{"a tenant glob that can never match", rule("{identities: [x], tenants: [t, Acme], permissions: [encrypt]}"), `rules[1] (line 5): tenants[1] "Acme": can never match`},
		{"a SPIFFE glob with an upper-case trust domain", rule(`{identities: ["spiffe://Example.org/x"], tenants: [t], permissions: [encrypt]}`), `identities[0] "spiffe://Example.org/x": can never match a SPIFFE ID`},
		{"a SPIFFE glob with a trailing slash", rule(`{identities: ["spiffe://example.org/a/*/"], tenants: [t], permissions: [encrypt]}`), `identities[0] "spiffe://example.org/a/*/": can never match a SPIFFE ID`},
		{"a scalar instead of a list", rule("{identities: x, tenants: [t], permissions: [encrypt]}"), "rules[1] (line 5): identities must be a list"},
		{"a nested list", rule("{identities: [[x]], tenants: [t], permissions: [encrypt]}"), "rules[1] (line 5): identities:"},
		{"a rule that is not a mapping", rule("encrypt"), "rules[1] (line 5): a rule must be a mapping"},
		{"two documents", "rules:\n  - {identities: [x], tenants: [t], permissions: [encrypt]}\n---\nrules: []\n", "more than one YAML document"},
		{"broken YAML", "rules: [\n", "policy: yaml:"},
		{"a negative rate", rule("{name: billing, identities: [x], tenants: [t], rate_limits: [{requests_per_second: -1, burst: 5}]}"), `rules[1] "billing" (line 5): rate_limits[0]: requests_per_second -1 must be a positive number`},
		{"a zero rate", rule("{identities: [x], tenants: [t], rate_limits: [{requests_per_second: 0, burst: 5}]}"), "rules[1] (line 5): rate_limits[0]: requests_per_second 0 must be a positive number"},
		{"a zero burst", rule("{identities: [x], tenants: [t], rate_limits: [{requests_per_second: 10, burst: 0}]}"), "rate_limits[0]: burst 0 must be at least 1"},
		{"a fractional burst", rule("{identities: [x], tenants: [t], rate_limits: [{requests_per_second: 10, burst: 1.5}]}"), "rate_limits[0]: line 5: burst: 1.5 is not a whole number"},
		{"an octal-looking burst", rule("{identities: [x], tenants: [t], rate_limits: [{requests_per_second: 10, burst: 010}]}"), "rate_limits[0]: line 5: burst: 010 has a leading zero"},
		{"a missing burst", rule("{identities: [x], tenants: [t], rate_limits: [{requests_per_second: 10}]}"), "rate_limits[0]: burst is missing"},
		{"a missing rate", rule("{identities: [x], tenants: [t], rate_limits: [{burst: 10}]}"), "rate_limits[0]: requests_per_second is missing"},
		{"an unknown class", rule("{identities: [x], tenants: [t], rate_limits: [{class: admin, requests_per_second: 1, burst: 1}]}"), `rate_limits[0]: unknown class "admin"`},
		{"an unknown rate-limit field", rule("{identities: [x], tenants: [t], rate_limits: [{rps: 1, burst: 1}]}"), `rate_limits[0]: unknown field "rps"`},
		{"two limits for one class", rule("{identities: [x], tenants: [t], rate_limits: [{class: data, requests_per_second: 1, burst: 1}, {class: data, requests_per_second: 2, burst: 2}]}"), `rate_limits[1]: a second limit for class "data"`},
		{"rate_limits not a list", rule("{identities: [x], tenants: [t], rate_limits: {burst: 1}}"), "rate_limits must be a list"},
		{"a rule with neither permissions nor limits", rule("{identities: [x], tenants: [t]}"), "a rule needs permissions, rate_limits or both"},
		{"two rules with one name", "rules:\n  - {name: a, identities: [x], tenants: [t], permissions: [encrypt]}\n  - {name: a, identities: [y], tenants: [t], permissions: [encrypt]}\n", `rules[1] "a" (line 3): name "a" is used by another rule`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse([]byte(tt.doc))
			if err == nil {
				t.Fatalf("Parse succeeded with %d rules, want error containing %q", len(p.rules), tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse error = %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestRateLimitsApplyByIdentityTenantAndClass(t *testing.T) {
	p, err := Parse([]byte(`
rules:
  - name: billing
    identities: ["spiffe://x/billing"]
    tenants: [acme]
    permissions: [encrypt]
    rate_limits:
      - {requests_per_second: 100, burst: 200}
      - {class: hashing, requests_per_second: 2.5, burst: 3, per_tenant: true}
  - identities: ["spiffe://x/*"]
    tenants: ["*"]
    rate_limits:
      - {class: control, requests_per_second: 1, burst: 1}
`))
	if err != nil {
		t.Fatal(err)
	}
	if !p.HasRateLimits() || len(p.AllRateLimits()) != 3 {
		t.Fatalf("HasRateLimits %v, %d limits; want true, 3", p.HasRateLimits(), len(p.AllRateLimits()))
	}
	limits := func(id, tenant string, c Class) []string {
		var out []string
		p.RateLimits(id, tenant, c, func(l *RateLimit) bool {
			out = append(out, fmt.Sprintf("%s/%s/%v/%d/%v", l.Rule, l.Class, l.PerSecond, l.Burst, l.PerTenant))
			return true
		})
		return out
	}
	tests := []struct {
		name       string
		id, tenant string
		class      Class
		want       []string
	}{
		{"data calls on acme: the rule's classless limit", "spiffe://x/billing", "acme", ClassData, []string{"billing//100/200/false"}},
		{"hashing on acme: both of the rule's limits", "spiffe://x/billing", "acme", ClassHashing, []string{"billing//100/200/false", "billing/hashing/2.5/3/true"}},
		{"control on acme: the classless limit and the catch-all rule", "spiffe://x/billing", "acme", ClassControl, []string{"billing//100/200/false", "rules[1]/control/1/1/false"}},
		{"another tenant: only the catch-all", "spiffe://x/billing", "other", ClassControl, []string{"rules[1]/control/1/1/false"}},
		{"a call naming no tenant: every rule of the identity", "spiffe://x/billing", "", ClassControl, []string{"billing//100/200/false", "rules[1]/control/1/1/false"}},
		{"an identity no rule matches: none", "spiffe://y/other", "acme", ClassData, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := limits(tt.id, tt.tenant, tt.class); !slices.Equal(got, tt.want) {
				t.Errorf("limits = %v, want %v", got, tt.want)
			}
		})
	}
	t.Run("a rule with only rate limits grants nothing", func(t *testing.T) {
		if p.Allowed("spiffe://x/other", "acme", Encrypt) || p.AllowedAny("spiffe://x/other", KeysRead) {
			t.Error("the catch-all rule, which has no permissions, granted one")
		}
	})
	t.Run("a limit keeps its ID when only its rates change, not when its rule does", func(t *testing.T) {
		doc := "rules:\n  - {identities: [x], tenants: [%s], rate_limits: [{requests_per_second: %d, burst: %d}]}\n"
		id := func(tenants string, rps, burst int) string {
			p, err := Parse(fmt.Appendf(nil, doc, tenants, rps, burst))
			if err != nil {
				t.Fatal(err)
			}
			return p.AllRateLimits()[0].ID
		}
		if id("t", 1, 1) != id("t", 50, 100) {
			t.Error("new rates gave the limit a new ID: its buckets would be reset")
		}
		if id("t", 1, 1) == id("u", 1, 1) {
			t.Error("a limit of another rule has the same ID")
		}
	})
}

func TestParseAcceptsAliasesAndBlockLists(t *testing.T) {
	p := mustParse(t, `
rules:
  - identities:
      - spiffe://custos.dev/a
    tenants: &all ["*"]
    permissions:
      - encrypt
  - &r2
    identities: [b]
    tenants: *all
    permissions: [decrypt]
`)
	if !p.Allowed("spiffe://custos.dev/a", "x", Encrypt) || !p.Allowed("b", "y", Decrypt) || p.Allowed("b", "y", Encrypt) {
		t.Error("policy with aliases and block lists parsed wrongly")
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("Load(missing) error = %v", err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("rules: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad); err == nil || !strings.Contains(err.Error(), "bad.yaml") {
		t.Errorf("Load(bad) error = %v", err)
	}
}

// refMatch is the obvious dynamic-programming glob matcher, used as an
// oracle for glob.match.
func refMatch(pattern, name string) bool {
	// ok[j]: pattern[:i] matches name[:j]
	ok := make([]bool, len(name)+1)
	ok[0] = true
	for i := 0; i < len(pattern); i++ {
		next := make([]bool, len(name)+1)
		if pattern[i] == '*' {
			next[0] = ok[0]
			for j := 1; j <= len(name); j++ {
				next[j] = ok[j] || next[j-1]
			}
		} else {
			for j := 1; j <= len(name); j++ {
				next[j] = ok[j-1] && pattern[i] == name[j-1]
			}
		}
		ok = next
	}
	return ok[len(name)]
}

var globCases = []struct {
	pattern, name string
	want          bool
}{
	{"acme", "acme", true},
	{"acme", "acme2", false},
	{"acme", "acm", false},
	{"*", "", true},
	{"*", "anything/at/all", true},
	{"team-*", "team-", true},
	{"team-*", "team-blue", true},
	{"team-*", "team", false},
	{"*-prod", "eu-prod", true},
	{"*-prod", "eu-prod-2", false},
	{"a*b*c", "abc", true},
	{"a*b*c", "a/x/b/y/c", true},
	{"a*b*c", "acb", false},
	{"a*a", "a", false},
	{"ab*ba", "aba", false},
	{"ab*ba", "abba", true},
	{"**", "x", true},
	{"spiffe://example.org/*/api", "spiffe://example.org/eu/west/api", true},
	{"spiffe://example.org/*/api", "spiffe://example.org/api", false},
}

func TestGlobMatch(t *testing.T) {
	for _, tt := range globCases {
		g := compileGlob(tt.pattern)
		if got := g.match(tt.name); got != tt.want {
			t.Errorf("glob %q match %q = %v, want %v", tt.pattern, tt.name, got, tt.want)
		}
		if ref := refMatch(tt.pattern, tt.name); ref != tt.want {
			t.Errorf("reference matcher disagrees on %q %q", tt.pattern, tt.name)
		}
	}
}

// TestGlobPathologicalInput is the input that makes backtracking matchers
// take exponential time. It must simply finish.
func TestGlobPathologicalInput(t *testing.T) {
	pattern := strings.Repeat("*a", 30) + "*b"
	name := strings.Repeat("a", 100_000)
	if g := compileGlob(pattern); g.match(name) {
		t.Error("matched a name without b")
	}
	if g := compileGlob(pattern); !g.match(name + "b") {
		t.Error("did not match a name ending in b")
	}
}

func FuzzGlob(f *testing.F) {
	for _, c := range globCases {
		f.Add(c.pattern, c.name)
	}
	f.Fuzz(func(t *testing.T, pattern, name string) {
		if len(pattern) > 64 || len(name) > 256 {
			return // keep the quadratic oracle quick
		}
		g := compileGlob(pattern)
		if got, want := g.match(name), refMatch(pattern, name); got != want {
			t.Errorf("glob %q match %q = %v, reference says %v", pattern, name, got, want)
		}
	})
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(examplePolicy))
	f.Add([]byte("rules:\n  - {identities: [x], tenants: [t], permissions: ['*']}\n"))
	f.Add([]byte("rules: [a, {b: c}]"))
	f.Add([]byte("rules:\n  - {identities: [x], tenants: [t], rate_limits: [{requests_per_second: 1, burst: 1}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			return
		}
		if len(p.rules) == 0 {
			t.Fatal("parsed a policy without rules")
		}
		for _, r := range p.rules {
			// A rule grants permissions, limits calls, or both.
			if len(r.identities) == 0 || len(r.tenants) == 0 || r.perms == 0 && len(r.limits) == 0 {
				t.Fatalf("parsed an incomplete rule %+v", r)
			}
		}
	})
}

// YAML aliases cannot make a small policy file expand into a huge one: the
// rules' entries are counted as they are expanded, and a policy over the
// limit is refused at once (the file is the operator's, but it is parsed
// at every SIGHUP, and its parsing is bounded like every format's).
func TestAliasesCannotExpandAPolicyWithoutBound(t *testing.T) {
	var b strings.Builder
	b.WriteString("rules: [&r {identities: [")
	for i := range 20000 {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString("a")
	}
	b.WriteString("], tenants: [t], permissions: [encrypt]}")
	for range 20000 {
		b.WriteString(", *r")
	}
	b.WriteString("]\n")
	done := make(chan error, 1)
	go func() {
		_, err := Parse([]byte(b.String()))
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "entries") {
			t.Fatalf("a policy of 20,000 rules of 20,000 identities each: %v, want it refused for its size", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("parsing an aliased policy still runs after 20s")
	}
}
