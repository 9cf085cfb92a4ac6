// Package statetest opens state Stores on the multi-site Redis topology of
// redistest.Sites (each site a primary and a replica of every peer's
// primary), each on its own settable clock: for tests of code that keeps
// state across sites (shared/state itself, greylisting, rate limits).
package statetest

import (
	"sync"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/redistest"
	"github.com/geomilter/geomilter/shared/state"
)

// Clock is a settable clock, safe for concurrent use.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a clock that reads t until Set.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the time last set.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// Site is one site: its Redis (primary and replicas of the peers), its Store
// and the clock the Store runs on.
type Site struct {
	*redistest.Site
	Store *state.Store
	Clock *Clock
}

// Sites starts redistest.Sites(names…) and opens one Store per site with o
// (its Site, Local, Peers and Clock filled in; budgets and logger as given),
// every clock at start. The stores close when the test ends.
func Sites(t testing.TB, o state.Options, start time.Time, names ...string) map[string]*Site {
	t.Helper()
	sites := make(map[string]*Site, len(names))
	for n, rs := range redistest.Sites(t, names...) {
		clk := NewClock(start)
		so := o
		so.Site, so.Local, so.Clock = n, state.InstanceConfig{Addr: rs.Primary.Addr}, clk.Now
		so.Peers = map[string]state.InstanceConfig{}
		for p, r := range rs.Replicas {
			so.Peers[p] = state.InstanceConfig{Addr: r.Addr}
		}
		st, err := state.Open(so)
		if err != nil {
			t.Fatalf("site %s: %v", n, err)
		}
		t.Cleanup(func() { st.Close() })
		sites[n] = &Site{Site: rs, Store: st, Clock: clk}
	}
	return sites
}

// Poll retries f every 20 ms until it returns nil, and fails the test when it
// still does not after within; what names the wait in the failure.
func Poll(t testing.TB, within time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, still waiting for %s: %v", within, what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
