package client

import (
	"context"
	"strconv"
	"time"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"google.golang.org/grpc/codes"
)

// DeleteTenant schedules the tenant named name ("tenants/{tenant}") for
// crypto-shredding after waiting, which must be 1 to 365 days; zero means
// the server's default, 30 days. It returns the tenant in state
// [TenantDeleteScheduled] with its DeleteTime. From now on every call on the
// tenant's keys fails with [ErrTenantDeleted] (GetTenant, ListTenants,
// UndeleteTenant and the audit reads still work), until
// [Client.UndeleteTenant] cancels the deletion; once DeleteTime has passed, the tenant's keys are
// erased and nothing encrypted under them can ever be decrypted again.
//
// It fails with [ErrInvalidArgument] for a waiting period out of range,
// [ErrNotFound] for an unknown tenant and [ErrTenantDeleted] for a tenant
// already scheduled.
func (c *Client) DeleteTenant(ctx context.Context, name string, waiting time.Duration) (Tenant, error) {
	op := "delete tenant " + name
	resp, err := c.keys.DeleteTenant(ctx, &custosv1.DeleteTenantRequest{Name: name, WaitingPeriod: durationToProto(waiting)})
	if err != nil {
		return Tenant{}, c.callError(ctx, op, err)
	}
	if resp.GetTenant() == nil {
		return Tenant{}, localError(op, codes.Internal, "response has no tenant")
	}
	return tenantFromProto(resp.GetTenant()), nil
}

// UndeleteTenant cancels the scheduled deletion of the tenant named name
// before its DeleteTime, and returns it active again, with every key as it
// was. It fails with [ErrWrongState] if the tenant is not scheduled for
// deletion, with [ErrTenantDeleted] once its DeleteTime has passed (both
// are also [ErrFailedPrecondition]), and with [ErrNotFound] for an unknown
// or already shredded tenant.
func (c *Client) UndeleteTenant(ctx context.Context, name string) (Tenant, error) {
	op := "undelete tenant " + name
	resp, err := c.keys.UndeleteTenant(ctx, &custosv1.UndeleteTenantRequest{Name: name})
	if err != nil {
		return Tenant{}, c.callError(ctx, op, err)
	}
	if resp.GetTenant() == nil {
		return Tenant{}, localError(op, codes.Internal, "response has no tenant")
	}
	return tenantFromProto(resp.GetTenant()), nil
}

// UpdateKey changes the settings of the key named name that u sets, leaves
// the others as they are, and returns the updated key. For example, to
// refuse ciphertexts older than version 3:
//
//	minVersion := uint32(3)
//	k, err := c.UpdateKey(ctx, name, client.KeyUpdate{MinDecryptionVersion: &minVersion})
//
// It fails with [ErrInvalidArgument] if u sets nothing, a rotation period
// is below an hour, the minimum decryption version is above the primary, or
// a password policy is given for a key that is not [PurposePassword] or is
// out of bounds.
func (c *Client) UpdateKey(ctx context.Context, name string, u KeyUpdate) (Key, error) {
	op := "update key " + name
	key, mask := keyUpdateToProto(name, u)
	resp, err := c.keys.UpdateKey(ctx, &custosv1.UpdateKeyRequest{Key: key, UpdateMask: mask})
	if err != nil {
		return Key{}, c.callError(ctx, op, err)
	}
	return keyOf(op, resp)
}

// EnableKeyVersion makes a disabled version of the key named name decrypt
// (and verify MACs and passwords) again, and returns the key. Enabling an
// enabled version changes nothing. A version scheduled for destruction must
// be restored first with [Client.RestoreKeyVersion] ([ErrWrongState]);
// a destroyed one fails with [ErrKeyVersionDestroyed], an unknown one with
// [ErrNotFound].
func (c *Client) EnableKeyVersion(ctx context.Context, name string, version uint32) (Key, error) {
	op := versionOp("enable", name, version)
	resp, err := c.keys.EnableKeyVersion(ctx, &custosv1.EnableKeyVersionRequest{Name: name, Version: version})
	if err != nil {
		return Key{}, c.callError(ctx, op, err)
	}
	return keyOf(op, resp)
}

// DisableKeyVersion stops a version of the key named name from decrypting
// until it is enabled again, and returns the key: its ciphertexts then fail
// with [ErrKeyVersionDisabled], its MACs no longer verify and it drops out
// of blind indexes. Disabling a disabled version changes nothing. The
// primary version cannot be disabled ([ErrPrimaryVersion]): rotate the key
// first. A version scheduled for destruction fails with [ErrWrongState].
func (c *Client) DisableKeyVersion(ctx context.Context, name string, version uint32) (Key, error) {
	op := versionOp("disable", name, version)
	resp, err := c.keys.DisableKeyVersion(ctx, &custosv1.DisableKeyVersionRequest{Name: name, Version: version})
	if err != nil {
		return Key{}, c.callError(ctx, op, err)
	}
	return keyOf(op, resp)
}

// DestroyKeyVersion schedules a version of the key named name for
// destruction after waiting, which must be 1 to 365 days; zero means the
// server's default, 30 days. It returns the key, the version in state
// [VersionDestroyScheduled] with its DestroyTime. The version stops
// decrypting at once ([ErrKeyVersionDestroyed]); [Client.RestoreKeyVersion]
// cancels until DestroyTime, after which the version's key material is
// erased. The primary version cannot be destroyed ([ErrPrimaryVersion]), and
// a version already scheduled fails with [ErrWrongState] (its date stays).
func (c *Client) DestroyKeyVersion(ctx context.Context, name string, version uint32, waiting time.Duration) (Key, error) {
	op := versionOp("destroy", name, version)
	resp, err := c.keys.DestroyKeyVersion(ctx, &custosv1.DestroyKeyVersionRequest{Name: name, Version: version, WaitingPeriod: durationToProto(waiting)})
	if err != nil {
		return Key{}, c.callError(ctx, op, err)
	}
	return keyOf(op, resp)
}

// RestoreKeyVersion cancels the scheduled destruction of a version of the
// key named name before its DestroyTime, and returns the key. The version
// comes back [VersionDisabled]; enable it with [Client.EnableKeyVersion] to
// decrypt again. It fails with [ErrKeyVersionDestroyed] once DestroyTime
// has passed and with [ErrWrongState] for a version not scheduled for
// destruction.
func (c *Client) RestoreKeyVersion(ctx context.Context, name string, version uint32) (Key, error) {
	op := versionOp("restore", name, version)
	resp, err := c.keys.RestoreKeyVersion(ctx, &custosv1.RestoreKeyVersionRequest{Name: name, Version: version})
	if err != nil {
		return Key{}, c.callError(ctx, op, err)
	}
	return keyOf(op, resp)
}

// versionOp names an operation on one key version, for errors.
func versionOp(verb, name string, version uint32) string {
	return verb + " version " + strconv.FormatUint(uint64(version), 10) + " of key " + name
}

// keyResponse is a KeyService response that carries a key.
type keyResponse interface{ GetKey() *custosv1.Key }

// keyOf converts the key of a response, which must have one.
func keyOf(op string, resp keyResponse) (Key, error) {
	k := resp.GetKey()
	if k == nil {
		return Key{}, localError(op, codes.Internal, "response has no key")
	}
	return keyFromProto(k), nil
}
