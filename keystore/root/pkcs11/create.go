//go:build cgo

package pkcs11

import (
	"context"
	"errors"
	"fmt"

	p11 "github.com/miekg/pkcs11"
)

// CreateKey generates the root key in the token described by cfg, unless a
// secret key with cfg.KeyLabel is already there; it reports whether it
// created one. The key is an AES-256 token object (CKA_TOKEN), private,
// sensitive and not extractable, allowed to encrypt and decrypt only. It is
// for setup and tests; an HSM's own tools may create the same key.
func CreateKey(ctx context.Context, cfg Config) (created bool, err error) {
	if cfg.Module == "" || cfg.TokenLabel == "" || cfg.KeyLabel == "" {
		return false, errors.New("pkcs11 root: module, token label and key label are required")
	}
	pin, err := readPIN(cfg)
	if err != nil {
		return false, err
	}
	mod, err := loadModule(cfg.Module)
	if err != nil {
		return false, err
	}
	type result struct {
		created bool
		err     error
	}
	ch := make(chan result, 1)
	go func() {
		defer mod.release()
		created, err := createKey(mod, cfg.TokenLabel, cfg.KeyLabel, pin)
		ch <- result{created, err}
	}()
	select {
	case res := <-ch:
		if res.err != nil {
			return false, classify("create key", res.err)
		}
		return res.created, nil
	case <-ctx.Done():
		return false, ctxError("create key", ctx.Err())
	}
}

func createKey(mod *module, tokenLabel, keyLabel, pin string) (bool, error) {
	c := mod.ctx
	slot, err := findSlot(c, tokenLabel)
	if err != nil {
		return false, err
	}
	h, err := c.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		return false, err
	}
	defer c.CloseSession(h)
	if err := login(c, h, pin); err != nil {
		return false, err
	}
	if _, found, err := lookupKey(c, h, keyLabel); err != nil || found {
		return false, err
	}
	_, err = c.GenerateKey(h, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_VALUE_LEN, 32),
		p11.NewAttribute(p11.CKA_LABEL, keyLabel),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_ENCRYPT, true),
		p11.NewAttribute(p11.CKA_DECRYPT, true),
		p11.NewAttribute(p11.CKA_WRAP, false),
		p11.NewAttribute(p11.CKA_UNWRAP, false),
		p11.NewAttribute(p11.CKA_SIGN, false),
		p11.NewAttribute(p11.CKA_VERIFY, false),
		p11.NewAttribute(p11.CKA_DERIVE, false),
	})
	if err != nil {
		return false, fmt.Errorf("generate key: %w", err)
	}
	return true, nil
}
