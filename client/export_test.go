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

// MaxRefused is how many refused unwraps an Envelope remembers.
const MaxRefused = maxRefused

// NoteRefused records that the service refused to unwrap wrapped, as a
// refused DecryptDataKey does.
func NoteRefused(e *Envelope, wrapped []byte) {
	e.mu.Lock()
	gen := e.gen
	e.mu.Unlock()
	e.noteRefused(gen, wrapped)
}

// RecentlyRefused reports whether e would send an envelope of wrapped
// straight to the service.
func RecentlyRefused(e *Envelope, wrapped []byte) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.refusedLocked(wrapped, e.opts.Now())
}
