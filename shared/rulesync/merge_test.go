package rulesync

import (
	"encoding/json"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/state"
)

func hlcAt(ms int64, site string) string { return state.HLC{Wall: ms, Site: site}.String() }

func doc(id, site string, ms int64) state.RuleDoc {
	return state.RuleDoc{ID: id, Site: site, HLC: hlcAt(ms, site), Doc: json.RawMessage(`{"id":"` + id + `"}`)}
}

func ids(m map[string]state.RuleDoc) []string {
	out := make([]string, 0, len(m))
	for id, d := range m {
		out = append(out, id+"@"+d.Site)
	}
	sort.Strings(out)
	return out
}

func TestCombine(t *testing.T) {
	answeredB := time.UnixMilli(5000)
	known := map[string]*siteMemory{
		"b": {answered: answeredB, docs: map[string]state.RuleDoc{
			"b-only": doc("b-only", "b", 1000),
			"shared": doc("shared", "b", 3000), // b's version won over a's 2000
		}},
	}
	tests := []struct {
		name     string
		merged   map[string]state.RuleDoc
		missing  []string
		prev     map[string]state.RuleDoc
		want     []string
		heldBack []string
		unknown  []string
	}{
		{
			name:   "complete load is used as is",
			merged: map[string]state.RuleDoc{"x": doc("x", "a", 1)},
			want:   []string{"x@a"},
		},
		{
			name:    "a missing site's rules stay in force",
			merged:  map[string]state.RuleDoc{"a1": doc("a1", "a", 100), "shared": doc("shared", "a", 2000)},
			missing: []string{"b"},
			prev:    map[string]state.RuleDoc{"a1": doc("a1", "a", 100), "b-only": doc("b-only", "b", 1000), "shared": doc("shared", "b", 3000)},
			want:    []string{"a1@a", "b-only@b", "shared@b"},
		},
		{
			name:    "a newer write at an answering site beats the missing site's version",
			merged:  map[string]state.RuleDoc{"shared": doc("shared", "a", 9000)},
			missing: []string{"b"},
			prev:    map[string]state.RuleDoc{"b-only": doc("b-only", "b", 1000), "shared": doc("shared", "b", 3000)},
			want:    []string{"b-only@b", "shared@a"},
		},
		{
			name:    "a rule written after the missing site last answered applies",
			merged:  map[string]state.RuleDoc{"new": doc("new", "a", 6000)},
			missing: []string{"b"},
			prev:    map[string]state.RuleDoc{"b-only": doc("b-only", "b", 1000), "shared": doc("shared", "b", 3000)},
			want:    []string{"b-only@b", "new@a", "shared@b"},
		},
		{
			// "old" was not in force: b's tombstone (invisible here) may
			// have beaten it; it must not come back while b is dark.
			name:     "an older version that appears while a site is missing is held back",
			merged:   map[string]state.RuleDoc{"old": doc("old", "a", 4000)},
			missing:  []string{"b"},
			prev:     map[string]state.RuleDoc{"b-only": doc("b-only", "b", 1000), "shared": doc("shared", "b", 3000)},
			want:     []string{"b-only@b", "shared@b"},
			heldBack: []string{"old"},
		},
		{
			name:    "a site never read contributes nothing and is reported",
			merged:  map[string]state.RuleDoc{"a1": doc("a1", "a", 100)},
			missing: []string{"c"},
			want:    []string{"a1@a"},
			unknown: []string{"c"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			view, held, unknown := combine(tc.merged, tc.missing, known, tc.prev)
			if got := ids(view); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("view %v, want %v", got, tc.want)
			}
			if !reflect.DeepEqual(held, tc.heldBack) {
				t.Errorf("held back %v, want %v", held, tc.heldBack)
			}
			if !reflect.DeepEqual(unknown, tc.unknown) {
				t.Errorf("unknown %v, want %v", unknown, tc.unknown)
			}
		})
	}
}

func TestRememberKeepsMissingSites(t *testing.T) {
	known := map[string]*siteMemory{"b": {answered: time.UnixMilli(1), docs: map[string]state.RuleDoc{"b1": doc("b1", "b", 1)}}}
	merged := map[string]state.RuleDoc{"a1": doc("a1", "a", 2), "a2": doc("a2", "a", 3)}
	remember(known, merged, []string{"a"}, time.UnixMilli(10))
	if got := len(known["a"].docs); got != 2 {
		t.Errorf("a remembers %d docs, want 2", got)
	}
	if _, ok := known["b"].docs["b1"]; !ok || !known["b"].answered.Equal(time.UnixMilli(1)) {
		t.Errorf("memory of the missing site b changed: %+v", known["b"])
	}
}
