package state

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Counter counts events per subject in fixed windows. Store counts across
// sites; MemCounter counts in process memory (standalone mode, and the
// fallback while the own primary is unavailable).
type Counter interface {
	Incr(ctx context.Context, subject string, window time.Duration) (Count, error)
}

var (
	_ Counter = (*Store)(nil)
	_ Counter = (*MemCounter)(nil)
)

// windowOf places now in its fixed window: start of the current window,
// start of the previous one (Unix ms) and the fraction of the current one
// gone by.
func windowOf(now time.Time, window time.Duration) (start, prev int64, elapsed float64, err error) {
	w := window.Milliseconds()
	if w <= 0 {
		return 0, 0, 0, fmt.Errorf("window %v: must be at least 1ms", window)
	}
	ms := now.UnixMilli()
	start = ms - ms%w
	return start, start - w, float64(ms-start) / float64(w), nil
}

func counterKey(site, subject string, start int64) string {
	return sitePrefix(site) + "rl:" + subject + ":" + strconv.FormatInt(start, 10)
}

// Incr counts one event for subject in the current window at this site and
// returns the counts summed over all sites. The increment and its expiry
// (2 windows, set once) go to the own primary in one pipeline while every
// peer replica is read in parallel, all within the call budget. A peer that
// does not answer contributes its last known count for the window (or 0)
// and marks the result Degraded. If the own primary does not answer, the
// error wraps ErrUnavailable and nothing was counted: count in a MemCounter
// meanwhile.
func (s *Store) Incr(ctx context.Context, subject string, window time.Duration) (Count, error) {
	start, prev, elapsed, err := windowOf(s.now(), window)
	if err != nil {
		return Count{}, fmt.Errorf("state: incr %s: %w", subject, err)
	}
	peerCounts := make([]SiteCount, len(s.peers))
	peerMissing := make([]bool, len(s.peers))
	var own SiteCount
	var ownErr error
	s.fanOut(func(i int, in *instance) {
		cur, prv := counterKey(in.site, subject, start), counterKey(in.site, subject, prev)
		if i == 0 {
			ownErr = in.call(ctx, in.fast, s.opts.Timeout, func(ctx context.Context, c *redis.Client) error {
				var incr *redis.IntCmd
				var get *redis.StringCmd
				_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
					incr = p.Incr(ctx, cur)
					p.Do(ctx, "pexpire", cur, (2 * window).Milliseconds(), "nx")
					get = p.Get(ctx, prv)
					return nil
				})
				if err != nil && !errors.Is(err, redis.Nil) {
					return err
				}
				own = SiteCount{Cur: incr.Val(), Prev: parseCount(get.Val())}
				return nil
			})
			return
		}
		var vals []any
		err := in.call(ctx, in.fast, s.opts.Timeout, func(ctx context.Context, c *redis.Client) error {
			var err error
			vals, err = c.MGet(ctx, cur, prv).Result()
			return err
		})
		key := peerCacheKey{site: in.site, subject: subject, window: window}
		if err != nil {
			peerCounts[i-1] = s.peerCache.get(key, start, prev)
			peerMissing[i-1] = true
			return
		}
		sc := SiteCount{Cur: parseAny(vals, 0), Prev: parseAny(vals, 1)}
		peerCounts[i-1] = sc
		s.peerCache.put(key, start, sc, start+2*window.Milliseconds())
	})
	if ownErr != nil {
		return Count{}, fmt.Errorf("state: incr %s: %w", subject, ownErr)
	}
	degraded := false
	for _, m := range peerMissing {
		degraded = degraded || m
	}
	return SumCounts(own, peerCounts, elapsed, degraded), nil
}

func parseCount(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

func parseAny(vals []any, i int) int64 {
	if i >= len(vals) {
		return 0
	}
	if s, ok := vals[i].(string); ok {
		return parseCount(s)
	}
	return 0
}

// peerCountCache remembers the last counts read from each peer, so a peer
// that stops answering contributes what it had counted rather than 0.
type peerCountCache struct {
	mu      sync.Mutex
	m       map[peerCacheKey]peerCacheEntry
	inserts int
}

type peerCacheKey struct {
	site, subject string
	window        time.Duration
}

type peerCacheEntry struct {
	start  int64 // window start the counts belong to
	counts SiteCount
	expiry int64 // Unix ms after which the entry is useless
}

func newPeerCountCache() *peerCountCache {
	return &peerCountCache{m: make(map[peerCacheKey]peerCacheEntry)}
}

// get returns the best guess for a silent peer in window start: its last
// known counts for that window; if what we know is the window before, that
// count becomes the previous one (the current is unknown: 0).
func (c *peerCountCache) get(k peerCacheKey, start, prev int64) SiteCount {
	c.mu.Lock()
	e, ok := c.m[k]
	c.mu.Unlock()
	switch {
	case !ok:
		return SiteCount{}
	case e.start == start:
		return e.counts
	case e.start == prev:
		return SiteCount{Prev: e.counts.Cur}
	}
	return SiteCount{}
}

// sweepEvery bounds the cache: every so many inserts, expired entries go.
const sweepEvery = 4096

func (c *peerCountCache) put(k peerCacheKey, start int64, sc SiteCount, expiry int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[k]; ok && e.start > start {
		return // a newer window already recorded (clock stepped back)
	}
	c.m[k] = peerCacheEntry{start: start, counts: sc, expiry: expiry}
	c.inserts++
	if c.inserts%sweepEvery == 0 {
		for key, e := range c.m {
			if e.expiry < start {
				delete(c.m, key)
			}
		}
	}
}

// MemCounter counts fixed windows in process memory, with the same windows
// and Count result as Store.Incr (Total = Local: one process knows only
// itself). Safe for concurrent use; expired windows are swept as it goes.
type MemCounter struct {
	clock func() time.Time

	mu      sync.Mutex
	m       map[memKey]int64
	expiry  map[memKey]int64
	inserts int
}

type memKey struct {
	subject string
	window  time.Duration
	start   int64
}

// NewMemCounter returns an empty counter reading time from clock (time.Now
// if nil).
func NewMemCounter(clock func() time.Time) *MemCounter {
	if clock == nil {
		clock = time.Now
	}
	return &MemCounter{clock: clock, m: make(map[memKey]int64), expiry: make(map[memKey]int64)}
}

// Incr counts one event for subject in the current window. The error is
// non-nil only for a window under 1ms.
func (m *MemCounter) Incr(_ context.Context, subject string, window time.Duration) (Count, error) {
	now := m.clock()
	start, prev, elapsed, err := windowOf(now, window)
	if err != nil {
		return Count{}, fmt.Errorf("state: mem incr %s: %w", subject, err)
	}
	k := memKey{subject, window, start}
	m.mu.Lock()
	cur, ok := m.m[k]
	cur++
	m.m[k] = cur
	p := m.m[memKey{subject, window, prev}]
	if !ok {
		m.expiry[k] = start + 2*window.Milliseconds()
		m.inserts++
		if m.inserts%sweepEvery == 0 {
			ms := now.UnixMilli()
			for key, exp := range m.expiry {
				if exp <= ms {
					delete(m.m, key)
					delete(m.expiry, key)
				}
			}
		}
	}
	m.mu.Unlock()
	return SumCounts(SiteCount{Cur: cur, Prev: p}, nil, elapsed, false), nil
}

// Len is the number of windows held (for tests and metrics).
func (m *MemCounter) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.m)
}
