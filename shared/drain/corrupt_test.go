package drain

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/spool"
)

// A trail event whose spool record rots after fsync does not stall its sink:
// the drainer skips the bad bytes, counts them, and delivers the rest.
func TestDrainSkipsCorruptRecord(t *testing.T) {
	dir := t.TempDir()
	sp, err := spool.Open(spool.Options{Dir: dir, Sinks: []string{"h"}, Durability: spool.Durable, SegmentBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	const n = 20
	appendEvents(t, sp, "ev", n)

	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	if len(segs) != 1 {
		t.Fatalf("segments %v", segs)
	}
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte(`"ev-10"`))
	if i < 0 {
		t.Fatal("event ev-10 not found in the segment")
	}
	f, err := os.OpenFile(segs[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{'X'}, int64(i+2)); err != nil {
		t.Fatal(err)
	}
	f.Close()

	rc := newReceiver(t)
	m := NewMetrics(nil, "test")
	d := New(reader(t, sp, "h"), NewHTTPSink("h", rc.srv.URL, nil, nil), Options{BatchSize: 5,
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Metrics: m, Pending: pendingFor(sp, "h")})
	runDrainer(t, d)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	eventually(t, "every event but the rotten one delivered", 10*time.Second, func() bool { return rc.distinct() == n-1 })
	if got := value(m.corrupt.WithLabelValues("h")); got <= 0 {
		t.Errorf("corrupt bytes counted: %v, want > 0", got)
	}
	// Later events still flow.
	appendEvents(t, sp, "late", 3)
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rc.distinct(); got != n-1+3 {
		t.Fatalf("receiver has %d distinct events, want %d", got, n-1+3)
	}
}
