// Package yamlint refuses YAML numbers that gopkg.in/yaml.v3 would put into
// an integer setting as something other than what was written.
//
// yaml.v3 truncates a float into an integer field (1.5 becomes 1, 1e3 is
// taken as 1000) and reads a leading zero as octal, YAML 1.1's rule (010
// becomes 8). A configuration is better refused than read as a different
// number, so Check walks a decoded document beside the Go type it is
// decoded into and reports each such value with its line.
package yamlint

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

var durationType = reflect.TypeOf(time.Duration(0))

// maxDepth bounds the walk; configuration files nest a few levels.
const maxDepth = 64

// Check reports every scalar in n that would be decoded into an integer
// field of t but is written as a float (1.5, 1e3, 1.0) or with a leading
// zero (010). n is a document or any node below one; t is the type n is
// decoded into. Fields are matched by their yaml tags as yaml.v3 matches
// them; nodes with no matching field are left to the decoder, which
// reports them.
func Check(n *yaml.Node, t reflect.Type) error {
	var errs []error
	walk(n, t, "", 0, &errs)
	return errors.Join(errs...)
}

func walk(n *yaml.Node, t reflect.Type, path string, depth int, errs *[]error) {
	if n == nil || depth > maxDepth {
		return
	}
	for n.Kind == yaml.AliasNode && n.Alias != nil && depth <= maxDepth {
		n, depth = n.Alias, depth+1
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			walk(c, t, path, depth+1, errs)
		}
	case yaml.MappingNode:
		switch t.Kind() {
		case reflect.Struct:
			fields := fieldsOf(t)
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i]
				if k.Value == "<<" {
					walk(n.Content[i+1], t, path, depth+1, errs)
					continue
				}
				if ft, ok := fields[k.Value]; ok {
					walk(n.Content[i+1], ft, join(path, k.Value), depth+1, errs)
				}
			}
		case reflect.Map:
			for i := 0; i+1 < len(n.Content); i += 2 {
				walk(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value), depth+1, errs)
			}
		}
	case yaml.SequenceNode:
		if t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
			for i, c := range n.Content {
				walk(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), depth+1, errs)
			}
		}
	case yaml.ScalarNode:
		if isInteger(t) {
			if err := checkInteger(n); err != nil {
				*errs = append(*errs, fmt.Errorf("line %d: %s: %w", n.Line, path, err))
			}
		}
	}
}

// fieldsOf maps the yaml names of t's fields, inline structs included, to
// their types.
func fieldsOf(t reflect.Type) map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() && !f.Anonymous {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(","+opts+",", ",inline,") && f.Type.Kind() == reflect.Struct {
			for k, v := range fieldsOf(f.Type) {
				m[k] = v
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		m[name] = f.Type
	}
	return m
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func isInteger(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		// time.Duration is an int64, but yaml.v3 takes only duration
		// strings ("10s") into it and refuses numbers itself.
		return t != durationType
	}
	return false
}

// checkInteger refuses a plain scalar that yaml.v3 would read as a float or
// as a YAML 1.1 octal number. Quoted scalars are left to the decoder, which
// refuses a string for an integer field.
func checkInteger(n *yaml.Node) error {
	if n.Style&(yaml.SingleQuotedStyle|yaml.DoubleQuotedStyle|yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
		return nil
	}
	v := n.Value
	if n.ShortTag() == "!!float" {
		return fmt.Errorf("%s is not a whole number; write an integer", v)
	}
	digits := strings.TrimLeft(v, "+-")
	if n.ShortTag() == "!!int" && len(digits) > 1 && digits[0] == '0' && isDecimal(digits[1:]) {
		return fmt.Errorf("%s has a leading zero, which YAML reads as octal; write it without the zero, or as 0o%s if octal is meant", v, strings.TrimLeft(digits, "0"))
	}
	return nil
}

func isDecimal(s string) bool {
	for _, r := range s {
		if (r < '0' || r > '9') && r != '_' {
			return false
		}
	}
	return s != ""
}
