package client

import (
	"context"

	custosv1 "github.com/custos-kms/custos/proto/custos/v1"
	"google.golang.org/grpc/codes"
)

// HashPassword hashes password (1 to 4096 bytes, not truncated at 72) with
// the PASSWORD key named name and returns the string to store: one
// self-describing string holding the algorithm, its cost and the pepper
// key version (docs/formats.md). The server computes HMAC-SHA256 of the
// password under the key's primary version (the pepper), then bcrypt or
// argon2id as the key's [PasswordPolicy] says, so a stolen table of hashes
// cannot be attacked without the service. [Client.Password] wraps this and
// [Client.VerifyPassword] for one key.
//
// Hashing is slow on purpose and runs in a bounded pool on the server: when
// it is full the call fails with [ErrHashQueueFull] (also
// [ErrResourceExhausted]); retry later with backoff. It needs the hash
// permission, and fails with [ErrWrongPurpose] for a key that is not
// [PurposePassword].
func (c *Client) HashPassword(ctx context.Context, name string, password []byte) (string, error) {
	op := "hash password with " + name
	resp, err := c.crypto.HashPassword(ctx, &custosv1.HashPasswordRequest{Name: name, Password: password})
	if err != nil {
		return "", c.callError(ctx, op, err)
	}
	if resp.GetHash() == "" {
		return "", localError(op, codes.Internal, "response has no hash")
	}
	return resp.GetHash(), nil
}

// VerifyPassword reports whether password matches hash, a string made by
// [Client.HashPassword] with the key named name, and, on a match, whether
// the caller should hash the password again and store the new hash
// (needsRehash): the key was rotated since, so the hash uses an old pepper
// version, or its algorithm or cost is below the key's current policy, or
// its cost is above the deployment's limits. needsRehash is never true
// without a match. A password that does not match is (false, false, nil);
// so is a hash made with another key, when this key has the pepper version
// it names (else the call fails: formats.md).
//
// subject, if not empty, names who is logging in (a user id, at most 256
// characters) for the key's brute-force lockout: when the policy enables it, a
// subject with too many failed verifications within the window fails with
// [ErrSubjectLocked] (also [ErrResourceExhausted]) without the password
// being checked, until the lockout duration has passed; a match resets the
// count. With lockout off, subject is ignored.
//
// It fails with [ErrInvalidArgument] for a malformed hash, with
// [ErrKeyVersionDisabled], [ErrKeyVersionDestroyed] or [ErrKeyVersionTooOld]
// when the hash's pepper version may no longer be used, and with
// [ErrHashQueueFull] when the server's hashing pool is full.
func (c *Client) VerifyPassword(ctx context.Context, name string, password []byte, hash, subject string) (match, needsRehash bool, err error) {
	resp, err := c.crypto.VerifyPassword(ctx, &custosv1.VerifyPasswordRequest{Name: name, Password: password, Hash: hash, Subject: subject})
	if err != nil {
		return false, false, c.callError(ctx, "verify password with "+name, err)
	}
	return resp.GetMatch(), resp.GetMatch() && resp.GetNeedsRehash(), nil
}

// Password hashes and verifies passwords with one PASSWORD key; make one
// with [Client.Password]. It holds no state beyond the client and the key's
// name, is safe for concurrent use, and is cheap to make.
type Password struct {
	c    *Client
	name string
}

// Password returns the password helper for the PASSWORD key named name
// ("tenants/{tenant}/keys/{key}"). It does not call the server.
//
// A login handler then reads:
//
//	pw := c.Password(client.KeyName("acme", "logins"))
//	match, rehash, err := pw.VerifySubject(ctx, password, user.Hash, user.ID)
//	switch {
//	case errors.Is(err, client.ErrSubjectLocked):
//		// too many failures: refuse, tell the user to wait
//	case err != nil:
//		// the server could not check it
//	case !match:
//		// wrong password
//	case rehash:
//		if h, err := pw.Hash(ctx, password); err == nil {
//			user.Hash = h // store it
//		}
//	}
func (c *Client) Password(name string) *Password {
	return &Password{c: c, name: name}
}

// Name returns the name of the key.
func (p *Password) Name() string { return p.name }

// Hash hashes password for storage; see [Client.HashPassword].
func (p *Password) Hash(ctx context.Context, password []byte) (string, error) {
	return p.c.HashPassword(ctx, p.name, password)
}

// Verify reports whether password matches hash and, on a match, whether
// hash should be replaced by a new [Password.Hash] of the password; see
// [Client.VerifyPassword]. It names no subject, so the key's lockout does
// not apply; use [Password.VerifySubject] for logins.
func (p *Password) Verify(ctx context.Context, password []byte, hash string) (match, needsRehash bool, err error) {
	return p.c.VerifyPassword(ctx, p.name, password, hash, "")
}

// VerifySubject is [Password.Verify] for the login of subject (a user id):
// when the key's policy enables lockout, too many failures lock the subject
// and later calls fail with [ErrSubjectLocked] until the lock expires. See
// [Client.VerifyPassword].
func (p *Password) VerifySubject(ctx context.Context, password []byte, hash, subject string) (match, needsRehash bool, err error) {
	return p.c.VerifyPassword(ctx, p.name, password, hash, subject)
}
