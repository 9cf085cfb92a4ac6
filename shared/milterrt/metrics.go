package milterrt

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Final actions of a transaction, as labelled in transactions_total: the
// Action names plus "aborted" (ended without a decision).
const numTxnLabels = int(numActions) + 1

func txnLabel(st *State) int {
	if st.Final.Action == ActionContinue {
		return int(numActions) // aborted
	}
	return int(st.Final.Action)
}

type metrics struct {
	active   prometheus.Gauge
	sessions prometheus.Counter
	refused  prometheus.Counter
	panics   prometheus.Counter
	// protoErrors counts connections closed for input that breaks the milter
	// protocol.
	protoErrors prometheus.Counter
	// msgErrors counts transactions tempfailed because their message could
	// not be stored whole (disk full, …).
	msgErrors prometheus.Counter
	decisions [numStages][numActions]prometheus.Counter
	duration  [numStages]prometheus.Observer
	txns      [numTxnLabels]prometheus.Counter
}

// stageBuckets span 50µs (a decision from memory) to 5s (far past any budget).
var stageBuckets = []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5}

func newMetrics(reg prometheus.Registerer, name string) *metrics {
	cl := prometheus.Labels{"milter": name}
	active := register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "geomilter_milter_sessions_active", Help: "Milter connections open now.", ConstLabels: cl}))
	sessions := register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "geomilter_milter_sessions_total", Help: "Milter connections accepted.", ConstLabels: cl}))
	refused := register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "geomilter_milter_sessions_refused_total", Help: "Milter connections closed at once because max_sessions was reached.", ConstLabels: cl}))
	panics := register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "geomilter_milter_panics_total", Help: "Panics recovered in milter session code.", ConstLabels: cl}))
	protoErrors := register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "geomilter_milter_protocol_errors_total", Help: "Milter connections closed because the MTA broke the milter protocol.", ConstLabels: cl}))
	msgErrors := register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "geomilter_milter_message_errors_total", Help: "Transactions tempfailed because the message could not be stored whole for the milter (disk full, …).", ConstLabels: cl}))
	decisions := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "geomilter_milter_decisions_total", Help: "Decisions returned, by stage and action.", ConstLabels: cl},
		[]string{"stage", "action"}))
	duration := register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "geomilter_milter_stage_duration_seconds", Help: "Time spent in the milter's code per stage.",
		ConstLabels: cl, Buckets: stageBuckets}, []string{"stage"}))
	txns := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "geomilter_milter_transactions_total", Help: "Transactions ended, by final action (aborted: ended without a decision).", ConstLabels: cl},
		[]string{"action"}))

	m := &metrics{active: active, sessions: sessions, refused: refused, panics: panics, protoErrors: protoErrors, msgErrors: msgErrors}
	// Resolve every label combination once: the hot path then only adds.
	for s := 0; s < numStages; s++ {
		m.duration[s] = duration.WithLabelValues(stageNames[s])
		for a := Action(0); a < numActions; a++ {
			m.decisions[s][a] = decisions.WithLabelValues(stageNames[s], a.String())
		}
	}
	for a := Action(0); a < numActions; a++ {
		if a != ActionContinue {
			m.txns[a] = txns.WithLabelValues(a.String())
		}
	}
	m.txns[numActions] = txns.WithLabelValues("aborted")
	m.txns[ActionContinue] = m.txns[numActions]
	return m
}

// register registers c, or returns the collector already registered under the
// same description (a second Server for the same milter on one registry).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		// Any other error is a programming error (conflicting metric
		// definitions); the metric still works, unexported.
	}
	return c
}

func (m *metrics) observe(stage Stages, d time.Duration) {
	m.duration[stage.index()].Observe(d.Seconds())
}

func (m *metrics) decision(stage Stages, a Action) {
	if a < numActions {
		m.decisions[stage.index()][a].Inc()
	}
}
