// Package session is the agent's side of the master/agent protocol
// (docs/protocol.md, docs/sessions.md): the handshake with mutual
// authentication, heartbeats, stale-frame filtering, running steps and
// draining. A session outlives connections: when the master falls silent
// or the connection breaks, the steps keep running, their output waits in
// a bounded outbox (sdk/reliable) and the agent resumes the session —
// on the same connection or the next one Serve is given — where the
// master stopped acknowledging. A session that cannot be resumed within
// the session timeout ends and its steps are cancelled.
package session

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/agent/backoff"
	"github.com/conveyor-ci/conveyor/agent/runner"
	"github.com/conveyor-ci/conveyor/sdk/reliable"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// Conn is a bidirectional stream of encoded frames to the master (a Kafka
// topic pair, or stdin/stdout). Send may be called from several
// goroutines at once; Recv from one.
type Conn interface {
	Send(frame []byte) error
	Recv() ([]byte, error)
	Close() error
}

// Errors a session ends with. Serve returns only ErrDrained,
// ErrDisconnected, the context's error or a transport error; it starts a
// new session after the others.
var (
	// ErrRefused: the master refused the agent's proof (wrong secret).
	ErrRefused = errors.New("the master refused the agent")
	// ErrMasterLost: nothing arrived from the master for the heartbeat timeout.
	ErrMasterLost = errors.New("master lost")
	// ErrMasterClosed: the master ended the session with a Close frame.
	ErrMasterClosed = errors.New("the master closed the session")
	// ErrDisconnected: the connection ended (EOF).
	ErrDisconnected = errors.New("connection to the master ended")
	// ErrDrained: the agent drained and said goodbye.
	ErrDrained = errors.New("agent drained")

	// errHinted: an unsigned hint of the master (it has no key for the
	// session on this connection) made the agent resume.
	errHinted = errors.New("the master has no key for the session on this connection")
)

// Defaults of Config.
const (
	DefaultHeartbeat        = 5 * time.Second
	DefaultHeartbeatTimeout = 30 * time.Second
	DefaultHelloInterval    = 3 * time.Second
	DefaultDrainTimeout     = 5 * time.Minute
	DefaultRetryMin         = 500 * time.Millisecond
	DefaultRetryMax         = 30 * time.Second
	DefaultSessionTimeout   = 5 * time.Minute
	// DefaultOutboxBytes bounds the step output kept until the master
	// acknowledges it; a step printing more waits (its pipe fills). It is
	// also how far the agent's output may run ahead of the master: a
	// step's Exit queues behind at most this much in a Kafka topic, so
	// at the master's pace (tens of MiB/s) a cancel is recorded well
	// within a second (at 64 MiB it took 1.5-2 s).
	DefaultOutboxBytes = 8 << 20
)

// Config configures an agent. Zero durations take their defaults.
type Config struct {
	// Node is the node's name, sent in Hello.
	Node string
	// Secret is the node's secret; empty for transports that authenticate
	// the agent themselves (the proofs then use the empty key).
	Secret []byte
	// Version is the agent's version, sent in Hello.
	Version string
	// Workdir holds the builds' workspaces.
	Workdir string
	// Env is the environment steps start from (os.Environ() when nil);
	// each step's own variables are added to it.
	Env []string
	// Heartbeat is the ping interval.
	Heartbeat time.Duration
	// HeartbeatTimeout is how long the master may stay silent before the
	// agent says Hello again to resume the session; it also bounds the
	// wait for an AuthResult.
	HeartbeatTimeout time.Duration
	// SessionTimeout is how long a session whose master is out of reach
	// is kept (its steps running, their output buffered) for a resume.
	SessionTimeout time.Duration
	// OutboxBytes bounds the output kept until the master acknowledged
	// it; a step printing more waits until the master catches up.
	OutboxBytes int
	// HelloInterval is how often an unanswered Hello is repeated: over
	// Kafka the master may not be reading yet.
	HelloInterval time.Duration
	// DrainTimeout bounds how long a drain waits for running steps before
	// cancelling them.
	DrainTimeout time.Duration
	// RetryMin and RetryMax bound the backoff before saying Hello again
	// after the master refused the agent.
	RetryMin, RetryMax time.Duration
	// Grace is the time between SIGTERM and SIGKILL of a cancelled step
	// (runner.DefaultGrace when zero).
	Grace time.Duration
	// Logger logs the agent's events.
	Logger hclog.Logger
}

// maxPendingChallenges bounds the challenges one handshake answers with an
// empty proof.
const maxPendingChallenges = 16

// maxHelloNonces is how many of its latest Hellos a handshake accepts a
// challenge for: a master may answer an earlier Hello of the same attempt
// after the agent repeated it.
const maxHelloNonces = 8

// Features are what the agent announces in its Hello beyond the frames
// of every agent (wire.FeatureCollect, wire.FeatureStdin, wire.FeatureShell).
var Features = []string{wire.FeatureCollect, wire.FeatureStdin, wire.FeatureShell}

// Counters count the frames the agent dropped.
type Counters struct {
	// Stale frames belonged to another session this agent had, arrived
	// before the handshake completed, or carried a forged or outdated
	// challenge; they were never executed.
	Stale uint64 `json:"stale"`
	// Malformed frames did not decode.
	Malformed uint64 `json:"malformed"`
	// Unexpected frames made no sense in the session's state.
	Unexpected uint64 `json:"unexpected"`
	// Replayed frames repeated or reordered a control frame of the current
	// session (their counter did not rise); they were not executed.
	Replayed uint64 `json:"replayed"`
	// Duplicate numbered frames were delivered already (resent after a
	// resume, or replayed); they were not executed again.
	Duplicate uint64 `json:"duplicate"`
	// Forged frames of the current session carried a MAC that does not
	// verify under the session key, or none where one was due; once the
	// session was established on the link, frames of a session this agent
	// never had (another node's) are forged too. They were not executed.
	Forged uint64 `json:"forged"`
	// Hints are the unsigned frames a master sends for a session it has
	// no key for (a restarted master, a new connection before the resume):
	// a Close asking the agent to resume, a Pong of an older master. They
	// are expected, not forgeries: resumes at a bounded rate (hintBurst)
	// follow from them, and nothing else (docs/sessions.md).
	Hints uint64 `json:"hints"`
	// Transport counts what the transport itself dropped before any frame
	// was decoded (a Kafka record or a partial frame that did not
	// reassemble: kafkatransport.Conn.Malformed).
	Transport uint64 `json:"transport_malformed"`
}

// Stats are the counters as the agent reports them to the master with
// its heartbeats (wire.Stats).
func (c Counters) Stats() *wire.Stats {
	return &wire.Stats{Counters: []wire.Counter{
		{Name: "stale", Value: c.Stale}, {Name: "malformed", Value: c.Malformed},
		{Name: "unexpected", Value: c.Unexpected}, {Name: "replayed", Value: c.Replayed},
		{Name: "duplicate", Value: c.Duplicate}, {Name: "forged", Value: c.Forged},
		{Name: "hint", Value: c.Hints}, {Name: "transport_malformed", Value: c.Transport},
	}}
}

// transportCounter is a connection that counts what it dropped itself
// (kafkatransport.Conn); Malformed may be called from any goroutine.
type transportCounter interface {
	Malformed() uint64
}

// Agent runs the agent's sessions, one at a time, and their steps.
type Agent struct {
	cfg Config
	log hclog.Logger

	draining atomic.Bool
	drainCh  chan struct{}
	drainMu  sync.Once

	stale, malformed, unexpected, replayed, forged, hints atomic.Uint64

	// hintResumes are when unsigned hints last made the agent resume
	// (see hintAllowed); only the session's loop uses them.
	hintResumes []time.Time

	transportMu   sync.Mutex
	transport     transportCounter // the connection Serve serves, when it counts
	transportDone uint64           // what the connections served before counted

	mu     sync.Mutex
	steps  map[string]*step      // by build id
	stdins map[string]*stdinFeed // by build id: announced for its next step, or its running step's
	cur    *sess                 // the session to resume; nil when none
	dups   atomic.Uint64         // duplicates of ended sessions
	had    []uint64              // sessions this agent had, newest last (remember)

	strangerWarned atomic.Bool // a frame of a session this agent never had was logged at WARN
}

type step struct {
	cancel context.CancelCauseFunc
	stdin  *stdinFeed // nil: the step's stdin is /dev/null
}

// New returns an agent.
func New(cfg Config) *Agent {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.Heartbeat, DefaultHeartbeat)
	def(&cfg.HeartbeatTimeout, DefaultHeartbeatTimeout)
	def(&cfg.HelloInterval, DefaultHelloInterval)
	def(&cfg.DrainTimeout, DefaultDrainTimeout)
	def(&cfg.RetryMin, DefaultRetryMin)
	def(&cfg.RetryMax, DefaultRetryMax)
	def(&cfg.SessionTimeout, DefaultSessionTimeout)
	if cfg.OutboxBytes <= 0 {
		cfg.OutboxBytes = DefaultOutboxBytes
	}
	if cfg.Env == nil {
		cfg.Env = os.Environ()
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	return &Agent{cfg: cfg, log: cfg.Logger, drainCh: make(chan struct{}), steps: map[string]*step{}, stdins: map[string]*stdinFeed{}}
}

// Counters reports the frames dropped so far.
func (a *Agent) Counters() Counters {
	c := Counters{Stale: a.stale.Load(), Malformed: a.malformed.Load(), Unexpected: a.unexpected.Load(),
		Replayed: a.replayed.Load(), Forged: a.forged.Load(), Duplicate: a.dups.Load(), Hints: a.hints.Load()}
	a.transportMu.Lock()
	c.Transport = a.transportDone
	if a.transport != nil {
		c.Transport += a.transport.Malformed()
	}
	a.transportMu.Unlock()
	a.mu.Lock()
	cur := a.cur
	a.mu.Unlock()
	if cur != nil {
		d, _ := cur.ep.Dropped()
		c.Duplicate += d
	}
	return c
}

// Drain stops the agent taking new steps (they are answered with Exit -1
// "agent draining"); the running session lets running steps finish
// (cancelling them after the drain timeout), reports them, says Close and
// Serve returns ErrDrained. Without a session Serve returns at once.
func (a *Agent) Drain() {
	a.drainMu.Do(func() {
		a.draining.Store(true)
		close(a.drainCh)
	})
}

// DrainRequested is closed once Drain was called.
func (a *Agent) DrainRequested() <-chan struct{} { return a.drainCh }

// Running is the number of steps running.
func (a *Agent) Running() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.steps)
}

// errSessionEnded is what a step's sends return once its session ended.
var errSessionEnded = errors.New("session ended")

// sess is one authenticated session; it outlives connections. Its steps
// report through its endpoint until it ends.
type sess struct {
	ep     *reliable.Endpoint
	id     uint64
	ctx    context.Context // ends with the session: blocked sends give up
	cancel context.CancelCauseFunc

	wg sync.WaitGroup // its running steps

	mu    sync.Mutex
	hold  *time.Timer // the session timeout while no master is in reach
	ended bool
}

// sendRaw sends an unsigned frame outside any session epoch: a Hello, the
// empty proof of a challenge that did not verify, a Pong before a session.
func sendRaw(c Conn, m wire.Message, session uint64) error {
	f := wire.NewFrame(m)
	f.Session = session
	b, err := f.Encode()
	if err != nil {
		return fmt.Errorf("encode %v: %w", f.Type, err)
	}
	if err := c.Send(b); err != nil {
		return fmt.Errorf("send %v: %w", f.Type, err)
	}
	return nil
}

// Serve runs the agent's session over c until the connection fails or
// ends (ErrDisconnected), ctx ends, or the agent drained (ErrDrained). It
// says Hello again — resuming the current session if there is one — after
// the master fell silent or said the session is unknown, at once, and
// after a backoff when the master refused the agent. A session outlives a
// failed connection: the next Serve resumes it, unless the session timeout
// expired first (its steps are then cancelled).
func (a *Agent) Serve(ctx context.Context, c Conn) error {
	if tc, ok := c.(transportCounter); ok {
		a.transportMu.Lock()
		a.transport = tc
		a.transportMu.Unlock()
		defer func() {
			a.transportMu.Lock()
			a.transport = nil
			a.transportDone += tc.Malformed()
			a.transportMu.Unlock()
		}()
	}
	readCtx, stopRead := context.WithCancel(ctx)
	defer stopRead()
	in := reliable.Read(readCtx, c, func(err error) {
		a.malformed.Add(1)
		a.log.Warn("dropped malformed frame", "error", err)
	})

	retry := backoff.New(a.cfg.RetryMin, a.cfg.RetryMax)
	for {
		s, err := a.session(ctx, c, in)
		if (errors.Is(err, ErrMasterLost) || errors.Is(err, ErrMasterClosed)) && !a.draining.Load() {
			// Said before the session is held: holding it may wait for a
			// send in flight on a frozen transport.
			a.log.Warn("saying hello again", "error", err)
		}
		if s != nil {
			retry.Reset()
			if !errors.Is(err, ErrDrained) && !errors.Is(err, ErrMasterClosed) {
				a.holdSession(s, err)
			} else {
				a.endSession(s, err)
			}
		}
		switch {
		case errors.Is(err, ErrDrained):
			return err
		case a.draining.Load() && (errors.Is(err, ErrMasterLost) || errors.Is(err, ErrMasterClosed) || errors.Is(err, ErrRefused)):
			a.log.Warn("session ended while draining", "error", err)
			return fmt.Errorf("%w (%v)", ErrDrained, err)
		case errors.Is(err, ErrRefused):
			wait := retry.Next()
			a.log.Error("the master refused the agent; saying hello again later", "error", err, "in", wait.Round(time.Millisecond))
			if err := a.idle(ctx, c, in, wait); err != nil {
				return err
			}
		case errors.Is(err, ErrMasterLost), errors.Is(err, ErrMasterClosed):
		case errors.Is(err, errHinted):
			// Even while draining: the resumed session reports the steps'
			// exits.
			a.log.Info("resuming the session at the master's hint", "reason", err)
		default:
			return err
		}
	}
}

// recvErr maps a receive error to the error Serve returns.
func recvErr(err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return ErrDisconnected
	}
	return fmt.Errorf("receive: %w", err)
}

// idle waits d between sessions: it answers pings and drops everything
// else, returning early when the connection fails, ctx ends or the agent
// drains.
func (a *Agent) idle(ctx context.Context, c Conn, in *reliable.Frames, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.drainCh:
			return ErrDrained
		case <-t.C:
			return nil
		case f, ok := <-in.C:
			if !ok {
				return recvErr(in.Err())
			}
			if m, err := f.Message(); err == nil {
				if p, ok := m.(*wire.Ping); ok {
					_ = sendRaw(c, &wire.Pong{Nonce: p.Nonce, UnixNano: p.UnixNano}, f.Session)
					continue
				}
			}
			a.stale.Add(1)
		}
	}
}

// holdSession keeps s for a resume while no master is in reach, for the
// session timeout; its steps keep running and their output waits.
// The session timeout runs before the endpoint is detached: detaching
// waits for a send in flight, which a frozen transport holds as long as it
// stays frozen.
func (a *Agent) holdSession(s *sess, why error) {
	defer s.ep.Detach()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hold != nil {
		return
	}
	timeout := a.cfg.SessionTimeout
	if n := a.Running(); n > 0 {
		a.log.Warn("master out of reach: steps keep running, their output waits for the resume", "steps", n, "session_timeout", timeout, "error", why)
	}
	s.hold = time.AfterFunc(timeout, func() {
		a.endSession(s, fmt.Errorf("no contact with the master for %s (session timeout): %v", timeout, why))
	})
}

// resumed stops the session timeout of s; false if s ended meanwhile.
func (s *sess) resumed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hold != nil {
		if !s.hold.Stop() {
			s.ended = true // the timeout fired: endSession runs
		}
		s.hold = nil
	}
	return !s.ended
}

// End ends the session kept for a resume, if any: its steps are cancelled
// and waited for. The agent calls it before it exits, so that no step
// outlives it unreported.
func (a *Agent) End(reason error) {
	if s := a.current(); s != nil {
		a.endSession(s, reason)
	}
}

// current is the session to resume, nil when none.
func (a *Agent) current() *sess {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cur
}

// endSession ends s: its steps are cancelled (they cannot be reported to
// another session) and it is waited for.
func (a *Agent) endSession(s *sess, err error) {
	if s.ctx.Err() != nil {
		return // ended already
	}
	s.mu.Lock()
	s.ended = true
	if s.hold != nil {
		s.hold.Stop()
		s.hold = nil
	}
	s.mu.Unlock()
	a.mu.Lock()
	if a.cur == s {
		a.cur = nil
	}
	a.mu.Unlock()
	s.cancel(fmt.Errorf("%w: %v", errSessionEnded, err))
	s.ep.Close(fmt.Errorf("%w: %v", errSessionEnded, err))
	d, _ := s.ep.Dropped()
	a.dups.Add(d)
	if n := a.Running(); n > 0 {
		a.log.Warn("session ended: cancelling its running steps", "steps", n, "error", err)
	}
	a.cancelAll(fmt.Errorf("session ended: %v", err))
	s.wg.Wait()
}

// handshake is one handshake attempt's state.
type handshake struct {
	nonces   [][]byte                      // of the latest Hellos, newest last
	answered map[uint64]bool               // challenges answered, genuine or not
	genuine  map[uint64]*reliable.Endpoint // the endpoint of each challenge whose master proved the secret
	keys     map[uint64]wire.Keys          // frame keys of the genuine challenges
	refusal  map[uint64][]byte             // the key of the master's signed refusal, per genuine challenge (wire.RefusalKey)
	authBy   time.Time                     // when a genuine challenge's AuthResult is due
}

// session runs one handshake — resuming the current session if any — and,
// when it succeeds, serves the session on c until the master falls silent
// or closes it, the connection fails, ctx ends or the agent drained. It
// returns the session (nil when none was established) and why it stopped.
func (a *Agent) session(ctx context.Context, c Conn, in *reliable.Frames) (*sess, error) {
	a.mu.Lock()
	cur := a.cur
	a.mu.Unlock()
	var hs handshake
	sendHello := func(fresh bool) error {
		if fresh {
			hs = handshake{answered: map[uint64]bool{}, genuine: map[uint64]*reliable.Endpoint{}, keys: map[uint64]wire.Keys{}, refusal: map[uint64][]byte{}}
		}
		nonce := make([]byte, wire.NonceSize)
		_, _ = rand.Read(nonce)
		hs.nonces = append(hs.nonces, nonce)
		if len(hs.nonces) > maxHelloNonces {
			hs.nonces = hs.nonces[1:]
		}
		hello := &wire.Hello{Node: a.cfg.Node, AgentVersion: wire.VersionWithFeatures(a.cfg.Version, Features...),
			OS: runtime.GOOS, Arch: runtime.GOARCH, Nonce: nonce}
		var session uint64
		cur = a.current() // the session timeout may have ended it
		if cur != nil {
			hello.Resume, hello.LastSeq, session = true, cur.ep.Acked(), cur.id
		}
		return sendRaw(c, hello, session)
	}
	if a.draining.Load() && cur == nil {
		return nil, ErrDrained
	}
	if err := sendHello(true); err != nil {
		return nil, err
	}
	a.log.Debug("hello sent", "node", a.cfg.Node, "resume", cur != nil)
	helloTick := time.NewTicker(a.cfg.HelloInterval)
	defer helloTick.Stop()

	var s *sess // the session once established
	// suspect: an unauthenticated Close claimed the session is over (a
	// restarted master does not know its key) while a hint had made the
	// agent resume less than a heartbeat ago; unless a genuine frame
	// arrives before it fires (once the hints' rate allows), the agent says
	// hello again to find out.
	var suspect *time.Timer
	var suspectC <-chan time.Time
	defer func() {
		if suspect != nil {
			suspect.Stop()
		}
	}()
	var beat <-chan time.Time
	var lastSeen time.Time
	var pingNonce uint64
	drainCh := a.drainCh
	var drainDone chan struct{}
	var goodbye chan struct{}  // closed once the Close was sent
	var broken <-chan struct{} // closed when a send on this connection failed
	var ctl *controlSender     // sends the session's pings, pongs and acks
	var ctlFailed <-chan struct{}
	var dups reliable.DuplicateRun // dropped since the last frame delivered
	defer func() {
		dups.Report(a.log)
		if ctl != nil {
			ctl.stop()
		}
	}()
	stats := false // the master takes the agent's counters (wire.FeatureStats)

	for {
		select {
		case <-ctx.Done():
			return s, ctx.Err()
		case <-helloTick.C:
			if s != nil {
				continue
			}
			switch {
			case len(hs.genuine) == 0:
				a.log.Debug("no genuine challenge yet: saying hello again", "node", a.cfg.Node)
				if err := sendHello(false); err != nil {
					return nil, err
				}
			case time.Now().After(hs.authBy):
				a.log.Warn("no answer to the agent's proof: starting the handshake again", "timeout", a.cfg.HeartbeatTimeout)
				if err := sendHello(true); err != nil {
					return nil, err
				}
			}
		case <-beat:
			if silent := time.Since(lastSeen); silent > a.cfg.HeartbeatTimeout {
				return s, fmt.Errorf("%w: nothing received for %s", ErrMasterLost, silent.Round(time.Millisecond))
			}
			// Queued, never waited for: the silence checks above must run on
			// time even while a frozen transport holds a send.
			pingNonce++
			ctl.send(&wire.Ping{Nonce: pingNonce, UnixNano: time.Now().UnixNano()})
			ctl.send(&wire.Ack{})
			if stats {
				ctl.send(a.Counters().Stats())
			}
		case <-suspectC:
			a.hintResumed(time.Now())
			return s, fmt.Errorf("%w (it answered no ping since)", errHinted)
		case <-ctlFailed:
			return s, ctl.error()
		case <-drainCh:
			drainCh = nil
			if s == nil {
				if cur == nil {
					return nil, ErrDrained
				}
				continue // drain once the session is resumed
			}
			a.log.Info("draining: waiting for running steps", "steps", a.Running(), "timeout", a.cfg.DrainTimeout)
			drainDone = make(chan struct{})
			go func() {
				defer close(drainDone)
				a.waitSteps(s, a.cfg.DrainTimeout)
			}()
		case <-drainDone:
			drainDone = nil
			goodbye = make(chan struct{})
			go func() { // not on the reading goroutine: a full outbox waits for its Acks
				defer close(goodbye)
				if err := s.ep.Send(ctx, &wire.Close{Reason: "agent shutting down"}); err != nil {
					a.log.Warn("could not say goodbye", "error", err)
				}
			}()
		case <-goodbye:
			return s, ErrDrained
		case <-broken:
			return s, fmt.Errorf("send to the master failed: %w", ErrDisconnected)
		case f, ok := <-in.C:
			if !ok {
				return s, recvErr(in.Err())
			}
			msg, err := f.Message()
			if err != nil {
				a.malformed.Add(1)
				a.log.Warn("dropped undecodable frame", "type", f.Type, "error", err)
				continue
			}
			if s == nil {
				ep, authResult, err := a.handshakeFrame(c, cur, &hs, f, msg)
				if hs.genuine[f.Session] != nil {
					a.remember(f.Session) // the master may use it even if this handshake fails
				}
				if err != nil {
					return nil, err
				}
				if ep == nil {
					continue
				}
				if s, err = a.established(ep, authResult, cur); err != nil {
					return s, err
				}
				if m, err := authResult.Message(); err == nil {
					_, features := wire.SplitFeatures(m.(*wire.AuthResult).Reason)
					stats = slices.Contains(features, wire.FeatureStats)
				}
				lastSeen = time.Now()
				broken = s.ep.Broken()
				ctl = newControlSender(s)
				ctlFailed = ctl.failed
				t := time.NewTicker(a.cfg.Heartbeat)
				defer t.Stop()
				beat = t.C
				if a.draining.Load() && drainCh == nil && drainDone == nil {
					drainCh = a.drainCh // drain requested while resuming
				}
				continue
			}
			if f.Session != s.id && f.Session != 0 && f.Type != wire.TypeChallenge && !a.hadSession(f.Session) {
				// Established on this link: in the ordered transport the
				// leftovers of this agent's earlier sessions (and of an
				// earlier agent process's) came before the AuthResult. A
				// session it never had is another node's, copied into its
				// topic. The master's Challenges are exempt: it answers
				// every plausible Hello on the topic, whoever wrote it.
				n := a.forged.Add(1)
				log := a.log.Debug
				if a.strangerWarned.CompareAndSwap(false, true) {
					log = a.log.Warn
				}
				log("dropped a frame of a session this agent never had", "type", f.Type, "session", fmt.Sprintf("%016x", f.Session), "forged", n)
				continue
			}
			if f.Session != s.id {
				n := a.stale.Add(1)
				a.log.Debug("dropped a frame of another session", "type", f.Type, "session", fmt.Sprintf("%016x", f.Session), "stale", n)
				continue
			}
			// Every frame of the session carries a MAC under the epoch's key,
			// numbered frames arrive once and in order, the others with a
			// rising counter: a frame injected into the transport, altered
			// or replayed is dropped and never executed.
			switch v := s.ep.Receive(f); v {
			case reliable.Forged:
				if len(f.MAC) == 0 && (f.Type == wire.TypeClose || f.Type == wire.TypePong) {
					// A master without the session's key (restarted, or on a
					// new connection before the resume) cannot sign: its
					// Close is a hint to resume, and an older master's
					// unsigned Pong says as much. Expected, not forged, as
					// long as hints come at the rate they make the agent
					// resume (hintAllowed); beyond it they are counted as
					// forged, so that an injection campaign shows in the
					// counters the master reports.
					now := time.Now()
					allowed := a.hintAllowed()
					if now.Before(allowed) {
						n := a.forged.Add(1)
						a.log.Warn("unsigned hint beyond the hints' rate: counted as forged", "type", f.Type, "forged", n)
					} else {
						n := a.hints.Add(1)
						a.log.Debug("unsigned hint of the master: it has no key for the session", "type", f.Type, "hints", n)
					}
					if f.Type != wire.TypeClose {
						continue
					}
					// Resuming runs the mutual authentication again and
					// changes nothing of the session before it succeeds: a
					// forged hint costs a handshake, and hints make the
					// agent resume at a bounded rate. A hint beyond it is
					// checked with a ping: a live master answers it, signed;
					// if none does, the agent resumes once the rate allows.
					if !now.Before(allowed) {
						a.hintResumed(now)
						return s, fmt.Errorf("%w (%s)", errHinted, msg.(*wire.Close).Reason)
					}
					if suspect == nil {
						a.log.Info("unauthenticated close soon after a resume: checking whether the master still knows the session", "reason", msg.(*wire.Close).Reason)
						// Time for a live master's answer, however soon the
						// heartbeat ends.
						suspect = time.NewTimer(max(allowed.Sub(now), min(a.cfg.Heartbeat, time.Second)))
						suspectC = suspect.C
						pingNonce++
						ctl.send(&wire.Ping{Nonce: pingNonce, UnixNano: now.UnixNano()})
					}
					continue
				}
				n := a.forged.Add(1)
				a.log.Warn("dropped a frame with a bad MAC", "type", f.Type, "seq", f.Seq, "forged", n)
				continue
			case reliable.Replayed:
				n := a.replayed.Add(1)
				a.log.Warn("dropped a replayed frame", "type", f.Type, "seq", f.Seq, "replayed", n)
				continue
			case reliable.Duplicate:
				dups.Add(f) // one line for the run, once it ends
				continue
			case reliable.Gap:
				a.log.Debug("dropped a frame after a gap: it comes again", "type", f.Type, "seq", f.Seq)
				continue
			}
			dups.Report(a.log)
			lastSeen = time.Now()
			if suspect != nil {
				suspect.Stop()
				suspect, suspectC = nil, nil
			}
			switch m := msg.(type) {
			case *wire.Ping:
				ctl.send(&wire.Pong{Nonce: m.Nonce, UnixNano: m.UnixNano})
			case *wire.Pong, *wire.Ack:
			case *wire.RunStep:
				a.start(s, m)
			case *wire.Stdin:
				a.stdin(m)
			case *wire.Collect:
				a.collect(s, m)
			case *wire.Cancel:
				a.cancel(m.BuildID, errors.New(m.Reason))
			case *wire.Close:
				_ = s.ep.Handled()
				return s, fmt.Errorf("%w: %s", ErrMasterClosed, m.Reason)
			default:
				a.unexpected.Add(1)
				a.log.Debug("dropped an unexpected frame", "type", f.Type)
			}
			if reliable.Sequenced(f.Type) && s.ep.Mark() {
				ctl.send(&wire.Ack{})
			}
		}
	}
}

// hintBurst is how many resumes unsigned hints may cause within
// hintBurst heartbeats: on average at most one per heartbeat, and a
// master restarted twice in a row (or a plugin and then its master) is
// still followed at once.
const hintBurst = 3

// hintAllowed is when unsigned hints may next make the agent resume.
func (a *Agent) hintAllowed() time.Time {
	if len(a.hintResumes) < hintBurst {
		return time.Time{}
	}
	return a.hintResumes[len(a.hintResumes)-hintBurst].Add(hintBurst * a.cfg.Heartbeat)
}

// hintResumed records a resume an unsigned hint caused at t.
func (a *Agent) hintResumed(t time.Time) {
	a.hintResumes = append(a.hintResumes, t)
	if len(a.hintResumes) > hintBurst {
		a.hintResumes = a.hintResumes[len(a.hintResumes)-hintBurst:]
	}
}

// controlSender sends a session's unnumbered frames (pings, pongs, acks,
// stats) from its own goroutine, so that the session's loop, which runs
// its liveness timers, never waits for a send: a frozen transport (a
// broker stopped, a link blackholed) can hold a send for as long as it
// lasts. A frame queued while the queue is full is dropped: a ping, a pong
// or an ack that could not go is superseded by the next one anyway.
type controlSender struct {
	s      *sess
	q      chan wire.Message
	done   chan struct{}
	failed chan struct{} // closed when a send failed; err says why
	err    error
	once   sync.Once
}

func newControlSender(s *sess) *controlSender {
	c := &controlSender{s: s, q: make(chan wire.Message, 16), done: make(chan struct{}), failed: make(chan struct{})}
	go c.run()
	return c
}

func (c *controlSender) run() {
	for {
		select {
		case <-c.done:
			return
		case m := <-c.q:
			select {
			case <-c.done: // the session's loop returned: its epoch may be over
				return
			default:
			}
			var err error
			if _, ok := m.(*wire.Ack); ok {
				err = c.s.ep.FlushAck()
			} else {
				err = c.s.ep.SendControl(m, c.s.id)
			}
			if err != nil {
				c.err = err
				close(c.failed)
				return
			}
		}
	}
}

// send queues m (an Ack means: flush the Ack if one is due).
func (c *controlSender) send(m wire.Message) {
	select {
	case c.q <- m:
	default:
	}
}

// error is why a send failed, once failed is closed.
func (c *controlSender) error() error { return c.err }

// stop ends the sender; a send in flight ends on its own.
func (c *controlSender) stop() { c.once.Do(func() { close(c.done) }) }

// established makes the session the master accepted current: the resumed
// one (its outbox is sent again from the master's Ack on) or a new one
// (the previous session, which the master no longer knows, ends).
func (a *Agent) established(ep *reliable.Endpoint, authResult *wire.Frame, cur *sess) (*sess, error) {
	id := authResult.Session
	if cur != nil && cur.ep == ep {
		if !cur.resumed() {
			// The session timeout ended it during the handshake: nothing to
			// resume; the next hello starts afresh.
			return nil, fmt.Errorf("%w: the session timed out while resuming", ErrMasterLost)
		}
		p := ep.Pending()
		if err := ep.Resend(authResult.Ack); err != nil {
			return cur, err
		}
		a.log.Info("session resumed", "node", a.cfg.Node, "session", fmt.Sprintf("%016x", id), "master_has", authResult.Ack, "resent", p.Last-authResult.Ack)
		return cur, nil
	}
	if cur != nil && a.current() == cur {
		a.endSession(cur, fmt.Errorf("the master does not know session %016x any more (it restarted, or the session timed out)", cur.id))
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	a.remember(id)
	s := &sess{ep: ep, id: id, ctx: ctx, cancel: cancel}
	a.mu.Lock()
	a.cur = s
	a.mu.Unlock()
	a.log.Info("session established", "node", a.cfg.Node, "session", fmt.Sprintf("%016x", id))
	return s, nil
}

// handshakeFrame handles a frame that arrived before the session was
// established. Once the master accepted the agent's genuine proof it
// returns the session's endpoint and the AuthResult frame.
func (a *Agent) handshakeFrame(c Conn, cur *sess, hs *handshake, f *wire.Frame, msg wire.Message) (*reliable.Endpoint, *wire.Frame, error) {
	switch m := msg.(type) {
	case *wire.Ping:
		// Answered in any state: a ping executes nothing.
		if err := sendRaw(c, &wire.Pong{Nonce: m.Nonce, UnixNano: m.UnixNano}, f.Session); err != nil {
			return nil, nil, err
		}
	case *wire.Challenge:
		// Only a genuine answer closes a session's challenges: a resume's
		// challenges all name the resumed session, and one that answered
		// an injected Hello (it does not verify) may come before the
		// agent's own.
		if f.Session == 0 || hs.genuine[f.Session] != nil {
			a.stale.Add(1)
			return nil, nil, nil
		}
		if cur != nil && cur.id == f.Session && a.current() != cur {
			// An offer to resume the session the agent ended (its session
			// timeout ran out meanwhile): its steps are gone. The next hello
			// asks for a new session.
			a.stale.Add(1)
			a.log.Info("ignored a challenge to resume the ended session", "session", fmt.Sprintf("%016x", f.Session))
			return nil, nil, nil
		}
		for _, nonceA := range hs.nonces {
			if wire.ProofEqual(m.Proof, wire.MasterProof(a.cfg.Secret, nonceA, m.Nonce)) {
				// The resumed session keeps its endpoint (its outbox); a new
				// session number means the master started a new session.
				ep := reliable.NewEndpoint(a.cfg.OutboxBytes)
				if cur != nil && cur.id == f.Session && a.current() == cur {
					ep = cur.ep
				}
				ep.Begin(c)
				hs.answered[f.Session], hs.genuine[f.Session] = true, ep
				hs.keys[f.Session] = wire.KeysFor(wire.SessionKey(a.cfg.Secret, nonceA, m.Nonce, f.Session), wire.RoleAgent)
				hs.refusal[f.Session] = wire.RefusalKey(a.cfg.Secret, nonceA, m.Nonce, f.Session)
				hs.authBy = time.Now().Add(a.cfg.HeartbeatTimeout)
				a.log.Debug("the master proved the secret: answering its challenge", "session", fmt.Sprintf("%016x", f.Session))
				return nil, nil, ep.SendControl(&wire.Auth{Proof: wire.AgentProof(a.cfg.Secret, m.Nonce, nonceA)}, f.Session)
			}
		}
		// A stale challenge (answering an older hello), a forged one, or a
		// master holding another secret. Answer with an empty proof while
		// no genuine challenge was answered: the master ignores it for a
		// session it is not negotiating, and refuses it for the current
		// one, saying why, so that the node shows "wrong secret". Nothing
		// runs either way.
		a.stale.Add(1)
		a.log.Warn("the master's proof does not verify: wrong secret on one side, or a stale challenge", "session", fmt.Sprintf("%016x", f.Session))
		if len(hs.genuine) == 0 && !hs.answered[f.Session] && len(hs.answered) < maxPendingChallenges {
			hs.answered[f.Session] = true
			return nil, nil, sendRaw(c, &wire.Auth{}, f.Session)
		}
	case *wire.AuthResult:
		ep := hs.genuine[f.Session]
		switch {
		case !hs.answered[f.Session]:
			a.stale.Add(1)
		case !m.OK && ep != nil && wire.Verify(hs.refusal[f.Session], f):
			return nil, nil, fmt.Errorf("%w: %s", ErrRefused, m.Reason)
		case !m.OK && len(hs.genuine) > 0:
			// A master proved the secret in this handshake: it signs its
			// refusals of this agent's genuine proof (wire.RefusalKey).
			// Anyone who saw the Challenge can inject an unsigned one (it
			// would make the agent back off), and a refusal of a challenge
			// that did not prove the secret concerns no master of ours.
			// An older master refuses this agent's proof unsigned, as a
			// wrong secret: the log says so.
			n := a.forged.Add(1)
			a.log.Warn("ignored a refusal that the master did not sign: forged, or a master older than this agent (upgrade the master)",
				"session", fmt.Sprintf("%016x", f.Session), "reason", m.Reason, "forged", n)
		case !m.OK:
			// No challenge proved the secret: the master holds another
			// secret (or none answered yet), and cannot sign for this
			// agent.
			return nil, nil, fmt.Errorf("%w: %s", ErrRefused, m.Reason)
		case ep == nil || m.Session != f.Session:
			a.stale.Add(1) // accepted without our proof: not our master
			a.log.Warn("ignored an acceptance of a challenge that did not prove the secret", "session", fmt.Sprintf("%016x", f.Session))
		case !wire.Verify(hs.keys[f.Session].Receive, f):
			n := a.forged.Add(1)
			a.log.Warn("dropped a frame with a bad MAC", "type", f.Type, "forged", n)
		default:
			ep.Established(f.Session, hs.keys[f.Session], f.Seq)
			return ep, f, nil
		}
	default:
		a.stale.Add(1) // a frame of an earlier session, or a forged one
		a.log.Debug("dropped a frame before the handshake completed", "type", f.Type, "session", fmt.Sprintf("%016x", f.Session))
	}
	return nil, nil, nil
}

// start runs a step in the background and reports its output and exit.
func (a *Agent) start(s *sess, m *wire.RunStep) {
	log := a.log.With("build", m.BuildID, "step", m.StepName, "index", m.StepIndex)
	exit := func(code int32, msg string) {
		if err := s.ep.Send(s.ctx, &wire.Exit{BuildID: m.BuildID, StepIndex: m.StepIndex, Code: code, Error: msg}); err != nil {
			log.Warn("could not report the step's exit", "error", err)
		}
	}
	if a.draining.Load() {
		log.Info("refused a step: draining")
		go exit(-1, "agent draining") // not on the reading goroutine: a full outbox waits for its Acks
		return
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	st := &step{cancel: cancel}
	if !a.track(s, m.BuildID, st, true) {
		cancel(nil)
		go exit(-1, "build "+m.BuildID+" already runs a step on this agent")
		return
	}

	env := append([]string(nil), a.cfg.Env...)
	for _, e := range m.Env {
		env = append(env, e.Name+"="+e.Value)
	}
	spec := runner.Spec{
		Command: m.Command,
		Shell:   m.Shell,
		Root:    a.cfg.Workdir,
		Workdir: m.Workdir,
		Env:     env,
		Timeout: time.Duration(m.TimeoutMillis) * time.Millisecond,
		Grace:   a.cfg.Grace,
	}
	if st.stdin != nil {
		spec.Stdin = st.stdin
	}
	log.Info("step started", "workspace", m.Workdir, "stdin", st.stdin != nil)
	go func() {
		defer func() {
			a.mu.Lock()
			delete(a.steps, m.BuildID)
			if st.stdin != nil {
				// Unless its last frame came, the closed feed stays to drop
				// the rest of the step's input.
				if st.stdin.close() && a.stdins[m.BuildID] == st.stdin {
					delete(a.stdins, m.BuildID)
				}
			}
			a.mu.Unlock()
			s.wg.Done()
		}()
		var failed atomic.Bool
		res := runner.Run(ctx, spec, func(st runner.Stream, p []byte) {
			if failed.Load() {
				return
			}
			stream := wire.StreamStdout
			if st == runner.Stderr {
				stream = wire.StreamStderr
			}
			if err := s.ep.Send(s.ctx, &wire.Output{BuildID: m.BuildID, StepIndex: m.StepIndex, Stream: stream, Data: p}); err != nil {
				if failed.CompareAndSwap(false, true) {
					cancel(fmt.Errorf("output cannot reach the master: %w", err))
				}
			}
		})
		log.Info("step finished", "code", res.Code, "error", res.Error)
		exit(int32(res.Code), res.Error)
	}()
}

// track makes st the running step of build in session s, unless the
// build runs one already. With takeStdin the step reads the input a Stdin
// frame announced for it, if any.
func (a *Agent) track(s *sess, build string, st *step, takeStdin bool) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, busy := a.steps[build]; busy {
		return false
	}
	if takeStdin {
		// A closed feed is what an earlier step left unread: not this one's.
		if in := a.stdins[build]; in != nil && !in.isClosed() {
			st.stdin = in
		} else {
			delete(a.stdins, build)
		}
	}
	a.steps[build] = st
	s.wg.Add(1)
	return true
}

func (a *Agent) cancel(build string, reason error) {
	a.mu.Lock()
	st := a.steps[build]
	a.mu.Unlock()
	if st == nil {
		a.log.Debug("cancel of a step not running", "build", build)
		return
	}
	a.log.Info("cancelling step", "build", build, "reason", reason)
	st.cancel(reason)
}

func (a *Agent) cancelAll(reason error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, st := range a.steps {
		st.cancel(reason)
	}
	for b, in := range a.stdins {
		if a.steps[b] == nil { // announced for a step that now never comes
			in.close()
			delete(a.stdins, b)
		}
	}
}

// waitSteps waits for running steps to finish, cancelling them after
// timeout.
func (a *Agent) waitSteps(s *sess, timeout time.Duration) {
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	a.log.Warn("drain timeout: cancelling running steps", "timeout", timeout, "steps", a.Running())
	a.cancelAll(fmt.Errorf("agent shutting down (drain timeout %s)", timeout))
	<-done
}
