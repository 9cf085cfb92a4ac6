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
// fallback while the own primary is unavailable). Both also have Incr, the
// one-request form of IncrMany.
type Counter interface {
	// IncrMany counts one event for each request and returns their counts,
	// in request order. A request repeated in reqs counts twice. On error
	// nothing in reqs was counted (as far as the caller can tell: see
	// Store.IncrMany).
	IncrMany(ctx context.Context, reqs []IncrReq) ([]Count, error)
}

// IncrReq asks for one event to be counted for Subject in the current fixed
// window of length Window.
type IncrReq struct {
	Subject string
	Window  time.Duration
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

// describeReqs names the requests in an error.
func describeReqs(reqs []IncrReq) string {
	switch len(reqs) {
	case 0:
		return "nothing"
	case 1:
		return reqs[0].Subject
	}
	return fmt.Sprintf("%s and %d more", reqs[0].Subject, len(reqs)-1)
}

// reqWindow is one request placed in its window.
type reqWindow struct {
	start, prev int64
	elapsed     float64
}

func placeReqs(now time.Time, reqs []IncrReq) ([]reqWindow, error) {
	ws := make([]reqWindow, len(reqs))
	for i, r := range reqs {
		start, prev, elapsed, err := windowOf(now, r.Window)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.Subject, err)
		}
		ws[i] = reqWindow{start, prev, elapsed}
	}
	return ws, nil
}

// Incr counts one event for subject in the current window at this site and
// returns the counts summed over all sites: IncrMany with one request.
func (s *Store) Incr(ctx context.Context, subject string, window time.Duration) (Count, error) {
	cs, err := s.IncrMany(ctx, []IncrReq{{Subject: subject, Window: window}})
	if err != nil {
		return Count{}, err
	}
	return cs[0], nil
}

// IncrMany counts one event for each request in the current window of its
// own length at this site and returns the counts summed over all sites, in
// request order. Every increment and its expiry (2 windows, set once) go to
// the own primary in one pipeline while each peer replica is read with one
// MGET, all instances in parallel and within one call budget: the cost of a
// request is one round trip however many subjects it counts. A peer that
// does not answer contributes its last known count for each window (or 0)
// and marks every result Degraded. If the own primary does not answer, the
// error wraps ErrUnavailable and nothing was counted — unless a frozen
// primary executes the pipeline when it wakes (at-least-once) — so count in
// a MemCounter meanwhile. A window under 1ms is an error before any I/O.
func (s *Store) IncrMany(ctx context.Context, reqs []IncrReq) ([]Count, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	ws, err := placeReqs(s.now(), reqs)
	if err != nil {
		return nil, fmt.Errorf("state: incr %w", err)
	}
	peerCounts := make([][]SiteCount, len(s.peers)) // peer -> request -> counts
	peerMissing := make([]bool, len(s.peers))
	own := make([]SiteCount, len(reqs))
	var ownErr error
	s.fanOut(func(i int, in *instance) {
		if i == 0 {
			ownErr = in.call(ctx, in.fast, s.opts.Timeout, func(ctx context.Context, c *redis.Client) error {
				incrs := make([]*redis.IntCmd, len(reqs))
				gets := make([]*redis.StringCmd, len(reqs))
				_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
					for j, r := range reqs {
						cur := counterKey(in.site, r.Subject, ws[j].start)
						incrs[j] = p.Incr(ctx, cur)
						p.Do(ctx, "pexpire", cur, (2 * r.Window).Milliseconds(), "nx")
						gets[j] = p.Get(ctx, counterKey(in.site, r.Subject, ws[j].prev))
					}
					return nil
				})
				if err != nil && !errors.Is(err, redis.Nil) {
					return err
				}
				for j := range reqs {
					own[j] = SiteCount{Cur: incrs[j].Val(), Prev: parseCount(gets[j].Val())}
				}
				return nil
			})
			return
		}
		keys := make([]string, 0, 2*len(reqs))
		for j, r := range reqs {
			keys = append(keys, counterKey(in.site, r.Subject, ws[j].start), counterKey(in.site, r.Subject, ws[j].prev))
		}
		var vals []any
		err := in.call(ctx, in.fast, s.opts.Timeout, func(ctx context.Context, c *redis.Client) error {
			var err error
			vals, err = c.MGet(ctx, keys...).Result()
			return err
		})
		counts := make([]SiteCount, len(reqs))
		for j, r := range reqs {
			key := peerCacheKey{site: in.site, subject: r.Subject, window: r.Window}
			if err != nil {
				counts[j] = s.peerCache.get(key, ws[j].start, ws[j].prev)
				continue
			}
			counts[j] = SiteCount{Cur: parseAny(vals, 2*j), Prev: parseAny(vals, 2*j+1)}
			s.peerCache.put(key, ws[j].start, counts[j], ws[j].start+2*r.Window.Milliseconds())
		}
		peerCounts[i-1] = counts
		peerMissing[i-1] = err != nil
	})
	if ownErr != nil {
		return nil, fmt.Errorf("state: incr %s: %w", describeReqs(reqs), ownErr)
	}
	degraded := false
	for _, m := range peerMissing {
		degraded = degraded || m
	}
	out := make([]Count, len(reqs))
	peers := make([]SiteCount, len(s.peers))
	for j := range reqs {
		for p := range peers {
			peers[p] = peerCounts[p][j]
		}
		out[j] = SumCounts(own[j], peers, ws[j].elapsed, degraded)
	}
	return out, nil
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
// and Count results as Store.IncrMany (Total = Local: one process knows only
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

// Incr counts one event for subject in the current window: IncrMany with
// one request.
func (m *MemCounter) Incr(ctx context.Context, subject string, window time.Duration) (Count, error) {
	cs, err := m.IncrMany(ctx, []IncrReq{{Subject: subject, Window: window}})
	if err != nil {
		return Count{}, err
	}
	return cs[0], nil
}

// IncrMany counts one event for each request in its current window, all
// under one lock. The error is non-nil only for a window under 1ms, and
// then nothing was counted.
func (m *MemCounter) IncrMany(_ context.Context, reqs []IncrReq) ([]Count, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	now := m.clock()
	ws, err := placeReqs(now, reqs)
	if err != nil {
		return nil, fmt.Errorf("state: mem incr %w", err)
	}
	out := make([]Count, len(reqs))
	m.mu.Lock()
	defer m.mu.Unlock()
	for j, r := range reqs {
		k := memKey{r.Subject, r.Window, ws[j].start}
		cur, ok := m.m[k]
		cur++
		m.m[k] = cur
		p := m.m[memKey{r.Subject, r.Window, ws[j].prev}]
		if !ok {
			m.expiry[k] = ws[j].start + 2*r.Window.Milliseconds()
			m.inserts++
			if m.inserts%sweepEvery == 0 {
				m.sweepLocked(now.UnixMilli())
			}
		}
		out[j] = SumCounts(SiteCount{Cur: cur, Prev: p}, nil, ws[j].elapsed, false)
	}
	return out, nil
}

func (m *MemCounter) sweepLocked(nowMs int64) {
	for key, exp := range m.expiry {
		if exp <= nowMs {
			delete(m.m, key)
			delete(m.expiry, key)
		}
	}
}

// Len is the number of windows held (for tests and metrics).
func (m *MemCounter) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.m)
}
