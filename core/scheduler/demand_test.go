package scheduler

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/core/nodes"
)

// demandPool is a fakePool told what the queue waits for.
type demandPool struct {
	*fakePool
	mu   sync.Mutex
	last [][]string
	told chan struct{}
}

func (p *demandPool) Demand(waiting [][]string) {
	p.mu.Lock()
	p.last = waiting
	p.mu.Unlock()
	select {
	case p.told <- struct{}{}:
	default:
	}
}

func (p *demandPool) waitFor(t *testing.T, want [][]string) {
	t.Helper()
	deadline := time.After(guard)
	for {
		p.mu.Lock()
		got := p.last
		p.mu.Unlock()
		if slices.EqualFunc(got, want, slices.Equal[[]string]) {
			return
		}
		select {
		case <-p.told:
		case <-deadline:
			t.Fatalf("the pool was told %v, want %v", got, want)
		}
	}
}

// A pool that is a Demander is told the label sets that wait, one per
// set, and told again when they stop waiting.
func TestDemandPosted(t *testing.T) {
	pool := &demandPool{fakePool: newFakePool(), told: make(chan struct{}, 1)}
	pool.add("n1", 1, "linux")
	s := New(pool)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	run := func(*nodes.Node) {}
	s.Enqueue(&Item{Key: "a#1", Labels: []string{"gpu"}, Run: run})
	s.Enqueue(&Item{Key: "a#2", Labels: []string{"gpu"}, Run: run})
	s.Enqueue(&Item{Key: "b#1", Labels: []string{"arm", "linux"}, Run: run})
	pool.waitFor(t, [][]string{{"gpu"}, {"arm", "linux"}})
	s.Remove("b#1")
	pool.waitFor(t, [][]string{{"gpu"}})
	s.Remove("a#1")
	s.Remove("a#2")
	pool.waitFor(t, nil)
}
