package service

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/geomilter/geomilter/shared/spool"
)

// spoolCollector exports the spool's depth at scrape time from Stats(), which
// reads counters in memory: a scrape never touches the disk or a sink.
type spoolCollector struct {
	sp                                       *spool.Spool
	records, bytes, oldest, dropped, pending *prometheus.Desc
	sinkOldest                               *prometheus.Desc
}

func newSpoolCollector(sp *spool.Spool, milter string) *spoolCollector {
	cl := prometheus.Labels{"milter": milter}
	return &spoolCollector{
		sp:         sp,
		records:    prometheus.NewDesc("geomilter_spool_records", "Records in the spool not yet delivered to every sink.", nil, cl),
		bytes:      prometheus.NewDesc("geomilter_spool_bytes", "Bytes of spool segments on disk not yet delivered to every sink.", nil, cl),
		oldest:     prometheus.NewDesc("geomilter_spool_oldest_unsent_age_seconds", "Age of the oldest record not yet delivered to every sink (0 when empty).", nil, cl),
		dropped:    prometheus.NewDesc("geomilter_spool_dropped_total", "Records refused because the spool was full (overflow policy: drop new).", nil, cl),
		pending:    prometheus.NewDesc("geomilter_spool_sink_pending_records", "Records not yet delivered, per sink.", []string{"sink"}, cl),
		sinkOldest: prometheus.NewDesc("geomilter_spool_sink_oldest_unsent_age_seconds", "Age of the oldest record not yet delivered, per sink.", []string{"sink"}, cl),
	}
}

func (c *spoolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.records, c.bytes, c.oldest, c.dropped, c.pending, c.sinkOldest} {
		ch <- d
	}
}

func (c *spoolCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.sp.Stats()
	now := time.Now()
	ch <- prometheus.MustNewConstMetric(c.records, prometheus.GaugeValue, float64(st.Records))
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(st.Bytes))
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age(now, st.OldestUnsent))
	ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(st.Dropped))
	for name, s := range st.PerSink {
		ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(s.Pending), name)
		ch <- prometheus.MustNewConstMetric(c.sinkOldest, prometheus.GaugeValue, age(now, s.OldestUnsent), name)
	}
}

func age(now, t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return now.Sub(t).Seconds()
}
