package state

import (
	"context"
	"sync"
	"time"
)

// BreakerState is where an instance's circuit breaker stands.
type BreakerState int

const (
	// BreakerClosed: calls go to the instance.
	BreakerClosed BreakerState = iota
	// BreakerSuspect: a call has just failed; callers fail fast while a
	// background probe checks the instance again straight away.
	BreakerSuspect
	// BreakerOpen: Failures consecutive attempts failed; callers fail fast and
	// a background probe retries every OpenFor.
	BreakerOpen
)

func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerSuspect:
		return "suspect"
	case BreakerOpen:
		return "open"
	}
	return "unknown"
}

// breaker guards one Redis instance.
//
// Why a caller's first failure already stops the other callers: a failure
// usually means the call waited out its whole budget. Letting Failures
// callers each wait it out in turn (the textbook breaker) would make several
// mails pay for the same dark instance; here exactly the calls in flight when
// it went dark wait, and the remaining Failures-1 confirmations are made by a
// background probe that no mail waits for. A transient blip costs one probe
// round trip of fast failures.
type breaker struct {
	failures int
	openFor  time.Duration
	clock    func() time.Time
	probe    func() error // one PING within the budget; run in the background only
	onChange func(from, to BreakerState, err error)

	mu        sync.Mutex
	state     BreakerState
	fails     int // consecutive failed attempts (calls and probes)
	lastErr   error
	openSince time.Time // when the current non-closed period began
	closedAt  time.Time // real time the breaker last closed after an outage
	probing   bool      // a probe goroutine is running
	closed    bool      // the store is closing: no more probes
	stats     breakerStats
	wake      chan struct{} // closed by shutdown to stop a waiting probe loop
}

type breakerStats struct {
	calls     uint64 // calls admitted to the network
	failed    uint64 // admitted calls that failed (counted failures)
	timedOut  uint64 // admitted calls that failed by waiting out their budget
	fastFails uint64 // calls refused without network I/O
	trips     uint64 // closed -> suspect transitions (breaker cycles)
	probes    uint64 // background probes run
}

func newBreaker(failures int, openFor time.Duration, clock func() time.Time, probe func() error,
	onChange func(from, to BreakerState, err error)) *breaker {
	return &breaker{failures: failures, openFor: openFor, clock: clock, probe: probe,
		onChange: onChange, wake: make(chan struct{})}
}

// allow reports whether a call may use the network.
func (b *breaker) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == BreakerClosed && !b.closed {
		b.stats.calls++
		return true
	}
	b.stats.fastFails++
	return false
}

// record reports the outcome of an admitted call. failure is false for
// success and for answers that prove the instance alive (redis.Nil, error
// replies); timedOut marks a failure that waited out the budget.
func (b *breaker) record(failure, timedOut bool, err error) {
	b.mu.Lock()
	if !failure {
		if b.state == BreakerClosed {
			b.fails = 0
		}
		b.mu.Unlock()
		return
	}
	b.stats.failed++
	if timedOut {
		b.stats.timedOut++
	}
	b.lastErr = err
	if b.state != BreakerClosed {
		// Another call that was already in flight; the cycle has begun.
		b.mu.Unlock()
		return
	}
	b.fails++
	b.stats.trips++
	b.openSince = b.clock()
	to := BreakerSuspect
	// A relapse within OpenFor of recovering (an instance that answers PING
	// but not real work, or flaps) goes straight to open: at most one caller
	// waits per OpenFor, however short the cycles.
	if b.fails >= b.failures || (!b.closedAt.IsZero() && time.Since(b.closedAt) < b.openFor) {
		to = BreakerOpen
	}
	b.setLocked(to, err)
	b.startProbeLocked()
	b.mu.Unlock()
}

func (b *breaker) setLocked(to BreakerState, err error) {
	from := b.state
	b.state = to
	if from != to && b.onChange != nil {
		// Called with the lock held: onChange must only log.
		b.onChange(from, to, err)
	}
}

func (b *breaker) startProbeLocked() {
	if b.probing || b.closed {
		return
	}
	b.probing = true
	go b.probeLoop()
}

// probeLoop runs until the instance answers (breaker closed) or shutdown.
func (b *breaker) probeLoop() {
	for {
		b.mu.Lock()
		st, closed := b.state, b.closed
		b.mu.Unlock()
		if closed {
			b.finishProbe()
			return
		}
		if st == BreakerOpen {
			select {
			case <-b.wake:
				b.finishProbe()
				return
			case <-time.After(b.openFor):
			}
		}
		err := b.probe()
		b.mu.Lock()
		b.stats.probes++
		if err == nil {
			b.fails = 0
			b.lastErr = nil
			b.openSince = time.Time{}
			b.closedAt = time.Now() // real time, like the probe timers
			b.setLocked(BreakerClosed, nil)
			b.probing = false
			b.mu.Unlock()
			return
		}
		b.lastErr = err
		b.fails++
		if b.fails >= b.failures && b.state != BreakerOpen {
			b.setLocked(BreakerOpen, err)
		}
		b.mu.Unlock()
	}
}

func (b *breaker) finishProbe() {
	b.mu.Lock()
	b.probing = false
	b.mu.Unlock()
}

// shutdown stops probing; later calls fail fast.
func (b *breaker) shutdown() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		close(b.wake)
	}
}

// isClosed reports whether calls would go through, without counting a call.
func (b *breaker) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state == BreakerClosed && !b.closed
}

type breakerSnapshot struct {
	state     BreakerState
	lastErr   error
	openSince time.Time
	stats     breakerStats
}

func (b *breaker) snapshot() breakerSnapshot {
	b.mu.Lock()
	defer b.mu.Unlock()
	return breakerSnapshot{state: b.state, lastErr: b.lastErr, openSince: b.openSince, stats: b.stats}
}

// probeCtx is the context of one background probe: its own budget, detached
// from any caller.
func probeCtx(budget time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), budget)
}
