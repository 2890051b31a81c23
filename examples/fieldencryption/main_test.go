package main

import (
	"testing"

	"github.com/custos-kms/custos/client/clienttest"
)

// TestRunAgainstARealServer runs the example, twice (the second run finds the
// tenant and key already there), against a real in-process Custos laid out
// like `custos dev`'s directory.
func TestRunAgainstARealServer(t *testing.T) {
	srv := clienttest.Start(t)
	for range 2 {
		if err := run(srv.Addr, srv.Dir); err != nil {
			t.Fatal(err)
		}
	}
}
