package policy

import "strings"

// glob is a compiled pattern in which '*' matches any run of characters
// (including none, and including '/') and every other character matches
// itself. It is split at the stars: the name must start with prefix, end
// with suffix, and contain the middle parts in order between them. Matching
// each middle part at its leftmost possible position is always safe for
// such patterns, so no backtracking is ever needed and matching runs in
// time linear in len(name) plus the pattern's length.
type glob struct {
	prefix, suffix string
	middle         []string
	star           bool // false: the pattern has no '*' and prefix must equal the name
}

func compileGlob(pattern string) glob {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return glob{prefix: pattern}
	}
	g := glob{prefix: parts[0], suffix: parts[len(parts)-1], star: true}
	for _, m := range parts[1 : len(parts)-1] {
		if m != "" { // consecutive stars are one star
			g.middle = append(g.middle, m)
		}
	}
	return g
}

func (g *glob) match(name string) bool {
	if !g.star {
		return name == g.prefix
	}
	if len(name) < len(g.prefix)+len(g.suffix) ||
		!strings.HasPrefix(name, g.prefix) || !strings.HasSuffix(name, g.suffix) {
		return false
	}
	rest := name[len(g.prefix) : len(name)-len(g.suffix)]
	for _, m := range g.middle {
		i := strings.Index(rest, m)
		if i < 0 {
			return false
		}
		rest = rest[i+len(m):]
	}
	return true
}

func matchAny(globs []glob, name string) bool {
	for i := range globs {
		if globs[i].match(name) {
			return true
		}
	}
	return false
}
