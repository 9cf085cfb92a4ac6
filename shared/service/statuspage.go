package service

import (
	"context"

	"github.com/geomilter/geomilter/shared/metrics"
	"github.com/geomilter/geomilter/shared/rulesync"
	"github.com/geomilter/geomilter/shared/spool"
	"github.com/geomilter/geomilter/shared/state"
	"github.com/geomilter/geomilter/shared/statuspage"
)

// statusRoute is /status on the metrics listener (shared/statuspage): it
// reads the process's parts from memory (the Redis watch's last poll, the
// rules syncer, the spool counters, the archive milter's own status route)
// and only the sites' rules versions from local Redis, under a short bound.
func (p *Process) statusRoute(checks []metrics.Check, routes []metrics.Route) metrics.Route {
	src := statuspage.Sources{
		Site: p.cfg.Site, Host: p.cfg.Host, Milter: p.name,
		Rules:     func() rulesync.Status { return p.rules.Status() },
		Trail:     func() spool.Stats { return p.trail.sp.Stats() },
		Checks:    checks,
		Decisions: p.decisions,
		Log:       p.log,
	}
	if p.redis != nil {
		src.Instances = p.redis.status
		src.Versions = func(ctx context.Context) map[string]int64 { return p.store.Versions(ctx) }
	}
	for _, r := range routes {
		if r.Pattern == "/archive/status" {
			src.Archive = statuspage.ArchiveFromHandler(r.Handler)
		}
	}
	return metrics.Route{Pattern: "/status", Handler: statuspage.Handler(src)}
}

// status is the last poll of every instance, from memory.
func (w *redisWatch) status() []state.InstanceStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]state.InstanceStatus(nil), w.last...)
}
