package service

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/state"
)

// StateOptions maps the config's redis section onto the state layer's
// options (mail-path budget, dial timeout, breaker). cfg.Redis must be set.
// The ops tool reuses it with longer budgets.
func StateOptions(cfg *config.Config, log zerolog.Logger) state.Options {
	r := cfg.Redis
	o := state.Options{
		Site:            cfg.Site,
		Local:           StateInstance(r.Local),
		Peers:           make(map[string]state.InstanceConfig, len(r.Peers)),
		Timeout:         r.Timeout,
		DialTimeout:     r.DialTimeout,
		BreakerFailures: r.Breaker.Failures,
		BreakerOpenFor:  r.Breaker.OpenFor,
		Logger:          log,
	}
	for name, p := range r.Peers {
		o.Peers[name] = StateInstance(p)
	}
	return o
}

// StateInstance maps one instance section. A sentinel section's own
// username/password_file authenticate to the sentinels (none: no AUTH);
// the instance's credentials go to the Redis it finds.
func StateInstance(ic config.InstanceConfig) state.InstanceConfig {
	si := state.InstanceConfig{Addr: ic.Addr, Username: ic.Username, PasswordFile: ic.PasswordFile}
	if ic.TLS != nil {
		si.TLS = &state.TLSConfig{CAFile: ic.TLS.CAFile, CertFile: ic.TLS.CertFile, KeyFile: ic.TLS.KeyFile, ServerName: ic.TLS.ServerName}
	}
	if ic.Sentinel != nil {
		si.Addr = ""
		si.SentinelMaster = ic.Sentinel.MasterName
		si.SentinelAddrs = ic.Sentinel.Addrs
		si.SentinelUsername = ic.Sentinel.Username
		si.SentinelPasswordFile = ic.Sentinel.PasswordFile
	}
	return si
}

// redisLogger sends go-redis's own messages (one per failed dial of its
// connection pools, every few hundred milliseconds while an instance is down)
// to the process log at debug level: the breakers already report outages
// once per transition, and stderr stays JSON.
type redisLogger struct{ log zerolog.Logger }

func (l redisLogger) Printf(_ context.Context, format string, args ...any) {
	l.log.Debug().Str("component", "go-redis").Msgf(format, args...)
}

// redisStatusEvery is how often a milter process refreshes its view of the
// Redis instances for /healthz and metrics.
const redisStatusEvery = 5 * time.Second

// redisWatch polls the store's Status in the background, so /healthz and a
// scrape answer from memory and never wait on Redis.
type redisWatch struct {
	store  *state.Store
	cancel context.CancelFunc
	done   chan struct{}

	mu   sync.Mutex
	last []state.InstanceStatus

	up, breaker, linkUp, lastIO *prometheus.GaugeVec
}

func startRedisWatch(store *state.Store, reg prometheus.Registerer, milter string) (*redisWatch, error) {
	cl := prometheus.Labels{"milter": milter}
	w := &redisWatch{
		store: store,
		done:  make(chan struct{}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "geomilter_redis_up", ConstLabels: cl,
			Help: "1 when the instance's circuit breaker is closed (calls go through), per site and role."}, []string{"site", "role"}),
		breaker: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "geomilter_redis_breaker_state", ConstLabels: cl,
			Help: "The instance's circuit breaker: 0 closed, 1 suspect, 2 open."}, []string{"site", "role"}),
		linkUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "geomilter_redis_replica_link_up", ConstLabels: cl,
			Help: "Local replica of a peer site's primary: 1 when its replication link is up (INFO replication master_link_status)."}, []string{"site"}),
		lastIO: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "geomilter_redis_replica_last_io_seconds", ConstLabels: cl,
			Help: "Local replica of a peer site's primary: seconds since it last heard from that primary (master_last_io_seconds_ago)."}, []string{"site"}),
	}
	for _, c := range []prometheus.Collector{w.up, w.breaker, w.linkUp, w.lastIO} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("redis metrics: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	w.refresh(ctx)
	go w.run(ctx)
	return w, nil
}

func (w *redisWatch) run(ctx context.Context) {
	defer close(w.done)
	t := time.NewTicker(redisStatusEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.refresh(ctx)
		}
	}
}

func (w *redisWatch) refresh(ctx context.Context) {
	st := w.store.Status(ctx)
	w.mu.Lock()
	w.last = st
	w.mu.Unlock()
	for _, s := range st {
		w.up.WithLabelValues(s.Site, s.Role).Set(b2f(s.Up))
		w.breaker.WithLabelValues(s.Site, s.Role).Set(breakerValue(s.Breaker))
		if s.Role != state.RolePeerReplica {
			continue
		}
		if s.Replication == nil {
			w.linkUp.WithLabelValues(s.Site).Set(0)
			continue
		}
		w.linkUp.WithLabelValues(s.Site).Set(b2f(s.Replication.MasterLinkStatus == "up"))
		w.lastIO.WithLabelValues(s.Site).Set(float64(s.Replication.MasterLastIOSecondsAgo))
	}
}

// degraded is the redis check's /healthz text in an operator's words: ""
// when every instance is up, else what is down or failing, e.g.
// "dal peer-replica down (since 02:41:07 UTC, 35s)". Redis trouble is a
// degraded state (decisions come from the snapshot), never a health failure.
// Breaker states stay in the metrics (geomilter_redis_breaker_state).
func (w *redisWatch) degraded() string {
	w.mu.Lock()
	st := w.last
	w.mu.Unlock()
	return degradedText(st, time.Now())
}

func degradedText(st []state.InstanceStatus, now time.Time) string {
	var parts []string
	for _, s := range st {
		name := s.Site + " " + s.Role
		switch s.Breaker {
		case state.BreakerClosed.String():
		case state.BreakerSuspect.String():
			parts = append(parts, name+" failing (calls still tried; last error: "+firstLine(s.LastError)+")")
			continue
		default: // open: calls are skipped until a probe succeeds
			p := name + " down"
			if !s.OpenSince.IsZero() {
				p += fmt.Sprintf(" (since %s UTC, %s)", s.OpenSince.UTC().Format("15:04:05"), now.Sub(s.OpenSince).Round(time.Second))
			}
			parts = append(parts, p)
			continue
		}
		if r := s.Replication; s.Role == state.RolePeerReplica && r != nil && r.MasterLinkStatus != "up" {
			p := name + ": replication link from " + s.Site + "'s primary down"
			if r.MasterLinkDownSinceSecs >= 0 {
				p += fmt.Sprintf(" for %ds", r.MasterLinkDownSinceSecs)
			}
			parts = append(parts, p+" (its rules and counts are frozen)")
		}
	}
	return strings.Join(parts, "; ")
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func (w *redisWatch) close() {
	w.cancel()
	<-w.done
}

func breakerValue(s string) float64 {
	switch s {
	case state.BreakerClosed.String():
		return 0
	case state.BreakerSuspect.String():
		return 1
	}
	return 2
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
