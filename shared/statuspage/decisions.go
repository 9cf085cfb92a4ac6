package statuspage

import (
	"sort"
	"sync"
	"time"
)

// Window is how many whole minutes the decision ring keeps (and the page shows).
const Window = 10

// maxActions bounds the distinct action names the ring keeps per minute; the
// runtime has a handful, so more means a caller passed free text: those
// count under "other" rather than growing memory.
const maxActions = 16

// Decisions counts a process's milter decisions per minute and action in a
// small ring (Window minutes), so the page shows a rate without Prometheus.
// Safe for concurrent use; Record is one lock and a map increment.
type Decisions struct {
	now func() time.Time

	mu      sync.Mutex
	buckets [Window + 1]bucket // the current minute and Window full ones
}

type bucket struct {
	minute int64 // Unix minute; 0: empty
	counts map[string]uint64
}

// NewDecisions returns an empty ring reading time from now (time.Now when nil).
func NewDecisions(now func() time.Time) *Decisions {
	if now == nil {
		now = time.Now
	}
	return &Decisions{now: now}
}

// Record counts one decision with its action ("accept", "reject", …).
func (d *Decisions) Record(action string) {
	m := d.now().Unix() / 60
	d.mu.Lock()
	defer d.mu.Unlock()
	b := &d.buckets[m%int64(len(d.buckets))]
	if b.minute != m {
		b.minute, b.counts = m, make(map[string]uint64, 4)
	}
	if _, ok := b.counts[action]; !ok && len(b.counts) >= maxActions {
		action = "other"
	}
	b.counts[action]++
}

// Minute is one minute's decisions by action.
type Minute struct {
	Start  time.Time
	Counts map[string]uint64
	Total  uint64
}

// Recent returns the last Window minutes, newest first, with the minute in
// progress first of all (marked by its Start being the current minute);
// minutes without decisions are present with zero counts. Actions lists
// every action seen, sorted.
func (d *Decisions) Recent() (mins []Minute, actions []string) {
	now := d.now().Unix() / 60
	seen := map[string]bool{}
	d.mu.Lock()
	defer d.mu.Unlock()
	for m := now; m > now-int64(len(d.buckets)); m-- {
		out := Minute{Start: time.Unix(m*60, 0).UTC(), Counts: map[string]uint64{}}
		if b := d.buckets[m%int64(len(d.buckets))]; b.minute == m {
			for a, n := range b.counts {
				out.Counts[a] = n
				out.Total += n
				seen[a] = true
			}
		}
		mins = append(mins, out)
	}
	for a := range seen {
		actions = append(actions, a)
	}
	sort.Strings(actions)
	return mins, actions
}
