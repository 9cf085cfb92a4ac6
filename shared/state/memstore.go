package state

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"
)

// MemStore is the state of one process: rate counters (a MemCounter),
// greylist triplets and named sets in memory, with the semantics of a Store
// whose site has no peers — the merge rules of docs/state.md applied to one
// site. Standalone mode uses it; nothing is shared between processes or kept
// across restarts. Expired entries are swept as it goes. Safe for
// concurrent use.
type MemStore struct {
	*MemCounter
	clock func() time.Time

	mu      sync.Mutex
	grey    map[string]memGrey
	sets    map[memSetKey]float64 // member expiry, Unix ms (+Inf: never)
	inserts int
}

type memGrey struct {
	firstSeen int64 // Unix ms
	passed    bool
	expiry    int64 // Unix ms
}

type memSetKey struct{ name, member string }

// NewMemStore returns an empty store reading time from clock (time.Now if
// nil).
func NewMemStore(clock func() time.Time) *MemStore {
	if clock == nil {
		clock = time.Now
	}
	return &MemStore{
		MemCounter: NewMemCounter(clock),
		clock:      clock,
		grey:       make(map[string]memGrey),
		sets:       make(map[memSetKey]float64),
	}
}

// InMemory implements Backend.
func (*MemStore) InMemory() bool { return true }

// GreylistSeen implements Backend as Store.GreylistSeen does for one site:
// the first sighting sets first_seen and the expiry (ttl after it); later
// sightings change neither.
func (m *MemStore) GreylistSeen(_ context.Context, key string, ttl time.Duration) (time.Time, bool, error) {
	if ttl < time.Millisecond {
		return time.Time{}, false, fmt.Errorf("state: greylist seen: ttl %v: must be at least 1ms", ttl)
	}
	now := m.clock().UnixMilli()
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.grey[key]
	if !ok || g.expiry <= now {
		g = memGrey{firstSeen: now, expiry: now + ttl.Milliseconds()}
		m.grey[key] = g
		m.insertedLocked(now)
	}
	return time.UnixMilli(g.firstSeen), g.passed, nil
}

// GreylistPass implements Backend as Store.GreylistPass does: passed, kept
// for ttl from now, first_seen set if the triplet was unknown.
func (m *MemStore) GreylistPass(_ context.Context, key string, ttl time.Duration) error {
	if ttl < time.Millisecond {
		return fmt.Errorf("state: greylist pass: ttl %v: must be at least 1ms", ttl)
	}
	now := m.clock().UnixMilli()
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.grey[key]
	if !ok || g.expiry <= now {
		g = memGrey{firstSeen: now}
		m.insertedLocked(now)
	}
	g.passed = true
	g.expiry = now + ttl.Milliseconds()
	m.grey[key] = g
	return nil
}

// SetAdd implements Backend as Store.SetAdd does: the member's expiry only
// moves later.
func (m *MemStore) SetAdd(_ context.Context, name, member string, ttl time.Duration) error {
	now := m.clock().UnixMilli()
	expiry := math.Inf(1)
	if ttl > 0 {
		expiry = float64(now + ttl.Milliseconds())
	}
	k := memSetKey{name, member}
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, ok := m.sets[k]
	if ok && cur > float64(now) && cur >= expiry {
		return nil
	}
	if !ok {
		m.insertedLocked(now)
	}
	m.sets[k] = expiry
	return nil
}

// SetHas implements Backend.
func (m *MemStore) SetHas(_ context.Context, name, member string) (bool, error) {
	now := m.clock().UnixMilli()
	m.mu.Lock()
	exp, ok := m.sets[memSetKey{name, member}]
	m.mu.Unlock()
	return MergeSet([]SetMember{{Present: ok, Expiry: exp}}, now), nil
}

// insertedLocked counts a new entry and sweeps expired ones every
// sweepEvery inserts, so memory follows the live entries.
func (m *MemStore) insertedLocked(now int64) {
	m.inserts++
	if m.inserts%sweepEvery != 0 {
		return
	}
	for k, g := range m.grey {
		if g.expiry <= now {
			delete(m.grey, k)
		}
	}
	for k, exp := range m.sets {
		if exp <= float64(now) {
			delete(m.sets, k)
		}
	}
}

// Entries is the number of greylist triplets and set members held (for
// tests and metrics), expired ones not yet swept included.
func (m *MemStore) Entries() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.grey) + len(m.sets)
}
