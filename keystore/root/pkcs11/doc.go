// Package pkcs11 is a root provider backed by an AES-256 key inside a
// PKCS#11 token (an HSM; SoftHSM2 in tests), through github.com/miekg/pkcs11
// (cgo).
//
// The root key is a token object (CKA_TOKEN) that is sensitive and not
// extractable: its bytes never leave the token. New refuses a key that is
// extractable, not sensitive, not AES-256, or not allowed to encrypt and
// decrypt. CreateKey generates such a key when it is missing (setup and tests).
//
// # Wrapped blob format
//
//	0x01 | 12-byte IV | CKM_AES_GCM(KEK, aad) with a 16-byte tag
//
// The IV is random (crypto/rand by default); if the token substitutes its own
// IV, as some HSMs do, the blob records the one the token used.
//
// # PIN
//
// The user PIN comes from a file or an environment variable, never from the
// configuration itself. It is kept in memory to log in again after the token
// drops the login (a restarted network HSM, a re-inserted token) and never
// appears in errors.
//
// # Sessions and failures
//
// Sessions are pooled (Config.MaxSessions) and the provider is safe for
// concurrent use. PKCS#11 calls cannot be cancelled, so each operation runs
// in its own goroutine and the caller returns when its context ends; the
// abandoned call finishes in the background and cleans up its session.
// Errors meaning the device, slot, session, login or key handle went away
// (CKR_DEVICE_*, CKR_TOKEN_NOT_PRESENT, CKR_SESSION_*, CKR_USER_NOT_LOGGED_IN,
// CKR_*_HANDLE_INVALID, CKR_CRYPTOKI_NOT_INITIALIZED, a token no longer
// found by its label, ...) make the provider discard its sessions and find
// the token, log in and find the key again; the operation is tried once more
// and otherwise fails with an error wrapping root.ErrUnavailable. The next
// operation tries again, so the provider recovers by itself. A ciphertext the
// token refuses to decrypt (CKR_ENCRYPTED_DATA_INVALID and its kin) wraps
// root.ErrNotAuthentic. A refused PIN is a misconfiguration: neither.
package pkcs11

import "io"

// Config configures a PKCS#11 root.
type Config struct {
	// Module is the path of the PKCS#11 library, e.g.
	// /usr/lib/softhsm/libsofthsm2.so. Required.
	Module string
	// TokenLabel selects the token (slot) by its label. Required.
	TokenLabel string
	// KeyLabel is the CKA_LABEL of the AES-256 root key. Required.
	KeyLabel string
	// PINFile is a file holding the user PIN (a trailing newline is
	// ignored); or set PINEnv. Exactly one is required.
	PINFile string
	// PINEnv names an environment variable holding the user PIN.
	PINEnv string
	// MaxSessions bounds the sessions open at once. Default 4.
	MaxSessions int
	// Rand is the source of IVs, used concurrently. Default crypto/rand.
	Rand io.Reader
}
