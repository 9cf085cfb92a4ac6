package resolver

import (
	"container/list"
	"sync"
	"time"
)

// cacheKey is a question: the lower-cased fully qualified name and the
// record type (the class is always IN).
type cacheKey struct {
	name  string
	qtype uint16
}

// cacheEntry is an answer kept until expires.
type cacheEntry struct {
	key     cacheKey
	ans     *answer
	expires time.Time
}

// cache is an LRU cache bounded in entries. An entry is fresh until the
// TTL its answer carries (answer.ttl, already capped) runs out on the
// clock, then stale for staleFor more (RFC 8767: served when no fresh
// answer can be had at once), then dropped; the least recently used entry
// goes first when the cache is full. Entries past their stale time are
// dropped when they are looked up or reach the LRU end.
type cache struct {
	mu       sync.Mutex
	max      int
	staleFor time.Duration
	clock    func() time.Time
	ll       *list.List // front: most recently used; elements hold *cacheEntry
	items    map[cacheKey]*list.Element
}

func newCache(size int, staleFor time.Duration, clock func() time.Time) *cache {
	return &cache{max: size, staleFor: max(staleFor, 0), clock: clock, ll: list.New(), items: make(map[cacheKey]*list.Element)}
}

// get returns the entry for k and whether it is fresh; nil when there is
// none, fresh or stale.
func (c *cache) get(k cacheKey) (a *answer, fresh bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[k]
	if !ok {
		return nil, false
	}
	e := el.Value.(*cacheEntry)
	now := c.clock()
	if !now.Before(e.expires.Add(c.staleFor)) {
		c.ll.Remove(el)
		delete(c.items, k)
		return nil, false
	}
	c.ll.MoveToFront(el)
	return e.ans, now.Before(e.expires)
}

// put stores a for its TTL; a zero TTL is not stored (RFC 1035 §3.2.1:
// TTL 0 means "use for this transaction only").
func (c *cache) put(k cacheKey, a *answer) {
	if c == nil || a.ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	exp := c.clock().Add(a.ttl)
	if el, ok := c.items[k]; ok {
		e := el.Value.(*cacheEntry)
		e.ans, e.expires = a, exp
		c.ll.MoveToFront(el)
		return
	}
	c.items[k] = c.ll.PushFront(&cacheEntry{key: k, ans: a, expires: exp})
	for c.ll.Len() > c.max {
		el := c.ll.Back()
		c.ll.Remove(el)
		delete(c.items, el.Value.(*cacheEntry).key)
	}
}

// len is the number of entries (some may have expired).
func (c *cache) len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}
