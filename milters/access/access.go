// Package access is the access milter: who may send and relay, per tenant, with
// rate limits shared across sites. It decides at CONNECT, HELO, MAIL and RCPT
// from the in-memory rules snapshot (one atomic load per transaction, no
// network call per lookup) and negotiates the header and body stages away, so
// Postfix never sends it the message content.
//
// Rules are evaluated in the precedence order of docs/rules.md; the first
// decisive rule wins. A rule is evaluated at the earliest stage where every
// fact it needs is known, and a decision found before RCPT is applied at
// once only when no rule of higher precedence can still apply later;
// otherwise it is applied per recipient at RCPT. Recipients outside every
// tenant's domains are refused unless the client is a tenant's relay, a local
// submission or permitted by a relay_permit rule: the milter never makes an
// open relay, whatever the rules say. docs/access.md is the user guide.
package access

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/rules"
	"github.com/geomilter/geomilter/shared/service"
	"github.com/geomilter/geomilter/shared/state"
)

// Name is the milter's name in config (milters.access), in rules (milter:
// access) and in trail events.
const Name = "access"

// Degraded flags this milter sets on a transaction (trail field degraded).
const (
	// DegradedRedis: a rate counter was counted in process memory because
	// this site's Redis primary did not answer within redis.timeout.
	DegradedRedis = "redis"
	// DegradedRedisPeer: a peer site's local replica did not answer; its
	// last known count (or 0) was used in the sum.
	DegradedRedisPeer = "redis_peer"
)

// RelayRuleID names the built-in relay check in trail events (rule_id of a
// recipient refused because relaying was not authorised). Rule ids cannot
// contain ':', so it never collides with an ops rule.
const RelayRuleID = "builtin:relay"

// Options configure the milter.
type Options struct {
	// Rules serves the snapshot in force (required).
	Rules service.RulesView
	// Counter counts rate-limit hits across sites (the site's state.Store);
	// nil or an in-memory state.Backend in standalone mode, where counting
	// is in process memory only. The hits of one stage go to it in one
	// IncrMany call (state.BudgetedCounter).
	Counter state.Counter
	// Timeout bounds one Counter call (redis.timeout); default
	// state.DefaultTimeout. Past it the hits are counted in memory instead.
	Timeout time.Duration
	// Clock drives the in-memory counter's windows (default time.Now).
	Clock func() time.Time
	// Registerer receives the milter's metrics (optional).
	Registerer prometheus.Registerer
	Log        zerolog.Logger
}

// Milter is the access milter. It is safe for concurrent sessions.
type Milter struct {
	rules   service.RulesView
	counter *state.BudgetedCounter
	log     zerolog.Logger
	met     metrics
	empty   *rules.Snapshot

	an       atomic.Pointer[analysis]
	anMu     sync.Mutex
	building *rules.Snapshot // snapshot whose analysis is being built
}

var (
	_ milterrt.Milter  = (*Milter)(nil)
	_ milterrt.Decider = (*Milter)(nil)
)

// New builds the access milter from the process environment: rules from
// env.Rules, rate counters in env.Store (Redis, with redis.timeout as the
// per-call budget, or in memory in standalone mode), windows by env.Clock.
func New(env *service.Env) (milterrt.Milter, error) {
	o := Options{Rules: env.Rules, Registerer: env.Registry, Log: env.Log, Counter: env.Store, Clock: env.Clock}
	if env.Config != nil && env.Config.Redis != nil {
		o.Timeout = env.Config.Redis.Timeout
	}
	return NewMilter(o)
}

// NewMilter builds the milter. The analysis of the current snapshot (which
// decisions may be taken before RCPT) is done here, before the first mail;
// for later snapshots it runs in the background, and until it is ready every
// decision is taken at RCPT — later, never differently.
func NewMilter(o Options) (*Milter, error) {
	if o.Rules == nil {
		return nil, errors.New("access: Options.Rules is required")
	}
	empty, err := rules.Compile(&rules.Set{})
	if err != nil {
		return nil, fmt.Errorf("access: compile empty rule set: %w", err)
	}
	m := &Milter{rules: o.Rules, log: o.Log, empty: empty}
	m.counter, err = state.NewBudgetedCounter(state.BudgetedCounterOptions{
		Counter: o.Counter, Timeout: o.Timeout, Clock: o.Clock, Milter: Name, Registerer: o.Registerer,
	})
	if err != nil {
		return nil, fmt.Errorf("access: %w", err)
	}
	if m.met, err = newMetrics(o.Registerer); err != nil {
		return nil, err
	}
	m.an.Store(analyse(m.snapshot()))
	return m, nil
}

// Name implements milterrt.Milter.
func (*Milter) Name() string { return Name }

// Stages implements milterrt.Milter: envelope stages only; headers and body
// are negotiated away.
func (*Milter) Stages() milterrt.Stages {
	return milterrt.StageConnect | milterrt.StageHelo | milterrt.StageMail | milterrt.StageRcpt
}

// DecidesAt implements milterrt.Decider, asked at each new milter connection:
// Postfix waits for a reply at connect and helo only when a current rule can
// decide there. A rule added during a connection that decides at a stage
// without reply is answered at the next stage with one (MAIL), as the
// runtime holds it.
func (m *Milter) DecidesAt() milterrt.Stages {
	if an := m.analysisFor(m.snapshot()); an != nil {
		return an.decides
	}
	return milterrt.StageConnect | milterrt.StageHelo | milterrt.StageMail | milterrt.StageRcpt
}

// Modifications implements milterrt.Milter: the quarantine action holds messages;
// nothing in a message is changed.
func (*Milter) Modifications() milterrt.Modifications { return milterrt.MayQuarantine }

// NewSession implements milterrt.Milter.
func (m *Milter) NewSession(*milterrt.State) milterrt.Session { return &session{m: m} }

func (m *Milter) snapshot() *rules.Snapshot {
	if s := m.rules.Current(); s != nil {
		return s
	}
	return m.empty
}

// analysisFor returns the analysis of snap, or nil while it is being built
// (the caller then defers every decision to RCPT, which is always exact).
func (m *Milter) analysisFor(snap *rules.Snapshot) *analysis {
	if a := m.an.Load(); a != nil && a.snap == snap {
		return a
	}
	m.anMu.Lock()
	if m.building == snap {
		m.anMu.Unlock()
		return nil
	}
	m.building = snap
	m.anMu.Unlock()
	go func() {
		a := analyse(snap)
		m.anMu.Lock()
		defer m.anMu.Unlock()
		if m.building == snap { // a newer snapshot's build started meanwhile: it wins
			m.an.Store(a)
		}
	}()
	return nil
}

// countMany counts one hit for each request, all in one call: in the site
// store within the call budget, else (Redis down, slow, or standalone) in
// process memory. It marks the transaction degraded accordingly and says
// where the hits were counted (redis or memory, for the trail).
func (m *Milter) countMany(st *milterrt.State, reqs []state.IncrReq) ([]state.Count, string, error) {
	res, err := m.counter.IncrMany(context.Background(), reqs)
	if res.Fallback {
		st.MarkDegraded(DegradedRedis)
	}
	if res.PeerDegraded {
		st.MarkDegraded(DegradedRedisPeer)
	}
	where := "redis"
	if res.Fallback || m.counter.InMemory() {
		where = "memory"
	}
	return res.Counts, where, err
}

// metrics of the access milter (the runtime counts decisions per stage).
// The rate counting metrics (geomilter_access_rate_counts_total{store},
// geomilter_access_rate_fallbacks_total) are state.BudgetedCounter's.
type metrics struct {
	exceeded     prometheus.Counter // rate limits exceeded
	relayRefused prometheus.Counter // recipients refused by the built-in relay check
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	m := metrics{
		exceeded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_access_rate_exceeded_total",
			Help: "Rate limits found exceeded (the rule's action was applied).",
		}),
		relayRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_access_relay_refused_total",
			Help: "Recipients refused because relaying to their domain was not authorised.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.exceeded, m.relayRefused} {
		if err := reg.Register(c); err != nil {
			return metrics{}, fmt.Errorf("access: register metrics: %w", err)
		}
	}
	return m, nil
}
