package service

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/geomilter/geomilter/shared/config"
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
	name := p.name
	if p.name == config.SuiteName {
		name += " (" + strings.Join(p.memberNames(), ", ") + ")"
	}
	// In a suite every member's syncer reads the same rules (each keeps
	// its own milter's); the first one's status stands for them.
	first := p.members[0]
	src := statuspage.Sources{
		Site: p.cfg.Site, Host: p.cfg.Host, Milter: name,
		Rules:     func() rulesync.Status { return first.rules.Status() },
		Trail:     p.trailStats,
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

// trailStats is the trail backlog of the process: one member's spool, or
// the sum of the members' spools in a suite (per sink: records pending, and
// the oldest unsent of any member).
func (p *Process) trailStats() spool.Stats {
	if len(p.members) == 1 {
		return p.members[0].trail.sp.Stats()
	}
	var sum spool.Stats
	sum.PerSink = make(map[string]spool.SinkStats)
	for _, m := range p.members {
		st := m.trail.sp.Stats()
		sum.Records += st.Records
		sum.Bytes += st.Bytes
		sum.Dropped += st.Dropped
		sum.Segments += st.Segments
		sum.OldestUnsent = earliest(sum.OldestUnsent, st.OldestUnsent)
		sum.Oldest = earliest(sum.Oldest, st.Oldest)
		if st.LastError != nil {
			sum.LastError = fmt.Errorf("%s: %w", m.name, st.LastError)
		}
		for name, ss := range st.PerSink {
			agg := sum.PerSink[name]
			agg.Pending += ss.Pending
			agg.OldestUnsent = earliest(agg.OldestUnsent, ss.OldestUnsent)
			sum.PerSink[name] = agg
		}
	}
	return sum
}

// earliest is the earlier of two times, a zero time meaning none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// status is the last poll of every instance, from memory.
func (w *redisWatch) status() []state.InstanceStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]state.InstanceStatus(nil), w.last...)
}
