package backoff

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := New(500*time.Millisecond, 30*time.Second)
	nominal := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for i, n := range nominal {
		if d := b.Next(); d < n/2 || d > n {
			t.Fatalf("delay %d: %s, want within [%s, %s]", i, d, n/2, n)
		}
	}
	b.Reset()
	if d := b.Next(); d < 250*time.Millisecond || d > 500*time.Millisecond {
		t.Fatalf("after Reset: %s", d)
	}
}
