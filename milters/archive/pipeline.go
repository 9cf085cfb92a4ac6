package archive

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/archive/target"
	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/drain"
	"github.com/geomilter/geomilter/shared/metrics"
	"github.com/geomilter/geomilter/shared/spool"
)

// pipeline is the journal spool and one drainer per target.
type pipeline struct {
	cfg     *config.Config
	journal *JournalSettings
	log     zerolog.Logger
	spool   *spool.Spool
	dead    *target.DeadLetters
	drainM  *drain.Metrics
	targets []*targetRun // in config order
	names   []string     // the targets' names, in config order; read only

	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	replays []*replay
}

// targetRun is one target with its drainer and what status reports of it.
type targetRun struct {
	cfg     target.Config
	sink    *watchedSink
	drainer *drain.Drainer
	reader  *spool.Reader
}

func openPipeline(cfg *config.Config, j *JournalSettings, log zerolog.Logger, reg prometheus.Registerer, clock func() time.Time) (*pipeline, error) {
	list := j.TargetList(cfg)
	names := make([]string, len(list))
	for i, t := range list {
		names[i] = t.Name
	}
	dir := j.JournalDir(cfg)
	if clock == nil {
		clock = time.Now
	}
	sp, err := spool.Open(spool.Options{
		Dir: dir, Sinks: names, MaxBytes: int64(j.MaxBytes), Durability: spool.Durable,
		Retain: j.Retain, RetainBytes: int64(j.RetainBytes), Clock: clock, Logger: &log,
	})
	if err != nil {
		return nil, fmt.Errorf("archive journal %s: %w", dir, err)
	}
	p := &pipeline{cfg: cfg, journal: j, log: log, spool: sp, names: names}
	ok := false
	defer func() {
		if !ok {
			p.closeNow()
		}
	}()
	p.dead, err = target.NewDeadLetters(j.DeadDir(cfg), log, reg)
	if err != nil {
		return nil, fmt.Errorf("archive dead letters %s: %w", j.DeadDir(cfg), err)
	}
	p.drainM = drain.NewMetricsNamed(reg, "geomilter_archive_journal_drain", Name)
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	for _, tc := range list {
		sink, err := target.New(tc, p.dead, log)
		if err != nil {
			return nil, err
		}
		rd, err := sp.Reader(tc.Name)
		if err != nil {
			_ = sink.Close()
			return nil, fmt.Errorf("archive target %s: %w", tc.Name, err)
		}
		ws := &watchedSink{Sink: sink}
		name := tc.Name
		d := drain.New(rd, ws, p.drainOptions(func() int64 { return sp.Stats().PerSink[name].Pending }))
		tr := &targetRun{cfg: tc, sink: ws, drainer: d, reader: rd}
		p.targets = append(p.targets, tr)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if err := d.Run(ctx); err != nil {
				log.Error().Err(err).Str("target", tr.cfg.Name).Msg("archive target drainer stopped")
			}
		}()
	}
	registerSpoolMetrics(reg, p)
	ok = true
	return p, nil
}

func (p *pipeline) drainOptions(pending func() int64) drain.Options {
	return drain.Options{
		BatchSize: p.journal.Batch, MinBackoff: p.journal.Backoff.Min, MaxBackoff: p.journal.Backoff.Max,
		// One send carries up to Batch messages; each target bounds its
		// own network steps (connect, command, data) inside it.
		SendTimeout: sendTimeout(p.journal.Batch),
		Logger:      p.log, Metrics: p.drainM, Pending: pending,
	}
}

// sendTimeout is the backstop of one batch: generous per message, since a
// journal message can be 100 MB on a slow link. The targets' own timeouts
// (connect_timeout per host, timeout per command or request) cut a dark or
// hung archive much sooner, and what a cut batch delivered stays delivered
// (drain.PartialError).
func sendTimeout(batch int) time.Duration {
	return max(5*time.Minute, time.Duration(batch)*2*time.Minute)
}

func (p *pipeline) hasTarget(name string) bool { return slices.Contains(p.names, name) }

// targetNames is shared, not copied: callers must not change it.
func (p *pipeline) targetNames() []string { return p.names }

// close gives the drainers up to flush to deliver what is pending, then
// stops them and closes the spool.
func (p *pipeline) close(flush time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), flush)
	var wg sync.WaitGroup
	for _, t := range p.targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := t.drainer.Flush(ctx); err != nil {
				p.log.Warn().Err(err).Str("target", t.cfg.Name).Msg("archive target not drained at stop; the rest goes after the restart")
			}
		}()
	}
	wg.Wait()
	cancel()
	return p.closeNow()
}

func (p *pipeline) closeNow() error {
	if p.cancel != nil {
		p.cancel()
	}
	p.mu.Lock()
	for _, r := range p.replays {
		r.cancel()
	}
	p.mu.Unlock()
	p.wg.Wait()
	var errs []error
	for _, t := range p.targets {
		errs = append(errs, t.sink.Close())
	}
	if p.spool != nil {
		errs = append(errs, p.spool.Close())
	}
	return errors.Join(errs...)
}

// check is the /healthz line of the journal: down when the journal is full
// (new mail is answered with a temporary failure), degraded while a target
// is failing (its records wait on disk).
func (p *pipeline) check() metrics.Check {
	return metrics.Check{
		Name: "journal",
		Func: func() error {
			st := p.spool.Stats()
			if limit := int64(p.journal.MaxBytes); limit > 0 && st.Bytes+int64(p.journal.MaxMessageSize) > limit && st.Bytes >= limit*95/100 {
				return fmt.Errorf("journal full: %d of %d bytes waiting for targets; new mail is deferred", st.Bytes, limit)
			}
			return nil
		},
		Degraded: func() string {
			var failing []string
			for _, t := range p.targets {
				if _, err, _ := t.sink.lastError(); err != nil && t.sink.failing() {
					failing = append(failing, t.cfg.Name)
				}
			}
			if len(failing) == 0 {
				return ""
			}
			return fmt.Sprintf("archive targets failing, records kept on disk: %v", failing)
		},
		Detail: func() string {
			st := p.spool.Stats()
			return fmt.Sprintf("%d records, %d bytes pending", st.Records, st.Bytes)
		},
	}
}

// watchedSink remembers the outcome of the last send to a target, for
// status and health.
type watchedSink struct {
	drain.Sink
	mu      sync.Mutex
	lastOK  time.Time
	lastErr error
	errAt   time.Time
	fails   int
}

func (w *watchedSink) Send(ctx context.Context, batch []spool.Record) error {
	err := w.Sink.Send(ctx, batch)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err == nil {
		w.lastOK, w.fails = time.Now(), 0
		return nil
	}
	w.lastErr, w.errAt = err, time.Now()
	w.fails++
	return err
}

func (w *watchedSink) lastError() (time.Time, error, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errAt, w.lastErr, w.lastOK
}

// failing: the last send failed (a success since resets it).
func (w *watchedSink) failing() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fails > 0
}
