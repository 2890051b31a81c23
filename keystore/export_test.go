package keystore

import (
	"context"
	"time"
)

// Test hooks for the external keystore_test package.

// LeaderPasses reports how many scheduler passes s ran holding the lease.
func LeaderPasses(s *Service) uint64 { return s.life.leaderPasses.Load() }

// Sweeps reports how many full sweeps s began holding the lease.
func Sweeps(s *Service) uint64 { return s.life.sweeps.Load() }

// SweepsDone reports how many full sweeps s finished holding the lease.
func SweepsDone(s *Service) uint64 { return s.life.sweepsDone.Load() }

// DuePass runs one pass over the due-time index.
func DuePass(ctx context.Context, s *Service) error { return s.duePass(ctx, nil) }

// AcquireLease takes or renews the scheduler lease for holder.
func AcquireLease(ctx context.Context, s *Service, holder string, ttl time.Duration) (bool, error) {
	return s.acquireLease(ctx, holder, ttl)
}
