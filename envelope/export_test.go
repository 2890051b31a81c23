package envelope

// SealWithNonce is Seal with the given nonce, for the test vectors only: a
// public API that takes a nonce would invite nonce reuse.
func (k *Key) SealWithNonce(nonce, plaintext, associatedData []byte) []byte {
	out := make([]byte, 0, k.Overhead()+len(plaintext))
	out = k.appendHeader(out)
	n := out[len(out) : len(out)+NonceSize]
	copy(n, nonce)
	return k.seal(out, n, plaintext, associatedData)
}
