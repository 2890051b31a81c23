package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	middleware "github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"

	"github.com/custos-kms/custos/keystore"
	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"github.com/custos-kms/custos/server/identity"
	"github.com/custos-kms/custos/server/policy"
)

// The request path. Every call goes through one interceptor that, driven by
// the method table below, reads the tenant and key the request names,
// authorizes the caller for them and applies the caller's rate limits —
// before the handler runs, so a handler cannot forget a check and a caller
// learns nothing about tenants it may not see. Handlers read what the path
// resolved with callOf.

// scope says where a request names its tenant (and key).
type scope uint8

const (
	// scopePublic: no authorization beyond a verified client certificate
	// (health checks, reflection).
	scopePublic scope = iota
	// scopeNoTenant: the call names no tenant (ListTenants); the caller
	// needs the permission on some tenant and the handler filters.
	scopeNoTenant
	// scopeTenantID: CreateTenantRequest.tenant_id.
	scopeTenantID
	// scopeTenantName: name is tenants/{tenant}.
	scopeTenantName
	// scopeParent: parent is tenants/{tenant}.
	scopeParent
	// scopeKeyName: name is tenants/{tenant}/keys/{key}.
	scopeKeyName
	// scopeUpdateKey: key.name is tenants/{tenant}/keys/{key}.
	scopeUpdateKey
)

// method is one row of the method table.
type method struct {
	// op names the operation in logs, metrics and audit events.
	op string
	// perms: the caller needs at least one of them on the tenant. Decrypt
	// takes decrypt (fields) or datakey (data keys); the handler asks
	// call.granted which it has.
	perms []policy.Permission
	// class is the rate-limit class of the call.
	class policy.Class
	scope scope
}

// KnownMethod reports whether fullMethod ("/package.Service/Method") is
// one the server serves: a path outside the table is the caller's own text
// (telemetry keyed by it would carry and multiply it).
func KnownMethod(fullMethod string) bool {
	_, ok := methods[fullMethod]
	return ok
}

func row(op string, class policy.Class, sc scope, perms ...policy.Permission) method {
	return method{op: op, perms: perms, class: class, scope: sc}
}

// methods is the method table: every RPC the server registers has a row
// (TestEveryRegisteredMethodHasARow). A call to a method without one is
// refused.
var methods = map[string]method{
	custosv1.CryptoService_Encrypt_FullMethodName:         row("encrypt", policy.ClassData, scopeKeyName, policy.Encrypt),
	custosv1.CryptoService_Decrypt_FullMethodName:         row("decrypt", policy.ClassData, scopeKeyName, policy.Decrypt, policy.DataKey),
	custosv1.CryptoService_EncryptBatch_FullMethodName:    row("encrypt_batch", policy.ClassData, scopeKeyName, policy.Encrypt),
	custosv1.CryptoService_DecryptBatch_FullMethodName:    row("decrypt_batch", policy.ClassData, scopeKeyName, policy.Decrypt),
	custosv1.CryptoService_Rewrap_FullMethodName:          row("rewrap", policy.ClassData, scopeKeyName, policy.Rewrap),
	custosv1.CryptoService_RewrapBatch_FullMethodName:     row("rewrap_batch", policy.ClassData, scopeKeyName, policy.Rewrap),
	custosv1.CryptoService_GenerateDataKey_FullMethodName: row("generate_data_key", policy.ClassData, scopeKeyName, policy.DataKey),
	custosv1.CryptoService_ComputeMac_FullMethodName:      row("compute_mac", policy.ClassData, scopeKeyName, policy.MAC),
	custosv1.CryptoService_VerifyMac_FullMethodName:       row("verify_mac", policy.ClassData, scopeKeyName, policy.MAC),
	custosv1.CryptoService_BlindIndex_FullMethodName:      row("blind_index", policy.ClassData, scopeKeyName, policy.MAC),
	custosv1.CryptoService_HashPassword_FullMethodName:    row("hash_password", policy.ClassHashing, scopeKeyName, policy.Hash),
	custosv1.CryptoService_VerifyPassword_FullMethodName:  row("verify_password", policy.ClassHashing, scopeKeyName, policy.Hash),

	custosv1.KeyService_CreateTenant_FullMethodName:      row("create_tenant", policy.ClassControl, scopeTenantID, policy.TenantsAdmin),
	custosv1.KeyService_GetTenant_FullMethodName:         row("get_tenant", policy.ClassControl, scopeTenantName, policy.TenantsAdmin),
	custosv1.KeyService_ListTenants_FullMethodName:       row("list_tenants", policy.ClassControl, scopeNoTenant, policy.TenantsAdmin),
	custosv1.KeyService_DeleteTenant_FullMethodName:      row("delete_tenant", policy.ClassControl, scopeTenantName, policy.TenantsAdmin),
	custosv1.KeyService_UndeleteTenant_FullMethodName:    row("undelete_tenant", policy.ClassControl, scopeTenantName, policy.TenantsAdmin),
	custosv1.KeyService_CreateKey_FullMethodName:         row("create_key", policy.ClassControl, scopeParent, policy.KeysWrite),
	custosv1.KeyService_GetKey_FullMethodName:            row("get_key", policy.ClassControl, scopeKeyName, policy.KeysRead),
	custosv1.KeyService_ListKeys_FullMethodName:          row("list_keys", policy.ClassControl, scopeParent, policy.KeysRead),
	custosv1.KeyService_RotateKey_FullMethodName:         row("rotate_key", policy.ClassControl, scopeKeyName, policy.KeysRotate),
	custosv1.KeyService_UpdateKey_FullMethodName:         row("update_key", policy.ClassControl, scopeUpdateKey, policy.KeysWrite),
	custosv1.KeyService_EnableKeyVersion_FullMethodName:  row("enable_key_version", policy.ClassControl, scopeKeyName, policy.KeysWrite),
	custosv1.KeyService_DisableKeyVersion_FullMethodName: row("disable_key_version", policy.ClassControl, scopeKeyName, policy.KeysWrite),
	custosv1.KeyService_DestroyKeyVersion_FullMethodName: row("destroy_key_version", policy.ClassControl, scopeKeyName, policy.KeysWrite),
	custosv1.KeyService_RestoreKeyVersion_FullMethodName: row("restore_key_version", policy.ClassControl, scopeKeyName, policy.KeysWrite),

	custosv1.AuditService_ListAuditEvents_FullMethodName:    row("list_audit_events", policy.ClassControl, scopeParent, policy.AuditRead),
	custosv1.AuditService_GetAuditCheckpoint_FullMethodName: row("get_audit_checkpoint", policy.ClassControl, scopeParent, policy.AuditRead),

	healthpb.Health_Check_FullMethodName:                                   row("health_check", "", scopePublic),
	healthpb.Health_List_FullMethodName:                                    row("health_list", "", scopePublic),
	healthpb.Health_Watch_FullMethodName:                                   row("health_watch", "", scopePublic),
	reflectionv1.ServerReflection_ServerReflectionInfo_FullMethodName:      row("reflection", "", scopePublic),
	reflectionv1alpha.ServerReflection_ServerReflectionInfo_FullMethodName: row("reflection", "", scopePublic),
}

// call is what the request path resolved for one call; handlers read it
// with callOf.
type call struct {
	// rid is the call's request id (x-request-id).
	rid      string
	method   *method
	identity string
	// policy is the policy the call was authorized under; a handler that
	// filters results (ListTenants) uses the same one.
	policy *policy.Policy
	tenant string
	key    keystore.KeyRef // set for scopeKeyName and scopeUpdateKey
	// granted holds the method's permissions the caller has on tenant.
	granted [2]bool
}

// has reports whether the caller holds perm, one of the method's
// permissions, on the call's tenant.
func (c *call) has(perm policy.Permission) bool {
	for i, p := range c.method.perms {
		if p == perm {
			return c.granted[i]
		}
	}
	return false
}

type callKey struct{}

// callOf returns what the request path resolved for the call. Handlers of
// methods with a table row always have one.
func callOf(ctx context.Context) *call {
	c, _ := ctx.Value(callKey{}).(*call)
	if c == nil {
		// Only reachable if a handler is registered without the request
		// path; fail closed.
		return &call{method: &method{}}
	}
	return c
}

// resolve reads the tenant and key the request names.
func (c *call) resolve(req any) error {
	var err error
	switch c.method.scope {
	case scopeTenantID:
		c.tenant = req.(interface{ GetTenantId() string }).GetTenantId()
		if !keystore.ValidID(c.tenant) {
			return fmt.Errorf("%w: tenant_id must match %s", keystore.ErrInvalidArgument, keystore.IDPattern)
		}
	case scopeTenantName:
		c.tenant, err = keystore.ParseTenantName(req.(interface{ GetName() string }).GetName())
	case scopeParent:
		c.tenant, err = keystore.ParseTenantName(req.(interface{ GetParent() string }).GetParent())
	case scopeKeyName:
		c.key, err = keystore.ParseKeyName(req.(interface{ GetName() string }).GetName())
		c.tenant = c.key.Tenant
	case scopeUpdateKey:
		if c.key, err = keystore.ParseKeyName(req.(*custosv1.UpdateKeyRequest).GetKey().GetName()); err != nil {
			err = fmt.Errorf("%w: key.name is not tenants/{tenant}/keys/{key}", keystore.ErrInvalidArgument)
		}
		c.tenant = c.key.Tenant
	}
	return err
}

// authorize fills granted and fails unless the caller holds at least one of
// the method's permissions.
func (c *call) authorize() error {
	allowed := false
	for i, p := range c.method.perms {
		if c.method.scope == scopeNoTenant {
			c.granted[i] = c.policy.AllowedAny(c.identity, p)
		} else {
			c.granted[i] = c.policy.Allowed(c.identity, c.tenant, p)
		}
		allowed = allowed || c.granted[i]
	}
	if allowed {
		return nil
	}
	if c.method.scope == scopeNoTenant {
		return status.Errorf(codes.PermissionDenied, "identity %q lacks permission %q on any tenant", c.identity, c.method.perms[0])
	}
	return status.Errorf(codes.PermissionDenied, "identity %q lacks permission %q on tenant %q", c.identity, c.method.perms[0], c.tenant)
}

// items is how many items a batch request carries (each takes a rate-limit
// token); batch is false for other requests, which take one.
func items(req any) (n int, batch bool) {
	switch r := req.(type) {
	case *custosv1.EncryptBatchRequest:
		return len(r.GetItems()), true
	case *custosv1.DecryptBatchRequest:
		return len(r.GetItems()), true
	case *custosv1.RewrapBatchRequest:
		return len(r.GetItems()), true
	}
	return 1, false
}

// requestPath runs the request path of a unary call by the caller id
// (authenticated by unaryPath), then its handler.
func (s *Server) requestPath(ctx context.Context, c *call, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	m, ok := methods[info.FullMethod]
	if !ok {
		s.logger.LogAttrs(ctx, slog.LevelError, "method has no row in the method table; refused", slog.String("method", info.FullMethod))
		return nil, status.Error(codes.PermissionDenied, "method is not authorized for anyone")
	}
	if m.scope == scopePublic {
		return handler(ctx, req)
	}
	if c.identity == "" {
		return nil, status.Error(codes.Unauthenticated, "no verified client certificate")
	}
	c.method, c.policy = &m, s.policy.Current()
	// Sizes first, as protovalidate checks them for the other RPCs: a
	// malformed call is refused before its names are read, so its audit
	// event names no tenant the caller may not use.
	if err := checkSingle(req); err != nil {
		return nil, err
	}
	if err := c.resolve(req); err != nil {
		return nil, s.toError(context.WithValue(ctx, callKey{}, c), err) // its log line names the call
	}
	if err := c.authorize(); err != nil {
		return nil, err
	}
	if s.policy.Current().HasRateLimits() {
		n, batch := items(req)
		if batch {
			// An oversized batch is refused before it costs any tokens.
			if err := s.checkBatch(n); err != nil {
				return nil, err
			}
		}
		if err := s.limiter.allow(c, max(n, 1)); err != nil {
			return nil, err
		}
	}
	// A call whose deadline passed (in the queue, or as sent) is not run:
	// its caller has its answer already, and an encryption would be counted
	// and recorded as OK for nobody. grpc-go refuses such a call only when
	// it notices before the request is read.
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	return handler(context.WithValue(ctx, callKey{}, c), req)
}

// streamRequestPath authenticates every stream, audits it (allowed or
// refused), lets public streams (health watches, reflection) through and
// refuses any other: no Custos RPC streams, and one added later must get
// its checks here before it can be called.
func (s *Server) streamRequestPath(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	ctx := ss.Context()
	start, rid := time.Now(), requestIDOf(ctx)
	setRequestID(ctx, rid)
	c := &call{}
	if s.audit != nil {
		defer func() {
			s.audit.Begin() // a stream may last hours: announce its event only now
			if aerr := s.recordEvent(auditEvent(ctx, rid, info.FullMethod, c, start, nil, nil, err)); aerr != nil && err == nil {
				err = aerr
			}
		}()
	}
	id, err := identity.Authenticate(ctx)
	if err != nil {
		// Refused before the interceptors that log a finished call: its
		// line here, as the unary path writes one.
		s.logCall(ctx, rid, c, clip(info.FullMethod), streamType(info), start, err)
		return err
	}
	c.identity = id
	if srv == nil {
		// No service (grpc.UnknownServiceHandler): the call log line the
		// interceptors after this one would have written, the caller's
		// path bounded.
		err = unknownMethod(srv, ss)
		s.logCall(ctx, rid, c, clip(info.FullMethod), "bidi_stream", start, err)
		return err
	}
	if m, ok := methods[info.FullMethod]; ok && m.scope == scopePublic {
		annotateSpan(ctx, rid, c)
		wrapped := middleware.WrapServerStream(ss)
		// The call log line (callFields) names the request id too.
		wrapped.WrappedContext = context.WithValue(identity.NewContext(ctx, id), requestIDKey{}, rid)
		if info.IsClientStream {
			// A read waiting on the client (reflection's) ends when the
			// server drains, as health watches do.
			return handler(srv, drainingStream{wrapped, s.drained})
		}
		return handler(srv, wrapped)
	}
	s.logger.LogAttrs(ctx, slog.LevelError, "streaming method has no request path; refused", slog.String("method", info.FullMethod), slog.String("request_id", rid), slog.String("identity", id))
	return status.Error(codes.PermissionDenied, "method is not authorized for anyone")
}

// drainingStream is a reflection stream whose RecvMsg ends (io.EOF, as
// when the client closes its side) once the server drains: the handler
// waits in it for the client's next request, and a graceful stop waits for
// every handler, so an open reflection client held every stop to
// shutdown_timeout. The abandoned read ends with the stream.
type drainingStream struct {
	grpc.ServerStream
	drained context.Context
}

func (d drainingStream) RecvMsg(m any) error {
	if d.drained.Err() != nil {
		return io.EOF
	}
	done := make(chan error, 1)
	go func() { done <- d.ServerStream.RecvMsg(m) }()
	select {
	case err := <-done:
		return err
	case <-d.drained.Done():
		return io.EOF
	}
}
