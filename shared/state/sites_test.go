package state_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/redistest"
	"github.com/geomilter/geomilter/shared/state"
	"github.com/geomilter/geomilter/shared/state/statetest"
)

// clock is a settable clock shared by a site's store.
type clock = statetest.Clock

// Test budgets: far above a local round trip even on a loaded machine, so a
// scheduler hiccup does not trip a breaker; the assertions count calls, not
// milliseconds.
const (
	testTimeout     = 250 * time.Millisecond
	testOpenFor     = 200 * time.Millisecond
	testBulkTimeout = 500 * time.Millisecond
	settle          = 15 * time.Second // deadline for replication / recovery polls
)

// site is one site of the test topology: its primary, its local replicas of
// every peer primary, and its Store.
type site struct {
	name     string
	primary  *redistest.Server
	replicas map[string]*redistest.Server // peer name -> local replica of that peer
	store    *state.Store
	clock    *clock
}

// startSites starts, for each name, a primary plus a replica of every other
// site's primary, waits for every replica to sync, and opens the stores.
func startSites(t *testing.T, names ...string) map[string]*site {
	t.Helper()
	// Far in the future: absolute expiries computed from this clock (set
	// members) must lie ahead of the real clock Redis expires keys by.
	start := time.Date(2100, 1, 1, 0, 30, 0, 0, time.UTC)
	o := state.Options{Timeout: testTimeout, BulkTimeout: testBulkTimeout, BreakerOpenFor: testOpenFor, BreakerFailures: 3, Logger: zerolog.Nop()}
	sites := make(map[string]*site, len(names))
	for n, s := range statetest.Sites(t, o, start, names...) {
		sites[n] = &site{name: n, primary: s.Primary, replicas: s.Replicas, clock: s.Clock, store: s.Store}
	}
	return sites
}

// poll retries f until it returns nil or the settle deadline passes.
func poll(t *testing.T, what string, f func() error) {
	t.Helper()
	statetest.Poll(t, settle, what, f)
}

// waitReplicated waits until every replica of site `from` holds key with
// the same value as its primary.
func waitReplicated(t *testing.T, sites map[string]*site, from, key string) {
	t.Helper()
	ctx := context.Background()
	want, err := sites[from].primary.Client().Dump(ctx, key).Result()
	if err != nil {
		t.Fatalf("dump %s at %s: %v", key, from, err)
	}
	for _, s := range sites {
		if r, ok := s.replicas[from]; ok {
			c := r.Client()
			poll(t, fmt.Sprintf("%s at %s's replica of %s", key, s.name, from), func() error {
				got, err := c.Dump(ctx, key).Result()
				if err != nil || got != want {
					return fmt.Errorf("not yet (%v)", err)
				}
				return nil
			})
		}
	}
}

func rule(id, body string) state.RuleDoc { return state.RuleDoc{ID: id, Doc: json.RawMessage(body)} }

// view is a comparable digest of a merged rule set.
func view(m map[string]state.RuleDoc) map[string]string {
	out := make(map[string]string, len(m))
	for id, d := range m {
		out[id] = d.HLC + " " + d.Site + " " + string(d.Doc)
	}
	return out
}

// waitSameView waits until every site's LoadRules succeeds and all agree,
// and returns the agreed view.
func waitSameView(t *testing.T, sites map[string]*site, names ...string) map[string]state.RuleDoc {
	t.Helper()
	var agreed map[string]state.RuleDoc
	poll(t, "identical merged views at "+strings.Join(names, ","), func() error {
		var first map[string]string
		for i, n := range names {
			m, _, err := sites[n].store.LoadRules(context.Background())
			if err != nil {
				return err
			}
			if i == 0 {
				first, agreed = view(m), m
			} else if v := view(m); !reflect.DeepEqual(v, first) {
				return fmt.Errorf("%s sees %v, %s sees %v", names[0], first, n, v)
			}
		}
		return nil
	})
	return agreed
}

func instanceStatus(t *testing.T, st *state.Store, site, role string) state.InstanceStatus {
	t.Helper()
	for _, s := range st.Status(context.Background()) {
		if s.Site == site && s.Role == role {
			return s
		}
	}
	t.Fatalf("no instance %s/%s", site, role)
	return state.InstanceStatus{}
}

// alignClocks sets every site's clock to a minute past the latest of them.
func alignClocks(sites map[string]*site) {
	var latest time.Time
	for _, s := range sites {
		if n := s.clock.Now(); n.After(latest) {
			latest = n
		}
	}
	for _, s := range sites {
		s.clock.Set(latest.Add(time.Minute))
	}
}

func TestThreeSites(t *testing.T) {
	sites := startSites(t, "a", "b", "c")
	a, b, c := sites["a"], sites["b"], sites["c"]
	ctx := context.Background()

	t.Run("rule put at a reaches c, with a notification", func(t *testing.T) {
		events := make(chan string, 100)
		subCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		c.store.Subscribe(subCtx, func(site string) { events <- site })
		// Each subscription announces itself once established.
		got := map[string]bool{}
		for len(got) < 3 {
			select {
			case s := <-events:
				got[s] = true
			case <-time.After(settle):
				t.Fatalf("subscriptions established: %v", got)
			}
		}
		changed, err := a.store.PutRules(ctx, []state.RuleDoc{rule("r1", `{"action": "reject"}`), rule("r1c", `{"x":1}`)})
		if err != nil || !reflect.DeepEqual(changed, []string{"r1", "r1c"}) {
			t.Fatalf("PutRules = %v, %v", changed, err)
		}
		// Same docs again (whitespace differs): nothing to do.
		if changed, err := a.store.PutRules(ctx, []state.RuleDoc{rule("r1", `{"action":"reject"}`)}); err != nil || changed != nil {
			t.Fatalf("re-apply changed %v, %v", changed, err)
		}
		deadline := time.After(settle)
		for notified := false; !notified; {
			select {
			case s := <-events:
				notified = s == "a"
			case <-deadline:
				t.Fatal("no change notification from a at c")
			}
		}
		if _, err := c.store.PutRules(ctx, []state.RuleDoc{rule("rc", `{"from":"c"}`)}); err != nil {
			t.Fatal(err)
		}
		m := waitSameView(t, sites, "a", "b", "c")
		if d := m["r1"]; d.Site != "a" || string(d.Doc) != `{"action":"reject"}` {
			t.Fatalf("r1 = %+v", d)
		}
		v := c.store.Versions(ctx)
		if v["a"] != 1 || v["c"] != 1 || v["b"] != 0 || len(v) != 3 {
			t.Fatalf("versions at c = %v, want a:1 b:0 c:1", v)
		}
	})

	t.Run("counters sum over sites", func(t *testing.T) {
		incr := func(s *site, n int) state.Count {
			t.Helper()
			var cnt state.Count
			for i := 0; i < n; i++ {
				var err error
				if cnt, err = s.store.Incr(ctx, "sender:x@example.org", time.Hour); err != nil {
					t.Fatalf("Incr at %s: %v", s.name, err)
				}
			}
			waitReplicated(t, sites, s.name, "gm:{"+s.name+"}:rl:sender:x@example.org:"+
				fmt.Sprint(s.clock.Now().Truncate(time.Hour).UnixMilli()))
			return cnt
		}
		incr(a, 3)
		incr(b, 2)
		incr(c, 1)
		// One more at each site, each after the previous one replicated.
		for i, s := range []*site{a, b, c} {
			got := incr(s, 1)
			wantLocal := map[string]int64{"a": 4, "b": 3, "c": 2}[s.name]
			want := state.Count{Local: wantLocal, Total: int64(7 + i), Estimate: float64(7 + i)}
			if got != want {
				t.Fatalf("at %s: %+v, want %+v", s.name, got, want)
			}
		}
		// Next window, halfway: the previous window's total weighs half.
		for _, s := range sites {
			s.clock.Set(s.clock.Now().Add(time.Hour))
		}
		got, err := a.store.Incr(ctx, "sender:x@example.org", time.Hour)
		want := state.Count{Local: 1, Total: 1, PrevTotal: 9, Estimate: 9*0.5 + 1}
		if err != nil || got != want {
			t.Fatalf("next window: %+v, %v; want %+v", got, err, want)
		}
	})

	t.Run("greylist merges across sites", func(t *testing.T) {
		first := a.clock.Now()
		fs, passed, err := a.store.GreylistSeen(ctx, "1.2.3.4|s@x|r@y", time.Hour)
		if err != nil || !fs.Equal(first) || passed {
			t.Fatalf("first sighting at a: %v, %v, %v", fs, passed, err)
		}
		b.clock.Set(first.Add(5 * time.Minute))
		poll(t, "a's sighting visible at b", func() error {
			fs, passed, err := b.store.GreylistSeen(ctx, "1.2.3.4|s@x|r@y", time.Hour)
			if err != nil || !fs.Equal(first) || passed {
				return fmt.Errorf("%v %v %v", fs, passed, err)
			}
			return nil
		})
		if err := a.store.GreylistPass(ctx, "1.2.3.4|s@x|r@y", 24*time.Hour); err != nil {
			t.Fatal(err)
		}
		poll(t, "pass at a visible at c", func() error {
			fs, passed, err := c.store.GreylistSeen(ctx, "1.2.3.4|s@x|r@y", time.Hour)
			if err != nil || !fs.Equal(first) || !passed {
				return fmt.Errorf("%v %v %v", fs, passed, err)
			}
			return nil
		})
	})

	t.Run("sets are a union with per-member expiry", func(t *testing.T) {
		if err := a.store.SetAdd(ctx, "seen", "short", time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := b.store.SetAdd(ctx, "seen", "forever", 0); err != nil {
			t.Fatal(err)
		}
		for _, m := range []string{"short", "forever"} {
			poll(t, m+" visible at c", func() error {
				ok, err := c.store.SetHas(ctx, "seen", m)
				if err != nil || !ok {
					return fmt.Errorf("%v %v", ok, err)
				}
				return nil
			})
		}
		if ok, err := c.store.SetHas(ctx, "seen", "never-added"); ok || err != nil {
			t.Fatalf("SetHas(never-added) = %v, %v", ok, err)
		}
		c.clock.Set(c.clock.Now().Add(2 * time.Minute))
		if ok, _ := c.store.SetHas(ctx, "seen", "short"); ok {
			t.Fatal("member past its ttl still reported")
		}
		if ok, _ := c.store.SetHas(ctx, "seen", "forever"); !ok {
			t.Fatal("member without ttl lost")
		}
		// The key lives exactly as long as its longest-lived member.
		if ttl := b.primary.Client().PTTL(ctx, "gm:{b}:set:seen").Val(); ttl != -1 {
			t.Fatalf("set with a permanent member has ttl %v", ttl)
		}
		if ttl := a.primary.Client().PTTL(ctx, "gm:{a}:set:seen").Val(); ttl <= 0 {
			t.Fatalf("set with expiring members has no ttl (%v)", ttl)
		}
	})

	t.Run("concurrent edits converge to the HLC winner", func(t *testing.T) {
		// Cut a<->b replication so neither site sees the other's edit; c sees
		// both. a writes with a clock one second ahead of b's, b writes later
		// in real time: a must still win everywhere (last writer by HLC).
		a.replicas["b"].Pause()
		b.replicas["a"].Pause()
		now := b.clock.Now()
		a.clock.Set(now.Add(time.Second))
		if _, err := a.store.PutRules(ctx, []state.RuleDoc{rule("conflict", `{"by":"a"}`)}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.store.PutRules(ctx, []state.RuleDoc{rule("conflict", `{"by":"b"}`)}); err != nil {
			t.Fatal(err)
		}
		// While cut, c already picks a.
		poll(t, "c picks a's edit", func() error {
			m, _, err := c.store.LoadRules(ctx)
			if err != nil || string(m["conflict"].Doc) != `{"by":"a"}` {
				return fmt.Errorf("%+v %v", m["conflict"], err)
			}
			return nil
		})
		a.replicas["b"].Resume()
		b.replicas["a"].Resume()
		m := waitSameView(t, sites, "a", "b", "c")
		if d := m["conflict"]; d.Site != "a" || string(d.Doc) != `{"by":"a"}` {
			t.Fatalf("winner = %+v, want a's edit", d)
		}
		// An edit made after seeing the winner wins, whatever the clocks say:
		// b's clock is now a second behind a's last stamp.
		if ch, err := b.store.PutRules(ctx, []state.RuleDoc{rule("conflict", `{"by":"b","after":"a"}`)}); err != nil || len(ch) != 1 {
			t.Fatalf("edit after seeing: %v, %v", ch, err)
		}
		m = waitSameView(t, sites, "a", "b", "c")
		if d := m["conflict"]; d.Site != "b" {
			t.Fatalf("causal edit lost: %+v", d)
		}
	})

	t.Run("delete and tombstone GC", func(t *testing.T) {
		if _, err := a.store.PutRules(ctx, []state.RuleDoc{rule("gone", `{}`)}); err != nil {
			t.Fatal(err)
		}
		waitSameView(t, sites, "a", "b", "c")
		del, err := b.store.DeleteRules(ctx, []string{"gone", "never-existed"})
		if err != nil || !reflect.DeepEqual(del, []string{"gone"}) {
			t.Fatalf("DeleteRules = %v, %v", del, err)
		}
		if del, err := b.store.DeleteRules(ctx, []string{"gone"}); err != nil || del != nil {
			t.Fatalf("second delete = %v, %v", del, err)
		}
		m := waitSameView(t, sites, "a", "b", "c")
		if _, ok := m["gone"]; ok {
			t.Fatal("deleted rule still served")
		}
		// b's tombstone cannot go while a still holds the old version.
		for _, s := range sites {
			s.clock.Set(s.clock.Now().Add(time.Minute))
		}
		if rm, err := b.store.GCTombstones(ctx, 0); err != nil || len(rm) != 0 {
			t.Fatalf("premature tombstone GC: %v, %v", rm, err)
		}
		// a drops its superseded version (and its old "conflict" edit, beaten by b).
		rm, err := a.store.GCTombstones(ctx, 0)
		if err != nil || !reflect.DeepEqual(rm, []string{"conflict", "gone"}) {
			t.Fatalf("GC at a = %v, %v", rm, err)
		}
		poll(t, "b's tombstone collected once a's removal replicated", func() error {
			rm, err := b.store.GCTombstones(ctx, 0)
			if err != nil || !reflect.DeepEqual(rm, []string{"gone"}) {
				return fmt.Errorf("%v %v", rm, err)
			}
			return nil
		})
		m = waitSameView(t, sites, "a", "b", "c")
		if _, ok := m["gone"]; ok {
			t.Fatal("rule resurrected after GC")
		}
		for _, s := range sites {
			if s.primary.Client().HExists(ctx, "gm:{"+s.name+"}:rules", "gone").Val() {
				t.Errorf("%s still stores %q", s.name, "gone")
			}
		}
	})

	t.Run("site a dark", func(t *testing.T) {
		before := waitSameView(t, sites, "a", "b", "c")
		a.primary.Pause()
		a.replicas["b"].Pause()
		a.replicas["c"].Pause()
		paused := true
		defer func() {
			if paused {
				a.primary.Resume()
				a.replicas["b"].Resume()
				a.replicas["c"].Resume()
			}
		}()

		// At a: every call fails with ErrUnavailable; only the first waits.
		const calls = 10
		for i := 0; i < calls; i++ {
			start := time.Now()
			_, err := a.store.Incr(ctx, "s", time.Minute)
			if !errors.Is(err, state.ErrUnavailable) {
				t.Fatalf("Incr at dark a: %v", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("call %d took %v: not bounded by the budget", i, d)
			}
		}
		for _, st := range a.store.Status(ctx) {
			if st.Up || st.Trips < 1 || st.TimedOut > st.Trips {
				t.Errorf("a: %s/%s up=%v trips=%d timedOut=%d: want down, at most one waiting call per cycle",
					st.Site, st.Role, st.Up, st.Trips, st.TimedOut)
			}
		}
		if st := instanceStatus(t, a.store, "a", state.RolePrimary); st.FastFails < calls-1 {
			t.Errorf("a primary: %d fast fails, want >= %d", st.FastFails, calls-1)
		}

		// At b and c: nothing waits, a's last rules are still served.
		if _, err := b.store.PutRules(ctx, []state.RuleDoc{rule("during-cut", `{"by":"b"}`)}); err != nil {
			t.Fatal(err)
		}
		for _, s := range []*site{b, c} {
			if cnt, err := s.store.Incr(ctx, "s", time.Minute); err != nil || cnt.Degraded {
				t.Fatalf("Incr at %s during a's cut: %+v, %v", s.name, cnt, err)
			}
			m, src, err := s.store.LoadRules(ctx)
			if err != nil || !src["a"].Available {
				t.Fatalf("LoadRules at %s: %v (sources %v)", s.name, err, src)
			}
			if !reflect.DeepEqual(m["r1"], before["r1"]) {
				t.Fatalf("%s lost a's rule r1: %+v", s.name, m["r1"])
			}
		}
		// b's replica of a notices the cut and says so.
		poll(t, "b's replica of a reports the link down", func() error {
			st := instanceStatus(t, b.store, "a", state.RolePeerReplica)
			if st.Replication == nil || st.Replication.MasterLinkStatus != "down" {
				return fmt.Errorf("%+v", st.Replication)
			}
			return nil
		})

		a.primary.Resume()
		a.replicas["b"].Resume()
		a.replicas["c"].Resume()
		paused = false
		poll(t, "a answers again", func() error {
			_, err := a.store.Incr(ctx, "s", time.Minute)
			return err
		})
		m := waitSameView(t, sites, "a", "b", "c")
		if string(m["during-cut"].Doc) != `{"by":"b"}` {
			t.Fatalf("b's write during the cut did not reach everyone: %+v", m["during-cut"])
		}
		for _, st := range a.store.Status(ctx) {
			if st.TimedOut > st.Trips {
				t.Errorf("a: %s/%s timedOut=%d > trips=%d", st.Site, st.Role, st.TimedOut, st.Trips)
			}
		}
		poll(t, "b's replica of a back in sync", func() error {
			st := instanceStatus(t, b.store, "a", state.RolePeerReplica)
			if st.Replication == nil || st.Replication.MasterLinkStatus != "up" {
				return fmt.Errorf("%+v", st.Replication)
			}
			return nil
		})
	})

	t.Run("peer replica frozen at c", func(t *testing.T) {
		alignClocks(sites)
		for i := 0; i < 5; i++ {
			if _, err := b.store.Incr(ctx, "frozen", time.Minute); err != nil {
				t.Fatal(err)
			}
		}
		waitReplicated(t, sites, "b", "gm:{b}:rl:frozen:"+fmt.Sprint(b.clock.Now().Truncate(time.Minute).UnixMilli()))
		cnt, err := c.store.Incr(ctx, "frozen", time.Minute)
		if err != nil || cnt.Total != 6 || cnt.Degraded {
			t.Fatalf("before freeze: %+v, %v", cnt, err)
		}
		before := instanceStatus(t, c.store, "b", state.RolePeerReplica)
		c.replicas["b"].Pause()
		for i := 0; i < 10; i++ {
			cnt, err := c.store.Incr(ctx, "frozen", time.Minute)
			// b's last known 5 still count; c's own count goes on.
			if err != nil || !cnt.Degraded || cnt.Total != int64(5+2+i) || cnt.Local != int64(2+i) {
				t.Fatalf("frozen call %d: %+v, %v", i, cnt, err)
			}
		}
		after := instanceStatus(t, c.store, "b", state.RolePeerReplica)
		if waited := after.TimedOut - before.TimedOut; waited > after.Trips-before.Trips || after.Trips == before.Trips {
			t.Fatalf("%d calls waited in %d breaker cycles", waited, after.Trips-before.Trips)
		}
		c.replicas["b"].Resume()
		poll(t, "c reads b's replica again", func() error {
			cnt, err := c.store.Incr(ctx, "frozen", time.Minute)
			if err != nil || cnt.Degraded {
				return fmt.Errorf("%+v %v", cnt, err)
			}
			return nil
		})
	})

	t.Run("b's own primary killed", func(t *testing.T) {
		if err := c.store.SetAdd(ctx, "seen", "from-c", 0); err != nil {
			t.Fatal(err)
		}
		waitReplicated(t, sites, "c", "gm:{c}:set:seen")
		b.primary.Kill()
		_, err := b.store.Incr(ctx, "s", time.Minute)
		if !errors.Is(err, state.ErrUnavailable) {
			t.Fatalf("Incr with own primary down: %v", err)
		}
		if _, _, err := b.store.GreylistSeen(ctx, "t", time.Hour); !errors.Is(err, state.ErrUnavailable) {
			t.Fatalf("GreylistSeen with own primary down: %v", err)
		}
		if ok, err := b.store.SetHas(ctx, "seen", "from-c"); err != nil || !ok {
			t.Fatalf("SetHas from peers with own primary down: %v, %v", ok, err)
		}
		m, src, err := b.store.LoadRules(ctx)
		if !errors.Is(err, state.ErrUnavailable) || src["b"].Available || !src["a"].Available || !src["c"].Available {
			t.Fatalf("LoadRules: err %v, sources %v", err, src)
		}
		if _, ok := m["r1"]; !ok {
			t.Fatalf("a's rules missing at b: %v", m)
		}
		if _, ok := m["rc"]; !ok {
			t.Fatalf("c's rules missing at b: %v", m)
		}
		if _, err := b.store.PutRules(ctx, []state.RuleDoc{rule("x", `{}`)}); !errors.Is(err, state.ErrUnavailable) {
			t.Fatalf("PutRules with own primary down: %v", err)
		}
		ids := make([]string, 0, len(m))
		for id := range m {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		t.Logf("b serves %v from its peers while its primary is down", ids)
	})
}
