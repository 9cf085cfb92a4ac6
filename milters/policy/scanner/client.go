package scanner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// maxReply bounds what is read of a scanner's reply: a verdict is a few
// kilobytes; more is a hostile or broken scanner, and an error.
const maxReply = 1 << 20

// reply is a scanner's verdict before weighting.
type reply struct {
	score, required float64
	action          string
	symbols         []Symbol
}

// backend speaks one scanner's protocol. Both methods must return when ctx
// is done (its deadline bounds connect, write and read).
type backend interface {
	check(ctx context.Context, m Message) (reply, error)
	ping(ctx context.Context) error
}

// errBudget is the cause of a request's context when the scanner's budget
// ran out (rather than the caller's context).
var errBudget = errors.New("budget exhausted")

// errMessage marks a failure to read the message itself: ours, not the
// scanner's, so it does not count against the breaker.
var errMessage = errors.New("reading the message")

// client is a Scanner: one backend behind a budget and a breaker.
type client struct {
	name    string
	cfg     Config
	be      backend
	log     zerolog.Logger
	met     *metrics
	breaker *breaker
}

var _ Scanner = (*client)(nil)

func newClient(c Config, name string, log zerolog.Logger, reg prometheus.Registerer) (*client, error) {
	applyDefaults(&c, func(string) bool { return false })
	if ps := check(&c); len(ps) > 0 {
		return nil, fmt.Errorf("scanner %s: %s: %s", name, ps[0].key, ps[0].msg)
	}
	met, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("scanner %s: metrics: %w", name, err)
	}
	cl := &client{name: name, cfg: c, met: met,
		log: log.With().Str("component", "scanner").Str("scanner", name).Logger()}
	switch c.Type {
	case TypeRspamd:
		cl.be = newRspamd(c)
	case TypeSpamd:
		cl.be = newSpamd(c)
	}
	for _, o := range []string{outcomeOK, outcomeTimeout, outcomeError, outcomeCanceled, outcomeBreaker, outcomeTooLarge, outcomeLocalFail} {
		met.requests.WithLabelValues(name, o)
	}
	gauge := met.open.WithLabelValues(name)
	gauge.Set(0)
	cl.breaker = newBreaker(c.Breaker, cl.probe, func(open bool, why error) {
		if open {
			gauge.Set(1)
			cl.log.Warn().Err(why).Int("failures", c.Breaker.Failures).Dur("open_for", c.Breaker.OpenFor).
				Msg("scanner: breaker opened: messages are not sent to this scanner until a probe answers")
		} else {
			gauge.Set(0)
			cl.log.Info().Msg("scanner: breaker closed: the probe was answered, messages are sent again")
		}
	})
	return cl, nil
}

func (c *client) Name() string { return c.name }

// Close stops the breaker's probe, if one runs.
func (c *client) Close() error {
	c.breaker.close()
	return nil
}

// probe asks the scanner whether it is alive (rspamd GET /ping, spamd
// PING), within its budget.
func (c *client) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Budget)
	defer cancel()
	return c.be.ping(ctx)
}

// Scan implements Scanner.
func (c *client) Scan(ctx context.Context, m Message) Result {
	r := Result{Scanner: c.name}
	if m.Size > int64(c.cfg.MaxSize) {
		r.Skipped = SkippedTooLarge
		c.met.requests.WithLabelValues(c.name, outcomeTooLarge).Inc()
		return r
	}
	if !c.breaker.allow() {
		r.Skipped = SkippedBreakerOpen
		c.met.requests.WithLabelValues(c.name, outcomeBreaker).Inc()
		return r
	}
	if m.Open == nil {
		r.Err = fmt.Errorf("scanner %s: no message to send", c.name)
		c.met.requests.WithLabelValues(c.name, outcomeLocalFail).Inc()
		return r
	}
	start := time.Now()
	rctx, cancel := context.WithTimeoutCause(ctx, c.cfg.Budget, errBudget)
	rep, err := c.be.check(rctx, m)
	budgetOut := errors.Is(context.Cause(rctx), errBudget)
	cancel()
	r.Duration = time.Since(start)
	c.met.seconds.WithLabelValues(c.name).Observe(r.Duration.Seconds())

	if err == nil {
		c.breaker.success()
		c.met.requests.WithLabelValues(c.name, outcomeOK).Inc()
		r.Score, r.Required, r.Action = rep.score*c.cfg.Weight, rep.required, rep.action
		r.Symbols = rep.symbols
		for i := range r.Symbols {
			r.Symbols[i].Score *= c.cfg.Weight
		}
		return r
	}
	r.Err = fmt.Errorf("scanner %s: %w", c.name, err)
	switch {
	case errors.Is(err, errMessage):
		c.met.requests.WithLabelValues(c.name, outcomeLocalFail).Inc()
	case budgetOut:
		r.TimedOut = true
		r.Err = fmt.Errorf("%w (no answer within the budget of %s)", r.Err, c.cfg.Budget)
		c.met.requests.WithLabelValues(c.name, outcomeTimeout).Inc()
		c.breaker.failure(r.Err)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		// The caller's deadline came before the budget's: the scanner
		// still did not answer in the time there was, and counts so (or
		// a caller's short deadline would keep a dark scanner's breaker
		// closed, and every message would wait).
		r.TimedOut = true
		c.met.requests.WithLabelValues(c.name, outcomeTimeout).Inc()
		c.breaker.failure(r.Err)
	case ctx.Err() != nil:
		// The caller gave up (its session ended): not the scanner's fault.
		c.met.requests.WithLabelValues(c.name, outcomeCanceled).Inc()
	default:
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			r.TimedOut = true
			c.met.requests.WithLabelValues(c.name, outcomeTimeout).Inc()
		} else {
			c.met.requests.WithLabelValues(c.name, outcomeError).Inc()
		}
		c.breaker.failure(r.Err)
	}
	return r
}

// body returns the reader of m's text for a request, bounded to m.Size.
func body(m Message) (io.Reader, error) {
	r := m.Open()
	if r == nil {
		return nil, fmt.Errorf("%w: Open returned no reader", errMessage)
	}
	return &sizedReader{r: r, n: m.Size}, nil
}

// sizedReader yields exactly n bytes of r: fewer is an errMessage (the
// Content-Length already sent would be a lie), more are not sent.
type sizedReader struct {
	r io.Reader
	n int64
}

func (s *sizedReader) Read(p []byte) (int, error) {
	if s.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > s.n {
		p = p[:s.n]
	}
	k, err := s.r.Read(p)
	s.n -= int64(k)
	if err == io.EOF && s.n > 0 {
		return k, fmt.Errorf("%w: %d bytes short of its size", errMessage, s.n)
	}
	if err != nil && err != io.EOF {
		return k, fmt.Errorf("%w: %w", errMessage, err)
	}
	if s.n == 0 {
		return k, io.EOF
	}
	return k, nil
}

// breaker is a circuit breaker: failures in a row open it; while open,
// allow is false and a probe runs every openFor until it succeeds.
type breaker struct {
	cfg      BreakerConfig
	probe    func(context.Context) error
	onChange func(open bool, why error)
	// ctx ends when close is called, cutting a probe short.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	fails  int
	open   bool
	closed bool // close was called: no new probe
	wg     sync.WaitGroup
}

func newBreaker(cfg BreakerConfig, probe func(context.Context) error, onChange func(bool, error)) *breaker {
	ctx, cancel := context.WithCancel(context.Background())
	return &breaker{cfg: cfg, probe: probe, onChange: onChange, ctx: ctx, cancel: cancel}
}

func (b *breaker) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.open
}

// failuresInARow is the count towards opening (for tests and status).
func (b *breaker) failuresInARow() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.fails
}

func (b *breaker) success() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open {
		b.fails = 0
	}
}

// failure counts one failure; the Failures-th in a row opens the breaker
// and starts the probe. Failures of requests still in flight when it
// opened change nothing.
func (b *breaker) failure(why error) {
	b.mu.Lock()
	if b.open {
		b.mu.Unlock()
		return
	}
	b.fails++
	if b.fails < b.cfg.Failures {
		b.mu.Unlock()
		return
	}
	b.open = true
	b.fails = 0
	start := !b.closed
	if start {
		b.wg.Add(1)
	}
	b.onChange(true, why)
	b.mu.Unlock()
	if start {
		go b.probing()
	}
}

// probing waits openFor, asks the probe, and closes the breaker when it
// answers; until then it tries again every openFor.
func (b *breaker) probing() {
	defer b.wg.Done()
	t := time.NewTimer(b.cfg.OpenFor)
	defer t.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
		}
		if b.probe(b.ctx) == nil {
			b.mu.Lock()
			b.open = false
			b.fails = 0
			b.onChange(false, nil)
			b.mu.Unlock()
			return
		}
		t.Reset(b.cfg.OpenFor)
	}
}

func (b *breaker) close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	b.cancel()
	b.mu.Unlock()
	b.wg.Wait()
}
