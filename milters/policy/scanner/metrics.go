package scanner

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of a request, the values of the outcome label.
const (
	outcomeOK        = "ok"         // the scanner answered
	outcomeTimeout   = "timeout"    // the budget ran out
	outcomeError     = "error"      // refused, reset, bad reply
	outcomeCanceled  = "canceled"   // the caller gave up first (not the scanner's fault)
	outcomeBreaker   = "breaker"    // not asked: breaker open
	outcomeTooLarge  = "too_large"  // not asked: message over max_size
	outcomeLocalFail = "local_fail" // not asked or cut: the message could not be read
)

// metrics are shared by all scanners registered on one registry; label
// values are bounded by the configured scanners and the outcomes above.
type metrics struct {
	requests *prometheus.CounterVec
	seconds  *prometheus.HistogramVec
	open     *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geomilter_policy_scanner_requests_total",
			Help: "Messages for an external scanner (rspamd, spamd), by outcome: ok, timeout, error, canceled, breaker (not asked: breaker open), too_large, local_fail.",
		}, []string{"scanner", "outcome"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "geomilter_policy_scanner_seconds",
			Help:    "Time one message waited for an external scanner that was asked (skipped messages not counted).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2, 5, 10, 30},
		}, []string{"scanner"}),
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "geomilter_policy_scanner_breaker_open",
			Help: "1 while a scanner's circuit breaker is open (messages are not sent to it), else 0.",
		}, []string{"scanner"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.requests, err = register(reg, m.requests); err != nil {
		return nil, err
	}
	if m.seconds, err = register(reg, m.seconds); err != nil {
		return nil, err
	}
	if m.open, err = register(reg, m.open); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector already registered under
// its name: the scanners of one process share their metrics, told apart by
// the scanner label.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if ex, ok := are.ExistingCollector.(C); ok {
				return ex, nil
			}
		}
		return c, err
	}
	return c, nil
}
