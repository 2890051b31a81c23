// Package client is the Go client library for Custos, the key-management and
// field-encryption service. It speaks the custos.v1 gRPC API over mutual TLS
// and hands back plain Go types: callers never see protobuf messages.
//
// # Connecting
//
// A [Client] always uses mutual TLS 1.3: give [New] the CA certificate that
// signed the server's certificate and the caller's own certificate and key,
// either as PEM files or as a ready [crypto/tls.Config] (which must set
// RootCAs, or a verifier of its own). There is no way to make a plaintext
// connection.
//
//	c, err := client.New(ctx, client.Config{
//		Address:  "custos.internal:8443",
//		CAFile:   "/etc/custos/ca.pem",
//		CertFile: "/etc/custos/client.pem",
//		KeyFile:  "/etc/custos/client-key.pem",
//	})
//	if err != nil { ... }
//	defer c.Close()
//
// A Client is safe for concurrent use and should be shared: it holds one
// HTTP/2 connection that multiplexes every call.
//
// # Names
//
// Tenants and keys are addressed by resource name, "tenants/{tenant}" and
// "tenants/{tenant}/keys/{key}"; [TenantName] and [KeyName] build them.
//
// # Associated data
//
// [Client.Encrypt] and [Client.Decrypt] take the associated data as an
// explicit argument. The ciphertext is bound to it: Decrypt succeeds only with
// the same bytes. Bind each ciphertext to where it lives — at least the
// record's id and the field's name — so a ciphertext copied into another row
// or column fails to decrypt instead of silently yielding another user's data.
// [AssociatedData] builds an unambiguous encoding of such parts. Passing nil
// is allowed, but it must be written out, so the choice is visible in review.
//
// # What each key does
//
// A key's [Purpose] is fixed when it is created, and decides which calls it
// serves; any other call fails with [ErrWrongPurpose]:
//
//	| purpose                     | calls                                                   |
//	| --------------------------- | ------------------------------------------------------- |
//	| PurposeEncrypt              | Encrypt, Decrypt, their batches, Rewrap, RewrapBatch,   |
//	|                             | GenerateDataKey, GenerateWrappedDataKey, DecryptDataKey |
//	| PurposeEncryptDeterministic | Encrypt, Decrypt, their batches, Rewrap, RewrapBatch    |
//	| PurposeMAC                  | ComputeMAC, VerifyMAC, BlindIndex                       |
//	| PurposePassword             | HashPassword, VerifyPassword, the Password helper       |
//
// # Rotation and the key lifecycle
//
// [Client.RotateKey] adds a version and makes it the primary: new
// ciphertexts, MACs and password hashes use it, while everything made by
// older enabled versions still decrypts or verifies. To retire a version,
// move stored data forward — [Client.Rewrap] (or [Client.RewrapBatch])
// ciphertexts, store the first entry of [Client.BlindIndex], rehash passwords
// when [Client.VerifyPassword] says so — then refuse the old version with
// [Client.UpdateKey] (a minimum decryption version), [Client.DisableKeyVersion]
// (reversible) or [Client.DestroyKeyVersion] (after a waiting period during
// which [Client.RestoreKeyVersion] cancels). [Client.DeleteTenant] schedules
// a whole tenant for crypto-shredding the same way, and
// [Client.UndeleteTenant] cancels it.
//
// # Errors
//
// Every error returned by a call wraps an [*Error] carrying the gRPC code, the
// reason the server gave (if any) and its message. Test for a kind of failure
// with [errors.Is] and the sentinels:
//
//	| sentinel                | gRPC code            | reason (ErrorInfo, domain "custos.dev") |
//	| ----------------------- | -------------------- | --------------------------------------- |
//	| ErrInvalidArgument      | INVALID_ARGUMENT     | any                                     |
//	| ErrInvalidCiphertext    | INVALID_ARGUMENT     | CIPHERTEXT_NOT_AUTHENTIC                |
//	| ErrNotFound             | NOT_FOUND            | any                                     |
//	| ErrAlreadyExists        | ALREADY_EXISTS       | any                                     |
//	| ErrPermissionDenied     | PERMISSION_DENIED    | any                                     |
//	| ErrUnauthenticated      | UNAUTHENTICATED      | any                                     |
//	| ErrFailedPrecondition   | FAILED_PRECONDITION  | any                                     |
//	| ErrTenantDeleted        | FAILED_PRECONDITION  | TENANT_DELETED                          |
//	| ErrKeyVersionDisabled   | FAILED_PRECONDITION  | KEY_VERSION_DISABLED                    |
//	| ErrKeyVersionDestroyed  | FAILED_PRECONDITION  | KEY_VERSION_DESTROYED                   |
//	| ErrKeyVersionTooOld     | FAILED_PRECONDITION  | KEY_VERSION_TOO_OLD                     |
//	| ErrWrongPurpose         | FAILED_PRECONDITION  | WRONG_PURPOSE                           |
//	| ErrPrimaryVersion       | FAILED_PRECONDITION  | PRIMARY_VERSION                         |
//	| ErrWrongState           | FAILED_PRECONDITION  | WRONG_STATE                             |
//	| ErrResourceExhausted    | RESOURCE_EXHAUSTED   | any                                     |
//	| ErrHashQueueFull        | RESOURCE_EXHAUSTED   | HASH_QUEUE_FULL                         |
//	| ErrSubjectLocked        | RESOURCE_EXHAUSTED   | SUBJECT_LOCKED                          |
//	| ErrUnavailable          | UNAVAILABLE          | any                                     |
//	| ErrAborted              | ABORTED              | any                                     |
//
// A sentinel with a reason also matches its code's general sentinel: an error
// that is [ErrInvalidCiphertext] is also [ErrInvalidArgument],
// [ErrKeyVersionDisabled] is also [ErrFailedPrecondition], and
// [ErrSubjectLocked] is also [ErrResourceExhausted]. A call that fails
// because its context ended also matches [context.Canceled] or
// [context.DeadlineExceeded], and a call on a closed Client matches
// [ErrClosed]. The errors implement GRPCStatus, so [google.golang.org/grpc/status.FromError]
// and [google.golang.org/grpc/status.Code] keep working.
//
// Error messages never contain plaintext, ciphertext or key material.
package client
