package access

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/redistest"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/state"
)

// Budgets far above a loopback round trip, so a loaded machine does not
// trip a breaker by accident; the assertions never measure time.
const (
	testRedisTimeout = 250 * time.Millisecond
	settle           = 15 * time.Second
)

func openStore(t *testing.T, site, addr string, peers map[string]string) *state.Store {
	t.Helper()
	p := map[string]state.InstanceConfig{}
	for name, a := range peers {
		p[name] = state.InstanceConfig{Addr: a}
	}
	st, err := state.Open(state.Options{
		Site: site, Local: state.InstanceConfig{Addr: addr}, Peers: p,
		Timeout: testRedisTimeout, BreakerFailures: 3, BreakerOpenFor: 200 * time.Millisecond,
		Clock: func() time.Time { return t0 }, Logger: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func poll(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(settle)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, still waiting for %s: %v", settle, what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// replicated waits until the primary's one replica has every write so far.
func replicated(t *testing.T, primary *redistest.Server) {
	t.Helper()
	n, err := primary.Client().Do(context.Background(), "WAIT", 1, 10000).Int()
	if err != nil || n < 1 {
		t.Fatalf("WAIT on %s: %d replicas, %v", primary.Addr, n, err)
	}
}

// expect runs one message and checks whether it was refused by the rate
// rule, and its degraded flags.
func expectMsg(t *testing.T, m *Milter, what string, refused bool, degraded ...string) outcome {
	t.Helper()
	o := run(t, m, outside, "bulk@outside.example", "a@acme.example")
	want := "accept rules=rate"
	if refused {
		want = "mail:tempfail:rate rules=rate"
	}
	if got := o.summary(); got != want {
		t.Fatalf("%s: got %s, want %s (reasons %q, degraded %q)", what, got, want, o.st.Reasons, o.st.Degraded)
	}
	if !slices.Equal(o.st.Degraded, degraded) {
		t.Fatalf("%s: degraded %q, want %q", what, o.st.Degraded, degraded)
	}
	return o
}

const rateRule = `rules: [{id: rate, milter: access, scope: global, rate: {key: sender, limit: %d, per: 1h}, action: tempfail}]`

func rateSnapshot(t *testing.T, limit int) *rules.Snapshot {
	return compile(t, fmt.Sprintf(rateRule, limit))
}

// TestRateRedis: with the site store, limit N lets N messages pass and the
// N+1st trips; the counter lives in Redis under the site's prefix.
func TestRateRedis(t *testing.T) {
	srv := redistest.Start(t)
	store := openStore(t, "lax", srv.Addr, nil)
	snap := rateSnapshot(t, 3)
	m := newTestMilter(t, snap, Options{Counter: store, Timeout: testRedisTimeout})
	for i := 1; i <= 3; i++ {
		expectMsg(t, m, fmt.Sprintf("message %d", i), false)
	}
	o := expectMsg(t, m, "message 4", true)
	if !strings.Contains(strings.Join(o.st.Reasons, " "), "counted 4") {
		t.Errorf("reasons %q do not give the count", o.st.Reasons)
	}
	keys, err := srv.Client().Keys(context.Background(), "gm:{lax}:rl:rate:bulk@outside.example:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("counter keys %q, %v", keys, err)
	}
	// A second milter process of the same site shares the count.
	m2 := newTestMilter(t, snap, Options{Counter: store, Timeout: testRedisTimeout})
	expectMsg(t, m2, "message 5, other process", true)
}

// TestRateTwoSites: two sites, each with its own primary and a local
// replica of the other's; counting at both sites sums, so limit N trips at
// the N+1st message counted across both. A dark peer replica degrades the
// count (its last known value is used) without holding mail.
func TestRateTwoSites(t *testing.T) {
	sites := redistest.Sites(t, "lax", "dal")
	laxP, dalP := sites["lax"].Primary, sites["dal"].Primary
	dalAtLax, laxAtDal := sites["lax"].Replicas["dal"], sites["dal"].Replicas["lax"]
	lax := openStore(t, "lax", laxP.Addr, map[string]string{"dal": dalAtLax.Addr})
	dal := openStore(t, "dal", dalP.Addr, map[string]string{"lax": laxAtDal.Addr})
	snap := rateSnapshot(t, 4)
	mLax := newTestMilter(t, snap, Options{Counter: lax, Timeout: testRedisTimeout})
	mDal := newTestMilter(t, snap, Options{Counter: dal, Timeout: testRedisTimeout})

	expectMsg(t, mLax, "1 at lax", false)
	expectMsg(t, mLax, "2 at lax", false)
	replicated(t, laxP)
	expectMsg(t, mDal, "3 at dal", false)
	expectMsg(t, mDal, "4 at dal", false)
	replicated(t, dalP)
	o := expectMsg(t, mLax, "5 at lax", true)
	if !strings.Contains(strings.Join(o.st.Reasons, " "), "counted 5") {
		t.Errorf("reasons %q: want the sum over both sites", o.st.Reasons)
	}
	replicated(t, laxP)
	expectMsg(t, mDal, "6 at dal", true)

	// lax's replica of dal goes dark: lax still decides, from dal's last
	// known count, and says so.
	dalAtLax.Pause()
	t.Cleanup(dalAtLax.Resume)
	expectMsg(t, mLax, "7 at lax, dal's replica dark", true, DegradedRedisPeer)
}

// TestRateRedisDown: while the site's primary does not answer, rate limits
// are counted in process memory (limits become per process), the decision
// is still made, and the trail says "redis"; when it answers again the
// count continues in Redis.
func TestRateRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	store := openStore(t, "lax", srv.Addr, nil)
	m := newTestMilter(t, rateSnapshot(t, 3), Options{Counter: store, Timeout: testRedisTimeout, Clock: func() time.Time { return t0 }})
	expectMsg(t, m, "1 in redis", false)
	expectMsg(t, m, "2 in redis", false)

	srv.Pause()
	for i := 1; i <= 3; i++ {
		expectMsg(t, m, fmt.Sprintf("%d in memory", i), false, DegradedRedis)
	}
	expectMsg(t, m, "4 in memory", true, DegradedRedis)

	srv.Resume()
	// Until the breaker's probe finds the primary back, messages are still
	// counted in memory (and refused there). The first one counted in Redis
	// again continues the count from before the outage: the 2 counted then,
	// plus any increment sent while it was frozen that it executed on
	// waking (a timed-out call may still count: at least once).
	key := "gm:{lax}:rl:rate:bulk@outside.example:" + fmt.Sprint(t0.Truncate(time.Hour).UnixMilli())
	poll(t, "counting in redis again", func() error {
		o := run(t, m, outside, "bulk@outside.example", "a@acme.example")
		if len(o.st.Degraded) != 0 {
			return fmt.Errorf("still degraded: %s", o.summary())
		}
		n, err := srv.Client().Get(context.Background(), key).Int()
		if err != nil || n < 3 {
			t.Fatalf("redis count %d (%v), want at least 3", n, err)
		}
		want := "accept rules=rate"
		if n > 3 {
			want = "mail:tempfail:rate rules=rate"
		}
		if got := o.summary(); got != want {
			t.Fatalf("message counted %d in redis: %s, want %s", n, got, want)
		}
		return nil
	})
	expectMsg(t, m, "next in redis", true)
}
