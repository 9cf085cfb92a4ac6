package state_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/state"
)

// calls returns the admitted calls per instance ("site/role").
func calls(st *state.Store) map[string]uint64 {
	out := map[string]uint64{}
	for _, s := range st.Status(context.Background()) {
		out[s.Site+"/"+s.Role] = s.Calls
	}
	return out
}

func callsSince(before, after map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range after {
		out[k] = v - before[k]
	}
	return out
}

// TestIncrMany: several subjects and windows are counted in one call per
// instance — one pipeline to the own primary, one read per peer replica,
// under one budget — with the same sums, degradation and errors as Incr.
func TestIncrMany(t *testing.T) {
	sites := startSites(t, "a", "b")
	a, b := sites["a"], sites["b"]
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if _, err := b.store.Incr(ctx, "s1", time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	waitReplicated(t, sites, "b", "gm:{b}:rl:s1:"+fmt.Sprint(b.clock.Now().Truncate(time.Minute).UnixMilli()))

	reqs := []state.IncrReq{{Subject: "s1", Window: time.Minute}, {Subject: "s2", Window: time.Hour}, {Subject: "s1", Window: time.Minute}}
	before := calls(a.store)
	got, err := a.store.IncrMany(ctx, reqs)
	want := []state.Count{
		{Local: 1, Total: 3, Estimate: 3}, // b's 2 from its replica
		{Local: 1, Total: 1, Estimate: 1},
		{Local: 2, Total: 4, Estimate: 4}, // a repeated request counts twice
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("IncrMany = %+v, %v\nwant %+v", got, err, want)
	}
	if n := callsSince(before, calls(a.store)); !reflect.DeepEqual(n, map[string]uint64{"a/primary": 1, "b/peer-replica": 1}) {
		t.Fatalf("calls per instance for 3 requests: %v; want one each", n)
	}
	if c, err := a.store.Incr(ctx, "s1", time.Minute); err != nil || c != (state.Count{Local: 3, Total: 5, Estimate: 5}) {
		t.Fatalf("Incr after IncrMany = %+v, %v", c, err)
	}

	t.Run("an invalid window fails the call before any I/O", func(t *testing.T) {
		before := calls(a.store)
		_, err := a.store.IncrMany(ctx, []state.IncrReq{{Subject: "s1", Window: time.Minute}, {Subject: "bad", Window: 0}})
		if err == nil || errors.Is(err, state.ErrUnavailable) {
			t.Fatalf("IncrMany with a zero window: %v", err)
		}
		if n := callsSince(before, calls(a.store)); n["a/primary"] != 0 || n["b/peer-replica"] != 0 {
			t.Fatalf("calls made: %v", n)
		}
		if c, _ := a.store.Incr(ctx, "s1", time.Minute); c.Local != 4 {
			t.Fatalf("s1 at a = %d after a failed IncrMany, want 4", c.Local)
		}
	})

	t.Run("a dark peer replica degrades every result, one budget", func(t *testing.T) {
		a.replicas["b"].Pause()
		defer a.replicas["b"].Resume()
		before := instanceStatus(t, a.store, "b", state.RolePeerReplica)
		got, err := a.store.IncrMany(ctx, []state.IncrReq{{Subject: "s1", Window: time.Minute}, {Subject: "s2", Window: time.Hour}})
		want := []state.Count{
			{Local: 5, Total: 7, Estimate: 7, Degraded: true}, // b's last known 2
			{Local: 2, Total: 2, Estimate: 2, Degraded: true},
		}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("IncrMany = %+v, %v\nwant %+v", got, err, want)
		}
		after := instanceStatus(t, a.store, "b", state.RolePeerReplica)
		if after.Calls-before.Calls != 1 || after.TimedOut-before.TimedOut != 1 {
			t.Fatalf("peer replica: %d calls, %d waited out the budget; want 1 and 1",
				after.Calls-before.Calls, after.TimedOut-before.TimedOut)
		}
	})

	t.Run("own primary down: ErrUnavailable", func(t *testing.T) {
		a.primary.Kill()
		if _, err := a.store.IncrMany(ctx, reqs); !errors.Is(err, state.ErrUnavailable) {
			t.Fatalf("IncrMany with the own primary down: %v", err)
		}
	})
}
