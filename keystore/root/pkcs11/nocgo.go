//go:build !cgo

package pkcs11

import (
	"context"
	"errors"
)

// errNoCgo is returned by everything in a binary built with CGO_ENABLED=0:
// PKCS#11 modules are C libraries.
var errNoCgo = errors.New("pkcs11 root: this binary was built without cgo; the pkcs11 root needs cgo (CGO_ENABLED=1)")

// Root is unavailable without cgo.
type Root struct{}

// New fails: the binary was built without cgo.
func New(context.Context, Config) (*Root, error) { return nil, errNoCgo }

// CreateKey fails: the binary was built without cgo.
func CreateKey(context.Context, Config) (bool, error) { return false, errNoCgo }

// Close does nothing.
func (*Root) Close() error { return nil }

// Wrap fails: the binary was built without cgo.
func (*Root) Wrap(context.Context, []byte, []byte) ([]byte, error) { return nil, errNoCgo }

// Unwrap fails: the binary was built without cgo.
func (*Root) Unwrap(context.Context, []byte, []byte) ([]byte, error) { return nil, errNoCgo }
