// Package demand decides when capacity that is started on demand is
// wanted and when it has been idle long enough to stop: the build queue
// posts the label sets its builds wait for on a Board, on-demand targets
// (a static node with availability "on_demand", a pool's machines) watch
// it, and an Idle timer tells a running target when it went without work
// for its idle timeout.
package demand

import (
	"slices"
	"sync"
	"time"
)

// Board holds the label sets that queued builds wait for (builds no
// running capacity can take now).
type Board struct {
	mu      sync.Mutex
	want    [][]string
	changed chan struct{}
}

// NewBoard returns an empty board.
func NewBoard() *Board { return &Board{changed: make(chan struct{})} }

// Post replaces what the queue waits for: one label set per waiting build
// (or per group of builds asking for the same labels). Watchers are told
// when it changed.
func (b *Board) Post(want [][]string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if slices.EqualFunc(b.want, want, slices.Equal[[]string]) {
		return
	}
	b.want = want
	close(b.changed)
	b.changed = make(chan struct{})
}

// Wanted reports whether a target that covers a label set (covers says
// whether it carries every label) could take a waiting build, and the
// channel closed at the board's next change.
func (b *Board) Wanted(covers func(labels []string) bool) (bool, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, w := range b.want {
		if covers(w) {
			return true, b.changed
		}
	}
	return false, b.changed
}

// Idle times a target's idleness: it fires once the target has had no
// work for its timeout since it last had some (or since Start).
type Idle struct {
	timeout time.Duration

	mu    sync.Mutex
	busy  int
	timer *time.Timer
	fired chan struct{}
	once  sync.Once
	since time.Time
}

// NewIdle returns a timer for a target with no work, counting from now.
func NewIdle(timeout time.Duration) *Idle {
	i := &Idle{timeout: timeout, fired: make(chan struct{}), since: time.Now()}
	i.timer = time.AfterFunc(timeout, i.fire)
	return i
}

func (i *Idle) fire() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.busy == 0 {
		i.once.Do(func() { close(i.fired) })
	}
}

// Busy counts one more piece of work on the target: the timer stops.
func (i *Idle) Busy() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.busy++
	i.timer.Stop()
}

// Done counts one piece of work ended: with none left, the timeout
// counts again from now.
func (i *Idle) Done() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.busy > 0 {
		i.busy--
	}
	if i.busy == 0 {
		i.since = time.Now()
		i.timer.Reset(i.timeout)
	}
}

// Since is when the target last became idle (zero while it is busy).
func (i *Idle) Since() time.Time {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.busy > 0 {
		return time.Time{}
	}
	return i.since
}

// Expired is closed once the target was idle for the timeout.
func (i *Idle) Expired() <-chan struct{} { return i.fired }

// Stop releases the timer.
func (i *Idle) Stop() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.timer.Stop()
}
