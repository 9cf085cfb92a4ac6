package resolver

import (
	"testing"
	"time"
)

func TestCacheLRU(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1e9, 0)}
	c := newCache(2, clk.Now)
	k := func(n string) cacheKey { return cacheKey{n, 16} }
	a := &answer{ttl: time.Minute}
	c.put(k("a"), a)
	c.put(k("b"), a)
	c.get(k("a")) // a is now the most recently used
	c.put(k("c"), a)
	if c.get(k("b")) != nil || c.get(k("a")) == nil || c.get(k("c")) == nil {
		t.Error("the least recently used entry was not the one evicted")
	}
	c.put(k("z"), &answer{}) // TTL 0: not stored
	if c.get(k("z")) != nil {
		t.Error("an answer with TTL 0 was cached")
	}
	clk.Add(time.Minute)
	if c.get(k("a")) != nil || c.len() != 1 {
		t.Errorf("expired entry served, or not dropped (len %d)", c.len())
	}
	var off *cache
	off.put(k("a"), a)
	if off.get(k("a")) != nil || off.len() != 0 {
		t.Error("a nil cache stored something")
	}
}
