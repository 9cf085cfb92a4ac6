package trail

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/spool"
)

// Emitter stamps events with this process's identity and appends them to the
// spool. Emit never blocks on anything but the local append: when the spool is
// full the event is dropped and counted (the documented overflow policy for trail
// events — mail is never held up for its log line).
type Emitter struct {
	sp     *spool.Spool
	site   string
	host   string
	milter string
	log    zerolog.Logger
	now    func() time.Time

	emitted prometheus.Counter
	dropped prometheus.Counter
	failed  prometheus.Counter

	lastErrLog atomic.Int64 // unix seconds of the last logged append error
}

// NewEmitter returns an Emitter for one milter process.
func NewEmitter(sp *spool.Spool, site, host, milter string, log zerolog.Logger, reg prometheus.Registerer) *Emitter {
	labels := prometheus.Labels{"milter": milter}
	e := &Emitter{
		sp: sp, site: site, host: host, milter: milter, log: log, now: time.Now,
		emitted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_trail_events_total", Help: "Trail events appended to the local spool.", ConstLabels: labels}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_trail_events_dropped_total", Help: "Trail events dropped because the spool was full (overflow policy: drop new).", ConstLabels: labels}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geomilter_trail_events_failed_total", Help: "Trail events that could not be encoded or appended (disk error, spool closed).", ConstLabels: labels}),
	}
	if reg != nil {
		reg.MustRegister(e.emitted, e.dropped, e.failed)
	}
	return e
}

// Emit fills in the identity fields and appends the event. Errors are counted and
// logged (at most once a second), never returned: the caller is on the mail path
// and has already decided.
func (e *Emitter) Emit(ev *Event) {
	if ev.EventID == "" {
		ev.EventID = NewEventID(e.now())
	}
	if ev.Time.IsZero() {
		ev.Time = e.now()
	}
	ev.Site, ev.Host, ev.Milter = e.site, e.host, e.milter
	b, err := ev.Marshal()
	if err == nil {
		err = e.sp.Append(b)
	}
	switch {
	case err == nil:
		e.emitted.Inc()
	case errors.Is(err, spool.ErrFull):
		e.dropped.Inc()
		e.logErr(err, ev)
	default:
		e.failed.Inc()
		e.logErr(err, ev)
	}
}

func (e *Emitter) logErr(err error, ev *Event) {
	now := e.now().Unix()
	last := e.lastErrLog.Load()
	if now == last || !e.lastErrLog.CompareAndSwap(last, now) {
		return
	}
	e.log.Error().Err(err).Str("event_id", ev.EventID).Str("txn_id", ev.TxnID).Msg("trail event not spooled")
}
