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
	"strings"
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
//
// /healthz words each check as an operator reads it: "up", "up (detail)",
// "degraded (what)" (serving, impaired: still 200), "down (what)" (503).
type Check struct {
	Name string
	// Func returns nil when healthy, or an error saying what is wrong: the
	// check is down and /healthz answers 503.
	Func func() error
	// Degraded optionally says what is impaired while the process still
	// serves mail (e.g. a Redis instance down: decisions come from the
	// snapshot); "" when nothing is. Never fails /healthz.
	Degraded func() string
	// Detail optionally adds an informational line to "up" (e.g. the rules
	// snapshot's source and age).
	Detail func() string
}

// word is the check's state as /healthz shows it, and whether it is down or degraded.
func (c Check) word() (text string, down, degraded bool) {
	if c.Func != nil {
		if err := c.Func(); err != nil {
			return "down (" + err.Error() + ")", true, false
		}
	}
	if c.Degraded != nil {
		if d := c.Degraded(); d != "" {
			return "degraded (" + d + ")", false, true
		}
	}
	if c.Detail != nil {
		if d := c.Detail(); d != "" {
			return "up (" + d + ")", false, false
		}
	}
	return "up", false, false
}

// Server is the HTTP endpoint for /metrics and /healthz.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Route is an extra endpoint a milter serves beside /metrics and /healthz
// (the archive milter's /archive/status); Pattern is an http.ServeMux
// pattern.
type Route struct {
	Pattern string
	Handler http.Handler
}

// Listen binds addr and starts serving in the background.
func Listen(addr string, reg *prometheus.Registry, checks []Check, routes ...Route) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", healthHandler(checks))
	for _, r := range routes {
		mux.Handle(r.Pattern, r.Handler)
	}
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

// healthReport is the /healthz answer. Status ("ok" or "fail", with 200 or
// 503) is for machines and keeps its values; State words the whole process
// for an operator: "up", "degraded (check: what; …)" or "down (check: what; …)".
type healthReport struct {
	Status string            `json:"status"`
	State  string            `json:"state"`
	Checks map[string]string `json:"checks"`
}

func healthHandler(checks []Check) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rep := healthReport{Status: "ok", Checks: make(map[string]string, len(checks))}
		code := http.StatusOK
		var downs, degraded []string
		for _, c := range checks {
			text, down, deg := c.word()
			rep.Checks[c.Name] = text
			switch {
			case down:
				downs = append(downs, c.Name+": "+strings.TrimSuffix(strings.TrimPrefix(text, "down ("), ")"))
			case deg:
				degraded = append(degraded, c.Name+": "+strings.TrimSuffix(strings.TrimPrefix(text, "degraded ("), ")"))
			}
		}
		switch {
		case len(downs) > 0:
			rep.Status, rep.State = "fail", "down ("+strings.Join(downs, "; ")+")"
			code = http.StatusServiceUnavailable
		case len(degraded) > 0:
			rep.State = "degraded (" + strings.Join(degraded, "; ") + ")"
		default:
			rep.State = "up"
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(rep)
	}
}
