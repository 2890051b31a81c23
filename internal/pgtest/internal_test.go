package pgtest

import (
	"strings"
	"testing"
)

func TestMissingBinariesNameTheInstallScript(t *testing.T) {
	old := binGlob
	binGlob = "/nonexistent/postgresql/*/bin"
	defer func() { binGlob = old }()
	_, _, err := findBinaries()
	if err == nil || !strings.Contains(err.Error(), "scripts/test-deps.sh") {
		t.Fatalf("findBinaries with no binaries = %v, want an error naming scripts/test-deps.sh", err)
	}
}

func TestDatabaseName(t *testing.T) {
	name := databaseName("TestSomething/with spaces & \"quotes\"/"+strings.Repeat("long", 30), 7)
	if len(name) > 63 {
		t.Errorf("databaseName is %d bytes, more than PostgreSQL's 63", len(name))
	}
	if strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
		t.Errorf("databaseName = %q: characters that need quoting", name)
	}
	if !strings.HasPrefix(name, "custos_") || !strings.Contains(name, "_7_testsomething_with_spaces") {
		t.Errorf("databaseName = %q: does not show the sequence number and test", name)
	}
}
