package custosv1

// The API's own bounds, as the protos' validation rules state them. A
// deployment's limits (limits.max_batch_items, limits.max_plaintext_bytes)
// may lower them, never raise them.
const (
	// MaxBatchItems is the most items one batch request may carry.
	MaxBatchItems = 10000
	// MaxPlaintextBytes is the largest plaintext field.
	MaxPlaintextBytes = 1 << 20
)
