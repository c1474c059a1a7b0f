// Package scheduler holds the build queue: a queued build waits for a free
// executor on a node whose labels cover the job's labels, first in, first
// out among builds asking for the same label set.
package scheduler

import (
	"context"
	"sort"
	"strings"
	"sync"

	"github.com/conveyor-ci/conveyor/core/nodes"
)

// Pool hands out executors.
type Pool interface {
	// Acquire takes a free executor on a node covering labels.
	Acquire(labels []string) (*nodes.Node, bool)
	// Release gives the executor back.
	Release(n *nodes.Node)
	// Changed is closed at the next change of capacity.
	Changed() <-chan struct{}
}

// Demander is told, after every dispatch, the label sets that queued
// builds wait for (one per set, in queue order), so that capacity started
// on demand can be launched for them (nodes.Manager is one). A Pool that
// implements it is told.
type Demander interface {
	Demand(waiting [][]string)
}

// Item is a queued build.
type Item struct {
	// Key identifies the item ("job#12").
	Key string
	// Labels must all be carried by the node that runs it.
	Labels []string
	// Run runs the item on the node; the executor is released when it returns.
	Run func(n *nodes.Node)
}

// Scheduler is the queue.
type Scheduler struct {
	pool Pool

	mu    sync.Mutex
	queue []*Item
	wake  chan struct{}
	wg    sync.WaitGroup
}

// New returns an empty queue drawing executors from pool.
func New(pool Pool) *Scheduler {
	return &Scheduler{pool: pool, wake: make(chan struct{}, 1)}
}

// Enqueue appends it to the queue.
func (s *Scheduler) Enqueue(it *Item) {
	s.mu.Lock()
	s.queue = append(s.queue, it)
	s.mu.Unlock()
	s.poke()
}

func (s *Scheduler) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Remove takes the item with key out of the queue; false if it is not
// queued (it already started, say).
func (s *Scheduler) Remove(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, it := range s.queue {
		if it.Key == key {
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			s.poke() // what the queue waits for changed
			return true
		}
	}
	return false
}

// Queued returns the keys waiting, in order.
func (s *Scheduler) Queued() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, len(s.queue))
	for i, it := range s.queue {
		keys[i] = it.Key
	}
	return keys
}

// Run dispatches queued items until ctx ends, then waits for the running
// ones to return.
func (s *Scheduler) Run(ctx context.Context) {
	defer s.wg.Wait()
	for {
		changed := s.pool.Changed()
		s.dispatch()
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-s.wake:
		}
	}
}

// dispatch starts every item that can start now. Once an item of a label
// set cannot be placed, later items of the same set wait behind it.
func (s *Scheduler) dispatch() {
	s.mu.Lock()
	defer s.mu.Unlock()
	blocked := map[string]bool{}
	var waiting [][]string
	if d, ok := s.pool.(Demander); ok {
		defer func() { d.Demand(waiting) }()
	}
	for i := 0; i < len(s.queue); {
		it := s.queue[i]
		key := labelKey(it.Labels)
		if blocked[key] {
			i++
			continue
		}
		n, ok := s.pool.Acquire(it.Labels)
		if !ok {
			blocked[key] = true
			waiting = append(waiting, it.Labels)
			i++
			continue
		}
		s.queue = append(s.queue[:i], s.queue[i+1:]...)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.pool.Release(n)
			it.Run(n)
		}()
	}
}

func labelKey(labels []string) string {
	l := append([]string(nil), labels...)
	sort.Strings(l)
	return strings.Join(l, "\x00")
}
