package integration

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/milterload"
	"github.com/geomilter/geomilter/shared/redistest"
)

// TestBenchDarkSinkLatency is the figure behind "a dark trail sink costs the
// mail path nothing": transaction latency over the milter protocol (go-milter's
// client, 8 concurrent sessions) with a healthy sink and with an unresponsive
// one, alternated in rounds so that machine noise hits both alike. It runs only
// under `make bench` (GEOMILTER_BENCH=1) and fails when the dark sink's p99 is
// more than 10% above the healthy one's.
func TestBenchDarkSinkLatency(t *testing.T) {
	if os.Getenv("GEOMILTER_BENCH") == "" {
		t.Skip("benchmark: run with GEOMILTER_BENCH=1 (make bench)")
	}
	n := envInt("BENCH_TXNS", 5000)
	rounds := envInt("BENCH_ROUNDS", 3)

	col := newCollector(t, false)
	dead := newCollector(t, true)
	rds := redistest.Start(t)
	stopped := redistest.Start(t)
	stopped.Pause()
	t.Cleanup(stopped.Resume)

	type variant struct {
		name string
		sink func() string
	}
	pairs := [][2]variant{
		{
			{"http healthy", func() string { return fmt.Sprintf("{name: s, type: http, url: %q, timeout: 2s}", col.url()) }},
			{"http hanging", func() string { return fmt.Sprintf("{name: s, type: http, url: %q, timeout: 2s}", dead.url()) }},
		},
		{
			{"redis healthy", func() string { return "{name: s, type: redis, maxlen: 1000000}" }},
			{"redis SIGSTOPped", func() string { return "{name: s, type: redis, maxlen: 1000000}" }},
		},
	}
	redisFor := map[string]string{"redis healthy": rds.Addr, "redis SIGSTOPped": stopped.Addr}

	fail := false
	for _, pair := range pairs {
		p99s := map[string][]time.Duration{}
		rates := map[string][]float64{}
		for r := 0; r < rounds; r++ {
			for _, v := range pair {
				s := newSiteRedis(t, "100ms", redisFor[v.name], v.sink())
				p := s.start(t)
				res, err := milterload.Run(context.Background(), milterload.Options{
					Network: "unix", Address: s.socket, Transactions: n, Concurrency: 8,
					MessageBytes: 2048, Rcpts: 1, Timeout: 5 * time.Minute,
				})
				if err != nil || res.Errors > 0 {
					t.Fatalf("%s: %v %+v", v.name, err, res)
				}
				p99s[v.name] = append(p99s[v.name], res.P99)
				rates[v.name] = append(rates[v.name], res.PerSecond)
				p.signal(t, syscall.SIGKILL, 10*time.Second)
			}
		}
		base, dark := pair[0].name, pair[1].name
		bp, dp := median(p99s[base]), median(p99s[dark])
		ratio := float64(dp) / float64(bp)
		fmt.Printf("%-18s p99 median %8s  (rounds %v)  rate median %.0f/s\n", base, bp, p99s[base], medianF(rates[base]))
		fmt.Printf("%-18s p99 median %8s  (rounds %v)  rate median %.0f/s\n", dark, dp, p99s[dark], medianF(rates[dark]))
		verdict := "PASS"
		if ratio > 1.10 {
			verdict, fail = "MISS", true
		}
		fmt.Printf("%s: dark/healthy p99 = %.3f (target <= 1.10)  %s\n\n", dark, ratio, verdict)
	}
	if fail {
		t.Fatal("dark-sink latency target missed")
	}
}

func newSiteRedis(t testing.TB, syncEvery, redisAddr string, sinks ...string) *site {
	s := newSite(t, syncEvery, sinks...)
	if redisAddr == "" {
		return s
	}
	b, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, []byte(fmt.Sprintf("redis:\n  local: {addr: %q}\n", redisAddr))...)
	if err := os.WriteFile(s.config, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func medianF(d []float64) float64 {
	s := append([]float64(nil), d...)
	sort.Float64s(s)
	return s[len(s)/2]
}
