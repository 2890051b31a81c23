package client

import (
	"context"
	"iter"
	"math"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"google.golang.org/grpc/codes"
)

// CreateTenant creates the tenant tenantID (^[a-z0-9][a-z0-9-]{0,62}$) with
// its key-encryption key. It fails with [ErrAlreadyExists] if the tenant
// exists and [ErrInvalidArgument] if the id is malformed.
func (c *Client) CreateTenant(ctx context.Context, tenantID string) (Tenant, error) {
	resp, err := c.keys.CreateTenant(ctx, &custosv1.CreateTenantRequest{TenantId: tenantID})
	if err != nil {
		return Tenant{}, c.callError(ctx, "create tenant "+tenantID, err)
	}
	if resp.GetTenant() == nil {
		return Tenant{}, localError("create tenant "+tenantID, codes.Internal, "response has no tenant")
	}
	return tenantFromProto(resp.GetTenant()), nil
}

// GetTenant returns the tenant named name ("tenants/{tenant}"). It fails with
// [ErrNotFound] if there is none.
func (c *Client) GetTenant(ctx context.Context, name string) (Tenant, error) {
	resp, err := c.keys.GetTenant(ctx, &custosv1.GetTenantRequest{Name: name})
	if err != nil {
		return Tenant{}, c.callError(ctx, "get tenant "+name, err)
	}
	if resp.GetTenant() == nil {
		return Tenant{}, localError("get tenant "+name, codes.Internal, "response has no tenant")
	}
	return tenantFromProto(resp.GetTenant()), nil
}

// ListTenants returns one page of the tenants the caller may see, in id
// order, and the token of the next page, which is empty after the last
// page. [Client.AllTenants] walks every page.
func (c *Client) ListTenants(ctx context.Context, opts ListOptions) ([]Tenant, string, error) {
	const op = "list tenants"
	size, err := pageSize(op, opts)
	if err != nil {
		return nil, "", err
	}
	resp, err := c.keys.ListTenants(ctx, &custosv1.ListTenantsRequest{PageSize: size, PageToken: opts.PageToken})
	if err != nil {
		return nil, "", c.callError(ctx, op, err)
	}
	return tenantsFromProto(resp.GetTenants()), resp.GetNextPageToken(), nil
}

// AllTenants iterates over every tenant the caller may see, in id order,
// fetching pages as needed. A failure is yielded once, with a zero Tenant,
// and ends the iteration:
//
//	for t, err := range c.AllTenants(ctx) {
//		if err != nil { return err }
//		...
//	}
func (c *Client) AllTenants(ctx context.Context) iter.Seq2[Tenant, error] {
	return allPages(ctx, "list tenants", c.ListTenants)
}

// CreateKey creates the key keyID (^[a-z0-9][a-z0-9-]{0,62}$) in the tenant
// parent ("tenants/{tenant}") with its first version, and returns it. It
// fails with [ErrAlreadyExists] if the key exists, [ErrNotFound] if the
// tenant does not, and [ErrTenantDeleted] if the tenant is scheduled for
// deletion.
func (c *Client) CreateKey(ctx context.Context, parent, keyID string, spec KeySpec) (Key, error) {
	op := "create key " + keyID + " in " + parent
	resp, err := c.keys.CreateKey(ctx, &custosv1.CreateKeyRequest{Parent: parent, KeyId: keyID, Key: keySpecToProto(spec)})
	if err != nil {
		return Key{}, c.callError(ctx, op, err)
	}
	if resp.GetKey() == nil {
		return Key{}, localError(op, codes.Internal, "response has no key")
	}
	return keyFromProto(resp.GetKey()), nil
}

// GetKey returns the key named name ("tenants/{tenant}/keys/{key}") with all
// its versions. It fails with [ErrNotFound] if there is none.
func (c *Client) GetKey(ctx context.Context, name string) (Key, error) {
	resp, err := c.keys.GetKey(ctx, &custosv1.GetKeyRequest{Name: name})
	if err != nil {
		return Key{}, c.callError(ctx, "get key "+name, err)
	}
	if resp.GetKey() == nil {
		return Key{}, localError("get key "+name, codes.Internal, "response has no key")
	}
	return keyFromProto(resp.GetKey()), nil
}

// ListKeys returns one page of the keys of the tenant parent
// ("tenants/{tenant}"), in id order, and the token of the next page, which
// is empty after the last page. [Client.AllKeys] walks every page.
func (c *Client) ListKeys(ctx context.Context, parent string, opts ListOptions) ([]Key, string, error) {
	op := "list keys of " + parent
	size, err := pageSize(op, opts)
	if err != nil {
		return nil, "", err
	}
	resp, err := c.keys.ListKeys(ctx, &custosv1.ListKeysRequest{Parent: parent, PageSize: size, PageToken: opts.PageToken})
	if err != nil {
		return nil, "", c.callError(ctx, op, err)
	}
	return keysFromProto(resp.GetKeys()), resp.GetNextPageToken(), nil
}

// AllKeys iterates over every key of the tenant parent ("tenants/{tenant}"),
// in id order, fetching pages as needed. A failure is yielded once, with a
// zero Key, and ends the iteration.
func (c *Client) AllKeys(ctx context.Context, parent string) iter.Seq2[Key, error] {
	return allPages(ctx, "list keys of "+parent, func(ctx context.Context, opts ListOptions) ([]Key, string, error) {
		return c.ListKeys(ctx, parent, opts)
	})
}

// RotateKey adds a new version to the key named name and makes it primary;
// older versions still decrypt. It returns the key as rotated.
func (c *Client) RotateKey(ctx context.Context, name string) (Key, error) {
	resp, err := c.keys.RotateKey(ctx, &custosv1.RotateKeyRequest{Name: name})
	if err != nil {
		return Key{}, c.callError(ctx, "rotate key "+name, err)
	}
	if resp.GetKey() == nil {
		return Key{}, localError("rotate key "+name, codes.Internal, "response has no key")
	}
	return keyFromProto(resp.GetKey()), nil
}

// pageSize checks that the page size fits the API's int32; the server
// checks its range.
func pageSize(op string, opts ListOptions) (int32, error) {
	if opts.PageSize < 0 || opts.PageSize > math.MaxInt32 {
		return 0, localError(op, codes.InvalidArgument, "page size %d out of range", opts.PageSize)
	}
	return int32(opts.PageSize), nil
}

// allPages iterates over the items of every page returned by list, starting
// from the first page with the server's default page size.
func allPages[T any](ctx context.Context, op string, list func(context.Context, ListOptions) ([]T, string, error)) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		var zero T
		token := ""
		seen := map[string]bool{}
		for {
			items, next, err := list(ctx, ListOptions{PageToken: token})
			if err != nil {
				yield(zero, err)
				return
			}
			for _, it := range items {
				if !yield(it, nil) {
					return
				}
			}
			if next == "" {
				return
			}
			if seen[next] {
				// A server that hands back a token it gave before (the
				// last one, or one of a cycle) would loop forever.
				yield(zero, localError(op, codes.Internal, "server returned a page token it had returned before"))
				return
			}
			seen[next] = true
			token = next
		}
	}
}
