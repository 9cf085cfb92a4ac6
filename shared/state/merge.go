package state

import (
	"bytes"
	"encoding/json"
	"time"
)

// RuleDoc is one rule as stored by one site. Doc is the rule itself, opaque
// to this package. Site is where the version was read from (filled by reads;
// ignored by PutRules).
type RuleDoc struct {
	ID      string
	Doc     json.RawMessage
	HLC     string // encoded HLC of the write
	Deleted bool   // tombstone
	Site    string
}

// RuleWins reports whether a is the newer version of a rule than b: higher
// HLC wins; on equal HLCs the higher site name, then a tombstone, then the
// larger document — a total order, so every site picks the same winner
// whatever order it reads the sites in.
//
// Encoded HLCs have fixed-width fields, so comparing the strings compares
// the timestamps.
func RuleWins(a, b RuleDoc) bool {
	if a.HLC != b.HLC {
		return a.HLC > b.HLC
	}
	if a.Site != b.Site {
		return a.Site > b.Site
	}
	if a.Deleted != b.Deleted {
		return a.Deleted
	}
	return bytes.Compare(a.Doc, b.Doc) > 0
}

// MergeRules merges per-site rule maps (site -> id -> version) last writer
// wins. Tombstones are kept in the result: they must keep beating older
// versions; LiveRules drops them.
func MergeRules(perSite map[string]map[string]RuleDoc) map[string]RuleDoc {
	n := 0
	for _, m := range perSite {
		n = max(n, len(m))
	}
	out := make(map[string]RuleDoc, n)
	for _, m := range perSite {
		for id, d := range m {
			if cur, ok := out[id]; !ok || RuleWins(d, cur) {
				out[id] = d
			}
		}
	}
	return out
}

// LiveRules returns the merged rules without tombstones.
func LiveRules(merged map[string]RuleDoc) map[string]RuleDoc {
	out := make(map[string]RuleDoc, len(merged))
	for id, d := range merged {
		if !d.Deleted {
			out[id] = d
		}
	}
	return out
}

// GreyEntry is one site's record of a greylist triplet.
type GreyEntry struct {
	Present   bool
	FirstSeen int64 // Unix ms
	Passed    bool
}

// MergeGreylist merges per-site triplet records: the earliest first sighting
// at any site counts (a sender retrying through another site's MX is not
// delayed twice) and a triplet that passed anywhere has passed.
func MergeGreylist(entries []GreyEntry) (firstSeen time.Time, passed, found bool) {
	var first int64
	for _, e := range entries {
		if !e.Present {
			continue
		}
		if !found || e.FirstSeen < first {
			first = e.FirstSeen
		}
		found = true
		passed = passed || e.Passed
	}
	if !found {
		return time.Time{}, false, false
	}
	return time.UnixMilli(first), passed, true
}

// Count is the result of one rate-limit increment.
type Count struct {
	Local     int64   // this site's count in the current window (including this call)
	Total     int64   // sum over all sites in the current window
	PrevTotal int64   // sum over all sites in the previous window
	Estimate  float64 // sliding-window estimate: PrevTotal*(1-elapsed/window) + Total
	Degraded  bool    // some peer's count is its last known value (or 0): it did not answer
}

// SlidingEstimate weighs the previous fixed window by the part of it that a
// sliding window ending now still covers. elapsed is the fraction of the
// current window gone by, in [0,1).
func SlidingEstimate(prev, cur int64, elapsed float64) float64 {
	elapsed = min(max(elapsed, 0), 1)
	return float64(prev)*(1-elapsed) + float64(cur)
}

// SiteCount is one site's counts for the current and previous windows.
type SiteCount struct{ Cur, Prev int64 }

// SumCounts merges per-site counts (own site first) into a Count.
func SumCounts(own SiteCount, peers []SiteCount, elapsed float64, degraded bool) Count {
	c := Count{Local: own.Cur, Total: own.Cur, PrevTotal: own.Prev, Degraded: degraded}
	for _, p := range peers {
		c.Total += p.Cur
		c.PrevTotal += p.Prev
	}
	c.Estimate = SlidingEstimate(c.PrevTotal, c.Total, elapsed)
	return c
}

// SetMember is one site's record of a set member: its expiry (Unix ms,
// math.Inf for never) when present.
type SetMember struct {
	Present bool
	Expiry  float64
}

// MergeSet reports whether any site holds the member unexpired at nowMs.
func MergeSet(members []SetMember, nowMs int64) bool {
	for _, m := range members {
		if m.Present && m.Expiry > float64(nowMs) {
			return true
		}
	}
	return false
}
