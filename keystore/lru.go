package keystore

import (
	"container/list"
	"sync"
	"sync/atomic"
	"time"
)

// lru is a bounded cache safe for concurrent use, whose entries are fresh for
// ttl and then stale for grace more: a stale entry is served only when a
// refresh fails because the root or the storage is unavailable. When full,
// the least recently used entry is evicted, so memory is bounded by size, not
// by the number of tenants.
//
// Written on container/list rather than a cache library (golang-lru's
// simplelru): it needs an entry's expiry changed in place (postpone, swap)
// and removal by predicate over the map without copying its keys, which a
// tenant's change on another replica triggers.
type lru[K comparable, V any] struct {
	// evictions counts entries dropped to make room.
	evictions atomic.Uint64
	mu        sync.Mutex
	size      int
	ttl       time.Duration
	grace     time.Duration
	now       func() time.Time
	ll        *list.List // front = most recently used
	items     map[K]*list.Element
}

type lruEntry[K comparable, V any] struct {
	key        K
	value      V
	freshUntil time.Time
	staleUntil time.Time
}

func newLRU[K comparable, V any](size int, ttl, grace time.Duration, now func() time.Time) *lru[K, V] {
	return &lru[K, V]{size: size, ttl: ttl, grace: grace, now: now, ll: list.New(), items: make(map[K]*list.Element)}
}

// get returns the value under k and whether it is still fresh. ok is false
// when there is no entry or it is past its grace.
func (c *lru[K, V]) get(k K) (v V, fresh, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, found := c.items[k]
	if !found {
		return v, false, false
	}
	e := el.Value.(*lruEntry[K, V])
	now := c.now()
	if !now.Before(e.staleUntil) {
		c.ll.Remove(el)
		delete(c.items, k)
		return v, false, false
	}
	c.ll.MoveToFront(el)
	return e.value, now.Before(e.freshUntil), true
}

// put stores v under k as fresh, evicting the least recently used entry when full.
func (c *lru[K, V]) put(k K, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.putLocked(k, v, time.Time{})
}

// putLocked is put with c.mu held, the entry's freshness and grace ending
// by limit at the latest (no limit when zero).
func (c *lru[K, V]) putLocked(k K, v V, limit time.Time) {
	now := c.now()
	fresh, stale := now.Add(c.ttl), now.Add(c.ttl+c.grace)
	if !limit.IsZero() {
		fresh, stale = minTime(fresh, limit), minTime(stale, limit)
	}
	if el, ok := c.items[k]; ok {
		e := el.Value.(*lruEntry[K, V])
		e.value, e.freshUntil, e.staleUntil = v, fresh, stale
		c.ll.MoveToFront(el)
		return
	}
	c.items[k] = c.ll.PushFront(&lruEntry[K, V]{key: k, value: v, freshUntil: fresh, staleUntil: stale})
	for c.ll.Len() > c.size {
		last := c.ll.Back()
		c.ll.Remove(last)
		delete(c.items, last.Value.(*lruEntry[K, V]).key)
		c.evictions.Add(1)
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// until is when the entry under k stops serving (its grace's end), if
// there is one.
func (c *lru[K, V]) until(k K) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[k]
	if !ok {
		return time.Time{}, false
	}
	return el.Value.(*lruEntry[K, V]).staleUntil, true
}

// upsertIf stores v under k as fresh unless an entry is there that keep
// says must stay (for example, a newer version than v), and only if still
// (when not nil) holds, its freshness and grace ending by limit at the
// latest (none when zero). The checks and the write are one step: no
// other write comes between them.
func (c *lru[K, V]) upsertIf(k K, v V, keep func(old V) bool, still func() bool, limit time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if still != nil && !still() {
		return
	}
	if el, ok := c.items[k]; ok && keep(el.Value.(*lruEntry[K, V]).value) {
		return
	}
	c.putLocked(k, v, limit)
}

// upsertKnown is upsertIf (without its still) for a key that is present,
// or absent but for which absent() holds (checked under the cache's lock):
// a marker that would otherwise take a live entry's place goes only where
// it can matter.
func (c *lru[K, V]) upsertKnown(k K, v V, keep func(old V) bool, absent func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		if !keep(el.Value.(*lruEntry[K, V]).value) {
			c.putLocked(k, v, time.Time{})
		}
		return
	}
	if absent() {
		c.putLocked(k, v, time.Time{})
	}
}

// swap replaces the value under k by f's result, keeping the entry's
// expiry, when f returns true. It reports whether it did.
func (c *lru[K, V]) swap(k K, f func(old V) (V, bool)) bool { return c.replace(k, f, false) }

// renew is swap that also makes the entry fresh again for the TTL, never
// past the end of its grace, which it keeps: for an entry checked and
// found unchanged, which was not made anew.
func (c *lru[K, V]) renew(k K, f func(old V) (V, bool)) bool { return c.replace(k, f, true) }

// replace is swap, and renew when fresh is set.
func (c *lru[K, V]) replace(k K, f func(old V) (V, bool), fresh bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, found := c.items[k]
	if !found {
		return false
	}
	e := el.Value.(*lruEntry[K, V])
	v, ok := f(e.value)
	if ok {
		e.value = v
		if fresh {
			e.freshUntil = minTime(c.now().Add(c.ttl), e.staleUntil)
		}
	}
	return ok
}

// postpone makes the stale entry under k count as fresh for d more (but never
// past its grace), so an outage costs one failed refresh per d, not one per
// request. It does nothing if the entry is gone or was replaced. It reports
// whether the entry was stale until now: true for the first of the callers
// that met one failed refresh, false for the others.
func (c *lru[K, V]) postpone(k K, d time.Duration) (first bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		e := el.Value.(*lruEntry[K, V])
		now := c.now()
		first = !now.Before(e.freshUntil)
		t := now.Add(d)
		if t.After(e.staleUntil) {
			t = e.staleUntil
		}
		if t.After(e.freshUntil) {
			e.freshUntil = t
		}
	}
	return first
}

// remove drops k.
func (c *lru[K, V]) remove(k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		c.ll.Remove(el)
		delete(c.items, k)
	}
}

// removeValue drops k if its value is v (not one put since).
func (c *lru[K, V]) removeValue(k K, v V, same func(a, b V) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok && same(el.Value.(*lruEntry[K, V]).value, v) {
		c.ll.Remove(el)
		delete(c.items, k)
	}
}

// removeIf drops every entry whose key satisfies pred.
func (c *lru[K, V]) removeIf(pred func(K) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, el := range c.items {
		if pred(k) {
			c.ll.Remove(el)
			delete(c.items, k)
		}
	}
}

// removeWhere drops every entry for which pred holds.
func (c *lru[K, V]) removeWhere(pred func(K, V) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, el := range c.items {
		if pred(k, el.Value.(*lruEntry[K, V]).value) {
			c.ll.Remove(el)
			delete(c.items, k)
		}
	}
}

// staleAll makes every fresh entry stale and calls mark on each value, in
// one step under the cache's lock.
func (c *lru[K, V]) staleAll(mark func(V)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	for _, el := range c.items {
		e := el.Value.(*lruEntry[K, V])
		if e.freshUntil.After(now) {
			e.freshUntil = now
		}
		mark(e.value)
	}
}
