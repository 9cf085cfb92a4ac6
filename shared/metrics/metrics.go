// Package metrics serves a process's Prometheus metrics and its /healthz answer on
// metrics.listen. Each milter process has its own registry, so one process's
// metrics never mix with another's.
package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a registry with the Go runtime and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Check is one named health check. It must answer from memory: /healthz is polled
// by load balancers and must never wait on Redis or a sink.
type Check struct {
	Name string
	// Func returns nil when healthy, or an error saying what is wrong.
	// Degraded-but-working states are reported by Detail, not as errors.
	Func func() error
	// Detail optionally adds a status line (e.g. "redis degraded") without failing.
	Detail func() string
}

// Server is the HTTP endpoint for /metrics and /healthz.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Listen binds addr and starts serving in the background.
func Listen(addr string, reg *prometheus.Registry, checks []Check) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", healthHandler(checks))
	s := &Server{
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		ln:  ln,
	}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// Addr is the bound address (useful when listening on port 0).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server, letting in-flight scrapes finish for up to a second.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return s.srv.Close()
	}
	return err
}

type healthReport struct {
	Status string            `json:"status"`
	Checks map[string]string `json:"checks"`
}

func healthHandler(checks []Check) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rep := healthReport{Status: "ok", Checks: make(map[string]string, len(checks))}
		code := http.StatusOK
		for _, c := range checks {
			state := "ok"
			if c.Func != nil {
				if err := c.Func(); err != nil {
					state = "fail: " + err.Error()
					rep.Status = "fail"
					code = http.StatusServiceUnavailable
				}
			}
			if c.Detail != nil && state == "ok" {
				if d := c.Detail(); d != "" {
					state = d
				}
			}
			rep.Checks[c.Name] = state
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(rep)
	}
}
