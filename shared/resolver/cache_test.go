package resolver

import (
	"testing"
	"time"
)

func TestCacheLRU(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1e9, 0)}
	c := newCache(2, 0, clk.Now)
	k := func(n string) cacheKey { return cacheKey{n, 16} }
	a := &answer{ttl: time.Minute}
	c.put(k("a"), a)
	c.put(k("b"), a)
	c.get(k("a")) // a is now the most recently used
	c.put(k("c"), a)
	if get(c, k("b")) != nil || get(c, k("a")) == nil || get(c, k("c")) == nil {
		t.Error("the least recently used entry was not the one evicted")
	}
	c.put(k("z"), &answer{}) // TTL 0: not stored
	if get(c, k("z")) != nil {
		t.Error("an answer with TTL 0 was cached")
	}
	clk.Add(time.Minute)
	if get(c, k("a")) != nil || c.len() != 1 {
		t.Errorf("expired entry served, or not dropped (len %d)", c.len())
	}
	var off *cache
	off.put(k("a"), a)
	if get(off, k("a")) != nil || off.len() != 0 {
		t.Error("a nil cache stored something")
	}
}

// get is cache.get for fresh answers only.
func get(c *cache, k cacheKey) *answer {
	if a, fresh := c.get(k); fresh {
		return a
	}
	return nil
}

// TestCacheServesStale: past its TTL an answer is stale, not gone, for
// staleFor more; then it is dropped.
func TestCacheServesStale(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1e9, 0)}
	c := newCache(10, time.Hour, clk.Now)
	k := cacheKey{"a.example.", 16}
	a := &answer{ttl: time.Minute}
	c.put(k, a)
	for _, tc := range []struct {
		after        time.Duration
		found, fresh bool
	}{
		{0, true, true}, {59 * time.Second, true, true}, {time.Minute, true, false},
		{time.Hour + 59*time.Second, true, false}, {time.Hour + time.Minute, false, false},
	} {
		clk.now = time.Unix(1e9, 0).Add(tc.after)
		got, fresh := c.get(k)
		if (got != nil) != tc.found || fresh != tc.fresh {
			t.Errorf("after %v: found %v fresh %v, want %v %v", tc.after, got != nil, fresh, tc.found, tc.fresh)
		}
	}
	if c.len() != 0 {
		t.Errorf("%d entries left past the stale time", c.len())
	}
}
