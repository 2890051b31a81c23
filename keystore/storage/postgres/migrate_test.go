package postgres

import (
	"strings"
	"testing"
	"testing/fstest"
)

func TestEmbeddedMigrationsLoad(t *testing.T) {
	ms, err := loadMigrations(migrationFiles)
	if err != nil {
		t.Fatalf("loadMigrations = %v", err)
	}
	for i, m := range ms {
		if m.version != i+1 || strings.TrimSpace(m.sql) == "" {
			t.Errorf("migration %d = version %d, %d bytes of SQL", i, m.version, len(m.sql))
		}
	}
}

func TestLoadMigrationsRejectsBadFiles(t *testing.T) {
	file := &fstest.MapFile{Data: []byte("SELECT 1;")}
	for _, c := range []struct {
		name  string
		files []string
		want  string
	}{
		{"no files", nil, "no migration files"},
		{"a gap", []string{"0001_a.sql", "0003_c.sql"}, "want 2"},
		{"a duplicate number", []string{"0001_a.sql", "0001_b.sql"}, "want 2"},
		{"not starting at 1", []string{"0002_b.sql"}, "want 1"},
		{"no name", []string{"0001.sql"}, "not NNNN_name.sql"},
		{"a short number", []string{"1_a.sql"}, "not NNNN_name.sql"},
		{"not a number", []string{"000x_a.sql"}, "not NNNN_name.sql"},
	} {
		t.Run(c.name, func(t *testing.T) {
			fsys := fstest.MapFS{}
			for _, f := range c.files {
				fsys["migrations/"+f] = file
			}
			_, err := loadMigrations(fsys)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("loadMigrations(%q) = %v, want an error containing %q", c.files, err, c.want)
			}
		})
	}
}
