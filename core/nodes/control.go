package nodes

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/core/demand"
	"github.com/conveyor-ci/conveyor/core/store"
)

// Actions recorded in a node's history (store.NodeEvent.Action).
const (
	ActionDrain      = "drain"
	ActionOnline     = "online"
	ActionDisconnect = "disconnect"
	ActionLaunch     = "launch"
	ActionApproveKey = "approve-key"
	ActionKeyPending = "key-pending"
	ActionIdle       = "idle-offline"
	ActionDemand     = "demand-launch"
)

// System is who the master's own actions are recorded as (taking an idle
// node offline, launching a node on demand).
const System = "conveyor"

// Errors of the node controls; the API answers them with 409 Conflict.
var (
	// ErrNotConnected: there is no link to disconnect.
	ErrNotConnected = errors.New("the node has no link to its agent")
	// ErrAlreadyUp: the node is online or launching already.
	ErrAlreadyUp = errors.New("the node is online or launching already")
	// ErrNotDrained: the node is not drained.
	ErrNotDrained = errors.New("the node is not drained")
	// ErrDrained: a drained node is launched only once it is back online.
	ErrDrained = errors.New("the node is drained")
	// ErrBadFingerprint: what was given to approve is no SHA256
	// fingerprint.
	ErrBadFingerprint = errors.New(`a host key fingerprint is "SHA256:" and 43 base64 characters, as the node shows it`)
)

// fingerprintRE is an OpenSSH SHA256 fingerprint (ssh.FingerprintSHA256).
var fingerprintRE = regexp.MustCompile(`^SHA256:[A-Za-z0-9+/]{43}$`)

// ControlStore persists what operators did to the nodes (core/store does).
type ControlStore interface {
	AddNodeEvent(node string, ev store.NodeEvent) error
	NodeEvents(node string) ([]store.NodeEvent, error)
	SetNodeDrain(node string, d *store.NodeDrain, ev store.NodeEvent) error
	NodeDrain(node string) (*store.NodeDrain, error)
	ApproveNodeKey(node, fingerprint string, ev store.NodeEvent) error
	NodeApprovedKeys(node string) ([]string, error)
}

// cutError is why the master itself ended a node's link: the reason the
// node shows, and the one its running builds fail with on a transport that
// cannot resume.
type cutError struct{ msg string }

func (e *cutError) Error() string { return e.msg }

// record appends ev to n's history, logging a failure to store it.
func (m *Manager) record(n *Node, ev store.NodeEvent) {
	m.log.Info("node "+ev.Action, "node", n.cfg.Name, "by", ev.By, "reason", ev.Reason)
	if m.opts.Control == nil {
		return
	}
	if err := m.opts.Control.AddNodeEvent(n.cfg.Name, ev); err != nil {
		m.log.Error("cannot record the node's history", "node", n.cfg.Name, "action", ev.Action, "error", err)
	}
}

// History returns n's history, oldest first (empty without a store).
func (m *Manager) History(n *Node) ([]store.NodeEvent, error) {
	if m.opts.Control == nil {
		return []store.NodeEvent{}, nil
	}
	return m.opts.Control.NodeEvents(n.cfg.Name)
}

// Drain marks n offline for new builds: it takes no new build, running
// ones finish. It survives a restart of the master. Draining a drained
// node replaces its reason.
func (m *Manager) Drain(n *Node, by, reason string) error {
	now := time.Now().UTC()
	d := &store.NodeDrain{Since: now, By: by, Reason: reason}
	ev := store.NodeEvent{Time: now, Action: ActionDrain, By: by, Reason: reason}
	if m.opts.Control != nil {
		if err := m.opts.Control.SetNodeDrain(n.cfg.Name, d, ev); err != nil {
			return fmt.Errorf("drain node %q: %w", n.cfg.Name, err)
		}
	}
	n.mu.Lock()
	n.drain = d
	n.mu.Unlock()
	m.log.Info("node drained", "node", n.cfg.Name, "by", by, "reason", reason)
	m.notify()
	return nil
}

// Online brings a drained node back: it takes builds again.
func (m *Manager) Online(n *Node, by string) error {
	n.mu.Lock()
	drained := n.drain != nil
	n.mu.Unlock()
	if !drained {
		return ErrNotDrained
	}
	ev := store.NodeEvent{Time: time.Now().UTC(), Action: ActionOnline, By: by}
	if m.opts.Control != nil {
		if err := m.opts.Control.SetNodeDrain(n.cfg.Name, nil, ev); err != nil {
			return fmt.Errorf("bring node %q online: %w", n.cfg.Name, err)
		}
	}
	n.mu.Lock()
	n.drain = nil
	n.mu.Unlock()
	m.log.Info("node back online", "node", n.cfg.Name, "by", by)
	m.notify()
	if n.onDemand() {
		m.kick(n) // it may be wanted already
	}
	return nil
}

// Disconnect ends n's link to its agent now. On a transport that can
// resume (Kafka) only the connection closes: the session is held, the
// node is relaunched on its backoff and its running builds resume with
// the agent. Otherwise (SSH) the session ends and its running builds fail
// with the disconnection as their reason.
func (m *Manager) Disconnect(n *Node, by, reason string) error {
	msg := "disconnected by " + by
	if reason != "" {
		msg += ": " + reason
	}
	n.mu.Lock()
	cut := n.cut
	n.mu.Unlock()
	if cut == nil {
		return ErrNotConnected
	}
	m.record(n, store.NodeEvent{Time: time.Now().UTC(), Action: ActionDisconnect, By: by, Reason: reason})
	cut(&cutError{msg})
	return nil
}

// Launch launches n now, skipping what remains of its relaunch backoff
// (and, for an on-demand node, without waiting for a build to want it).
func (m *Manager) Launch(n *Node, by string) error {
	n.mu.Lock()
	state, drained, connected := n.state, n.drain != nil, n.cut != nil
	n.mu.Unlock()
	switch {
	case drained:
		return ErrDrained
	case connected || state == StateOnline || state == StateLaunching:
		return ErrAlreadyUp
	}
	m.record(n, store.NodeEvent{Time: time.Now().UTC(), Action: ActionLaunch, By: by})
	m.kick(n)
	return nil
}

// kick wakes n's connect loop from its wait.
func (m *Manager) kick(n *Node) {
	select {
	case n.kicked <- struct{}{}:
	default:
	}
}

// Drained returns n's drain, or nil.
func (n *Node) Drained() *store.NodeDrain {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.drain
}

// onDemand reports whether n is launched only when wanted.
func (n *Node) onDemand() bool { return n.cfg.Availability.Mode == config.AvailabilityOnDemand }

// awaitDemand keeps an on-demand node offline until a queued build wants
// it (and it is not drained) or an operator launches it. It reports false
// when ctx ended first.
func (m *Manager) awaitDemand(ctx context.Context, n *Node) bool {
	for {
		wanted, changed := m.board.Wanted(n.Covers)
		n.mu.Lock()
		drained, busy, demanded := n.drain != nil, n.busy > 0, n.demanded
		n.mu.Unlock()
		if held, _ := n.sess.Held(); held || busy {
			// Builds still run on it (a session waits for its agent to
			// resume): relaunch it whatever the queue wants.
			return true
		}
		if wanted && !drained {
			n.mu.Lock()
			n.demanded = true
			n.mu.Unlock()
			if !demanded { // once per demand, not per relaunch
				m.record(n, store.NodeEvent{Time: time.Now().UTC(), Action: ActionDemand, By: System, Reason: "a queued build waits for its labels"})
			}
			return true
		}
		n.mu.Lock()
		n.demanded = false
		n.mu.Unlock()
		why := fmt.Sprintf("on demand: launched when a build waits for its labels (idle timeout %v)", n.cfg.Availability.IdleTimeout)
		if drained {
			why = "on demand and drained: not launched until it is back online"
		}
		m.set(n, StateOffline, why)
		select {
		case <-ctx.Done():
			return false
		case <-changed:
		case <-n.kicked:
			n.mu.Lock()
			drained := n.drain != nil
			n.mu.Unlock()
			if !drained {
				return true
			}
		}
	}
}

// watchIdle takes an on-demand node offline once it has run no build for
// its idle timeout: it stops taking builds, and cut ends its link with
// the launcher tearing down what it started. It returns when ctx ends.
func (m *Manager) watchIdle(ctx context.Context, n *Node, idle *demand.Idle, cut func(error)) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-idle.Expired():
		}
		n.mu.Lock()
		if n.busy > 0 {
			// A build took the node as the timer fired: time afresh.
			idle.Stop()
			idle = demand.NewIdle(n.cfg.Availability.IdleTimeout)
			for range n.busy {
				idle.Busy()
			}
			n.idle = idle
			n.mu.Unlock()
			continue
		}
		n.tearing, n.idled = true, true
		n.mu.Unlock()
		why := fmt.Sprintf("idle for %v (availability on_demand): taken offline until a build wants it", n.cfg.Availability.IdleTimeout)
		m.record(n, store.NodeEvent{Time: time.Now().UTC(), Action: ActionIdle, By: System, Reason: why})
		cut(&cutError{why})
		return
	}
}

// teardown has n's launcher stop what it started for n once its link
// ended for being idle.
func (m *Manager) teardown(ctx context.Context, n *Node) {
	p := m.plugin(n.cfg.Launcher)
	if p == nil || p.Restarting() > 0 {
		return
	}
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := p.Process().Launcher.Teardown(tctx, n.cfg.Name); err != nil {
		m.log.Warn("teardown of an idle node failed", "node", n.cfg.Name, "error", err)
	}
}

// launchSlot waits for one of the launcher's max_concurrent_launches
// slots, showing the node as waiting for one meanwhile; it returns the
// function that gives the slot back, or false when ctx ended first.
func (m *Manager) launchSlot(ctx context.Context, n *Node) (func(), bool) {
	slots := m.slotsOf(n.cfg.Launcher)
	// "taken" is logged after the slot is, "released" before: the log
	// never shows more launches at once than there were.
	taken := func() {
		m.log.Debug("launch slot taken", "node", n.cfg.Name, "launcher", n.cfg.Launcher, "limit", cap(slots))
	}
	release := func() {
		m.log.Debug("launch slot released", "node", n.cfg.Name, "launcher", n.cfg.Launcher)
		<-slots
	}
	select {
	case slots <- struct{}{}:
		taken()
		return release, true
	default:
	}
	n.mu.Lock()
	state, reason := n.state, n.reason
	n.mu.Unlock()
	if state == StateLaunching {
		m.set(n, StateLaunching, fmt.Sprintf("waiting for a launch slot (launcher %s launches at most %d nodes at once)", n.cfg.Launcher, cap(slots)))
	}
	select {
	case slots <- struct{}{}:
		taken()
		if state == StateLaunching {
			m.set(n, state, reason)
		}
		return release, true
	case <-ctx.Done():
		return nil, false
	}
}

// tearingNow reports whether n is being taken offline for idleness.
func (n *Node) tearingNow() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.tearing
}

// startIdle starts timing the idleness of an on-demand node that came
// online (once per connection), counting the builds it already runs.
func (m *Manager) startIdle(ctx context.Context, n *Node) {
	if !n.onDemand() {
		return
	}
	n.mu.Lock()
	if n.idle != nil {
		n.mu.Unlock()
		return
	}
	idle := demand.NewIdle(n.cfg.Availability.IdleTimeout)
	for range n.busy {
		idle.Busy()
	}
	n.idle = idle
	cut := n.cut
	n.mu.Unlock()
	go m.watchIdle(ctx, n, idle, cut)
}

// ApproveKey approves fingerprint as n's host key, for a launcher whose
// host key verification waits for an approval (the SSH launcher's
// trust_on_first_use with require_approval): it is kept and passed on
// every later launch (launcher.Node.ApprovedKeys), and n is launched now.
func (m *Manager) ApproveKey(n *Node, by, fingerprint string) error {
	if !fingerprintRE.MatchString(fingerprint) {
		return fmt.Errorf("%w, not %q", ErrBadFingerprint, fingerprint)
	}
	ev := store.NodeEvent{Time: time.Now().UTC(), Action: ActionApproveKey, By: by, Reason: fingerprint}
	if m.opts.Control != nil {
		if err := m.opts.Control.ApproveNodeKey(n.cfg.Name, fingerprint, ev); err != nil {
			return fmt.Errorf("approve the host key of node %q: %w", n.cfg.Name, err)
		}
	}
	n.mu.Lock()
	if !slices.Contains(n.approved, fingerprint) {
		n.approved = append(n.approved, fingerprint)
	}
	if n.pendingKey == fingerprint {
		n.pendingKey = ""
	}
	n.mu.Unlock()
	m.log.Info("node host key approved", "node", n.cfg.Name, "by", by, "fingerprint", fingerprint)
	m.kick(n)
	return nil
}

// keyPending notes the host key fingerprint a launch of n waits to have
// approved (recorded in its history when it changes); "" clears it.
func (m *Manager) keyPending(n *Node, fingerprint string) {
	n.mu.Lock()
	changed := n.pendingKey != fingerprint
	n.pendingKey = fingerprint
	n.mu.Unlock()
	if changed && fingerprint != "" {
		m.record(n, store.NodeEvent{Time: time.Now().UTC(), Action: ActionKeyPending, By: System,
			Reason: fingerprint + " waits for an admin's approval (conveyor node approve-key " + n.cfg.Name + " " + fingerprint + ")"})
	}
}

// approvedKeys returns the host keys approved for n.
func (n *Node) approvedKeys() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.approved)
}
