package custos

import "testing"

// The ops listener's own host name is the one in ops.listen, if any: an
// IP address or an empty host is none.
func TestOpsHost(t *testing.T) {
	for listen, want := range map[string]string{
		"127.0.0.1:9464":        "",
		"[::1]:9464":            "",
		":9464":                 "",
		"custos-ops.lan:9464":   "custos-ops.lan",
		"localhost:9464":        "localhost",
		"off":                   "",
		"not an address at all": "",
	} {
		if got := opsHost(listen); got != want {
			t.Errorf("opsHost(%q) = %q, want %q", listen, got, want)
		}
	}
}
