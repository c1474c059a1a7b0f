package server

import (
	"net/http/httptest"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// TestFailureLimiterFullTable: with the table full of addresses still
// counting failures, a new address is not let through untracked (a brute
// force spread over more addresses than the table holds would escape the
// limit): every address outside the table shares one overflow bucket. The
// addresses in the table keep their own buckets, and once their buckets
// refill they are dropped and new addresses are tracked again.
func TestFailureLimiterFullTable(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := newFailureLimiter(func() time.Time { return now })
	addr := func(i int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
	}
	for i := 0; i < maxTrackedAddrs; i++ {
		l.fail(addr(i))
	}
	attacker := netip.MustParsePrefix("192.0.2.7/32")
	for i := 0; i < failureBurst; i++ {
		if d := l.wait(attacker); d != 0 {
			t.Fatalf("attempt %d from a new address with the table full: wait %v, want 0", i, d)
		}
		l.fail(attacker)
	}
	if d := l.wait(attacker); d != failureRate {
		t.Errorf("a new address after %d failures with the table full: wait %v, want %v", failureBurst, d, failureRate)
	}
	if d := l.wait(netip.MustParsePrefix("192.0.2.8/32")); d != failureRate {
		t.Errorf("another new address with the table full: wait %v, want %v (the shared overflow bucket)", d, failureRate)
	}
	if d := l.wait(addr(0)); d != 0 {
		t.Errorf("an address in the table: wait %v, want 0", d)
	}
	if n := len(l.buckets); n != maxTrackedAddrs {
		t.Errorf("%d addresses tracked, want %d", n, maxTrackedAddrs)
	}

	// Refilled buckets carry nothing: they make room.
	now = now.Add(failureBurst * failureRate)
	l.fail(attacker)
	if n := len(l.buckets); n != 1 {
		t.Errorf("after every bucket refilled, %d addresses tracked, want 1", n)
	}
	if d := l.wait(netip.MustParsePrefix("192.0.2.8/32")); d != 0 {
		t.Errorf("a new address once the table has room: wait %v, want 0", d)
	}
}

// TestClientKeyIgnoresHeaders: the limiter keys on the peer address; the
// headers a client sets (X-Forwarded-For, X-Real-IP, Forwarded) do not
// change the key, so rotating them does not reset the limit.
func TestClientKeyIgnoresHeaders(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := newFailureLimiter(func() time.Time { return now })
	want := netip.MustParsePrefix("192.0.2.7/32")
	for i := 0; i <= failureBurst; i++ {
		r := httptest.NewRequest("GET", "/v1/nodes", nil)
		r.RemoteAddr = "192.0.2.7:40000"
		spoofed := "203.0.113." + strconv.Itoa(i+1)
		r.Header.Set("X-Forwarded-For", spoofed)
		r.Header.Set("X-Real-IP", spoofed)
		r.Header.Set("Forwarded", "for="+spoofed)
		key := clientKey(r)
		if key != want {
			t.Fatalf("key with X-Forwarded-For %s: %v, want %v", spoofed, key, want)
		}
		if i < failureBurst {
			l.fail(key)
		} else if d := l.wait(key); d == 0 {
			t.Errorf("after %d failures under rotating X-Forwarded-For: not limited", failureBurst)
		}
	}
}
