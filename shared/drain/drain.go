// Package drain ships records from a spool to one sink. Each sink gets its own
// Drainer with its own spool cursor, so a dark or hung sink only makes its own
// drainer back off while every other sink keeps receiving. Delivery is
// at-least-once: a batch is committed only after the sink acknowledged all of
// it, and a failed batch is sent again in full (less the leading records a
// sink reports delivered with a *PartialError), so receivers deduplicate by
// the event id. Nothing here is on the mail path: milters only append to the
// spool.
package drain

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/spool"
)

// Sink delivers batches of records to one destination.
type Sink interface {
	Name() string
	// Send delivers a batch; nil error means every record is acknowledged.
	// It must return when ctx is done (the drainer's per-send deadline).
	Send(ctx context.Context, batch []spool.Record) error
	Close() error
}

// PartialError is what a Sink's Send returns when the first Done records of
// the batch were acknowledged and the rest failed with Err (e.g. a sink that
// delivers one record per request). The drainer commits the first Done
// records before it backs off, so they are not sent again; Done <= 0 or
// Done >= len(batch) is treated as a plain failure of the whole batch.
type PartialError struct {
	Done int
	Err  error
}

func (e *PartialError) Error() string {
	return fmt.Sprintf("%d records delivered, then: %v", e.Done, e.Err)
}

func (e *PartialError) Unwrap() error { return e.Err }

// Source is the part of *spool.Reader a Drainer uses: one sink's cursor.
type Source interface {
	// Next blocks until at least one record after the cursor is available.
	Next(ctx context.Context, max int) ([]spool.Record, error)
	Commit(seq uint64) error
	Rewind()
	// SkipCorrupt moves past data after the cursor that no longer verifies
	// (spool.ErrCorrupt) and returns how many bytes it skipped.
	SkipCorrupt() (int64, error)
}

var _ Source = (*spool.Reader)(nil)

var (
	_ Sink = (*RedisSink)(nil)
	_ Sink = (*HTTPSink)(nil)
	_ Sink = (*FileSink)(nil)
)

// Options tune a Drainer; zero values take the defaults noted.
type Options struct {
	BatchSize   int           // records per Send; default 500
	MinBackoff  time.Duration // first retry delay ceiling; default 100ms
	MaxBackoff  time.Duration // retry delay ceiling; default 30s
	SendTimeout time.Duration // deadline of one Send; default 10s
	Logger      zerolog.Logger
	Metrics     *Metrics // optional; shared by the drainers of one process
	// Rand returns values in [0,1) for backoff jitter; default math/rand/v2.
	Rand func() float64
	// Pending, if set, reports how many records this sink has not yet had
	// committed (e.g. from spool.Stats().PerSink[name].Pending); Flush then
	// waits for it to reach zero. Without it Flush infers idleness from Next
	// blocking (see Flush).
	Pending func() int64
}

func (o *Options) defaults() {
	if o.BatchSize <= 0 {
		o.BatchSize = 500
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 100 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 30 * time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
	if o.SendTimeout <= 0 {
		o.SendTimeout = 10 * time.Second
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil, "")
	}
}

// idleGrace is how long Run must have been parked in Next, with nothing in
// hand, before Flush (without Options.Pending) believes the spool is drained:
// a record appended (and, in GroupCommit mode, synced: call Spool.Sync
// first) just before Flush wakes Next well within it.
const idleGrace = 250 * time.Millisecond

// Drainer moves records from one Source to one Sink.
type Drainer struct {
	src  Source
	sink Sink
	o    Options
	m    sinkMetrics

	mu         sync.Mutex
	parkedAt   time.Time // when Run entered Next with nothing uncommitted; zero otherwise
	lastErr    error     // last send error, for Flush's report
	running    bool
	stateBumps chan struct{} // closed and replaced whenever parkedAt changes
}

// New returns a Drainer for src (normally a *spool.Reader) and sink. The
// caller keeps ownership of sink and closes it after Run returns.
func New(src Source, sink Sink, o Options) *Drainer {
	o.defaults()
	return &Drainer{src: src, sink: sink, o: o, m: o.Metrics.forSink(sink.Name()),
		stateBumps: make(chan struct{})}
}

func (d *Drainer) setParked(t time.Time) {
	d.mu.Lock()
	d.parkedAt = t
	close(d.stateBumps)
	d.stateBumps = make(chan struct{})
	d.mu.Unlock()
}

// Run ships batches until ctx is done, then returns nil. A failed Send is
// retried after an exponential backoff with full jitter (reset by a success);
// the records are re-read from the committed cursor. Run returns an error only
// if the spool is closed underneath it.
func (d *Drainer) Run(ctx context.Context) error {
	d.mu.Lock()
	if d.running {
		d.mu.Unlock()
		return fmt.Errorf("drain %s: already running", d.sink.Name())
	}
	d.running = true
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.running = false
		d.mu.Unlock()
		d.setParked(time.Time{})
		d.m.retrying.Set(0)
	}()

	log := d.o.Logger.With().Str("sink", d.sink.Name()).Logger()
	failures := 0
	for {
		d.setParked(time.Now())
		batch, err := d.src.Next(ctx, d.o.BatchSize)
		d.setParked(time.Time{})
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if errors.Is(err, spool.ErrClosed) {
				return fmt.Errorf("drain %s: %w", d.sink.Name(), err)
			}
			if errors.Is(err, spool.ErrCorrupt) {
				// Bit rot in fsynced data: retrying would read the same
				// bytes forever. Skip them; the events in them are lost to
				// this sink, and said so.
				n, serr := d.src.SkipCorrupt()
				if serr == nil && n > 0 {
					d.m.corrupt.Add(float64(n))
					log.Error().Err(err).Int64("skipped_bytes", n).
						Msg("drain: spool data corrupt on disk; skipped it, the trail events in it are lost for this sink")
					continue
				}
				if serr != nil {
					err = fmt.Errorf("%w (skipping it failed: %v)", err, serr)
				}
			}
			failures++
			log.Error().Err(err).Msg("drain: reading spool failed; retrying")
			d.src.Rewind()
			if !d.sleep(ctx, failures) {
				return nil
			}
			continue
		}
		if len(batch) == 0 {
			continue
		}

		if err := d.send(ctx, batch); err != nil {
			if done := d.commitPartial(err, batch, log); done > 0 {
				// The sink is working, only the record after them is not
				// getting through: restart the backoff from its minimum.
				failures = 0
			}
			if ctx.Err() != nil {
				// Shutting down mid-send: the rest of the batch (all of it,
				// unless the sink reported a partial delivery) is sent again
				// by the next process.
				d.src.Rewind()
				return nil
			}
			failures++
			d.m.failed.Inc()
			d.m.retrying.Set(1)
			d.mu.Lock()
			d.lastErr = err
			d.mu.Unlock()
			d.src.Rewind()
			delay := d.backoff(failures)
			log.Warn().Err(err).Int("records", len(batch)).Uint64("first_seq", batch[0].Seq).
				Int("failures", failures).Dur("retry_in", delay).Msg("drain: send failed")
			if !sleepCtx(ctx, delay) {
				return nil
			}
			continue
		}

		last := batch[len(batch)-1].Seq
		if err := d.src.Commit(last); err != nil {
			// The sink has the records; only the cursor is not durable. Later
			// commits cover these too, and a crash before then resends them
			// (at-least-once), so keep going rather than resend now.
			log.Error().Err(err).Uint64("seq", last).Msg("drain: commit failed")
		}
		if failures > 0 {
			log.Info().Int("failures", failures).Msg("drain: sink recovered")
		}
		failures = 0
		d.m.retrying.Set(0)
		d.m.sent.Add(float64(len(batch)))
		d.m.batches.Inc()
		d.mu.Lock()
		d.lastErr = nil
		d.mu.Unlock()
	}
}

// commitPartial commits the leading records a *PartialError says were
// acknowledged and returns how many that was (0 if err is not one).
func (d *Drainer) commitPartial(err error, batch []spool.Record, log zerolog.Logger) int {
	var pe *PartialError
	if !errors.As(err, &pe) || pe.Done <= 0 || pe.Done >= len(batch) {
		return 0
	}
	last := batch[pe.Done-1].Seq
	if cerr := d.src.Commit(last); cerr != nil {
		// As after a full batch: the sink has them, a resend is harmless.
		log.Error().Err(cerr).Uint64("seq", last).Msg("drain: commit of a partial batch failed")
	}
	d.m.sent.Add(float64(pe.Done))
	return pe.Done
}

func (d *Drainer) send(ctx context.Context, batch []spool.Record) error {
	sctx, cancel := context.WithTimeout(ctx, d.o.SendTimeout)
	defer cancel()
	start := time.Now()
	err := d.sink.Send(sctx, batch)
	d.m.duration.Observe(time.Since(start).Seconds())
	if err == nil && sctx.Err() != nil && ctx.Err() == nil {
		// A sink that ignores its deadline yet reports success is believed;
		// the records did arrive.
		return nil
	}
	return err
}

// backoff is the delay before retry number failures (1-based): full jitter
// over min(MaxBackoff, MinBackoff·2^(failures-1)), so many drainers hitting
// the same dead receiver do not retry in lock-step.
func (d *Drainer) backoff(failures int) time.Duration {
	ceil := float64(d.o.MinBackoff) * math.Pow(2, float64(failures-1))
	if ceil > float64(d.o.MaxBackoff) || math.IsInf(ceil, 0) {
		ceil = float64(d.o.MaxBackoff)
	}
	return time.Duration(d.o.Rand() * ceil)
}

func (d *Drainer) sleep(ctx context.Context, failures int) bool {
	return sleepCtx(ctx, d.backoff(failures))
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Flush waits until every record appended before the call has been delivered
// and committed, or ctx is done (then it returns an error naming the sink and
// its last send error). Run must be running concurrently. With
// Options.Pending the check is exact; without it, the spool counts as drained
// once Run has been waiting in Next, holding nothing, for idleGrace since
// before the call.
func (d *Drainer) Flush(ctx context.Context) error {
	called := time.Now()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		d.mu.Lock()
		parked, bump, lastErr := d.parkedAt, d.stateBumps, d.lastErr
		d.mu.Unlock()
		if d.o.Pending != nil {
			if d.o.Pending() == 0 {
				return nil
			}
		} else if !parked.IsZero() && time.Since(parked) >= idleGrace && time.Since(called) >= idleGrace {
			return nil
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("drain %s: flush: %w (last send error: %v)", d.sink.Name(), ctx.Err(), lastErr)
			}
			return fmt.Errorf("drain %s: flush: %w", d.sink.Name(), ctx.Err())
		case <-bump:
		case <-tick.C:
		}
	}
}
