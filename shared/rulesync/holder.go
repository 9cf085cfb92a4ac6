// Package rulesync keeps every milter process's in-memory rules snapshot
// current: loaded from the rules file (standalone) or merged from every site's
// Redis (site primary + local replicas of the peers), refreshed on change
// notification and by a version poll, swapped atomically, and saved to
// state_dir so that a restart with Redis down still has current tables.
package rulesync

import (
	"sync/atomic"

	"github.com/geomilter/geomilter/shared/rules"
)

// Holder holds the current snapshot. Readers on the mail path call Current,
// which is one atomic load: no lock, no network.
type Holder struct {
	cur atomic.Pointer[rules.Snapshot]
}

// NewHolder returns a holder serving initial (an empty snapshot when nil).
func NewHolder(initial *rules.Snapshot) *Holder {
	h := &Holder{}
	if initial == nil {
		initial = emptySnapshot()
	}
	h.cur.Store(initial)
	return h
}

// Current returns the snapshot in force; never nil.
func (h *Holder) Current() *rules.Snapshot { return h.cur.Load() }

// Swap installs a new snapshot for every later lookup.
func (h *Holder) Swap(s *rules.Snapshot) {
	if s != nil {
		h.cur.Store(s)
	}
}

func emptySnapshot() *rules.Snapshot {
	s, err := rules.Compile(&rules.Set{})
	if err != nil {
		panic("rulesync: compiling the empty rule set failed: " + err.Error()) // a programming error, caught by tests
	}
	return s
}
