package yamlint

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

type inner struct {
	Count uint32        `yaml:"count"`
	Wait  time.Duration `yaml:"wait"`
	Ratio float64       `yaml:"ratio"`
}

type shared struct {
	Shared int `yaml:"shared"`
}

type doc struct {
	shared  `yaml:",inline"`
	Workers int              `yaml:"workers"`
	Name    string           `yaml:"name"`
	Inner   *inner           `yaml:"inner"`
	List    []inner          `yaml:"list"`
	ByName  map[string]int64 `yaml:"by_name"`
	Plain   int
}

func check(t *testing.T, src string) error {
	t.Helper()
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(src), &n); err != nil {
		t.Fatalf("yaml: %v", err)
	}
	return Check(&n, reflect.TypeOf(doc{}))
}

func TestCheckRefusesWhatYAMLWouldReadAsAnotherInteger(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"workers: 1.5", "line 1: workers: 1.5 is not a whole number"},
		{"workers: 1e3", "workers: 1e3 is not a whole number"},
		{"workers: 2.0", "workers: 2.0 is not a whole number"},
		{"workers: 010", "workers: 010 has a leading zero, which YAML reads as octal; write it without the zero, or as 0o10"},
		{"workers: -010", "leading zero"},
		{"shared: 1.5", "shared: 1.5 is not a whole number"},
		{"plain: 0.5", "plain: 0.5"},
		{"inner:\n  count: 2.5", "line 2: inner.count: 2.5"},
		{"list:\n  - count: 1\n  - count: 07", "line 3: list[1].count: 07 has a leading zero"},
		{"by_name:\n  a: 1.25", "by_name.a: 1.25"},
		{"base: &b\n  count: 1.5\ninner: *b", "inner.count: 1.5"},
		{"inner:\n  <<: {count: 3.5}", "inner.count: 3.5"},
	} {
		err := check(t, tc.src)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error containing %q", tc.src, err, tc.want)
		}
	}
}

func TestCheckAcceptsIntegersAndOtherTypes(t *testing.T) {
	for _, src := range []string{
		"workers: 10",
		"workers: 0",
		"workers: -3",
		"workers: 0o10",
		"workers: 0x1f",
		"workers: 1_000",
		`workers: "1.5"`, // a string: the decoder refuses it
		"name: 010",
		"name: 1.5",
		"inner:\n  ratio: 0.5\n  wait: 1.5s",
		"unknown: 1.5", // no field: the decoder reports it
		"",
	} {
		if err := check(t, src); err != nil {
			t.Errorf("%q: %v", src, err)
		}
	}
}

func TestCheckReportsEveryValue(t *testing.T) {
	err := check(t, "workers: 1.5\nshared: 010\n")
	if err == nil || !strings.Contains(err.Error(), "workers") || !strings.Contains(err.Error(), "shared") {
		t.Fatalf("got %v, want both values named", err)
	}
}

func TestCheckStopsAtMaxDepth(t *testing.T) {
	// Nesting deeper than any configuration is walked only to maxDepth.
	type rec struct {
		Next *rec `yaml:"next"`
		N    int  `yaml:"n"`
	}
	src := strings.Repeat("{next: ", 2*maxDepth) + "{n: 1.5}" + strings.Repeat("}", 2*maxDepth)
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(src), &n); err != nil {
		t.Fatalf("yaml: %v", err)
	}
	if err := Check(&n, reflect.TypeOf(rec{})); err != nil {
		t.Fatalf("Check past maxDepth: %v", err)
	}
	shallow := "{next: {n: 1.5}}"
	if err := yaml.Unmarshal([]byte(shallow), &n); err != nil {
		t.Fatalf("yaml: %v", err)
	}
	if err := Check(&n, reflect.TypeOf(rec{})); err == nil {
		t.Fatal("Check of a shallow float: nil error")
	}
}
