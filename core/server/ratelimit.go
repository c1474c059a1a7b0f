package server

import (
	"math"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// Authentication failures are limited per client address with a token
// bucket: each wrong token (API bearer or UI sign-in) takes one from its
// address's bucket, which refills at failureRate; an address whose bucket
// is empty is answered 429 with Retry-After before its token is even
// looked at, so a brute force gets at most failureBurst guesses and then
// one per failureRate interval. Right tokens take nothing, and other
// addresses are not affected: a user is never locked out by someone
// else's failures from another address.
//
// The table holds at most maxTrackedAddrs addresses. When it is full, the
// buckets that refilled (which say nothing any more) are dropped; if it is
// still full, every address not in it shares one overflow bucket, so a
// brute force spread over more addresses than the table holds is still
// limited (as a whole), at the price of slowing down new addresses while
// it lasts.
const (
	failureBurst = 10
	failureRate  = 2 * time.Second // one more guess per interval
	// maxTrackedAddrs bounds the table; full buckets are dropped first.
	maxTrackedAddrs = 10000
)

// failureLimiter is the per-address bucket table.
type failureLimiter struct {
	burst float64
	every time.Duration
	now   func() time.Time

	mu      sync.Mutex
	buckets map[netip.Prefix]*bucket
	// overflow is the bucket of every address not in buckets while
	// buckets is full.
	overflow bucket
	// pruned is when prune last ran: a full table is swept at most once
	// per interval, not at every request.
	pruned time.Time
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newFailureLimiter(now func() time.Time) *failureLimiter {
	return &failureLimiter{burst: failureBurst, every: failureRate, now: now, buckets: map[netip.Prefix]*bucket{},
		overflow: bucket{tokens: failureBurst}}
}

// clientKey is the address a request's failures count against: the peer
// address (never a header a client could set), its /64 for IPv6, where
// one host commonly holds a whole prefix.
func clientKey(r *http.Request) netip.Prefix {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Prefix{}
	}
	a = a.Unmap()
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}

// refill brings b up to now; the lock is held.
func (l *failureLimiter) refill(b *bucket, now time.Time) {
	if el := now.Sub(b.at); el > 0 {
		b.tokens = math.Min(l.burst, b.tokens+float64(el)/float64(l.every))
		b.at = now
	}
}

// wait returns how long the address must wait before its next attempt is
// looked at, 0 when it may try now.
func (l *failureLimiter) wait(key netip.Prefix) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b := l.lookup(key, now)
	if b == nil {
		return 0
	}
	l.refill(b, now)
	if b.tokens >= 1 {
		return 0
	}
	return time.Duration((1 - b.tokens) * float64(l.every))
}

// fail takes one attempt from the address's bucket.
func (l *failureLimiter) fail(key netip.Prefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b := l.lookup(key, now)
	if b == nil {
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[key] = b
	}
	l.refill(b, now)
	b.tokens = math.Max(0, b.tokens-1)
}

// lookup returns key's bucket: its own, the overflow bucket when key has
// none and the table is full (after dropping the refilled buckets), or nil
// when key has none and may have one. The lock is held.
func (l *failureLimiter) lookup(key netip.Prefix, now time.Time) *bucket {
	if b, ok := l.buckets[key]; ok {
		return b
	}
	if len(l.buckets) >= maxTrackedAddrs && now.Sub(l.pruned) >= l.every {
		l.prune(now)
	}
	if len(l.buckets) >= maxTrackedAddrs {
		return &l.overflow
	}
	return nil
}

// reset forgets every address's failures.
func (l *failureLimiter) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	clear(l.buckets)
	l.overflow = bucket{tokens: l.burst}
}

// prune drops the buckets that refilled; the lock is held.
func (l *failureLimiter) prune(now time.Time) {
	l.pruned = now
	for k, b := range l.buckets {
		l.refill(b, now)
		if b.tokens >= l.burst {
			delete(l.buckets, k)
		}
	}
}

// retryAfter is d in whole seconds, at least 1, for Retry-After.
func retryAfter(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}
