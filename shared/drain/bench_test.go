package drain

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/redistest"
	"github.com/geomilter/geomilter/shared/spool"
)

// BenchmarkRedisDrain drains 100,000 pre-spooled ~300-byte events into a
// local redis-server through the redis sink (batches of 500, pipelined) and
// reports events/s. Run with -benchtime=1x.
func BenchmarkRedisDrain(b *testing.B) {
	const n = 100000
	srv := redistest.Start(b)
	c := srv.Client()
	pad := strings.Repeat("x", 200)
	var elapsed time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if err := c.Del(context.Background(), testStream).Err(); err != nil {
			b.Fatal(err)
		}
		sp := openSpool(b, spool.GroupCommit, "site")
		for j := 0; j < n; j++ {
			ev := fmt.Sprintf(`{"schema":1,"event_id":"%012x-%08x","milter":"access","action":"accept","pad":"%s"}`, j, i, pad)
			if err := sp.Append([]byte(ev)); err != nil {
				b.Fatal(err)
			}
		}
		if err := sp.Sync(); err != nil {
			b.Fatal(err)
		}
		d := New(reader(b, sp, "site"), NewRedisSink("site", c, testStream, 0),
			Options{Pending: pendingFor(sp, "site")})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		b.StartTimer()
		start := time.Now()
		go func() { done <- d.Run(ctx) }()
		fctx, fcancel := context.WithTimeout(context.Background(), 2*time.Minute)
		err := d.Flush(fctx)
		elapsed += time.Since(start)
		b.StopTimer()
		fcancel()
		cancel()
		if rerr := <-done; rerr != nil {
			b.Fatal(rerr)
		}
		if err != nil {
			b.Fatal(err)
		}
		if got := c.XLen(context.Background(), testStream).Val(); got != n {
			b.Fatalf("stream has %d entries, want %d", got, n)
		}
		_ = sp.Close()
	}
	b.ReportMetric(float64(n*b.N)/elapsed.Seconds(), "events/s")
}
