package demand

import (
	"slices"
	"testing"
	"time"
)

func TestBoardWanted(t *testing.T) {
	b := NewBoard()
	covers := func(have ...string) func([]string) bool {
		return func(want []string) bool {
			for _, l := range want {
				if !slices.Contains(have, l) {
					return false
				}
			}
			return true
		}
	}
	if ok, _ := b.Wanted(covers("linux")); ok {
		t.Fatal("an empty board wants something")
	}
	_, changed := b.Wanted(covers("linux"))
	b.Post([][]string{{"linux", "gpu"}})
	select {
	case <-changed:
	default:
		t.Fatal("Post did not tell the watchers")
	}
	for _, tc := range []struct {
		have []string
		want bool
	}{
		{[]string{"linux"}, false},
		{[]string{"linux", "gpu"}, true},
		{[]string{"gpu", "linux", "arm"}, true},
	} {
		if got, _ := b.Wanted(covers(tc.have...)); got != tc.want {
			t.Errorf("Wanted(%v) = %v, want %v", tc.have, got, tc.want)
		}
	}
	_, changed = b.Wanted(covers())
	b.Post([][]string{{"linux", "gpu"}})
	select {
	case <-changed:
		t.Fatal("posting the same wants told the watchers")
	default:
	}
}

func TestIdleFiresOnlyWhenIdle(t *testing.T) {
	const timeout = 50 * time.Millisecond
	i := NewIdle(timeout)
	defer i.Stop()
	i.Busy()
	select {
	case <-i.Expired():
		t.Fatal("a busy target expired")
	case <-time.After(4 * timeout):
	}
	if !i.Since().IsZero() {
		t.Error("a busy target has an idle since")
	}
	start := time.Now()
	i.Done()
	select {
	case <-i.Expired():
		if d := time.Since(start); d < timeout {
			t.Errorf("expired after %v, before the timeout %v", d, timeout)
		}
	case <-time.After(time.Minute):
		t.Fatal("an idle target never expired")
	}
}
