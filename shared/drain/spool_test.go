package drain

import (
	"fmt"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/spool"
)

// openSpool opens a real spool in a temp dir for the named sinks.
func openSpool(t testing.TB, d spool.Durability, sinks ...string) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(spool.Options{Dir: t.TempDir(), Sinks: sinks, Durability: d,
		SyncEvery: 10 * time.Millisecond, SegmentBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	return sp
}

func reader(t testing.TB, sp *spool.Spool, sink string) *spool.Reader {
	t.Helper()
	r, err := sp.Reader(sink)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// appendEvents appends n trail-like events with ids "<prefix>-<i>".
func appendEvents(t testing.TB, sp *spool.Spool, prefix string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		ev := fmt.Sprintf(`{"schema":1,"event_id":"%s-%d","milter":"access","action":"accept"}`, prefix, i)
		if err := sp.Append([]byte(ev)); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
}

func pendingFor(sp *spool.Spool, sink string) func() int64 {
	return func() int64 { return sp.Stats().PerSink[sink].Pending }
}
