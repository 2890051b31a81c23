package client

// SetTestHookInstall sets the hook that runs between caching a fetched
// data key and making it current, and returns a func that removes it.
func SetTestHookInstall(f func(wrapped []byte)) (restore func()) {
	testHookInstall = f
	return func() { testHookInstall = nil }
}

// HeldDataKeys is how many data keys e holds: cached for decryption, and
// the current one for encryption.
func HeldDataKeys(e *Envelope) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := len(e.cache)
	if e.cur.Load() != nil {
		n++
	}
	return n
}
