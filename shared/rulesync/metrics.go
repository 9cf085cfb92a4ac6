package rulesync

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/geomilter/geomilter/shared/state"
)

// syncMetrics are the rules snapshot's metrics. Values that change with time
// (age) are computed at scrape time from the Syncer's status.
type syncMetrics struct {
	reg        prometheus.Registerer
	collectors []prometheus.Collector

	age      prometheus.GaugeFunc
	count    prometheus.GaugeFunc
	source   *prometheus.GaugeVec
	info     *prometheus.GaugeVec
	stale    *prometheus.GaugeVec
	reloads  *prometheus.CounterVec
	invalid  prometheus.Counter
	mu       sync.Mutex
	checksum string
}

func newSyncMetrics(reg prometheus.Registerer, milter string, s *Syncer) (*syncMetrics, error) {
	var cl prometheus.Labels
	if milter != "" {
		cl = prometheus.Labels{"milter": milter}
	}
	m := &syncMetrics{reg: reg}
	m.age = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "geomilter_rules_snapshot_age_seconds", ConstLabels: cl,
		Help: "Seconds since the rules snapshot in force was last confirmed current against its source (for a disk snapshot: since it was saved).",
	}, func() float64 {
		st := s.Status()
		return s.o.Clock().Sub(st.VerifiedAt).Seconds()
	})
	m.count = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "geomilter_rules_snapshot_rules", ConstLabels: cl,
		Help: "Rules in the snapshot in force (disabled ones included).",
	}, func() float64 { return float64(s.Status().Rules) })
	m.source = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "geomilter_rules_snapshot_source", ConstLabels: cl,
		Help: "Where the rules snapshot in force came from: 1 for the current source (redis, disk, file, empty), 0 for the others.",
	}, []string{"source"})
	m.info = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "geomilter_rules_snapshot_info", ConstLabels: cl,
		Help: "Always 1; the checksum label identifies the rules in force (equal on every node holding the same rules).",
	}, []string{"checksum"})
	m.stale = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "geomilter_rules_site_stale", ConstLabels: cl,
		Help: "1 when a site's rules come from this process's memory because its Redis instance did not answer the last load.",
	}, []string{"site"})
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "geomilter_rules_reloads_total", ConstLabels: cl,
		Help: "Rules loads by result: changed (a new snapshot was installed), unchanged, failed (the snapshot in force was kept).",
	}, []string{"result"})
	m.invalid = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "geomilter_rules_invalid_docs_total", ConstLabels: cl,
		Help: "Stored rule or tenant documents skipped as invalid (e.g. written by a newer version), each counted once.",
	})
	for _, r := range []string{"changed", "unchanged", "failed"} {
		m.reloads.WithLabelValues(r)
	}
	m.collectors = []prometheus.Collector{m.age, m.count, m.source, m.info, m.stale, m.reloads, m.invalid}
	if reg == nil {
		return m, nil
	}
	for i, c := range m.collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range m.collectors[:i] {
				reg.Unregister(done)
			}
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, errors.New("rulesync: metrics already registered (one Syncer per registry)")
			}
			return nil, err
		}
	}
	return m, nil
}

func (m *syncMetrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
}

func (m *syncMetrics) setSource(src string) {
	for _, s := range sources {
		v := 0.0
		if s == src {
			v = 1
		}
		m.source.WithLabelValues(s).Set(v)
	}
}

func (m *syncMetrics) setChecksum(sum string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if sum == m.checksum {
		return
	}
	m.info.Reset()
	m.info.WithLabelValues(sum).Set(1)
	m.checksum = sum
}

func (m *syncMetrics) setStale(store *state.Store, stale []string) {
	if store == nil {
		return
	}
	for _, site := range store.Sites() {
		v := 0.0
		for _, s := range stale {
			if s == site {
				v = 1
			}
		}
		m.stale.WithLabelValues(site).Set(v)
	}
}
