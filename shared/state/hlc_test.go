package state

import (
	"math/rand"
	"sort"
	"sync"
	"testing"
	"time"
)

// manualClock is a settable clock for tests.
type manualClock struct {
	mu sync.Mutex
	t  time.Time
}

func newManualClock(t time.Time) *manualClock { return &manualClock{t: t} }

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *manualClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func (c *manualClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestHLCNowMonotonic(t *testing.T) {
	base := time.UnixMilli(1_700_000_000_000)
	// Wall clock: advancing, standing still, stepping back, jumping ahead.
	steps := []time.Duration{0, 0, 0, time.Millisecond, -time.Second, -time.Second, 0, 5 * time.Second, 0}
	clk := newManualClock(base)
	h := NewHLCClock("lax", clk.Now)
	var prev HLC
	for i, d := range steps {
		clk.Add(d)
		got := h.Now()
		if i > 0 && got.Compare(prev) <= 0 {
			t.Fatalf("step %d: %v not after %v", i, got, prev)
		}
		if got.String() <= prev.String() {
			t.Fatalf("step %d: encoding %q not after %q", i, got, prev)
		}
		if got.Wall < clk.Now().UnixMilli() {
			t.Fatalf("step %d: wall %d behind physical clock %d", i, got.Wall, clk.Now().UnixMilli())
		}
		prev = got
	}
}

func TestHLCUpdate(t *testing.T) {
	base := time.UnixMilli(1_700_000_000_000)
	tests := []struct {
		name   string
		local  time.Time // physical clock of the local site
		remote HLC
	}{
		{"remote ahead", base, HLC{Wall: base.UnixMilli() + 60_000, Logical: 7, Site: "dal"}},
		{"remote behind", base, HLC{Wall: base.UnixMilli() - 60_000, Logical: 9, Site: "dal"}},
		{"same ms, remote higher logical", base, HLC{Wall: base.UnixMilli(), Logical: 42, Site: "dal"}},
		{"same ms, lower site", base, HLC{Wall: base.UnixMilli(), Logical: 0, Site: "aaa"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := newManualClock(tc.local)
			h := NewHLCClock("lax", clk.Now)
			before := h.Now()
			got := h.Update(tc.remote)
			if got.Compare(tc.remote) <= 0 || got.Compare(before) <= 0 {
				t.Fatalf("Update(%v) = %v; want after remote and after %v", tc.remote, got, before)
			}
			if got.Site != "lax" {
				t.Fatalf("site = %q, want lax", got.Site)
			}
			next := h.Now()
			if next.Compare(got) <= 0 || next.Compare(tc.remote) <= 0 {
				t.Fatalf("Now after Update = %v, want after %v and %v", next, got, tc.remote)
			}
		})
	}
}

func TestHLCTieBreakAndEncodingOrder(t *testing.T) {
	a := HLC{Wall: 1000, Logical: 3, Site: "ams"}
	b := HLC{Wall: 1000, Logical: 3, Site: "dal"}
	if a.Compare(b) >= 0 || b.Compare(a) <= 0 {
		t.Fatalf("tie must go to the higher site name: %v vs %v", a, b)
	}
	// The encoded strings sort exactly like Compare, for random timestamps.
	r := rand.New(rand.NewSource(1))
	sites := []string{"a", "ab", "b", "dal", "lax", "z"}
	hs := make([]HLC, 500)
	for i := range hs {
		hs[i] = HLC{Wall: r.Int63n(3) * 1_000_000_000_000 / 2, Logical: uint32(r.Intn(3)) * 1000, Site: sites[r.Intn(len(sites))]}
		if r.Intn(10) == 0 {
			hs[i].Logical = ^uint32(0)
		}
	}
	byCompare := append([]HLC(nil), hs...)
	sort.Slice(byCompare, func(i, j int) bool { return byCompare[i].Compare(byCompare[j]) < 0 })
	byString := append([]HLC(nil), hs...)
	sort.Slice(byString, func(i, j int) bool { return byString[i].String() < byString[j].String() })
	for i := range byCompare {
		if byCompare[i].Compare(byString[i]) != 0 {
			t.Fatalf("order differs at %d: %v vs %v", i, byCompare[i], byString[i])
		}
	}
}

func TestParseHLC(t *testing.T) {
	for _, h := range []HLC{{}, {Wall: 1_700_000_000_123, Logical: 17, Site: "lax"}, {Wall: 5, Logical: ^uint32(0), Site: "x-y_z"}} {
		got, err := ParseHLC(h.String())
		if err != nil || got != h {
			t.Fatalf("ParseHLC(%q) = %v, %v; want %v", h.String(), got, err, h)
		}
	}
	for _, bad := range []string{"", "1.2.lax", "000000000000001.0000000001", "00000000000000x.0000000001.lax", "000000000000001.9999999999.lax"} {
		if _, err := ParseHLC(bad); err == nil {
			t.Errorf("ParseHLC(%q) accepted", bad)
		}
	}
}

func TestHLCConcurrentUnique(t *testing.T) {
	h := NewHLCClock("lax", nil)
	const n = 4
	out := make([][]string, n)
	var wg sync.WaitGroup
	for g := 0; g < n; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				out[g] = append(out[g], h.Now().String())
			}
		}(g)
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, l := range out {
		for _, s := range l {
			if seen[s] {
				t.Fatalf("duplicate timestamp %s", s)
			}
			seen[s] = true
		}
	}
}
