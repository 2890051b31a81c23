package envelope

// SealWithNonce exposes sealWithNonce to the tests, for the test vectors:
// a public API that takes a nonce would invite nonce reuse.
func (k *Key) SealWithNonce(nonce, plaintext, associatedData []byte) []byte {
	return k.sealWithNonce(nonce, plaintext, associatedData)
}
