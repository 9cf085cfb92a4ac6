package state

import (
	"context"
	"time"
)

// Backend is what milters use of the state: rate counters, greylist
// triplets and named sets. *Store implements it over the site-partitioned
// Redis; *MemStore in process memory, for standalone mode (no redis section)
// and tests. A milter gets one from its environment and never a nil one, so
// it has one code path whatever the deployment.
//
// Every method answers within the store's own call budget (redis.timeout
// for a Store); an error from a Store wraps ErrUnavailable when the own
// primary did not answer. A MemStore fails only on invalid arguments.
type Backend interface {
	Counter
	// GreylistSeen records a sighting of the triplet key and returns the
	// merged view: the earliest first sighting and whether the triplet has
	// passed. A new entry expires ttl after its first sighting.
	GreylistSeen(ctx context.Context, key string, ttl time.Duration) (firstSeen time.Time, passed bool, err error)
	// GreylistPass marks the triplet passed and keeps it for ttl from now.
	GreylistPass(ctx context.Context, key string, ttl time.Duration) error
	// SetAdd adds member to set name for ttl (0: no expiry); a member's
	// expiry only ever moves later.
	SetAdd(ctx context.Context, name, member string, ttl time.Duration) error
	// SetHas reports whether member is in set name, unexpired.
	SetHas(ctx context.Context, name, member string) (bool, error)
	// InMemory reports a store in process memory: its calls never wait on
	// the network, so there is no budget to keep and nothing to fall back
	// to (see BudgetedCounter).
	InMemory() bool
}

var (
	_ Backend = (*Store)(nil)
	_ Backend = (*MemStore)(nil)
)

// InMemory implements Backend: a Store is Redis.
func (s *Store) InMemory() bool { return false }
