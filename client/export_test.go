package client

// SetTestHookInstall sets the hook that runs between caching a fetched
// data key and making it current, and returns a func that removes it.
func SetTestHookInstall(f func(wrapped []byte)) (restore func()) {
	testHookInstall = f
	return func() { testHookInstall = nil }
}
