package custosv1_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"strconv"
	"strings"
	"testing"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
)

// Every Reason constant is a value of the ErrorReason enum and every value
// (but the unspecified one) has a constant: the strings other languages
// match are the ones the server sends.
func TestReasonsAreTheErrorReasonEnum(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "reasons.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	consts := map[string]bool{}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, s := range g.Specs {
			v := s.(*ast.ValueSpec)
			if !strings.HasPrefix(v.Names[0].Name, "Reason") {
				continue
			}
			lit, err := strconv.Unquote(v.Values[0].(*ast.BasicLit).Value)
			if err != nil {
				t.Fatal(err)
			}
			consts[lit] = true
			if _, ok := custosv1.ErrorReason_value[lit]; !ok {
				t.Errorf("reason %s is not a value of ErrorReason", lit)
			}
		}
	}
	for name, n := range custosv1.ErrorReason_value {
		if n != 0 && !consts[name] {
			t.Errorf("ErrorReason %s has no Reason constant", name)
		}
	}
}
