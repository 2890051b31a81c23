package server

import "github.com/custos-kms/custos/server/policy"

// The test-only Panicker service (grpc_test.go) gets a row, so its calls go
// through the whole interceptor chain to its panicking handler.
func init() {
	methods["/custos.test.Panicker/Panic"] = row("panic", policy.ClassData, scopePublic)
}

// MethodTable returns the full method names that have a row, for the test
// that every registered method has one.
func MethodTable() map[string]bool {
	out := make(map[string]bool, len(methods))
	for m := range methods {
		out[m] = true
	}
	return out
}

// MethodOps returns each method's operation name, as audit events record it.
func MethodOps() map[string]string {
	out := make(map[string]string, len(methods))
	for name, m := range methods {
		out[name] = m.op
	}
	return out
}
