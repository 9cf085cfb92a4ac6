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
	s, err := Listen("127.0.0.1:0", reg, []Check{
		{Name: "spool", Func: func() error {
			if failing.Load() {
				return errors.New("spool closed")
			}
			return nil
		}},
		{Name: "redis", Detail: func() string { return "degraded: own primary unreachable" }},
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
	code, body = get("/healthz")
	var rep healthReport
	if err := json.Unmarshal([]byte(body), &rep); err != nil {
		t.Fatal(err)
	}
	if code != 200 || rep.Status != "ok" || rep.Checks["redis"] != "degraded: own primary unreachable" {
		t.Fatalf("healthy: %d %+v", code, rep)
	}
	failing.Store(true)
	code, body = get("/healthz")
	if code != 503 || !strings.Contains(body, "spool closed") {
		t.Fatalf("failing: %d %q", code, body)
	}
}
