package metrics

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestHealthzAndMetrics(t *testing.T) {
	reg := NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "geomilter_test_things_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)
	var failing atomic.Bool
	var degraded atomic.Value
	degraded.Store("")
	s, err := Listen("127.0.0.1:0", reg, []Check{
		{Name: "spool", Func: func() error {
			if failing.Load() {
				return errors.New("spool closed")
			}
			return nil
		}},
		{Name: "redis", Degraded: func() string { return degraded.Load().(string) }},
		{Name: "rules", Detail: func() string { return "redis: 3 rules" }},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + s.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	code, body := get("/metrics")
	if code != 200 || !strings.Contains(body, "geomilter_test_things_total 3") {
		t.Fatalf("metrics: %d %q", code, body)
	}
	health := func() (int, healthReport) {
		t.Helper()
		code, body := get("/healthz")
		var rep healthReport
		if err := json.Unmarshal([]byte(body), &rep); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		return code, rep
	}
	tests := []struct {
		name     string
		failing  bool
		degraded string
		code     int
		status   string
		state    string
		checks   map[string]string
	}{
		{"up", false, "", 200, "ok", "up",
			map[string]string{"spool": "up", "redis": "up", "rules": "up (redis: 3 rules)"}},
		{"degraded", false, "dal peer-replica down (since 35s)", 200, "ok", "degraded (redis: dal peer-replica down (since 35s))",
			map[string]string{"spool": "up", "redis": "degraded (dal peer-replica down (since 35s))"}},
		{"down", true, "dal peer-replica down (since 35s)", 503, "fail", "down (spool: spool closed)",
			map[string]string{"spool": "down (spool closed)", "redis": "degraded (dal peer-replica down (since 35s))"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			failing.Store(tc.failing)
			degraded.Store(tc.degraded)
			code, rep := health()
			if code != tc.code || rep.Status != tc.status || rep.State != tc.state {
				t.Errorf("got %d %q %q, want %d %q %q", code, rep.Status, rep.State, tc.code, tc.status, tc.state)
			}
			for k, v := range tc.checks {
				if rep.Checks[k] != v {
					t.Errorf("checks[%s] = %q, want %q", k, rep.Checks[k], v)
				}
			}
		})
	}
}
