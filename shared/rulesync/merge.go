package rulesync

import (
	"sort"
	"time"

	"github.com/geomilter/geomilter/shared/state"
)

// siteMemory is what a site contributed the last time its instance answered.
// state.LoadRules returns winners only (tombstones and beaten versions are
// dropped), so this is the set of live documents the site won then, not its
// whole hash.
type siteMemory struct {
	docs     map[string]state.RuleDoc
	answered time.Time // when it last answered (this process's clock)
}

// combine builds the rules view from a load in which the sites in missing did
// not answer: merged is the live merge of the sites that did, prev the view in
// force, known the memory of each site. Missing sites this process never read
// contribute nothing and are returned in unknown: the caller decides whether
// the view is still worth serving.
//
// A missing site contributes its last known documents, so one dark instance
// never makes its rules vanish, and changes at the other sites still apply.
// What this cannot see (LoadRules drops tombstones) is kept conservative:
//
//   - a document that was not in force before, stamped no later than a missing
//     site last answered, may be an older version that site's tombstone beat:
//     it is held back (the previous state of that id stays) until the site
//     answers again. Writes made after that are newer and apply at once.
//   - a rule last written by the missing site and deleted elsewhere meanwhile
//     stays in force until the site answers again.
func combine(merged map[string]state.RuleDoc, missing []string, known map[string]*siteMemory,
	prev map[string]state.RuleDoc) (view map[string]state.RuleDoc, heldBack, unknown []string) {
	if len(missing) == 0 {
		return merged, nil, nil
	}
	var threshold string // newest "answered" of the missing sites, as an HLC prefix
	for _, site := range missing {
		m := known[site]
		if m == nil {
			unknown = append(unknown, site)
			continue
		}
		h := state.HLC{Wall: m.answered.UnixMilli(), Logical: ^uint32(0)}.String()
		if h > threshold {
			threshold = h
		}
	}
	view = make(map[string]state.RuleDoc, len(merged)+len(prev))
	for id, d := range merged {
		p, had := prev[id]
		switch {
		case had && state.RuleWins(p, d):
			// An older version than the one in force, which came from a
			// missing site (its memory supplies it below) or vanished
			// meanwhile: keep what was in force.
			view[id] = p
		case !had && d.HLC <= threshold:
			// Not in force before, yet older than the last answer of a
			// missing site: possibly a version that site's tombstone beat.
			heldBack = append(heldBack, id)
		default:
			view[id] = d
		}
	}
	for _, site := range missing {
		m := known[site]
		if m == nil {
			continue
		}
		for id, d := range m.docs {
			if cur, ok := view[id]; !ok || state.RuleWins(d, cur) {
				view[id] = d
			}
		}
	}
	sort.Strings(heldBack)
	return view, heldBack, unknown
}

// remember records, for every site that answered, the documents it won in
// merged (the merge of the answering sites).
func remember(known map[string]*siteMemory, merged map[string]state.RuleDoc, answered []string, now time.Time) {
	fresh := make(map[string]*siteMemory, len(answered))
	for _, site := range answered {
		fresh[site] = &siteMemory{docs: make(map[string]state.RuleDoc), answered: now}
		known[site] = fresh[site]
	}
	for id, d := range merged {
		if m := fresh[d.Site]; m != nil {
			m.docs[id] = d
		}
	}
}
