package backup

// SetMaxManifestBytes lowers the manifest's limit for a test.
func SetMaxManifestBytes(n int) (restore func()) {
	old := maxManifestBytes
	maxManifestBytes = n
	return func() { maxManifestBytes = old }
}
