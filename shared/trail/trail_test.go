package trail

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/spool"
)

func TestEventIDsAreUniqueAndTimeOrdered(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	seen := map[string]bool{}
	prev := ""
	for i := 0; i < 10000; i++ {
		id := NewEventID(t0.Add(time.Duration(i) * time.Millisecond))
		if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Fatalf("malformed id %q", id)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
		if id[:12] <= prev {
			t.Fatalf("time prefix not increasing: %q after %q", id[:12], prev)
		}
		prev = id[:12]
	}
}

func openSpool(t *testing.T, maxBytes int64) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(spool.Options{Dir: t.TempDir(), Sinks: []string{"s"}, MaxBytes: maxBytes,
		SegmentBytes: 64 << 10, SyncEvery: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	return sp
}

func TestEmitStampsIdentityAndSpools(t *testing.T) {
	sp := openSpool(t, 0)
	reg := prometheus.NewRegistry()
	e := NewEmitter(sp, "lax", "mta1", "access", zerolog.Nop(), reg)
	e.Emit(&Event{TxnID: "abc.1", Sender: "", Rcpts: []Rcpt{{Addr: "bob@acme.example", Action: "accept"}}, Action: "accept", Stage: "eom"})

	r, _ := sp.Reader("s")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	recs, err := r.Next(ctx, 10)
	if err != nil || len(recs) != 1 {
		t.Fatalf("next: %v %d", err, len(recs))
	}
	var got map[string]any
	if err := json.Unmarshal(recs[0].Data, &got); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"site": "lax", "host": "mta1", "milter": "access", "schema": float64(1), "sender": "", "txn_id": "abc.1"} {
		if got[k] != want {
			t.Errorf("%s = %#v, want %#v", k, got[k], want)
		}
	}
	if id, _ := got["event_id"].(string); len(id) != 32 {
		t.Errorf("event_id %q", id)
	}
	if testutil.ToFloat64(e.emitted) != 1 {
		t.Errorf("emitted counter %v", testutil.ToFloat64(e.emitted))
	}
}

// A full spool drops new events and counts them; Emit never blocks or fails
// the caller (the mail path).
func TestEmitDropsWhenFull(t *testing.T) {
	sp := openSpool(t, 64<<10)
	e := NewEmitter(sp, "lax", "mta1", "access", zerolog.Nop(), prometheus.NewRegistry())
	big := strings.Repeat("x", 2000)
	done := make(chan struct{})
	go func() {
		for i := 0; i < 200; i++ {
			e.Emit(&Event{Reasons: []string{big}})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Emit blocked on a full spool")
	}
	if testutil.ToFloat64(e.dropped) == 0 {
		t.Fatal("no drop counted with 400 KB of events into a 64 KiB spool")
	}
	if got := testutil.ToFloat64(e.emitted) + testutil.ToFloat64(e.dropped); got != 200 {
		t.Fatalf("emitted+dropped = %v, want 200", got)
	}
}

// After Close the spool refuses appends: the event is counted as failed.
func TestEmitAfterCloseCountsFailure(t *testing.T) {
	sp := openSpool(t, 0)
	e := NewEmitter(sp, "lax", "mta1", "access", zerolog.Nop(), prometheus.NewRegistry())
	sp.Close()
	e.Emit(&Event{})
	if testutil.ToFloat64(e.failed) != 1 {
		t.Fatalf("failed counter %v", testutil.ToFloat64(e.failed))
	}
}
