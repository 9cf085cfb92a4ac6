package state_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/redistest"
	"github.com/geomilter/geomilter/shared/state"
)

// TestMemStoreAsStore runs one script of greylist and set calls against a
// single-site Store on a real Redis and against a MemStore on the same
// clock, and wants the same answers: standalone mode behaves as one site.
func TestMemStoreAsStore(t *testing.T) {
	srv := redistest.Start(t)
	now := time.Now().Truncate(time.Millisecond)
	clock := func() time.Time { return now }
	redisStore, err := state.Open(state.Options{Site: "a", Local: state.InstanceConfig{Addr: srv.Addr},
		Timeout: 2 * time.Second, Clock: clock, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { redisStore.Close() })
	mem := state.NewMemStore(clock)

	type step struct {
		advance time.Duration
		op      string // seen, pass, add, has
		key     string
		ttl     time.Duration
	}
	script := []step{
		{0, "seen", "t1", time.Hour},
		{time.Minute, "seen", "t1", time.Hour}, // first sighting stays
		{time.Minute, "pass", "t1", 24 * time.Hour},
		{time.Minute, "seen", "t1", time.Hour}, // passed, first sighting still the first
		{0, "pass", "t2", time.Hour},           // passed before ever seen
		{time.Minute, "seen", "t2", time.Hour},
		{0, "has", "m1", 0},
		{0, "add", "m1", 10 * time.Minute},
		{time.Minute, "has", "m1", 0},
		{0, "add", "m1", time.Minute}, // a shorter expiry does not shorten
		{5 * time.Minute, "has", "m1", 0},
		{5 * time.Minute, "has", "m1", 0}, // 11 min after the first add: expired
		{0, "add", "m2", 0},               // no expiry
		{time.Hour, "has", "m2", 0},
	}
	ctx := context.Background()
	run := func(b state.Backend, s step) string {
		switch s.op {
		case "seen":
			first, passed, err := b.GreylistSeen(ctx, s.key, s.ttl)
			return fmt.Sprintf("first=%d passed=%v err=%v", first.Sub(now).Milliseconds(), passed, err)
		case "pass":
			return fmt.Sprintf("err=%v", b.GreylistPass(ctx, s.key, s.ttl))
		case "add":
			return fmt.Sprintf("err=%v", b.SetAdd(ctx, "s", s.key, s.ttl))
		default:
			ok, err := b.SetHas(ctx, "s", s.key)
			return fmt.Sprintf("has=%v err=%v", ok, err)
		}
	}
	start := now
	for i, s := range script {
		now = now.Add(s.advance)
		want := run(redisStore, s)
		got := run(mem, s)
		if got != want {
			t.Errorf("step %d (%s %s at +%s): memory %s, redis %s", i, s.op, s.key, now.Sub(start), got, want)
		}
	}
	if redisStore.InMemory() || !mem.InMemory() {
		t.Error("InMemory: Store must say false, MemStore true")
	}
}

// TestMemStoreExpiry: entries end at their expiry, and the sweep frees
// them.
func TestMemStoreExpiry(t *testing.T) {
	now := time.UnixMilli(1_700_000_000_000)
	m := state.NewMemStore(func() time.Time { return now })
	ctx := context.Background()
	if _, _, err := m.GreylistSeen(ctx, "k", time.Minute); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Minute)
	first, passed, _ := m.GreylistSeen(ctx, "k", time.Minute)
	if !first.Equal(now) || passed {
		t.Errorf("after expiry: first=%v passed=%v, want a new entry at %v", first, passed, now)
	}
	if _, _, err := m.GreylistSeen(ctx, "k", 0); err == nil {
		t.Error("ttl 0 accepted")
	}
	for i := range 5000 { // past one sweep
		_ = m.SetAdd(ctx, "s", fmt.Sprint(i), time.Second)
	}
	now = now.Add(time.Hour)
	for i := range 5000 {
		_ = m.SetAdd(ctx, "t", fmt.Sprint(i), time.Second)
	}
	if n := m.Entries(); n > 6000 {
		t.Errorf("%d entries held after the first 5000 expired; the sweep should have freed them", n)
	}
}
