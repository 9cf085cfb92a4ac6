package state

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BudgetedCounter counts rate-limit hits for a milter on the mail path: in
// the site's store within a per-call budget, and in process memory when the
// store does not answer in time (or there is no remote store at all), so a
// slow or dark Redis costs a message at most the budget and never a
// refusal. Safe for concurrent use.
type BudgetedCounter struct {
	remote  Counter // nil: memory only
	mem     Counter
	timeout time.Duration
	met     budgetMetrics
}

// BudgetedCounterOptions configure a BudgetedCounter.
type BudgetedCounterOptions struct {
	// Counter is where hits are counted: the site's Store or any Counter.
	// Nil, or a Backend that is InMemory (standalone mode), counts in
	// process memory only, without budget or fallback.
	Counter Counter
	// Timeout bounds one call to Counter (redis.timeout); default
	// DefaultTimeout. Past it the hits are counted in memory instead.
	Timeout time.Duration
	// Clock drives the windows of the in-memory fallback (default time.Now).
	Clock func() time.Time
	// Milter names the milter in the metric names:
	// geomilter_<milter>_rate_counts_total{store} and
	// geomilter_<milter>_rate_fallbacks_total. Required with Registerer.
	Milter string
	// Registerer receives the metrics (optional).
	Registerer prometheus.Registerer
}

// Counted is the result of one BudgetedCounter.IncrMany.
type Counted struct {
	Counts []Count // in request order
	// Fallback: the store did not answer within the budget, so the hits
	// were counted in process memory (the milter marks the transaction
	// degraded).
	Fallback bool
	// PeerDegraded: some peer site's replica did not answer; its last known
	// count (or 0) is in the sums.
	PeerDegraded bool
}

// NewBudgetedCounter builds a BudgetedCounter and registers its metrics.
func NewBudgetedCounter(o BudgetedCounterOptions) (*BudgetedCounter, error) {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	b := &BudgetedCounter{timeout: o.Timeout}
	if be, ok := o.Counter.(Backend); ok && be.InMemory() {
		b.mem = be
	} else {
		b.remote = o.Counter
		b.mem = NewMemCounter(o.Clock)
	}
	var err error
	if b.met, err = newBudgetMetrics(o.Milter, o.Registerer); err != nil {
		return nil, err
	}
	return b, nil
}

// IncrMany counts one hit for each request, all in one call: in the store
// within the budget (ctx may shorten it), else — whatever the store's
// error — in process memory. The error is non-nil only when memory refuses
// the requests too (a window under 1ms), and then nothing was counted.
func (b *BudgetedCounter) IncrMany(ctx context.Context, reqs []IncrReq) (Counted, error) {
	var res Counted
	n := float64(len(reqs))
	if b.remote != nil {
		cctx, cancel := context.WithTimeout(ctx, b.timeout)
		cs, err := b.remote.IncrMany(cctx, reqs)
		cancel()
		if err == nil {
			b.met.countedRemote.Add(n)
			for _, c := range cs {
				res.PeerDegraded = res.PeerDegraded || c.Degraded
			}
			res.Counts = cs
			return res, nil
		}
		res.Fallback = true
		b.met.fallbacks.Add(n)
	}
	b.met.countedMemory.Add(n)
	cs, err := b.mem.IncrMany(ctx, reqs)
	if err != nil {
		return res, fmt.Errorf("state: count in memory: %w", err)
	}
	res.Counts = cs
	return res, nil
}

// InMemory reports a counter with no remote store: every hit is counted in
// process memory.
func (b *BudgetedCounter) InMemory() bool { return b.remote == nil }

// Timeout is the per-call budget of the store.
func (b *BudgetedCounter) Timeout() time.Duration { return b.timeout }

// MemoryLen is the number of windows counted in process memory (for tests
// and metrics); 0 when the in-memory counter cannot say.
func (b *BudgetedCounter) MemoryLen() int {
	if l, ok := b.mem.(interface{ Len() int }); ok {
		return l.Len()
	}
	return 0
}

type budgetMetrics struct {
	counts                       *prometheus.CounterVec
	countedRemote, countedMemory prometheus.Counter
	fallbacks                    prometheus.Counter
}

func newBudgetMetrics(milter string, reg prometheus.Registerer) (budgetMetrics, error) {
	m := budgetMetrics{
		counts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geomilter_" + milter + "_rate_counts_total",
			Help: "Rate-limit hits counted, by where they were counted (redis, memory).",
		}, []string{"store"}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_" + milter + "_rate_fallbacks_total",
			Help: "Rate-limit hits counted in process memory because this site's Redis did not answer in time.",
		}),
	}
	m.countedRemote, m.countedMemory = m.counts.WithLabelValues("redis"), m.counts.WithLabelValues("memory")
	if reg == nil {
		return m, nil
	}
	if milter == "" {
		return budgetMetrics{}, errors.New("state: budgeted counter: Milter is required to name the metrics")
	}
	for _, c := range []prometheus.Collector{m.counts, m.fallbacks} {
		if err := reg.Register(c); err != nil {
			return budgetMetrics{}, fmt.Errorf("state: budgeted counter: register metrics: %w", err)
		}
	}
	return m, nil
}
