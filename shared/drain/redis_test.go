package drain

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geomilter/geomilter/shared/redistest"
	"github.com/geomilter/geomilter/shared/spool"
)

const testStream = "gm:{test}:trail"

// streamIDs reads the whole stream and counts entries per "id" field,
// checking each entry's "event" field carries that id.
func streamIDs(t *testing.T, c *redis.Client) map[string]int {
	t.Helper()
	msgs, err := c.XRange(context.Background(), testStream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	for _, m := range msgs {
		id, _ := m.Values["id"].(string)
		ev, _ := m.Values["event"].(string)
		if got := EventID(spool.Record{Data: []byte(ev)}); got != id {
			t.Fatalf("entry %s: id field %q but event %q", m.ID, id, ev)
		}
		ids[id]++
	}
	return ids
}

func TestRedisSinkXADD(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client()
	s := NewRedisSink("site", c, testStream, 0)
	batch := []spool.Record{
		{Seq: 10, Data: []byte(`{"schema":1,"event_id":"e1","action":"reject"}`)},
		{Seq: 11, Data: []byte(`{"schema":1,"action":"accept"}`)},
	}
	if err := s.Send(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	msgs, err := c.XRange(context.Background(), testStream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	want := []map[string]any{
		{"id": "e1", "event": string(batch[0].Data)},
		{"id": "seq-11", "event": string(batch[1].Data)},
	}
	if len(msgs) != len(want) {
		t.Fatalf("stream has %d entries, want %d", len(msgs), len(want))
	}
	for i, m := range msgs {
		if fmt.Sprint(m.Values) != fmt.Sprint(want[i]) {
			t.Errorf("entry %d = %v, want %v", i, m.Values, want[i])
		}
	}
}

func TestRedisSinkMaxLenTrimsApproximately(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client()
	s := NewRedisSink("site", c, testStream, 100)
	for b := 0; b < 10; b++ {
		batch := make([]spool.Record, 200)
		for i := range batch {
			batch[i] = spool.Record{Seq: uint64(b*200 + i + 1), Data: []byte(`{"event_id":"x"}`)}
		}
		if err := s.Send(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
	}
	n, err := c.XLen(context.Background(), testStream).Result()
	if err != nil {
		t.Fatal(err)
	}
	// "~" trims whole radix-tree nodes (100 entries by default), so the
	// length stays at or a little above maxLen, far below the 2000 added.
	if n < 100 || n > 300 {
		t.Fatalf("XLEN = %d after 2000 XADDs with MAXLEN ~ 100, want 100..300", n)
	}
}

// TestRedisPausedThenResumed: a SIGSTOPped redis accepts connections but
// never answers; sends time out, the drainer backs off, and once redis
// resumes every event arrives.
func TestRedisPausedThenResumed(t *testing.T) {
	srv := redistest.Start(t)
	sp := openSpool(t, spool.GroupCommit, "site")
	m := NewMetrics(nil, "test")
	// A client with ContextTimeoutEnabled off (the go-redis default) must not
	// make Send overstay its deadline either.
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = c.Close() })
	d := New(reader(t, sp, "site"), NewRedisSink("site", c, testStream, 0), Options{
		BatchSize: 100, MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		SendTimeout: 200 * time.Millisecond, Metrics: m, Pending: pendingFor(sp, "site")})
	runDrainer(t, d)

	appendEvents(t, sp, "before", 500)
	eventually(t, "first events delivered", 10*time.Second, func() bool { return sp.Stats().PerSink["site"].Pending == 0 })

	srv.Pause()
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			srv.Resume()
		}
	})
	appendEvents(t, sp, "during", 500)
	eventually(t, "sends failing and backing off", 10*time.Second, func() bool {
		return value(m.retrying.WithLabelValues("site")) == 1 && value(m.failed.WithLabelValues("site")) >= 2
	})
	if p := sp.Stats().PerSink["site"].Pending; p != 500 {
		t.Fatalf("pending while paused = %d, want 500", p)
	}

	srv.Resume()
	resumed = true
	eventually(t, "everything delivered after resume", 15*time.Second, func() bool {
		return sp.Stats().PerSink["site"].Pending == 0 && value(m.retrying.WithLabelValues("site")) == 0
	})
	ids := streamIDs(t, srv.Client())
	for _, prefix := range []string{"before", "during"} {
		for i := 0; i < 500; i++ {
			if id := fmt.Sprintf("%s-%d", prefix, i); ids[id] == 0 {
				t.Fatalf("event %s missing from the stream", id)
			}
		}
	}
}

// TestRedisSinkHonoursDeadline: with a client whose sockets wait 5 s (the
// go-redis default, ContextTimeoutEnabled off), Send against a paused server
// still returns at its ctx deadline, and so does a second Send while the
// first pipeline is still stuck.
func TestRedisSinkHonoursDeadline(t *testing.T) {
	srv := redistest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: 5 * time.Second, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	s := NewRedisSink("site", c, testStream, 0)
	if err := c.Ping(context.Background()).Err(); err != nil { // warm the pool
		t.Fatal(err)
	}
	srv.Pause()
	defer srv.Resume()
	for i := 0; i < 2; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		start := time.Now()
		err := s.Send(ctx, []spool.Record{{Seq: 1, Data: []byte(`{"event_id":"a"}`)}})
		took := time.Since(start)
		cancel()
		if err == nil {
			t.Fatalf("send %d to a paused redis succeeded", i)
		}
		// Far below the 5 s socket timeout; generous for a loaded machine.
		if took > 2*time.Second {
			t.Fatalf("send %d took %v, want about the 100ms deadline", i, took)
		}
	}
}
