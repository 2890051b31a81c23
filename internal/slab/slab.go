// Package slab allocates many values of one type together.
package slab

// Of returns pointers to n zero values of T allocated in one block: one
// allocation instead of n, for messages that live and die together (the
// results of one batch response). The block stays alive while any of the
// pointers does. n must not be negative.
func Of[T any](n int) []*T {
	block := make([]T, n)
	out := make([]*T, n)
	for i := range block {
		out[i] = &block[i]
	}
	return out
}
