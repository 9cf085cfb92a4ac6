package drain

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the drain counters of one process, labelled by sink; create one
// per process and share it between that process's drainers.
type Metrics struct {
	sent     *prometheus.CounterVec
	failed   *prometheus.CounterVec
	retrying *prometheus.GaugeVec
	batches  *prometheus.CounterVec
	duration *prometheus.HistogramVec
	corrupt  *prometheus.CounterVec
}

// NewMetrics creates the trail drain metrics (geomilter_trail_drain_*)
// with a constant milter label and registers them on reg (if reg is nil
// they are kept but not exported).
func NewMetrics(reg prometheus.Registerer, milter string) *Metrics {
	return NewMetricsNamed(reg, "geomilter_trail_drain", milter)
}

// NewMetricsNamed is NewMetrics with another name prefix, for drainers of
// another spool (the archive journal: geomilter_archive_journal_drain), so
// their series never mix with the trail's.
func NewMetricsNamed(reg prometheus.Registerer, prefix, milter string) *Metrics {
	cl := prometheus.Labels{"milter": milter}
	m := &Metrics{
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: prefix + "_sent_total", ConstLabels: cl,
			Help: "Records acknowledged by the sink (at-least-once: a record resent after a failed batch counts again).",
		}, []string{"sink"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: prefix + "_failed_total", ConstLabels: cl,
			Help: "Batch sends that failed or timed out; the batch is retried after a backoff.",
		}, []string{"sink"}),
		retrying: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: prefix + "_retrying", ConstLabels: cl,
			Help: "1 while the sink is failing and its drainer is backing off, 0 once a send succeeds.",
		}, []string{"sink"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: prefix + "_batches_total", ConstLabels: cl,
			Help: "Batches acknowledged by the sink.",
		}, []string{"sink"}),
		corrupt: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: prefix + "_corrupt_skipped_bytes_total", ConstLabels: cl,
			Help: "Spool bytes that failed their checksum after fsync (bit rot) and were skipped; the events in them did not reach the sink.",
		}, []string{"sink"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: prefix + "_send_duration_seconds", ConstLabels: cl,
			Help:    "Duration of one batch send, successful or not.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"sink"}),
	}
	if reg != nil {
		reg.MustRegister(m.sent, m.failed, m.retrying, m.batches, m.duration, m.corrupt)
	}
	return m
}

type sinkMetrics struct {
	sent, failed, batches, corrupt prometheus.Counter
	retrying                       prometheus.Gauge
	duration                       prometheus.Observer
}

func (m *Metrics) forSink(name string) sinkMetrics {
	sm := sinkMetrics{
		sent:     m.sent.WithLabelValues(name),
		failed:   m.failed.WithLabelValues(name),
		batches:  m.batches.WithLabelValues(name),
		retrying: m.retrying.WithLabelValues(name),
		duration: m.duration.WithLabelValues(name),
		corrupt:  m.corrupt.WithLabelValues(name),
	}
	// Export every series from the start, so a sink that never succeeds
	// still shows up (with 0) rather than being absent.
	sm.retrying.Set(0)
	return sm
}
