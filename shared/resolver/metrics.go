package resolver

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// clientMetrics are the resolver's metrics. Label values are bounded: the
// query types the Client asks (TXT, A, AAAA, MX, PTR), the configured
// servers, and a fixed set of error kinds.
type clientMetrics struct {
	queries         *prometheus.CounterVec
	hits, misses    prometheus.Counter
	stale           prometheus.Counter
	timeouts        prometheus.Counter
	serverErrors    *prometheus.CounterVec
	budgetExhausted prometheus.Counter
	spoofed         prometheus.Counter
	malformed       prometheus.Counter
}

func newClientMetrics(reg prometheus.Registerer, c *Client) (*clientMetrics, error) {
	m := &clientMetrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geomilter_dns_queries_total",
			Help: "Questions sent to the DNS servers (cache misses not joined to a query already in flight), by record type.",
		}, []string{"type"}),
		hits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_dns_cache_hits_total",
			Help: "Look-ups answered from the cache (positive or negative).",
		}),
		stale: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_dns_stale_answers_total",
			Help: "Look-ups answered from the cache past the answer's TTL (RFC 8767 serve-stale), a fresh answer asked for in the background.",
		}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_dns_cache_misses_total",
			Help: "Look-ups not answered from the cache.",
		}),
		timeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_dns_timeouts_total",
			Help: "Look-ups that returned a time-out (look-up or message budget ran out, or no server answered).",
		}),
		serverErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geomilter_dns_server_errors_total",
			Help: "Failed questions to one server, by kind: timeout, network, servfail, refused (the next server is tried).",
		}, []string{"server", "kind"}),
		budgetExhausted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_dns_budget_exhausted_total",
			Help: "Look-ups cut short or refused because the message's DNS budget ran out.",
		}),
		spoofed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_dns_spoofed_answers_total",
			Help: "Replies ignored because their ID or question did not match the query (late or spoofed).",
		}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_dns_malformed_answers_total",
			Help: "Replies ignored because they were not valid DNS messages.",
		}),
	}
	entries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "geomilter_dns_cache_entries",
		Help: "Answers in the DNS cache (some may have expired and not been dropped yet).",
	}, func() float64 { return float64(c.cache.len()) })
	for _, s := range c.servers {
		for _, k := range []string{"timeout", "network", "servfail", "refused"} {
			m.serverErrors.WithLabelValues(s.addr, k)
		}
	}
	if reg == nil {
		return m, nil
	}
	for _, col := range []prometheus.Collector{m.queries, m.hits, m.stale, m.misses, m.timeouts, m.serverErrors,
		m.budgetExhausted, m.spoofed, m.malformed, entries} {
		if err := reg.Register(col); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, errors.New("resolver: metrics already registered: one Client per process (registry)")
			}
			return nil, err
		}
	}
	return m, nil
}
