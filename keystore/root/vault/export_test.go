package vault

// NewUnchecked builds a Root without talking to Vault, so that tests can
// point it at an endpoint that never answers.
func NewUnchecked(cfg Config) (*Root, error) { return newRoot(cfg) }
