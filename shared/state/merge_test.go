package state

import (
	"encoding/json"
	"math"
	"reflect"
	"testing"
	"time"
)

func hlcAt(wall int64, logical uint32, site string) string {
	return HLC{Wall: wall, Logical: logical, Site: site}.String()
}

func doc(id, site string, wall int64, logical uint32, body string, deleted bool) RuleDoc {
	d := RuleDoc{ID: id, HLC: hlcAt(wall, logical, site), Deleted: deleted, Site: site}
	if body != "" {
		d.Doc = json.RawMessage(body)
	}
	return d
}

func TestMergeRules(t *testing.T) {
	tests := []struct {
		name    string
		perSite map[string]map[string]RuleDoc
		want    map[string]RuleDoc // merged, tombstones included
	}{
		{
			name: "disjoint ids are all kept",
			perSite: map[string]map[string]RuleDoc{
				"a": {"r1": doc("r1", "a", 10, 0, `1`, false)},
				"b": {"r2": doc("r2", "b", 5, 0, `2`, false)},
			},
			want: map[string]RuleDoc{"r1": doc("r1", "a", 10, 0, `1`, false), "r2": doc("r2", "b", 5, 0, `2`, false)},
		},
		{
			name: "later wall time wins regardless of site name",
			perSite: map[string]map[string]RuleDoc{
				"a": {"r": doc("r", "a", 20, 0, `"a"`, false)},
				"b": {"r": doc("r", "b", 10, 5, `"b"`, false)},
			},
			want: map[string]RuleDoc{"r": doc("r", "a", 20, 0, `"a"`, false)},
		},
		{
			name: "same wall, higher logical wins",
			perSite: map[string]map[string]RuleDoc{
				"a": {"r": doc("r", "a", 10, 2, `"a"`, false)},
				"b": {"r": doc("r", "b", 10, 1, `"b"`, false)},
			},
			want: map[string]RuleDoc{"r": doc("r", "a", 10, 2, `"a"`, false)},
		},
		{
			name: "exact tie goes to the higher site name",
			perSite: map[string]map[string]RuleDoc{
				"a": {"r": doc("r", "a", 10, 1, `"a"`, false)},
				"c": {"r": doc("r", "c", 10, 1, `"c"`, false)},
				"b": {"r": doc("r", "b", 10, 1, `"b"`, false)},
			},
			want: map[string]RuleDoc{"r": doc("r", "c", 10, 1, `"c"`, false)},
		},
		{
			name: "newer tombstone beats older version and is kept",
			perSite: map[string]map[string]RuleDoc{
				"a": {"r": doc("r", "a", 10, 0, `"a"`, false)},
				"b": {"r": doc("r", "b", 11, 0, "", true)},
			},
			want: map[string]RuleDoc{"r": doc("r", "b", 11, 0, "", true)},
		},
		{
			name: "re-created after delete",
			perSite: map[string]map[string]RuleDoc{
				"a": {"r": doc("r", "a", 12, 0, `"again"`, false)},
				"b": {"r": doc("r", "b", 11, 0, "", true)},
			},
			want: map[string]RuleDoc{"r": doc("r", "a", 12, 0, `"again"`, false)},
		},
		{
			name:    "no sites",
			perSite: map[string]map[string]RuleDoc{},
			want:    map[string]RuleDoc{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Map iteration order is random: merging repeatedly exercises
			// different orders, which must all agree.
			for i := 0; i < 20; i++ {
				got := MergeRules(tc.perSite)
				if !reflect.DeepEqual(got, tc.want) {
					t.Fatalf("MergeRules = %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestRuleWinsTotalOrder(t *testing.T) {
	// Same HLC and site (should not happen, but a corrupted copy could):
	// still one winner, whichever argument order.
	x := doc("r", "a", 10, 0, `1`, false)
	y := doc("r", "a", 10, 0, `2`, false)
	z := doc("r", "a", 10, 0, "", true)
	for _, p := range [][2]RuleDoc{{x, y}, {x, z}, {y, z}} {
		if RuleWins(p[0], p[1]) == RuleWins(p[1], p[0]) {
			t.Errorf("RuleWins not antisymmetric for %v / %v", p[0], p[1])
		}
	}
	if RuleWins(x, x) {
		t.Error("a version must not win over itself")
	}
}

func TestLiveRules(t *testing.T) {
	in := map[string]RuleDoc{
		"live": doc("live", "a", 1, 0, `1`, false),
		"dead": doc("dead", "a", 1, 0, "", true),
	}
	got := LiveRules(in)
	if len(got) != 1 || got["live"].ID != "live" {
		t.Fatalf("LiveRules = %v", got)
	}
}

func TestMergeGreylist(t *testing.T) {
	tests := []struct {
		name             string
		in               []GreyEntry
		wantFirst        int64
		wantPass, wantOK bool
	}{
		{"none", nil, 0, false, false},
		{"absent everywhere", []GreyEntry{{}, {}}, 0, false, false},
		{"one site", []GreyEntry{{Present: true, FirstSeen: 500}}, 500, false, true},
		{"earliest wins", []GreyEntry{{Present: true, FirstSeen: 900}, {}, {Present: true, FirstSeen: 300}}, 300, false, true},
		{"passed anywhere", []GreyEntry{{Present: true, FirstSeen: 100}, {Present: true, FirstSeen: 200, Passed: true}}, 100, true, true},
		{"absent entry's fields ignored", []GreyEntry{{Present: false, FirstSeen: 1, Passed: true}, {Present: true, FirstSeen: 50}}, 50, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			first, passed, ok := MergeGreylist(tc.in)
			if ok != tc.wantOK || passed != tc.wantPass || (ok && first.UnixMilli() != tc.wantFirst) {
				t.Fatalf("MergeGreylist = %v, %v, %v; want %d, %v, %v", first.UnixMilli(), passed, ok, tc.wantFirst, tc.wantPass, tc.wantOK)
			}
			if !ok && !first.IsZero() {
				t.Fatalf("first = %v for nothing found, want zero", first)
			}
		})
	}
}

func TestSumCounts(t *testing.T) {
	tests := []struct {
		name     string
		own      SiteCount
		peers    []SiteCount
		elapsed  float64
		degraded bool
		want     Count
	}{
		{"alone", SiteCount{3, 0}, nil, 0.5, false, Count{Local: 3, Total: 3, Estimate: 3}},
		{"three sites", SiteCount{3, 10}, []SiteCount{{4, 20}, {5, 30}}, 0.25, false,
			Count{Local: 3, Total: 12, PrevTotal: 60, Estimate: 60*0.75 + 12}},
		{"start of window counts all of previous", SiteCount{1, 8}, []SiteCount{{0, 2}}, 0, true,
			Count{Local: 1, Total: 1, PrevTotal: 10, Estimate: 11, Degraded: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := SumCounts(tc.own, tc.peers, tc.elapsed, tc.degraded)
			if got != tc.want {
				t.Fatalf("SumCounts = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestSlidingEstimateClamps(t *testing.T) {
	if got := SlidingEstimate(10, 1, 1.5); got != 1 {
		t.Errorf("elapsed > 1: %v, want 1", got)
	}
	if got := SlidingEstimate(10, 1, -1); got != 11 {
		t.Errorf("elapsed < 0: %v, want 11", got)
	}
}

func TestMergeSet(t *testing.T) {
	now := int64(1000)
	tests := []struct {
		name string
		in   []SetMember
		want bool
	}{
		{"nowhere", []SetMember{{}, {}}, false},
		{"expired everywhere", []SetMember{{Present: true, Expiry: 999}, {Present: true, Expiry: 1000}}, false},
		{"live at a peer", []SetMember{{}, {Present: true, Expiry: 1001}}, true},
		{"never expires", []SetMember{{Present: true, Expiry: math.Inf(1)}}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := MergeSet(tc.in, now); got != tc.want {
				t.Fatalf("MergeSet = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestWindowOf(t *testing.T) {
	tests := []struct {
		now         int64
		window      time.Duration
		start, prev int64
		elapsed     float64
	}{
		{60_000, time.Minute, 60_000, 0, 0},
		{90_000, time.Minute, 60_000, 0, 0.5},
		{119_999, time.Minute, 60_000, 0, 59_999.0 / 60_000},
		{1_234, time.Second, 1_000, 0, 0.234},
	}
	for _, tc := range tests {
		start, prev, elapsed, err := windowOf(time.UnixMilli(tc.now), tc.window)
		if err != nil || start != tc.start || prev != tc.prev || math.Abs(elapsed-tc.elapsed) > 1e-9 {
			t.Errorf("windowOf(%d, %v) = %d, %d, %v, %v; want %d, %d, %v", tc.now, tc.window, start, prev, elapsed, err, tc.start, tc.prev, tc.elapsed)
		}
	}
	if _, _, _, err := windowOf(time.Now(), time.Microsecond); err == nil {
		t.Error("sub-millisecond window accepted")
	}
}
