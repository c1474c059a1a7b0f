package scheduler

import (
	"context"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/core/nodes"
)

// guard bounds every wait: it only turns a hang into a failure.
const guard = 10 * time.Second

// ---------------------------------------------------------------------------
// A Pool of fake nodes. The *nodes.Node values only serve as identities.

type fakeNode struct {
	node      *nodes.Node
	name      string
	labels    map[string]bool
	executors int
	busy      int
	maxBusy   int
}

type fakePool struct {
	mu      sync.Mutex
	nodes   []*fakeNode
	byNode  map[*nodes.Node]*fakeNode
	changed chan struct{}
	errs    []string
	// grantAfterFail, if set, gets one more executor right after the next
	// failed Acquire (capacity that appears in the middle of a dispatch).
	grantAfterFail string
}

func newFakePool() *fakePool {
	return &fakePool{byNode: map[*nodes.Node]*fakeNode{}, changed: make(chan struct{})}
}

// add adds a node carrying labels (its name included) with executors.
func (p *fakePool) add(name string, executors int, labels ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fn := &fakeNode{node: new(nodes.Node), name: name, labels: map[string]bool{name: true}, executors: executors}
	for _, l := range labels {
		fn.labels[l] = true
	}
	p.nodes = append(p.nodes, fn)
	p.byNode[fn.node] = fn
	p.notifyLocked()
}

// setExecutors changes a node's capacity.
func (p *fakePool) setExecutors(name string, executors int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.find(name).executors = executors
	p.notifyLocked()
}

func (p *fakePool) find(name string) *fakeNode {
	for _, fn := range p.nodes {
		if fn.name == name {
			return fn
		}
	}
	panic("no node " + name)
}

func (p *fakePool) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// Acquire takes an executor on the first node covering labels.
func (p *fakePool) Acquire(labels []string) (*nodes.Node, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, fn := range p.nodes {
		covers := true
		for _, l := range labels {
			covers = covers && fn.labels[l]
		}
		if covers && fn.busy < fn.executors {
			fn.busy++
			fn.maxBusy = max(fn.maxBusy, fn.busy)
			return fn.node, true
		}
	}
	if name := p.grantAfterFail; name != "" {
		p.grantAfterFail = ""
		p.find(name).executors++
		p.notifyLocked()
	}
	return nil, false
}

func (p *fakePool) Release(n *nodes.Node) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fn := p.byNode[n]
	switch {
	case fn == nil:
		p.errs = append(p.errs, fmt.Sprintf("Release of unknown node %p", n))
	case fn.busy == 0:
		p.errs = append(p.errs, "Release of an idle executor on "+fn.name)
	default:
		fn.busy--
	}
	p.notifyLocked()
}

func (p *fakePool) Changed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

// usage returns a node's busy and highest busy executor counts.
func (p *fakePool) usage(name string) (busy, maxBusy int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fn := p.find(name)
	return fn.busy, fn.maxBusy
}

func (p *fakePool) nameOf(n *nodes.Node) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if fn := p.byNode[n]; fn != nil {
		return fn.name
	}
	return fmt.Sprintf("unknown node %p", n)
}

// ---------------------------------------------------------------------------
// A scheduler whose items block until the test releases them.

type start struct {
	key  string
	node string
}

type harness struct {
	t       *testing.T
	pool    *fakePool
	s       *Scheduler
	started chan start

	mu      sync.Mutex
	release map[string]chan struct{}
	runs    map[string]int

	cancel  context.CancelFunc
	runDone chan struct{}
}

func newHarness(t *testing.T, pool *fakePool) *harness {
	h := &harness{t: t, pool: pool, s: New(pool), started: make(chan start, 1000),
		release: map[string]chan struct{}{}, runs: map[string]int{}}
	t.Cleanup(func() {
		if h.runDone != nil {
			h.cancel()
			h.releaseAll()
			select {
			case <-h.runDone:
			case <-time.After(guard):
				t.Errorf("Run did not return")
			}
		}
		pool.mu.Lock()
		defer pool.mu.Unlock()
		for _, e := range pool.errs {
			t.Errorf("pool: %s", e)
		}
	})
	return h
}

// item returns a queue item that reports its start and runs until released.
func (h *harness) item(key string, labels ...string) *Item {
	h.mu.Lock()
	rel := make(chan struct{})
	h.release[key] = rel
	h.mu.Unlock()
	return &Item{Key: key, Labels: labels, Run: func(n *nodes.Node) {
		h.mu.Lock()
		h.runs[key]++
		h.mu.Unlock()
		h.started <- start{key, h.pool.nameOf(n)}
		<-rel
	}}
}

func (h *harness) enqueue(key string, labels ...string) { h.s.Enqueue(h.item(key, labels...)) }

// run starts the dispatcher.
func (h *harness) run() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.runDone = cancel, make(chan struct{})
	go func() {
		defer close(h.runDone)
		h.s.Run(ctx)
	}()
}

// finish releases the item with key: its Run returns.
func (h *harness) finish(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	close(h.release[key])
	delete(h.release, key)
}

func (h *harness) releaseAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, c := range h.release {
		close(c)
		delete(h.release, k)
	}
}

// next waits for the next item to start.
func (h *harness) next() start {
	h.t.Helper()
	select {
	case s := <-h.started:
		return s
	case <-time.After(guard):
		h.t.Fatalf("no item started; queued: %v", h.s.Queued())
		panic("unreachable")
	}
}

// expectStart waits for the next start and requires it to be key on node.
func (h *harness) expectStart(key, node string) {
	h.t.Helper()
	if got, want := h.next(), (start{key, node}); got != want {
		h.t.Fatalf("started %+v, want %+v", got, want)
	}
}

// expectStarts waits for n starts, in any order (items placed in one
// dispatch start concurrently).
func (h *harness) expectStarts(want ...start) {
	h.t.Helper()
	var got []start
	for range want {
		got = append(got, h.next())
	}
	cmp := func(a, b start) int {
		if a.key != b.key {
			if a.key < b.key {
				return -1
			}
			return 1
		}
		if a.node < b.node {
			return -1
		}
		if a.node > b.node {
			return 1
		}
		return 0
	}
	slices.SortFunc(got, cmp)
	want = slices.Clone(want)
	slices.SortFunc(want, cmp)
	if !reflect.DeepEqual(got, want) {
		h.t.Fatalf("started %+v, want %+v", got, want)
	}
}

func (h *harness) expectQueued(want ...string) {
	h.t.Helper()
	got := h.s.Queued()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		h.t.Fatalf("Queued() = %q, want %q", got, want)
	}
}

// stop ends Run and waits for it, which waits for running items.
func (h *harness) stop() {
	h.t.Helper()
	h.cancel()
	h.releaseAll()
	select {
	case <-h.runDone:
	case <-time.After(guard):
		h.t.Fatalf("Run did not return")
	}
}

// ---------------------------------------------------------------------------

// Builds asking for the same label set start in the order they were queued,
// one at a time as the executor frees up; the order of the labels does not
// matter.
func TestFIFOWithinLabelSet(t *testing.T) {
	tests := []struct {
		name      string
		nodeLabel []string
		labels    [][]string // of the blocker, then of the waiting items
	}{
		{name: "one label", nodeLabel: []string{"linux"},
			labels: [][]string{{"linux"}, {"linux"}, {"linux"}, {"linux"}, {"linux"}}},
		{name: "labels in any order", nodeLabel: []string{"linux", "amd64", "docker"},
			labels: [][]string{{"linux", "amd64"}, {"amd64", "linux"}, {"linux", "amd64"}, {"amd64", "linux"}}},
		{name: "no labels", nodeLabel: nil,
			labels: [][]string{nil, {}, nil, {}}},
		{name: "node name as a label", nodeLabel: nil,
			labels: [][]string{{"n1"}, {"n1"}, {"n1"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool := newFakePool()
			pool.add("n1", 1, tt.nodeLabel...)
			h := newHarness(t, pool)
			h.run()
			h.enqueue("blocker", tt.labels[0]...)
			h.expectStart("blocker", "n1")
			var keys []string
			for i, l := range tt.labels[1:] {
				k := fmt.Sprintf("job#%d", i+1)
				keys = append(keys, k)
				h.enqueue(k, l...)
			}
			h.expectQueued(keys...)
			prev := "blocker"
			for i, k := range keys {
				h.finish(prev) // releases the executor: wakes the next waiter
				h.expectStart(k, "n1")
				h.expectQueued(keys[i+1:]...)
				prev = k
			}
			h.stop()
			if busy, maxBusy := pool.usage("n1"); busy != 0 || maxBusy != 1 {
				t.Errorf("n1 busy %d, max %d; want 0 and 1", busy, maxBusy)
			}
		})
	}
}

// A build waiting for label set A does not hold up builds of another label
// set that can be placed.
func TestOtherLabelSetNotBlocked(t *testing.T) {
	tests := []struct {
		name    string
		nodes   map[string][]string // name: labels (one executor each)
		running map[string][]string // items that take executors first
		waiting [][]string          // labels of items queued first, that must wait
		ready   [][]string          // labels of items queued after them, that start
		on      []string            // node each ready item runs on
	}{
		{
			name:    "A's node busy, B's free",
			nodes:   map[string][]string{"lin": {"linux"}, "win": {"windows"}},
			running: map[string][]string{"r0": {"linux"}},
			waiting: [][]string{{"linux"}, {"linux"}},
			ready:   [][]string{{"windows"}},
			on:      []string{"win"},
		},
		{
			name:    "no node carries A's labels",
			nodes:   map[string][]string{"lin": {"linux"}},
			waiting: [][]string{{"linux", "gpu"}, {"gpu"}},
			ready:   [][]string{{"linux"}},
			on:      []string{"lin"},
		},
		{
			name:    "B is a subset of A",
			nodes:   map[string][]string{"big": {"linux", "gpu"}, "small": {"linux"}},
			running: map[string][]string{"r0": {"gpu"}},
			waiting: [][]string{{"linux", "gpu"}},
			ready:   [][]string{{"linux"}},
			on:      []string{"small"},
		},
		{
			name:    "B is a superset of A",
			nodes:   map[string][]string{"a": {"linux"}, "b": {"linux", "arm64"}},
			running: map[string][]string{"r0": {"a"}},
			waiting: [][]string{{"a", "linux"}},
			ready:   [][]string{{"linux", "arm64"}},
			on:      []string{"b"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool := newFakePool()
			for _, name := range slices.Sorted(maps.Keys(tt.nodes)) {
				pool.add(name, 1, tt.nodes[name]...)
			}
			h := newHarness(t, pool)
			h.run()
			for _, k := range slices.Sorted(maps.Keys(tt.running)) {
				h.enqueue(k, tt.running[k]...)
				h.next()
			}
			var waiting []string
			for i, l := range tt.waiting {
				k := fmt.Sprintf("wait#%d", i)
				waiting = append(waiting, k)
				h.enqueue(k, l...)
			}
			var want []start
			for i, l := range tt.ready {
				k := fmt.Sprintf("ready#%d", i)
				want = append(want, start{k, tt.on[i]})
				h.enqueue(k, l...)
			}
			h.expectStarts(want...)
			h.expectQueued(waiting...)
		})
	}
}

// No more items of a node run at once than it has executors; each runs
// exactly once and gives its executor back when it returns.
func TestExecutorsRespected(t *testing.T) {
	tests := []struct {
		executors, items int
	}{
		{1, 3},
		{2, 5},
		{3, 3},
		{4, 2},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d executors %d items", tt.executors, tt.items), func(t *testing.T) {
			pool := newFakePool()
			pool.add("n1", tt.executors, "linux")
			h := newHarness(t, pool)
			var keys []string
			for i := range tt.items {
				k := fmt.Sprintf("job#%d", i)
				keys = append(keys, k)
				h.enqueue(k, "linux")
			}
			h.run()

			// The first dispatch starts as many as there are executors,
			// the first ones queued.
			n := min(tt.executors, tt.items)
			var want []start
			for _, k := range keys[:n] {
				want = append(want, start{k, "n1"})
			}
			h.expectStarts(want...)
			h.expectQueued(keys[n:]...)
			if busy, _ := pool.usage("n1"); busy != n {
				t.Fatalf("n1 busy %d, want %d", busy, n)
			}
			// Each item that returns lets exactly the next one start.
			for i, k := range keys[n:] {
				h.finish(keys[i])
				h.expectStart(k, "n1")
				h.expectQueued(keys[n+i+1:]...)
			}
			h.stop()
			busy, maxBusy := pool.usage("n1")
			if busy != 0 || maxBusy != n {
				t.Errorf("n1 busy %d, max %d; want 0 and %d", busy, maxBusy, n)
			}
			h.mu.Lock()
			defer h.mu.Unlock()
			for _, k := range keys {
				if h.runs[k] != 1 {
					t.Errorf("%s ran %d times, want once", k, h.runs[k])
				}
			}
		})
	}
}

// A change of the pool's capacity (a node comes online, gets executors)
// wakes the waiting builds.
func TestCapacityChangeWakesWaiters(t *testing.T) {
	tests := []struct {
		name   string
		change func(p *fakePool)
		on     string
	}{
		{name: "node gets an executor", change: func(p *fakePool) { p.setExecutors("n1", 1) }, on: "n1"},
		{name: "covering node added", change: func(p *fakePool) { p.add("n2", 1, "linux", "gpu") }, on: "n2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool := newFakePool()
			pool.add("n1", 0, "linux", "gpu")
			h := newHarness(t, pool)
			h.run()
			h.enqueue("job#1", "gpu")
			h.enqueue("job#2", "gpu")
			h.expectQueued("job#1", "job#2")
			tt.change(pool)
			h.expectStart("job#1", tt.on)
			h.expectQueued("job#2")
		})
	}
}

// Capacity that appears while a dispatch is under way goes to the oldest
// build of the label set, not to a later one that happens to be tried
// after it ([a b] and [b a] are one set).
func TestFIFOWhenCapacityAppearsMidDispatch(t *testing.T) {
	pool := newFakePool()
	pool.add("n1", 0, "a", "b")
	pool.grantAfterFail = "n1"
	h := newHarness(t, pool)
	h.enqueue("first", "a", "b")
	h.enqueue("second", "b", "a")
	h.run() // the first dispatch sees both; Acquire for first fails and adds an executor
	h.expectStart("first", "n1")
	h.expectQueued("second")
}

func TestRemove(t *testing.T) {
	tests := []struct {
		name      string
		remove    []string
		wantOK    []bool
		wantQueue []string
	}{
		{name: "head of the set", remove: []string{"job#1"}, wantOK: []bool{true}, wantQueue: []string{"job#2", "job#3"}},
		{name: "middle", remove: []string{"job#2"}, wantOK: []bool{true}, wantQueue: []string{"job#1", "job#3"}},
		{name: "all", remove: []string{"job#3", "job#1", "job#2"}, wantOK: []bool{true, true, true}},
		{name: "twice", remove: []string{"job#2", "job#2"}, wantOK: []bool{true, false}, wantQueue: []string{"job#1", "job#3"}},
		{name: "unknown", remove: []string{"job#9"}, wantOK: []bool{false}, wantQueue: []string{"job#1", "job#2", "job#3"}},
		{name: "already started", remove: []string{"running"}, wantOK: []bool{false}, wantQueue: []string{"job#1", "job#2", "job#3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool := newFakePool()
			pool.add("n1", 1, "linux")
			h := newHarness(t, pool)
			h.run()
			h.enqueue("running", "linux")
			h.expectStart("running", "n1")
			for _, k := range []string{"job#1", "job#2", "job#3"} {
				h.enqueue(k, "linux")
			}
			for i, k := range tt.remove {
				if got := h.s.Remove(k); got != tt.wantOK[i] {
					t.Errorf("Remove(%q) = %v, want %v", k, got, tt.wantOK[i])
				}
			}
			h.expectQueued(tt.wantQueue...)
			// The remaining ones run in order; removed ones never do.
			prev := "running"
			for _, k := range tt.wantQueue {
				h.finish(prev)
				h.expectStart(k, "n1")
				prev = k
			}
			h.stop()
			h.mu.Lock()
			defer h.mu.Unlock()
			for _, k := range tt.remove {
				if k != "running" && !slices.Contains(tt.wantQueue, k) && h.runs[k] != 0 {
					t.Errorf("removed %s ran", k)
				}
			}
		})
	}
}

// Run returns once its context ended and the running items returned (and
// gave their executors back); nothing starts after that.
func TestRunStopsAndWaits(t *testing.T) {
	pool := newFakePool()
	pool.add("n1", 1, "linux")
	h := newHarness(t, pool)
	returned := make(chan struct{})
	long := h.item("long", "linux")
	run := long.Run
	long.Run = func(n *nodes.Node) {
		defer close(returned)
		run(n)
	}
	h.s.Enqueue(long)
	h.run()
	h.expectStart("long", "n1")
	h.enqueue("waiting", "gpu") // no node carries gpu

	h.cancel()
	// Give a Run that would not wait for its items a chance to return
	// early; a correct one waits however long this takes.
	select {
	case <-h.runDone:
		t.Fatal("Run returned while an item was running")
	case <-time.After(20 * time.Millisecond):
	}
	h.finish("long")
	select {
	case <-h.runDone:
	case <-time.After(guard):
		t.Fatal("Run did not return after its items did")
	}
	select {
	case <-returned:
	default:
		t.Fatal("Run returned before the running item did")
	}
	if busy, _ := pool.usage("n1"); busy != 0 {
		t.Errorf("n1 busy %d after Run returned, want 0 (executor released)", busy)
	}
	// Capacity for the waiting item appears, and an item is queued: with
	// no dispatcher, neither starts.
	pool.add("n2", 1, "gpu")
	h.enqueue("late", "linux")
	h.expectQueued("waiting", "late")
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.runs["waiting"] != 0 || h.runs["late"] != 0 {
		t.Errorf("an item started after Run returned: %v", h.runs)
	}
}
