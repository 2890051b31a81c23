//go:build cgo

package pkcs11

import (
	"errors"
	"fmt"
	"sync"

	p11 "github.com/miekg/pkcs11"
)

// A PKCS#11 library is initialised once per process (C_Initialize), however
// many roots use it; C_Finalize would end every user's sessions. modules
// counts the users of each library and finalises it after the last one
// closes.
var modules = struct {
	sync.Mutex
	m map[string]*module
}{m: map[string]*module{}}

type module struct {
	path string
	ctx  *p11.Ctx
	refs int // guarded by modules
}

// loadModule loads and initialises the library at path, or takes another
// reference to it.
func loadModule(path string) (*module, error) {
	modules.Lock()
	defer modules.Unlock()
	if m, ok := modules.m[path]; ok {
		m.refs++
		return m, nil
	}
	ctx := p11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("pkcs11 root: cannot load module %s", path)
	}
	m := &module{path: path, ctx: ctx, refs: 1}
	if err := m.initialize(); err != nil {
		ctx.Destroy()
		return nil, fmt.Errorf("pkcs11 root: initialise %s: %w", path, err)
	}
	modules.m[path] = m
	return m, nil
}

// initialize calls C_Initialize; a library that is already initialised is fine.
func (m *module) initialize() error {
	err := m.ctx.Initialize()
	if errors.Is(err, p11.Error(p11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		return nil
	}
	return err
}

// release drops a reference, finalising and unloading the library with the last.
func (m *module) release() {
	modules.Lock()
	defer modules.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	delete(modules.m, m.path)
	_ = m.ctx.Finalize()
	m.ctx.Destroy()
}
