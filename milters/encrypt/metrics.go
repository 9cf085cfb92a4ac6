package encrypt

import "github.com/prometheus/client_golang/prometheus"

// counters are the encrypt milter's own (docs/encrypt.md#metrics). Label
// values are bounded: trigger kinds, actions and failure reasons are fixed
// lists; no rule ids or detector names.
type counters struct {
	triggers       *prometheus.CounterVec // kind: subject_tag, rule, detector
	actions        *prometheus.CounterVec // action: none, route, require_tls, inline, reject
	inlineFailures *prometheus.CounterVec // reason: no_key, too_large, error
	unknownDetect  prometheus.Counter
	scans          *prometheus.CounterVec // result: clean, fired, problems
}

func newCounters(reg prometheus.Registerer) *counters {
	m := &counters{
		triggers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geomilter_encrypt_triggers_total",
			Help: "Encryption triggers that fired, by kind (subject_tag, rule: an encrypt rule on headers or addresses, detector: an encrypt rule on a content detector); a message may count under several.",
		}, []string{"kind"}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geomilter_encrypt_actions_total",
			Help: "Messages at end of message by action: none, route (marked for the encryption gateway), require_tls (marked for the TLS-only transport), inline (encrypted by the milter), reject (must be encrypted, no way to).",
		}, []string{"action"}),
		inlineFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geomilter_encrypt_inline_failures_total",
			Help: "Messages that were to be encrypted inline and were routed (or rejected) instead, by reason: no_key (a recipient has no key), too_large (over inline.max_size), error (the encryption failed).",
		}, []string{"reason"}),
		unknownDetect: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_encrypt_rule_unknown_detectors_total",
			Help: "Encrypt rules naming a detector this host does not configure (milters.encrypt.detect); such a condition never holds here.",
		}),
		scans: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geomilter_encrypt_scans_total",
			Help: "Messages whose content the detectors read (only when an enabled rule uses match.detect), by result: clean, fired.",
		}, []string{"result"}),
	}
	reg.MustRegister(m.triggers, m.actions, m.inlineFailures, m.unknownDetect, m.scans)
	return m
}
