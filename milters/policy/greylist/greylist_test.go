package greylist_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/policy/greylist"
	"github.com/geomilter/geomilter/shared/state"
	"github.com/geomilter/geomilter/shared/state/statetest"
)

var t0 = time.Date(2100, 1, 1, 12, 0, 0, 0, time.UTC)

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// trip is a triplet from a@example.org to b@example.net via client addr.
func trip(addr string) greylist.Triplet {
	return greylist.Triplet{Client: ip(addr), Sender: "a@example.org", Rcpt: "b@example.net"}
}

func with(t greylist.Triplet, sender, rcpt string) greylist.Triplet {
	t.Sender, t.Rcpt = sender, rcpt
	return t
}

// step is one delivery attempt at t0+at and what Check must answer.
type step struct {
	at        time.Duration
	t         greylist.Triplet
	want      greylist.Status
	firstSeen time.Duration // offset from t0 of the merged first sighting; ignored for allowlisted
}

const (
	delay  = 5 * time.Minute
	window = 24 * time.Hour
	life   = 864 * time.Hour
)

func TestCheckMemStore(t *testing.T) {
	v6a, v6b := "2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe"
	cases := []struct {
		name  string
		auto  int // AutoAllowlist (default 0 here, so the triplet cases stay independent)
		steps []step
	}{
		{name: "first attempt defers, retry before delay waits, after delay passes", steps: []step{
			{0, trip("192.0.2.1"), greylist.StatusNew, 0},
			{time.Minute, trip("192.0.2.1"), greylist.StatusWaiting, 0},
			{delay - time.Millisecond, trip("192.0.2.1"), greylist.StatusWaiting, 0},
			{delay, trip("192.0.2.1"), greylist.StatusPassed, 0},
			{delay + time.Hour, trip("192.0.2.1"), greylist.StatusPassed, 0},
		}},
		{name: "retry after the retry window starts over", steps: []step{
			{0, trip("192.0.2.1"), greylist.StatusNew, 0},
			{delay + window, trip("192.0.2.1"), greylist.StatusNew, delay + window},
			{delay + window + time.Minute, trip("192.0.2.1"), greylist.StatusWaiting, delay + window},
			{2*delay + window, trip("192.0.2.1"), greylist.StatusPassed, delay + window},
		}},
		{name: "retry just inside the retry window passes", steps: []step{
			{0, trip("192.0.2.1"), greylist.StatusNew, 0},
			{delay + window - time.Millisecond, trip("192.0.2.1"), greylist.StatusPassed, 0},
		}},
		{name: "passed stays passed while seen, for lifetime since last seen", steps: []step{
			{0, trip("192.0.2.1"), greylist.StatusNew, 0},
			{delay, trip("192.0.2.1"), greylist.StatusPassed, 0},
			// Each sighting keeps it another lifetime: without the refresh
			// the second one would find it expired.
			{delay + life - time.Hour, trip("192.0.2.1"), greylist.StatusPassed, 0},
			{delay + 2*life - 2*time.Hour, trip("192.0.2.1"), greylist.StatusPassed, 0},
			// Unseen for a whole lifetime: forgotten.
			{delay + 3*life, trip("192.0.2.1"), greylist.StatusNew, delay + 3*life},
		}},
		{name: "IPv4 /24: a retry from another server of the pool passes", steps: []step{
			{0, trip("192.0.2.1"), greylist.StatusNew, 0},
			{delay, trip("192.0.2.254"), greylist.StatusPassed, 0},
			{delay, trip("192.0.3.1"), greylist.StatusNew, delay},
		}},
		{name: "IPv4-mapped IPv6 is the IPv4 network", steps: []step{
			{0, trip("::ffff:192.0.2.7"), greylist.StatusNew, 0},
			{delay, trip("192.0.2.8"), greylist.StatusPassed, 0},
		}},
		{name: "IPv6 /64 grouping", steps: []step{
			{0, trip(v6a), greylist.StatusNew, 0},
			{time.Minute, trip(v6b), greylist.StatusWaiting, 0},
			{time.Minute, trip("2001:db8:1:3::1"), greylist.StatusNew, time.Minute},
			{delay, trip(v6b), greylist.StatusPassed, 0},
		}},
		{name: "null sender: empty and <> are one sender, not another's", steps: []step{
			{0, with(trip("192.0.2.1"), "", "b@example.net"), greylist.StatusNew, 0},
			{time.Minute, with(trip("192.0.2.1"), "<>", "b@example.net"), greylist.StatusWaiting, 0},
			{time.Minute, with(trip("192.0.2.1"), "x@example.org", "b@example.net"), greylist.StatusNew, time.Minute},
			{delay, with(trip("192.0.2.1"), "<>", "<b@example.net>"), greylist.StatusPassed, 0},
		}},
		{name: "addresses fold case and lose angle brackets", steps: []step{
			{0, with(trip("192.0.2.1"), "Alice@Example.ORG", "Bob@EXAMPLE.net"), greylist.StatusNew, 0},
			{delay, with(trip("192.0.2.1"), "<alice@example.org>", "bob@example.net"), greylist.StatusPassed, 0},
		}},
		{name: "the recipient is part of the triplet", steps: []step{
			{0, trip("192.0.2.1"), greylist.StatusNew, 0},
			{delay, with(trip("192.0.2.1"), "a@example.org", "c@example.net"), greylist.StatusNew, delay},
		}},
		{name: "auto-allowlist after N passed triplets of one network", auto: 3, steps: []step{
			{0, with(trip("192.0.2.1"), "1@example.org", "r@example.net"), greylist.StatusNew, 0},
			{0, with(trip("192.0.2.2"), "2@example.org", "r@example.net"), greylist.StatusNew, 0},
			{0, with(trip("192.0.2.3"), "3@example.org", "r@example.net"), greylist.StatusNew, 0},
			{delay, with(trip("192.0.2.1"), "1@example.org", "r@example.net"), greylist.StatusPassed, 0},
			{delay, with(trip("192.0.2.2"), "2@example.org", "r@example.net"), greylist.StatusPassed, 0},
			// Passed again: a triplet counts once, when it passes.
			{delay, with(trip("192.0.2.2"), "2@example.org", "r@example.net"), greylist.StatusPassed, 0},
			{delay, with(trip("192.0.2.9"), "new@example.org", "r@example.net"), greylist.StatusNew, delay},
			{delay, with(trip("192.0.2.3"), "3@example.org", "r@example.net"), greylist.StatusPassed, 0},
			{delay, with(trip("192.0.2.9"), "new@example.org", "r@example.net"), greylist.StatusAllowlisted, 0},
		}},
		{name: "auto-allowlist: the third pass allowlists, other networks still greylisted", auto: 3, steps: []step{
			{0, with(trip("192.0.2.1"), "1@example.org", "r@example.net"), greylist.StatusNew, 0},
			{0, with(trip("192.0.2.2"), "2@example.org", "r@example.net"), greylist.StatusNew, 0},
			{0, with(trip("192.0.2.3"), "3@example.org", "r@example.net"), greylist.StatusNew, 0},
			{delay, with(trip("192.0.2.1"), "1@example.org", "r@example.net"), greylist.StatusPassed, 0},
			{delay, with(trip("192.0.2.2"), "2@example.org", "r@example.net"), greylist.StatusPassed, 0},
			{delay, with(trip("192.0.2.3"), "3@example.org", "r@example.net"), greylist.StatusPassed, 0},
			{delay, with(trip("192.0.2.200"), "new@example.org", "r@example.net"), greylist.StatusAllowlisted, 0},
			{delay, with(trip("198.51.100.1"), "new@example.org", "r@example.net"), greylist.StatusNew, delay},
			// Still sending: the allowlisting is kept since the last message.
			{delay + life - time.Hour, trip("192.0.2.5"), greylist.StatusAllowlisted, 0},
			{delay + 2*life - 2*time.Hour, trip("192.0.2.5"), greylist.StatusAllowlisted, 0},
			// Silent for a lifetime: greylisted again.
			{delay + 3*life, trip("192.0.2.5"), greylist.StatusNew, delay + 3*life},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clk := statetest.NewClock(t0)
			s := greylist.DefaultSettings()
			s.AutoAllowlist = tc.auto
			g, err := greylist.New(state.NewMemStore(clk.Now), s, clk.Now, zerolog.Nop(), nil)
			if err != nil {
				t.Fatal(err)
			}
			for i, st := range tc.steps {
				clk.Set(t0.Add(st.at))
				r := g.Check(context.Background(), st.t)
				wantDefer := st.want == greylist.StatusNew || st.want == greylist.StatusWaiting
				if r.Status != st.want || r.Defer != wantDefer || r.Err != nil {
					t.Fatalf("step %d (%v at +%v): got %s defer=%v err=%v, want %s defer=%v",
						i, st.t, st.at, r.Status, r.Defer, r.Err, st.want, wantDefer)
				}
				if st.want == greylist.StatusAllowlisted {
					continue
				}
				if want := t0.Add(st.firstSeen); !r.FirstSeen.Equal(want) {
					t.Fatalf("step %d: first seen %v, want %v", i, r.FirstSeen, want)
				}
			}
		})
	}
}

func TestKey(t *testing.T) {
	cases := []struct {
		t      greylist.Triplet
		v4, v6 int
		want   string
	}{
		{trip("192.0.2.77"), 24, 64, `192.0.2.0/24 "a@example.org" "b@example.net"`},
		{trip("192.0.2.77"), 32, 64, `192.0.2.77/32 "a@example.org" "b@example.net"`},
		{trip("::ffff:192.0.2.77"), 24, 64, `192.0.2.0/24 "a@example.org" "b@example.net"`},
		{trip("2001:db8:1:2:3:4:5:6"), 24, 64, `2001:db8:1:2::/64 "a@example.org" "b@example.net"`},
		{trip("2001:db8:1:2:3:4:5:6"), 24, 48, `2001:db8:1::/48 "a@example.org" "b@example.net"`},
		{greylist.Triplet{Client: ip("fe80::1%eth0"), Rcpt: "x@y"}, 24, 64, `fe80::/64 "" "x@y"`},
		{with(trip("192.0.2.1"), "<>", "<POSTMASTER@Example.NET>"), 24, 64, `192.0.2.0/24 "" "postmaster@example.net"`},
		{with(trip("192.0.2.1"), "", "x@y"), 24, 64, `192.0.2.0/24 "" "x@y"`},
		// A quoted local part with the separator in it cannot be mistaken
		// for another split of the same characters.
		{with(trip("192.0.2.1"), `"a b"@x`, "c@y"), 24, 64, `192.0.2.0/24 "\"a b\"@x" "c@y"`},
		{with(trip("192.0.2.1"), `"a`, `b"@x c@y`), 24, 64, `192.0.2.0/24 "\"a" "b\"@x c@y"`},
		// Out-of-range prefixes are clamped.
		{trip("192.0.2.77"), 40, 200, `192.0.2.77/32 "a@example.org" "b@example.net"`},
		{greylist.Triplet{}, 24, 64, `unknown "" ""`},
	}
	for _, tc := range cases {
		if got := greylist.Key(tc.t, tc.v4, tc.v6); got != tc.want {
			t.Errorf("Key(%+v, %d, %d) = %s, want %s", tc.t, tc.v4, tc.v6, got, tc.want)
		}
	}
}

func TestNewRejects(t *testing.T) {
	store := state.NewMemStore(nil)
	for _, tc := range []struct {
		name  string
		store state.Backend
		edit  func(*greylist.Settings)
		want  string
	}{
		{"nil store", nil, func(*greylist.Settings) {}, "no state store"},
		{"zero delay", store, func(s *greylist.Settings) { s.Delay = 0 }, "delay 0s"},
		{"zero lifetime", store, func(s *greylist.Settings) { s.Lifetime = 0 }, "lifetime 0s"},
		{"ipv6 prefix", store, func(s *greylist.Settings) { s.IPv6Prefix = 129 }, "ipv6_prefix 129"},
		{"negative allowlist", store, func(s *greylist.Settings) { s.AutoAllowlist = -1 }, "auto_allowlist -1"},
	} {
		s := greylist.DefaultSettings()
		tc.edit(&s)
		if _, err := greylist.New(tc.store, s, nil, zerolog.Nop(), nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want one containing %q", tc.name, err, tc.want)
		}
	}
	reg := prometheus.NewRegistry()
	if _, err := greylist.New(store, greylist.DefaultSettings(), nil, zerolog.Nop(), reg); err != nil {
		t.Fatal(err)
	}
	if _, err := greylist.New(store, greylist.DefaultSettings(), nil, zerolog.Nop(), reg); err == nil {
		t.Error("registering the metrics twice: no error")
	}
}

func TestMetricsAndUnknownClient(t *testing.T) {
	clk := statetest.NewClock(t0)
	reg := prometheus.NewRegistry()
	g, err := greylist.New(state.NewMemStore(clk.Now), greylist.DefaultSettings(), clk.Now, zerolog.Nop(), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	g.Check(ctx, trip("192.0.2.1"))
	clk.Set(t0.Add(time.Minute))
	g.Check(ctx, trip("192.0.2.1"))
	clk.Set(t0.Add(delay))
	g.Check(ctx, trip("192.0.2.1"))
	r := g.Check(ctx, greylist.Triplet{Sender: "a@b", Rcpt: "c@d"})
	if r.Status != greylist.StatusDegraded || r.Defer || r.Err == nil {
		t.Errorf("no client address: %+v, want degraded, not deferred, with a reason", r)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if r := g.Check(cancelled, trip("192.0.2.1")); r.Status != greylist.StatusDegraded || r.Defer || !errors.Is(r.Err, context.Canceled) {
		t.Errorf("cancelled context: %+v", r)
	}
	want := `
# HELP geomilter_policy_greylist_total Greylisting outcomes per recipient: new, waiting (deferred), passed, allowlisted, degraded (store unavailable: accepted).
# TYPE geomilter_policy_greylist_total counter
geomilter_policy_greylist_total{status="allowlisted"} 0
geomilter_policy_greylist_total{status="degraded"} 2
geomilter_policy_greylist_total{status="new"} 1
geomilter_policy_greylist_total{status="passed"} 1
geomilter_policy_greylist_total{status="waiting"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "geomilter_policy_greylist_total"); err != nil {
		t.Error(err)
	}
}

// TestUnreachableStore: a store whose own primary refuses connections
// gives the degraded answer — accept, flagged — and never a deferral.
func TestUnreachableStore(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now: connections are refused
	st, err := state.Open(state.Options{Site: "lax", Local: state.InstanceConfig{Addr: addr}, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, auto := range []int{0, 5} {
		s := greylist.DefaultSettings()
		s.AutoAllowlist = auto
		g, err := greylist.New(st, s, nil, zerolog.Nop(), nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 3; i++ {
			r := g.Check(context.Background(), trip("192.0.2.1"))
			if r.Status != greylist.StatusDegraded || r.Defer || !errors.Is(r.Err, state.ErrUnavailable) {
				t.Fatalf("auto_allowlist %d, call %d: %+v, want degraded (ErrUnavailable), not deferred", auto, i, r)
			}
		}
	}
}
