package archive

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// counters are the archive milter's own; the journal's drainers add the
// per-target delivery metrics (docs/archive.md).
type counters struct {
	messages       *prometheus.CounterVec // result: journaled, skipped, failed
	failures       *prometheus.CounterVec // reason: full, too_large, write, encode
	bytes          prometheus.Counter
	appendSeconds  prometheus.Histogram
	unknownTargets prometheus.Counter
}

func newCounters(reg prometheus.Registerer) *counters {
	m := &counters{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geomilter_archive_messages_total",
			Help: "Messages at end of message by result: journaled (record on disk before the answer), skipped (an archive skip rule), failed (answered with a temporary failure).",
		}, []string{"result"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geomilter_archive_journal_failures_total",
			Help: "Journal records not written, by reason (full: journal.max_bytes reached; too_large: over journal.max_message_size; write: disk error). Each one was answered with a temporary failure.",
		}, []string{"reason"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_archive_journaled_bytes_total",
			Help: "Message bytes journaled.",
		}),
		appendSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "geomilter_archive_journal_append_seconds",
			Help:    "Time from the start of the journal write to its fsync (shared with concurrent sessions) at end of message.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		unknownTargets: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_archive_rule_unknown_targets_total",
			Help: "Archive rules naming a target this host does not configure (the message goes to every target instead).",
		}),
	}
	reg.MustRegister(m.messages, m.failures, m.bytes, m.appendSeconds, m.unknownTargets)
	return m
}

// registerSpoolMetrics exports the journal spool's state, read from memory
// at each scrape.
func registerSpoolMetrics(reg prometheus.Registerer, p *pipeline) {
	sp := p.spool
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "geomilter_archive_journal_bytes",
			Help: "Journal bytes on disk not yet delivered to every target (bounded by journal.max_bytes).",
		}, func() float64 { return float64(sp.Stats().Bytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "geomilter_archive_journal_max_bytes",
			Help: "journal.max_bytes: at this bound new messages are answered with a temporary failure.",
		}, func() float64 { return float64(p.journal.MaxBytes) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "geomilter_archive_journal_fsyncs_total",
			Help: "fsync calls of the journal spool (records, body files, directory); divide by geomilter_archive_messages_total{result=\"journaled\"} for fsyncs per message.",
		}, func() float64 { return float64(sp.Stats().Fsyncs) }),
	)
	for _, t := range p.targets {
		name := t.cfg.Name
		cl := prometheus.Labels{"target": name}
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "geomilter_archive_target_backlog_records", ConstLabels: cl,
				Help: "Journal records not yet delivered to the target.",
			}, func() float64 { return float64(sp.Stats().PerSink[name].Pending) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "geomilter_archive_target_oldest_record_age_seconds", ConstLabels: cl,
				Help: "Age of the oldest journal record not yet delivered to the target; 0 when none waits.",
			}, func() float64 {
				o := sp.Stats().PerSink[name].OldestUnsent
				if o.IsZero() {
					return 0
				}
				return time.Since(o).Seconds()
			}),
		)
	}
}
