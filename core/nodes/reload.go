package nodes

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/conveyor-ci/conveyor/core/config"
)

// Causes with which a reload ends a node's connection and session.
var (
	// ErrNodeRemoved: the node's block left the configuration.
	ErrNodeRemoved = errors.New("node removed from the configuration")
	// ErrNodeRelaunched: the node's launcher settings changed; it is
	// launched again with the new ones.
	ErrNodeRelaunched = errors.New("node relaunched with its new configuration")
)

// Retiring reasons shown while a node takes no new build.
const (
	retireRemove   = "removed from the configuration: ends once its running builds finish"
	retireRelaunch = "its launcher settings changed: relaunches once its running builds finish"
)

// ensureSlots creates launcher's launch slots, limit of them
// (config.DefaultMaxConcurrentLaunches when 0), unless they exist.
func (m *Manager) ensureSlots(launcher string, limit int) {
	if limit <= 0 {
		limit = config.DefaultMaxConcurrentLaunches
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.slots[launcher] == nil {
		m.slots[launcher] = make(chan struct{}, limit)
	}
}

// slotsOf returns launcher's launch slots (ensureSlots made them).
func (m *Manager) slotsOf(launcher string) chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.slots[launcher]
}

// start runs n's connect loop under the manager's run context; m.listMu
// is held and m.runCtx is set.
func (m *Manager) start(n *Node) {
	ctx, cancel := context.WithCancelCause(m.runCtx)
	n.stop, n.done = cancel, make(chan struct{})
	go func() {
		defer close(n.done)
		m.run(ctx, n)
	}()
}

// stopNode ends n's connect loop and its session with cause.
func (m *Manager) stopNode(n *Node, cause error) {
	m.listMu.RLock()
	stop, done := n.stop, n.done
	m.listMu.RUnlock()
	if stop != nil {
		stop(cause)
		<-done
	}
	n.sess.End(cause)
}

// Add adds and, when Run runs, launches the node of block c of launcher
// l (a reload). The block's plugin settings must be decoded and its
// launcher configured with it.
func (m *Manager) Add(c *config.Node, l *config.Launcher) error {
	n := m.newNode(c, l)
	m.listMu.Lock()
	defer m.listMu.Unlock()
	if slices.ContainsFunc(m.nodes, func(o *Node) bool { return o.name == c.Name }) {
		return fmt.Errorf("add node %q: it exists", c.Name)
	}
	m.nodes = append(m.nodes, n)
	if m.runCtx != nil {
		m.start(n)
	}
	m.log.Info("node added", "node", c.Name, "launcher", c.Launcher)
	return nil
}

// Update applies to a node what changes without a relaunch (labels,
// executors, shell) from its new block c: at once, for the next builds;
// running builds go on. After a pending Replace of the node, it applies
// to the relaunched node.
func (m *Manager) Update(c *config.Node) error {
	if m.Get(c.Name) == nil {
		return fmt.Errorf("update node %q: no such node", c.Name)
	}
	m.after(c.Name, func(context.Context) {
		n := m.Get(c.Name)
		if n == nil {
			return
		}
		n.mu.Lock()
		n.labelList, n.executors, n.shell = c.Labels, c.Executors, c.Shell
		n.labels = map[string]bool{c.Name: true}
		for _, l := range c.Labels {
			n.labels[l] = true
		}
		n.mu.Unlock()
		m.log.Info("node updated", "node", c.Name, "labels", c.Labels, "executors", c.Executors)
		m.notify() // more executors, other labels: queued builds may fit
	})
	return nil
}

// Replace relaunches a node with its new block c (its launcher, launcher
// block or timeouts changed): the node takes no new build; once its
// running builds finished (at once with force, failing them) its
// connection and session end and it launches with c. It returns at once;
// the channel is closed once the node was relaunched (or the manager
// stopped first).
func (m *Manager) Replace(c *config.Node, l *config.Launcher, force bool) (<-chan struct{}, error) {
	old := m.Get(c.Name)
	if old == nil {
		return nil, fmt.Errorf("relaunch node %q: no such node", c.Name)
	}
	m.retire(old, retireRelaunch)
	return m.after(c.Name, func(ctx context.Context) {
		old := m.Get(c.Name)
		if old == nil {
			return
		}
		if !force && !m.waitIdle(ctx, old) {
			return
		}
		m.stopNode(old, ErrNodeRelaunched)
		n := m.newNode(c, l)
		m.listMu.Lock()
		if i := slices.Index(m.nodes, old); i >= 0 {
			m.nodes[i] = n
		}
		if m.runCtx != nil {
			m.start(n)
		}
		m.listMu.Unlock()
		m.log.Info("node relaunched with its new configuration", "node", c.Name, "forced", force)
		m.notify()
	}), nil
}

// Remove takes a node out: it takes no new build; once its running builds
// finished (at once with force, failing them) its connection and session
// end and it leaves the list. It returns at once; the channel is closed
// once the node is gone (or the manager stopped first).
func (m *Manager) Remove(name string, force bool) (<-chan struct{}, error) {
	old := m.Get(name)
	if old == nil {
		return nil, fmt.Errorf("remove node %q: no such node", name)
	}
	m.retire(old, retireRemove)
	return m.after(name, func(ctx context.Context) {
		old := m.Get(name)
		if old == nil {
			return
		}
		if !force && !m.waitIdle(ctx, old) {
			return
		}
		m.stopNode(old, ErrNodeRemoved)
		m.listMu.Lock()
		m.nodes = slices.DeleteFunc(m.nodes, func(n *Node) bool { return n == old })
		m.listMu.Unlock()
		m.log.Info("node removed", "node", name, "forced", force)
		m.notify()
	}), nil
}

// Retire stops giving new builds to the named nodes, saying why, until
// Unretire with the same why; running builds go on (a launcher restart
// waits for them). A node already retiring (being removed or relaunched)
// keeps its own reason.
func (m *Manager) Retire(why string, names ...string) {
	for _, name := range names {
		if n := m.Get(name); n != nil {
			n.mu.Lock()
			free := n.retiring == ""
			n.mu.Unlock()
			if free {
				m.retire(n, why)
			}
		}
	}
}

// Unretire lets the named nodes that Retire retired with why take builds
// again.
func (m *Manager) Unretire(why string, names ...string) {
	for _, name := range names {
		if n := m.Get(name); n != nil {
			n.mu.Lock()
			if n.retiring == why {
				n.retiring = ""
			}
			n.mu.Unlock()
		}
	}
	m.notify()
}

func (m *Manager) retire(n *Node, why string) {
	n.mu.Lock()
	changed := n.retiring != why
	n.retiring = why
	n.mu.Unlock()
	if changed && why != "" {
		m.log.Info("node takes no new build", "node", n.name, "why", why)
	}
}

// WaitIdle waits until none of the named nodes runs a build; false when
// ctx or the manager's Run ended first.
func (m *Manager) WaitIdle(ctx context.Context, names ...string) bool {
	for _, name := range names {
		n := m.Get(name)
		if n == nil {
			continue
		}
		if !m.waitIdle(ctx, n) {
			return false
		}
	}
	return true
}

func (m *Manager) waitIdle(ctx context.Context, n *Node) bool {
	m.listMu.RLock()
	run := m.runCtx
	m.listMu.RUnlock()
	if run == nil {
		run = context.Background()
	}
	for {
		changed := m.Changed()
		n.mu.Lock()
		busy := n.busy
		n.mu.Unlock()
		if busy <= 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-run.Done():
			return false
		case <-changed:
		}
	}
}

// after runs op once the node's previous pending operation (a Replace or
// Remove waiting for running builds) is done, in order; it returns a
// channel closed when op returned. op's context ends with the manager's
// Run.
func (m *Manager) after(name string, op func(ctx context.Context)) <-chan struct{} {
	done := make(chan struct{})
	m.listMu.Lock()
	if m.stopped {
		m.listMu.Unlock()
		close(done)
		return done
	}
	if m.pending == nil {
		m.pending = map[string]<-chan struct{}{}
	}
	prev := m.pending[name]
	m.pending[name] = done
	run := m.runCtx
	m.retired.Add(1)
	m.listMu.Unlock()
	if run == nil {
		run = context.Background()
	}
	go func() {
		defer m.retired.Done()
		defer close(done)
		defer func() {
			m.listMu.Lock()
			if m.pending[name] == (<-chan struct{})(done) {
				delete(m.pending, name)
			}
			m.listMu.Unlock()
		}()
		if prev != nil {
			select {
			case <-prev:
			case <-run.Done():
				return
			}
		}
		op(run)
	}()
	return done
}
