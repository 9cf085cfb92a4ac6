// Package statuspage serves /status on a milter process's metrics listener:
// one plain HTML page (inline CSS, no outside assets, refreshing itself every
// 10 s) with this host's view of every site — the own Redis primary and the
// local replicas of the peers with their replication links, the rules
// version per site and the snapshot's age, the trail and archive backlogs,
// decisions per minute and what is degraded. Everything comes from memory or
// from local Redis under a short bound, so a dark site never holds the page
// (DESIGN.md lesson 1); a dark site or instance is shown in red with since
// when.
package statuspage

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/metrics"
	"github.com/geomilter/geomilter/shared/rulesync"
	"github.com/geomilter/geomilter/shared/spool"
	"github.com/geomilter/geomilter/shared/state"
)

// DefaultProbeTimeout bounds the one network look-up a page makes (the rules
// version of each site, from local Redis instances).
const DefaultProbeTimeout = 300 * time.Millisecond

// SilentAfter is how long a peer replica may go without hearing from its
// primary, link still "up", before the page marks it silent (red): three
// missed pings of Redis's default repl-ping-replica-period (10 s).
const SilentAfter = 30 * time.Second

// Sources is where the page reads from; every field but Site may be nil or
// empty (that part of the page is left out). Each func must answer from
// memory, except Versions, which gets a context bounded by ProbeTimeout.
type Sources struct {
	Site, Host, Milter string
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Instances is the last polled status of the own primary and the local
	// replicas of the peers (nil in standalone mode).
	Instances func() []state.InstanceStatus
	// Versions returns each answering site's rules version
	// (state.Store.Versions); sites absent did not answer in time.
	Versions func(ctx context.Context) map[string]int64
	// Rules is the snapshot in force.
	Rules func() rulesync.Status
	// Trail is the trail spool's backlog, per sink.
	Trail func() spool.Stats
	// Archive is the archive milter's targets (ok false: not the archive
	// milter, or its status did not answer); see ArchiveFromHandler.
	Archive func() (targets []ArchiveTarget, ok bool)
	// Checks are the process's /healthz checks, shown as degraded flags.
	Checks []metrics.Check
	// Decisions is the per-minute ring the process records into.
	Decisions    *Decisions
	ProbeTimeout time.Duration
	Log          zerolog.Logger
}

// Handler serves the page.
func Handler(src Sources) http.Handler {
	if src.Now == nil {
		src.Now = time.Now
	}
	if src.ProbeTimeout <= 0 {
		src.ProbeTimeout = DefaultProbeTimeout
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "GET only", http.StatusMethodNotAllowed)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), src.ProbeTimeout)
		defer cancel()
		p := Collect(ctx, src)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		// Nothing here loads from elsewhere; say so to the browser too.
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
		if err := pageTmpl.Execute(w, p); err != nil {
			src.Log.Warn().Err(err).Msg("status page: render")
		}
	})
}

// Page is what the template renders.
type Page struct {
	Site, Host, Milter string
	Now                time.Time
	Mode               string // "redis" or "standalone"
	State              string // "up", "degraded", "down"
	Sites              []SiteRow
	Rules              RulesRow
	Sinks              []Backlog
	Targets            []Backlog
	HasArchive         bool
	Minutes            []Minute
	Actions            []string
	Checks             []CheckRow
	Breakers           []string // instances whose breaker is not closed, in words
}

// SiteRow is one Redis instance this host reads: the own primary or the
// local replica of a peer site's primary.
type SiteRow struct {
	Site, Role, Addr string
	Own              bool   // this host's site
	State            string // "up", "link down", "failing", "dark"
	Bad              bool   // shown in red
	Since            time.Time
	Link             string // replica: "up"/"down"; primary: replicas attached
	LastIO           string // replica: seconds since it last heard from the peer's primary
	Version          string // rules version read now ("?" when it did not answer)
	RulesStale       bool   // the snapshot holds this site's last known rules
	Detail           string
}

// RulesRow is the snapshot in force.
type RulesRow struct {
	Source, Version, Age, LastError string
	Rules, Tenants, Invalid         int
	Stale                           []string
}

// Backlog is one trail sink or archive target.
type Backlog struct {
	Name, Type string
	Pending    int64
	Oldest     string // age of the oldest record waiting, "" when none
	Failing    bool
	Detail     string
}

// CheckRow is one /healthz check in the operator's words.
type CheckRow struct {
	Name, State, Text string
	Bad, Warn         bool
}

// Collect gathers the page's data; ctx bounds the Redis look-up.
func Collect(ctx context.Context, src Sources) Page {
	now := time.Now
	if src.Now != nil {
		now = src.Now
	}
	t := now()
	p := Page{Site: src.Site, Host: src.Host, Milter: src.Milter, Now: t.UTC(), Mode: "standalone", State: "up"}
	var stale map[string]bool
	if src.Rules != nil {
		rs := src.Rules()
		stale = make(map[string]bool, len(rs.Stale))
		for _, s := range rs.Stale {
			stale[s] = true
		}
		p.Rules = RulesRow{Source: rs.Source, Version: rs.Version, Rules: rs.Rules, Tenants: rs.Tenants,
			Invalid: rs.Invalid, Stale: rs.Stale, LastError: rs.LastError}
		if !rs.VerifiedAt.IsZero() {
			p.Rules.Age = ago(t.Sub(rs.VerifiedAt))
		}
	}
	if src.Instances != nil {
		p.Mode = "redis"
		var versions map[string]int64
		if src.Versions != nil {
			versions = src.Versions(ctx)
		}
		for _, in := range src.Instances() {
			row := siteRow(in, t)
			row.Own = in.Site == src.Site
			row.RulesStale = stale[in.Site]
			row.Version = "?"
			if v, ok := versions[in.Site]; ok {
				row.Version = fmt.Sprint(v)
			}
			if row.Bad {
				p.State = "degraded"
			}
			if in.Breaker != state.BreakerClosed.String() {
				p.Breakers = append(p.Breakers, fmt.Sprintf("%s %s %s: breaker %s", in.Site, in.Role, in.Addr, in.Breaker))
			}
			p.Sites = append(p.Sites, row)
		}
		sort.SliceStable(p.Sites, func(i, j int) bool { return p.Sites[i].Own && !p.Sites[j].Own })
	}
	if src.Trail != nil {
		st := src.Trail()
		for name, s := range st.PerSink {
			p.Sinks = append(p.Sinks, Backlog{Name: name, Type: "trail sink", Pending: s.Pending, Oldest: oldest(t, s.OldestUnsent)})
		}
		sort.Slice(p.Sinks, func(i, j int) bool { return p.Sinks[i].Name < p.Sinks[j].Name })
	}
	if src.Archive != nil {
		if ats, ok := src.Archive(); ok {
			p.HasArchive = true
			for _, ts := range ats {
				b := Backlog{Name: ts.Name, Type: ts.Type, Pending: ts.BacklogRecords, Oldest: oldest(t, ts.OldestUnsent), Failing: ts.Failing}
				if ts.Failing && ts.LastError != "" {
					b.Detail = ts.LastError
				}
				if ts.DeadLetters > 0 {
					b.Detail += fmt.Sprintf(" (%d dead letters)", ts.DeadLetters)
				}
				p.Targets = append(p.Targets, b)
			}
		}
	}
	if src.Decisions != nil {
		p.Minutes, p.Actions = src.Decisions.Recent()
	}
	for _, c := range src.Checks {
		row := checkRow(c)
		if row.Bad {
			p.State = "down"
		} else if row.Warn && p.State == "up" {
			p.State = "degraded"
		}
		p.Checks = append(p.Checks, row)
	}
	return p
}

// siteRow words one instance as the operator reads it: dark (its breaker is
// open: this host cannot reach it), failing, its replication link from the
// peer's primary down (the peer site dark or cut off: its data is frozen
// here), or up.
func siteRow(in state.InstanceStatus, now time.Time) SiteRow {
	row := SiteRow{Site: in.Site, Role: in.Role, Addr: in.Addr, State: "up"}
	switch in.Breaker {
	case state.BreakerClosed.String():
	case state.BreakerSuspect.String():
		row.State, row.Bad, row.Detail = "failing", true, firstLine(in.LastError)
	default:
		row.State, row.Bad, row.Since, row.Detail = "dark", true, in.OpenSince, firstLine(in.LastError)
	}
	r := in.Replication
	if r == nil {
		// Its breaker is closed but it did not answer the status poll:
		// not known to be up, so not shown as up.
		if !row.Bad && in.StatusError != "" {
			row.State, row.Bad, row.Detail = "not answering", true, firstLine(in.StatusError)
		}
		return row
	}
	if in.Role == state.RolePrimary {
		row.Link = fmt.Sprintf("%d replicas attached", r.ConnectedReplicas)
		return row
	}
	row.Link = r.MasterLinkStatus
	if r.MasterLastIOSecondsAgo >= 0 {
		row.LastIO = fmt.Sprintf("%ds ago", r.MasterLastIOSecondsAgo)
	}
	if r.MasterSyncInProgress {
		row.Detail = "full resync in progress"
	}
	// A dropped link (packets lost, not refused) stays "up" at the replica
	// until repl-timeout; a primary pings its replicas every 10 s
	// (repl-ping-replica-period), so a longer silence already means trouble.
	if r.MasterLinkStatus == "up" && !row.Bad && r.MasterLastIOSecondsAgo > int64(SilentAfter/time.Second) {
		row.State, row.Bad = "silent", true
		row.Since = now.Add(-time.Duration(r.MasterLastIOSecondsAgo) * time.Second)
		row.Detail = fmt.Sprintf("nothing heard from %s's primary for %ds", in.Site, r.MasterLastIOSecondsAgo)
	}
	if r.MasterLinkStatus != "up" && !row.Bad {
		row.State, row.Bad = "link down", true
		row.Detail = fmt.Sprintf("%s's rules and counts here are frozen at their last values", in.Site)
		if r.MasterLinkDownSinceSecs >= 0 {
			row.Since = now.Add(-time.Duration(r.MasterLinkDownSinceSecs) * time.Second)
		}
	}
	return row
}

func checkRow(c metrics.Check) CheckRow {
	row := CheckRow{Name: c.Name, State: "up"}
	if c.Func != nil {
		if err := c.Func(); err != nil {
			row.State, row.Text, row.Bad = "down", err.Error(), true
			return row
		}
	}
	if c.Degraded != nil {
		if d := c.Degraded(); d != "" {
			row.State, row.Text, row.Warn = "degraded", d, true
			return row
		}
	}
	if c.Detail != nil {
		row.Text = c.Detail()
	}
	return row
}

func oldest(now, t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return ago(now.Sub(t))
}

func ago(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	if d < time.Minute {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func firstLine(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}
