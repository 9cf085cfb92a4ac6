package service

import (
	"net/http"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/metrics"
)

// TestDistinct: in a suite the members' health checks and routes share one
// listener; two of the same name would hide one of them, so start refuses.
func TestDistinct(t *testing.T) {
	h := http.NotFoundHandler()
	for _, tt := range []struct {
		name   string
		checks []string
		routes []string
		err    string
	}{
		{"distinct", []string{"milter", "trail:access", "trail:archive", "journal"}, []string{"/archive/status", "/archive/replay"}, ""},
		{"check twice", []string{"milter", "journal", "journal"}, nil, `two health checks named "journal"`},
		{"route twice", []string{"milter"}, []string{"/archive/status", "/archive/status"}, "two milters serve /archive/status on the metrics listener"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var cs []metrics.Check
			for _, n := range tt.checks {
				cs = append(cs, metrics.Check{Name: n})
			}
			var rs []metrics.Route
			for _, p := range tt.routes {
				rs = append(rs, metrics.Route{Pattern: p, Handler: h})
			}
			err := distinct(cs, rs)
			if (err == nil) != (tt.err == "") || (err != nil && err.Error() != tt.err) {
				t.Errorf("distinct = %v, want %q", err, tt.err)
			}
		})
	}
}

// TestEarliest: the suite's trail backlog is as old as its members' oldest;
// a zero time is "nothing pending", never the oldest.
func TestEarliest(t *testing.T) {
	t1 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	t2 := t1.Add(time.Minute)
	for _, tt := range []struct{ a, b, want time.Time }{
		{time.Time{}, time.Time{}, time.Time{}},
		{time.Time{}, t2, t2},
		{t1, time.Time{}, t1},
		{t1, t2, t1},
		{t2, t1, t1},
	} {
		if got := earliest(tt.a, tt.b); !got.Equal(tt.want) {
			t.Errorf("earliest(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}
