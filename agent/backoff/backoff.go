// Package backoff computes exponential retry delays with jitter.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Backoff yields delays doubling from Min to Max, each drawn at random
// from its upper half so that agents restarted together spread out. The
// zero value is not usable; see New.
type Backoff struct {
	min, max, next time.Duration
}

// New returns a backoff from min doubling to max.
func New(min, max time.Duration) *Backoff {
	if min <= 0 {
		min = time.Millisecond
	}
	if max < min {
		max = min
	}
	return &Backoff{min: min, max: max, next: min}
}

// Next returns the next delay, in [d/2, d] for a nominal delay d that
// doubles at each call up to the maximum.
func (b *Backoff) Next() time.Duration {
	d := b.next
	b.next = min(b.next*2, b.max)
	return d/2 + rand.N(d/2+1)
}

// Reset starts again from the minimum, after a success.
func (b *Backoff) Reset() { b.next = b.min }
