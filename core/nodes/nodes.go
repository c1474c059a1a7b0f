// Package nodes keeps every configured node connected: it launches the
// node's agent through its launcher plugin, authenticates it, tracks the
// node's state (offline → launching → online → offline, with the reason;
// online → unreachable → online when a resumable link breaks and the agent
// resumes its session) and its executors, and relaunches with backoff when
// the connection ends.
package nodes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/core/demand"
	"github.com/conveyor-ci/conveyor/core/plugins"
	"github.com/conveyor-ci/conveyor/core/session"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// States of a node.
const (
	StateOffline   = "offline"
	StateLaunching = "launching"
	StateOnline    = "online"
	// StateUnreachable: the link to the agent broke, its session is held
	// for the agent to resume (running builds wait, no new build starts).
	StateUnreachable = "unreachable"
)

// Relaunch backoff bounds. A launch that failed with a permanent error
// (launcher.Permanent: refused credentials or host key) is asked again
// only every launcher.PermanentRetry (Manager.permanentRetry).
var (
	relaunchMin = time.Second
	relaunchMax = time.Minute
)

// LaunchBackstop bounds a launcher's Launch from the master's side. A
// launcher bounds its own launch and says why it gave up (the SSH
// launcher: launch_timeout, max_retries, retry_wait); this backstop only
// ends a launch of a launcher that ignores its context, so that its node
// does not stay launching for ever. The node's reason then names it.
const LaunchBackstop = 30 * time.Minute

// ErrMasterStopped is why a node's session ends when the master stops: the
// reason its running builds fail with.
var ErrMasterStopped = errors.New("master stopped")

// Node is one configured node.
type Node struct {
	name   string
	cfg    *config.Node // never replaced: see labelList, executors, shell
	labels map[string]bool

	mu     sync.Mutex
	state  string
	reason string
	since  time.Time
	busy   int
	sess   *session.Session // lives as long as the manager
	// hbTimeout is the node's heartbeat timeout: how long an agent that
	// failed to authenticate has to succeed on the same connection.
	hbTimeout time.Duration
	agent     *session.Agent
	desc      string
	// retiring, when set, says why the node takes no new build: it is
	// being removed or relaunched by a configuration reload once its
	// running builds finish (see Remove, Replace).
	retiring string
	// labelList, executors and shell are what a reload may change in
	// place (Manager.Update): cfg itself is never replaced.
	labelList []string
	executors int
	shell     []string
	// stop ends the node's connect loop (Run, Replace, Remove); done is
	// closed when it returned.
	stop context.CancelCauseFunc
	done chan struct{}
	// lost says why the node's session ended with its agent out of reach
	// (the session timeout ran out); until the agent comes back, a
	// relaunch keeps the node offline with it rather than launching.
	lost string

	// drain, when set, keeps new builds off the node (Manager.Drain).
	drain *store.NodeDrain
	// kicked wakes the connect loop from its wait (Manager.Launch).
	kicked chan struct{}
	// cut ends the current connection with a cause (nil when there is
	// none): Manager.Disconnect, an idle on-demand node.
	cut func(cause error)
	// idle times an online on-demand node's idleness; nil otherwise.
	idle *demand.Idle
	// tearing: the idle node is being taken offline, it takes no build.
	tearing bool
	// idled: the last connection ended for being idle.
	idled bool
	// demanded: the on-demand node was launched for a queued build and
	// not taken offline since.
	demanded bool
	// approved are the host key fingerprints approved for the node;
	// pendingKey is the one its launcher waits to have approved.
	approved   []string
	pendingKey string
}

// Name is the node's name.
func (n *Node) Name() string { return n.name }

// Config is the node's configuration block.
func (n *Node) Config() *config.Node {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := *n.cfg
	c.Labels, c.Executors, c.Shell = n.labelList, n.executors, n.shell
	return &c
}

// Covers reports whether the node carries every label (its name counts).
func (n *Node) Covers(labels []string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, l := range labels {
		if !n.labels[l] {
			return false
		}
	}
	return true
}

// Session is the node's session, or nil when none lives (a held session,
// waiting for the agent to resume, counts: steps sent to it wait).
func (n *Node) Session() *session.Session {
	if !n.sess.Live() {
		return nil
	}
	return n.sess
}

// Status is a node as the API shows it.
type Status struct {
	Name         string            `json:"name"`
	Launcher     string            `json:"launcher"`
	Labels       []string          `json:"labels"`
	Executors    int               `json:"executors"`
	Busy         int               `json:"busy"`
	State        string            `json:"state"`
	Reason       string            `json:"reason,omitempty"`
	Since        time.Time         `json:"since"`
	Description  string            `json:"description,omitempty"`
	AgentVersion string            `json:"agent_version,omitempty"`
	Platform     string            `json:"platform,omitempty"`
	Dropped      *session.Counters `json:"dropped_frames,omitempty"`
	// Retiring, when set, says why the node takes no new build (a reload
	// removes or relaunches it once its running builds finish).
	Retiring string `json:"retiring,omitempty"`
	// AgentDropped is what the agent reported it dropped, by reason
	// (forged, replayed, malformed, duplicate, hint, transport_malformed...),
	// with its last heartbeat.
	AgentDropped map[string]uint64 `json:"agent_dropped_frames,omitempty"`
	// Drain, when set, says that the node takes no new build, since when,
	// by whom and why.
	Drain *store.NodeDrain `json:"drain,omitempty"`
	// Availability is the node's availability mode (always, on_demand).
	Availability string `json:"availability"`
	// IdleTimeout is an on-demand node's idle timeout.
	IdleTimeout string `json:"idle_timeout,omitempty"`
	// IdleSince is when an online on-demand node last became idle.
	IdleSince *time.Time `json:"idle_since,omitempty"`
	// PendingHostKey is the SHA256 fingerprint of the host key the
	// node's launcher waits for an admin to approve (ApproveKey).
	PendingHostKey string `json:"pending_host_key,omitempty"`
}

// Status reports the node's state.
func (n *Node) Status() Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := Status{Name: n.cfg.Name, Launcher: n.cfg.Launcher, Labels: n.labelList, Executors: n.executors,
		Busy: n.busy, State: n.state, Reason: n.reason, Since: n.since, Description: n.desc, Retiring: n.retiring,
		Drain: n.drain, Availability: n.cfg.Availability.Mode, PendingHostKey: n.pendingKey}
	if st.Availability == "" {
		st.Availability = config.AvailabilityAlways
	}
	if n.onDemand() {
		st.IdleTimeout = n.cfg.Availability.IdleTimeout.String()
		if n.idle != nil {
			if t := n.idle.Since(); !t.IsZero() {
				st.IdleSince = &t
			}
		}
	}
	if n.agent != nil {
		st.AgentVersion = n.agent.Version
		st.Platform = n.agent.OS + "/" + n.agent.Arch
	}
	if c := n.sess.Counters(); c != (session.Counters{}) {
		st.Dropped = &c
	}
	st.AgentDropped = n.sess.AgentCounters()
	return st
}

// Manager runs the nodes of a configuration.
type Manager struct {
	nodes  []*Node
	plugin func(name string) plugin // the launcher plugin called name, or nil
	opts   Options
	log    hclog.Logger
	// permanentRetry: how often a launch refused for good is asked again
	// (launcher.PermanentRetry); launchBackstop: LaunchBackstop. Fields so
	// that tests can shorten them.
	permanentRetry time.Duration
	launchBackstop time.Duration

	// slots bounds each launcher's concurrent launches (a buffered
	// channel of max_concurrent_launches per launcher name).
	slots map[string]chan struct{}
	// board is what queued builds wait for: on-demand nodes watch it.
	board *demand.Board

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when capacity may have appeared

	// listMu guards nodes (a reload adds, replaces and removes nodes) and
	// runCtx, the context of Run while it runs (nil before and after).
	listMu sync.RWMutex
	runCtx context.Context
	// retired counts the reload operations under way (see after);
	// pending holds, by node, the last one's done channel.
	retired sync.WaitGroup
	pending map[string]<-chan struct{}
	stopped bool // Run ended: no more reload operations
}

// Options tunes the sessions.
type Options struct {
	Heartbeat        time.Duration
	HeartbeatTimeout time.Duration
	// Store, when set, persists the sessions of resumable links, so that a
	// restarted master resumes them.
	Store SessionStore
	// OnWriteError, when set, is told of every failed attempt to store
	// what an agent sent (session.Options.OnWriteError).
	OnWriteError func(kind string)
	// Control, when set, persists the nodes' history, drains and
	// approved host keys.
	Control ControlStore
}

// plugin is what a node needs of its launcher plugin (*plugins.Plugin).
type plugin interface {
	// Process is the plugin's current process.
	Process() *launcher.Process
	// Restarting is the restart under way (1, 2...), 0 while it runs.
	Restarting() int
	// Subscribe returns a channel told of every restart.
	Subscribe() <-chan struct{}
}

// SessionStore persists the nodes' agent sessions (core/store does).
type SessionStore interface {
	SaveSession(node string, rec []byte) error
	Session(node string) ([]byte, error)
}

// NewManager prepares the configured nodes; Run connects them.
func NewManager(cfg *config.Config, pm *plugins.Manager, opts Options, logger hclog.Logger) *Manager {
	m := &Manager{opts: opts, log: logger, changed: make(chan struct{}), slots: map[string]chan struct{}{}, board: demand.NewBoard(),
		permanentRetry: launcher.PermanentRetry, launchBackstop: LaunchBackstop,
		plugin: func(name string) plugin {
			if p := pm.Get(name); p != nil {
				return p
			}
			return nil // not a nil *plugins.Plugin in an interface
		}}
	for _, c := range cfg.Nodes {
		m.nodes = append(m.nodes, m.newNode(c, cfg.Launcher(c.Launcher)))
	}
	return m
}

// newNode prepares the node of block c of launcher l (nil when the
// configuration lacks it), restoring its persisted session and control
// state.
func (m *Manager) newNode(c *config.Node, l *config.Launcher) *Node {
	opts, logger := m.opts, m.log
	{
		limit := 0
		if l != nil {
			limit = l.MaxConcurrentLaunches
		}
		m.ensureSlots(c.Launcher, limit)
		n := &Node{name: c.Name, cfg: c, labels: map[string]bool{c.Name: true}, state: StateOffline, reason: "not launched yet", since: time.Now(),
			kicked: make(chan struct{}, 1), labelList: c.Labels, executors: c.Executors, shell: c.Shell}
		if opts.Control != nil {
			d, err := opts.Control.NodeDrain(c.Name)
			if err != nil {
				logger.Error("cannot read whether the node is drained", "node", c.Name, "error", err)
			}
			n.drain = d
			if n.approved, err = opts.Control.NodeApprovedKeys(c.Name); err != nil {
				logger.Error("cannot read the node's approved host keys", "node", c.Name, "error", err)
			}
		}
		for _, l := range c.Labels {
			n.labels[l] = true
		}
		hbTimeout := opts.HeartbeatTimeout
		if c.HeartbeatTimeout > 0 {
			hbTimeout = c.HeartbeatTimeout
		}
		so := session.Options{Node: c.Name, Heartbeat: opts.Heartbeat, HeartbeatTimeout: hbTimeout,
			SessionTimeout: c.SessionTimeout, WriteTimeout: c.WriteTimeout, Logger: logger.Named(c.Name), OnWriteError: opts.OnWriteError,
			OnEnd: func(err error) {
				n.mu.Lock()
				n.lost = err.Error()
				n.mu.Unlock()
				if n.Status().State == StateUnreachable {
					m.set(n, StateOffline, err.Error())
				}
			}}
		if opts.Store != nil {
			so.Persist = func(rec *session.Record) error {
				if rec == nil {
					return opts.Store.SaveSession(c.Name, nil)
				}
				b, err := json.Marshal(rec)
				if err != nil {
					return err
				}
				return opts.Store.SaveSession(c.Name, b)
			}
		}
		n.hbTimeout = hbTimeout
		if n.hbTimeout <= 0 {
			n.hbTimeout = session.DefaultHeartbeatTimeout // as the session does
		}
		n.sess = session.New(so)
		if opts.Store != nil {
			m.restore(n, opts.Store)
		}
		return n
	}
}

// restore resumes the session a node had when the master stopped: it is
// held for the agent to resume it, and its builds can re-attach.
func (m *Manager) restore(n *Node, st SessionStore) {
	b, err := st.Session(n.cfg.Name)
	if err != nil || b == nil {
		return
	}
	var rec session.Record
	if err := json.Unmarshal(b, &rec); err == nil {
		err = n.sess.Restore(&rec)
	}
	if err != nil {
		m.log.Error("cannot restore the node's session", "node", n.cfg.Name, "error", err)
		_ = st.SaveSession(n.cfg.Name, nil)
		return
	}
	if held, until := n.sess.Held(); held { // not a record of an ended session
		n.state, n.reason = StateUnreachable, fmt.Sprintf("the master restarted: running builds wait for the agent to resume its session until %s", until.Format(time.RFC3339))
	}
}

// Nodes returns every node in configuration order.
func (m *Manager) Nodes() []*Node {
	m.listMu.RLock()
	defer m.listMu.RUnlock()
	return slices.Clone(m.nodes)
}

// Get returns the node called name, or nil.
func (m *Manager) Get(name string) *Node {
	for _, n := range m.Nodes() {
		if n.name == name {
			return n
		}
	}
	return nil
}

// Changed returns a channel closed at the next change of capacity (a node
// coming online, an executor freed).
func (m *Manager) Changed() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changed
}

func (m *Manager) notify() {
	m.mu.Lock()
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
}

// Acquire takes a free executor on the least busy online node covering
// labels.
func (m *Manager) Acquire(labels []string) (*Node, bool) {
	var best *Node
	bestFree := 0
	for _, n := range m.Nodes() {
		if !n.Covers(labels) {
			continue
		}
		n.mu.Lock()
		free := n.executors - n.busy
		online := n.takes()
		n.mu.Unlock()
		if online && free > bestFree {
			best, bestFree = n, free
		}
	}
	if best == nil {
		return nil, false
	}
	best.mu.Lock()
	defer best.mu.Unlock()
	if !best.takes() || best.busy >= best.executors {
		return nil, false
	}
	best.busy++
	if best.idle != nil {
		best.idle.Busy()
	}
	return best, true
}

// takes reports whether n takes new builds: online, not drained, not
// being taken offline for idleness. n.mu is held.
func (n *Node) takes() bool {
	return n.state == StateOnline && n.drain == nil && !n.tearing && n.retiring == ""
}

// Demand posts the label sets that queued builds wait for (the
// scheduler's demand.Poster): on-demand nodes covering one are launched.
func (m *Manager) Demand(waiting [][]string) { m.board.Post(waiting) }

// Claim takes an executor of n whatever its state: for a build that was
// running on n when the server stopped and re-attached to it.
func (m *Manager) Claim(n *Node) {
	n.mu.Lock()
	n.busy++
	if n.idle != nil {
		n.idle.Busy()
	}
	n.mu.Unlock()
}

// Release gives back an executor taken with Acquire or Claim.
func (m *Manager) Release(n *Node) {
	n.mu.Lock()
	n.busy--
	if n.idle != nil {
		n.idle.Done()
	}
	n.mu.Unlock()
	m.notify()
}

// Run keeps every node connected until ctx ends. What it ends then, it
// ends with ErrMasterStopped as the cause.
func (m *Manager) Run(ctx context.Context) {
	runCtx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancel(nil)
	stop := context.AfterFunc(ctx, func() { cancel(ErrMasterStopped) })
	defer stop()
	m.listMu.Lock()
	m.runCtx = runCtx
	for _, n := range m.nodes {
		m.start(n)
	}
	m.listMu.Unlock()
	<-runCtx.Done()
	m.listMu.Lock()
	m.runCtx = nil // nodes added from now on are not run
	m.stopped = true
	all := slices.Clone(m.nodes)
	m.listMu.Unlock()
	m.retired.Wait()
	for _, n := range all {
		if n.done != nil {
			<-n.done
		}
	}
}

func (m *Manager) set(n *Node, state, reason string) {
	n.mu.Lock()
	changed := n.state != state || n.reason != reason
	if n.state != state {
		n.since = time.Now()
	}
	n.state, n.reason = state, reason
	if state == StateOnline {
		n.lost = ""
	}
	n.mu.Unlock()
	if changed {
		m.log.Info("node state", "node", n.name, "state", state, "reason", reason)
	}
	m.notify()
}

// run is one node's connect loop.
func (m *Manager) run(ctx context.Context, n *Node) {
	log := m.log.Named(n.name)
	backoff := relaunchMin
	var restarted <-chan struct{} // the launcher plugin is back after a crash: connect at once
	if p := m.plugin(n.Config().Launcher); p != nil {
		restarted = p.Subscribe()
	}
	end := endOther
	for ctx.Err() == nil {
		if n.onDemand() && end == endOther && !m.awaitDemand(ctx, n) {
			break
		}
		var ok bool
		ok, end = m.connect(ctx, n, log, end)
		if ctx.Err() != nil {
			break
		}
		n.mu.Lock()
		idled := n.idled
		n.idled, n.tearing = false, false
		if idled {
			n.demanded = false
		}
		n.mu.Unlock()
		if idled {
			// Taken offline for being idle: no backoff, wait for demand.
			m.teardown(ctx, n)
			backoff, end = relaunchMin, endOther
			continue
		}
		if ok {
			backoff = relaunchMin
		}
		wait := backoff
		if end == endPermanent {
			// Relaunching cannot help until the configuration or the
			// material it names changes; the launcher answers the next ask
			// from memory unless it did.
			wait = m.permanentRetry
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		case <-restarted:
			backoff = relaunchMin
		case <-n.kicked: // launch now (Manager.Launch)
			backoff, end = relaunchMin, endOther
			continue
		}
		backoff = min(backoff*2, relaunchMax)
	}
	m.set(n, StateOffline, "server shutting down")
}

// How a connection ended.
type ending int

const (
	endOther ending = iota
	// endPermanent: the launch failed for good (launcher.IsPermanent).
	endPermanent
	// endRefused: the agent kept failing to authenticate.
	endRefused
)

// connect launches the node and serves its sessions until the connection
// ends; it reports whether the node was online at some point, and how the
// connection ended. When the last one (last) ended with a refusal (for
// good, or of the agent's authentication), the node stays offline with its
// reason while the launcher is asked again (no "launching" flip, no log
// line, no new since, unless the answer changes); a launch refused for good
// that now succeeds shows the node launching again.
func (m *Manager) connect(ctx context.Context, n *Node, log hclog.Logger, last ending) (online bool, end ending) {
	// offline marks the node down, or unreachable while its session is held
	// for the agent to resume.
	offline := func(why string) {
		if held, until := n.sess.Held(); held {
			m.set(n, StateUnreachable, fmt.Sprintf("%s; running builds wait for the agent until %s", why, until.Format(time.RFC3339)))
			return
		}
		m.set(n, StateOffline, why)
	}
	n.mu.Lock()
	lost, cfg := n.lost, n.cfg
	n.mu.Unlock()
	if held, _ := n.sess.Held(); !held {
		if lost != "" {
			// The agent went silent for good: the node stays offline, saying
			// why, until the agent connects again.
			m.set(n, StateOffline, lost+"; waiting for the agent to connect")
		} else if last == endOther {
			m.set(n, StateLaunching, "launching")
		}
	}
	p := m.plugin(cfg.Launcher)
	if p == nil {
		offline(fmt.Sprintf("launcher %q is not loaded", cfg.Launcher))
		return false, endOther
	}
	// While the plugin restarts its calls fail with errors that say
	// nothing of it ("not configured"): say what happens.
	restarting := func() bool {
		if k := p.Restarting(); k > 0 {
			offline(fmt.Sprintf("launcher %s restarting (attempt %d)", cfg.Launcher, k))
			return true
		}
		return false
	}
	if restarting() {
		return false, endOther
	}
	proc := p.Process()
	var secret []byte
	if proc.Secrets != nil {
		s, err := proc.Secrets.NodeSecret(ctx, cfg.Name)
		if err != nil {
			if !restarting() {
				offline(fmt.Sprintf("get node secret: %v", err))
			}
			return false, endOther
		}
		secret = s.Secret
	}
	release, ok := m.launchSlot(ctx, n)
	if !ok {
		return false, endOther
	}
	// The launcher bounds its own launch (the SSH launcher:
	// launch_timeout, max_retries, retry_wait) and says why it gave up;
	// ctx ends it when the master stops. The backstop only ends a launch
	// whose launcher ignores its context.
	backstop := fmt.Errorf("launch not done within %v (the master's backstop; the launcher did not bound its launch)", m.launchBackstop)
	lctx, cancel := context.WithTimeoutCause(ctx, m.launchBackstop, backstop)
	type launched struct {
		conn launcher.Conn
		err  error
	}
	done := make(chan launched, 1)
	go func() {
		c, err := proc.Launcher.Launch(lctx, &launcher.Node{Name: cfg.Name, Labels: cfg.Labels, Config: cfg.Config, ApprovedKeys: n.approvedKeys()})
		done <- launched{c, err}
	}()
	var conn launcher.Conn
	var err error
	select {
	case r := <-done:
		conn, err = r.conn, r.err
	case <-lctx.Done():
		// Not waiting for a launcher that ignores its context: what it
		// returns late is closed.
		go func() {
			if r := <-done; r.conn != nil {
				_ = r.conn.Close()
			}
		}()
		err = context.Cause(lctx)
	}
	if err != nil && errors.Is(context.Cause(lctx), backstop) {
		err = backstop // not the launcher's "context deadline exceeded"
	}
	cancel()
	release()
	if err != nil {
		if ctx.Err() != nil {
			return false, endOther
		}
		if restarting() {
			return false, endOther
		}
		fp, _ := launcher.PendingApproval(err)
		m.keyPending(n, fp)
		offline(err.Error())
		if launcher.IsPermanent(err) {
			return false, endPermanent
		}
		return false, endOther
	}
	m.keyPending(n, "")
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	resumable := proc.Info.Has(launcher.CapResume)
	// cctx is this connection's: cut ends it with a cause (an operator's
	// disconnect, idleness). On a transport that resumes, a disconnect
	// only closes the connection so that the session is held for the
	// agent; otherwise the session ends with the cause.
	cctx, ccancel := context.WithCancelCause(ctx)
	defer ccancel(nil)
	var cutCause error
	n.mu.Lock()
	n.cut = func(cause error) {
		n.mu.Lock()
		cutCause = cause
		n.mu.Unlock()
		if resumable && !n.tearingNow() {
			_ = conn.Close()
			return
		}
		ccancel(cause)
	}
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		n.cut = nil
		if n.idle != nil {
			n.idle.Stop()
			n.idle = nil
		}
		n.mu.Unlock()
	}()
	// cutWhy is the cause of a cut, in place of what the connection's
	// end looked like.
	cutWhy := func(why string) string {
		n.mu.Lock()
		defer n.mu.Unlock()
		if cutCause != nil {
			return cutCause.Error()
		}
		return why
	}
	ctx = cctx

	desc := ""
	if d, ok := conn.(launcher.Describer); ok {
		desc = d.Description()
	}
	link := n.sess.Attach(conn, secret, resumable)
	defer link.Close()
	link.OnReachable = func(reachable bool, why error) {
		if reachable {
			m.set(n, StateOnline, "")
		} else {
			offline(why.Error())
		}
	}
	n.mu.Lock()
	n.desc = desc
	n.mu.Unlock()
	if st := n.Status().State; st == StateLaunching || (last == endPermanent && st == StateOffline && lost == "") {
		m.set(n, StateLaunching, "waiting for the agent to connect")
	}
	wasOnline := false
	// An agent that failed to authenticate may retry on this connection,
	// with the node's heartbeat timeout to succeed (from its first
	// refusal); then the node stays offline with the refusal as its reason
	// and is relaunched on the backoff.
	hctx := ctx
	var refused error
	var authTimer *time.Timer
	for {
		agent, resumed, err := link.Handshake(hctx)
		if errors.Is(err, session.ErrAuth) {
			if refused == nil {
				var hcancel context.CancelFunc
				hctx, hcancel = context.WithCancel(ctx)
				defer hcancel()
				authTimer = time.AfterFunc(n.hbTimeout, hcancel)
			}
			refused = err
			offline(err.Error())
			continue // the agent may retry with the right secret on this connection
		}
		if err != nil && refused != nil && ctx.Err() == nil && hctx.Err() != nil {
			// The reason stays the refusal: relaunches that meet it again
			// leave the node as it is.
			log.Debug("no authenticated hello within the heartbeat timeout of the agent's first refusal: relaunching", "timeout", n.hbTimeout, "refusal", refused)
			offline(refused.Error())
			return wasOnline, endRefused
		}
		if err != nil {
			offline(cutWhy(reason(err)))
			return wasOnline, endOther
		}
		if authTimer != nil {
			authTimer.Stop()
		}
		hctx, refused, authTimer = ctx, nil, nil
		n.mu.Lock()
		n.agent = agent
		n.mu.Unlock()
		wasOnline = true
		if resumed {
			log.Info("the agent resumed its session", "pending", n.sess.Pending().Frames)
		}
		m.startIdle(ctx, n)
		m.set(n, StateOnline, "")
		err = link.Serve(ctx)
		if !errors.Is(err, session.ErrRehello) {
			offline(cutWhy(reason(err)))
			return wasOnline, endOther
		}
		// The agent says hello again on this link (it resumes, or it
		// restarted): no new build until the handshake decides which.
		m.set(n, StateLaunching, "the agent said hello again: authenticating it")
	}
}

func reason(err error) string {
	if errors.Is(err, context.Canceled) || errors.Is(err, ErrMasterStopped) {
		return "server shutting down"
	}
	return err.Error()
}

// Labels returns the sorted labels of all nodes (their names included).
func (m *Manager) Labels() []string {
	set := map[string]bool{}
	for _, n := range m.Nodes() {
		n.mu.Lock()
		for l := range n.labels {
			set[l] = true
		}
		n.mu.Unlock()
	}
	out := make([]string, 0, len(set))
	for l := range set {
		out = append(out, l)
	}
	sort.Strings(out)
	return out
}
