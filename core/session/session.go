// Package session is the master's side of the agent protocol
// (docs/protocol.md, docs/sessions.md): one Session per node, which
// outlives the node's connections. Each connection (a Link) runs the
// handshake with mutual authentication — for a new session, or to resume
// the current one — then serves it: heartbeats, exactly-once in-order
// delivery of numbered frames (sdk/reliable), step output and results.
//
// When a resumable connection breaks (its launcher reports
// launcher.CapResume: the agent talks to a durable log, not to the
// connection), the session is held: steps keep running on the agent,
// frames wait in both outboxes, and the agent's next Hello resumes it. A
// session not resumed within the session timeout ends, and its steps fail
// with ErrAgentLost; so do they at once when the agent starts a new
// session (it restarted).
package session

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
	"github.com/conveyor-ci/conveyor/sdk/reliable"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// Errors a session or a link ends with.
var (
	// ErrAuth: the agent failed to prove it holds the node's secret.
	ErrAuth = errors.New("authentication failed: wrong secret")
	// ErrAgentOutdated: the agent proved the secret the way agents did
	// before frame keys were bound to the direction (docs/protocol.md);
	// it is refused, saying so. It matches ErrAuth (errors.Is).
	ErrAgentOutdated error = &authError{"authentication refused: the agent predates direction-bound frame keys (protocol 2): upgrade conveyor-agent"}
	// ErrAgentLost: the agent is gone: it restarted, or stayed out of
	// reach for the session timeout (or the heartbeat timeout, on a
	// connection that cannot resume).
	ErrAgentLost = errors.New("agent lost")
	// ErrRehello: the agent started a handshake on the connection (it
	// restarted, or it resumes after losing its own link).
	ErrRehello = errors.New("agent said hello again")
	// ErrUnacknowledged: the agent, heard all along, did not acknowledge
	// frames of the master (a RunStep, a Cancel) even after they were sent
	// again: the session is reset, its steps fail with it (see watchAcks).
	ErrUnacknowledged = errors.New("the agent did not acknowledge the master's frames")
	// ErrClosed: the agent or the connection ended.
	ErrClosed = errors.New("connection closed")
)

// Defaults of Options.
const (
	DefaultHeartbeat        = 5 * time.Second
	DefaultHeartbeatTimeout = 30 * time.Second
	DefaultSessionTimeout   = config.DefaultSessionTimeout
	DefaultWriteTimeout     = config.DefaultWriteTimeout
	// DefaultOutboxBytes bounds what the master keeps for the agent until
	// acknowledged (step requests, cancels: small).
	DefaultOutboxBytes = 16 << 20
)

// Options configures a node's session.
type Options struct {
	// Node is the node's name; a Hello naming another node is ignored.
	Node string
	// Heartbeat is the ping interval.
	Heartbeat time.Duration
	// HeartbeatTimeout is how long the agent may stay silent on a
	// connection before the link counts as lost.
	HeartbeatTimeout time.Duration
	// SessionTimeout is how long a session is held for the agent to resume
	// it after its link was lost.
	SessionTimeout time.Duration
	// WriteTimeout is how long writes the file system refuses (and
	// checkpoints) are retried before the steps they are for fail
	// (default: DefaultWriteTimeout, or SessionTimeout when shorter).
	WriteTimeout time.Duration
	// OnEnd, when set, is called (in its own goroutine) when a session
	// ends while no link serves it: the session timeout expired.
	OnEnd func(err error)
	// Persist, when set, stores the state of a session established on a
	// resumable link (nil: the session ended, forget it), so that a
	// restarted master resumes it (Restore). The master then acknowledges
	// the agent's frames only once their output is durable: it syncs each
	// step's writer (a Syncer) and persists before acknowledging.
	Persist func(rec *Record) error
	// OnWriteError, when set, is told of every failed attempt to store
	// what the agent sent, by kind (KindLog, KindArtifact, KindCheckpoint).
	OnWriteError func(kind string)
	// Logger logs the session's events.
	Logger hclog.Logger
}

// Agent is what an agent said about itself in its Hello.
type Agent struct {
	Node    string
	Version string
	OS      string
	Arch    string
	// Features are what it announced it understands beyond the frames
	// every agent handles (wire.FeatureCollect, wire.FeatureStdin).
	Features []string
}

// Counters of dropped frames.
type Counters struct {
	// Stale frames belonged to another session of the node (or to none).
	Stale uint64 `json:"stale"`
	// Malformed frames did not decode.
	Malformed uint64 `json:"malformed"`
	// Unexpect frames made no sense in the session's state.
	Unexpect uint64 `json:"unexpected"`
	// Forged frames carried no valid MAC under the session key, or
	// belonged to another node's session.
	Forged uint64 `json:"forged"`
	// Replayed frames repeated or reordered an earlier control frame.
	Replayed uint64 `json:"replayed"`
	// Duplicate numbered frames were already delivered (resent after a
	// reconnect, or replayed).
	Duplicate uint64 `json:"duplicate"`
	// Early numbered frames came after a missing one; they come again.
	Early uint64 `json:"early"`
}

// Session is the master's end of a node's agent sessions.
type Session struct {
	opts Options
	log  hclog.Logger

	mu        sync.Mutex
	ep        *reliable.Endpoint // the current session; nil before the first
	ended     error              // why the current session ended; nil while it lives
	held      *time.Timer        // the session timeout, while no link serves it
	heldSince time.Time
	steps     map[stepKey]*step
	closed    map[uint64]bool // unknown sessions told to end (closeStale)
	features  []string        // what the session's agent announced

	stale, malformed, unexpected, forged, replayed atomic.Uint64
	traffic                                        traffic
	agent                                          agentCounters
	dupDone, earlyDone                             atomic.Uint64 // of sessions replaced

	// The last checkpoint of a persisted session (guarded by mu; written
	// out under persistMu, which is taken before mu).
	persisting bool
	persistMu  sync.Mutex
	ck         Record
	restored   map[stepKey]int64 // steps of a restored session not yet re-attached: their log size
	endedID    uint64            // a persisted session that ended: its agent is told on the first link

	w         writes           // what the agent sent that could not be stored yet (writes.go)
	abandoned map[stepKey]bool // steps failed for a write error: their frames are dropped (guarded by mu)
}

// Record is the persisted state of a session: what a restarted master
// needs to resume it.
type Record struct {
	// ID is the session id.
	ID uint64 `json:"id"`
	// Acked is the highest agent frame handled and durable: the agent
	// sends the frames after it again.
	Acked uint64 `json:"acked"`
	// Last is the highest number the master gave out; Outbox holds its
	// frames the agent has not acknowledged (encoded, unsigned).
	Last   uint64   `json:"last"`
	Outbox [][]byte `json:"outbox,omitempty"`
	// Steps are the running steps and the durable size of their logs at
	// Acked.
	Steps []StepRecord `json:"steps,omitempty"`
	// Exits are steps that ended whose result the build service has not
	// recorded yet.
	Exits []ExitRecord `json:"exits,omitempty"`
	// Features are what the agent announced in its Hello.
	Features []string `json:"features,omitempty"`
	// Ended: the session ended (the master stopped gracefully, the agent
	// was lost...); only ID counts. A restarted master tells the agent
	// still holding it at once that it is over (Restore), so that the
	// agent says hello without waiting for its next ping.
	Ended bool `json:"ended,omitempty"`
}

// StepRecord is a running step of a persisted session.
type StepRecord struct {
	Build   string `json:"build"`
	Index   uint32 `json:"index"`
	LogSize int64  `json:"log_size"`
}

// ExitRecord is how a step of a persisted session ended.
type ExitRecord struct {
	Build string `json:"build"`
	Index uint32 `json:"index"`
	Code  int    `json:"code"`
	Error string `json:"error,omitempty"`
}

// Syncer is a step's output writer that can make what was written durable
// and tell its size then (a build log).
type Syncer interface {
	Sync() (int64, error)
}

type stepKey struct {
	build string
	index uint32
}

type step struct {
	out   io.Writer
	files FileSink        // where a collection's files go; nil for a step
	size  int64           // durable size of out at the last checkpoint
	exit  chan *wire.Exit // closed without a value when the session ended
	err   error           // why, set before exit is closed
}

// New returns a node's session holder; Attach serves it on connections.
func New(opts Options) *Session {
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = DefaultHeartbeat
	}
	if opts.HeartbeatTimeout <= 0 {
		opts.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if opts.SessionTimeout <= 0 {
		opts.SessionTimeout = DefaultSessionTimeout
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = min(DefaultWriteTimeout, opts.SessionTimeout)
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	return &Session{opts: opts, log: opts.Logger, steps: map[stepKey]*step{}, closed: map[uint64]bool{}, ended: errors.New("no session yet")}
}

// Counters reports the frames dropped so far.
func (s *Session) Counters() Counters {
	c := Counters{Stale: s.stale.Load(), Malformed: s.malformed.Load(), Unexpect: s.unexpected.Load(),
		Forged: s.forged.Load(), Replayed: s.replayed.Load(), Duplicate: s.dupDone.Load(), Early: s.earlyDone.Load()}
	s.mu.Lock()
	ep := s.ep
	s.mu.Unlock()
	if ep != nil {
		d, e := ep.Dropped()
		c.Duplicate += d
		c.Early += e
	}
	return c
}

// ID is the current session's id, zero before the first handshake.
func (s *Session) ID() uint64 {
	s.mu.Lock()
	ep := s.ep
	s.mu.Unlock()
	if ep == nil {
		return 0
	}
	return ep.Session() // outside s.mu: lock order is endpoint, then session
}

// Live reports whether a session is established and not ended (it may be
// held, waiting for the agent to resume it).
func (s *Session) Live() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ep != nil && s.ended == nil
}

// End ends the current session, if one lives (held or not), with err: its
// running steps fail with err and its persisted record says it ended. The
// node manager calls it when a configuration reload removes or relaunches
// the node. It reports whether a session ended.
func (s *Session) End(err error) bool {
	s.mu.Lock()
	ep := s.ep
	s.mu.Unlock()
	if ep == nil {
		return false
	}
	return s.end(ep, err)
}

// Held reports whether the session waits for the agent to resume it, and
// until when.
func (s *Session) Held() (bool, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held == nil {
		return false, time.Time{}
	}
	return true, s.heldSince.Add(s.opts.SessionTimeout)
}

// Pending reports what the current session's outbox keeps for the agent.
func (s *Session) Pending() reliable.Pending {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ep == nil {
		return reliable.Pending{}
	}
	return s.ep.Pending()
}

// end ends the session ep (if it is still the current one) with err: its
// steps fail with err, its outbox refuses more. It reports whether it did.
func (s *Session) end(ep *reliable.Endpoint, err error) bool {
	s.mu.Lock()
	if s.ep != ep || s.ended != nil {
		s.mu.Unlock()
		return false
	}
	s.ended = err
	s.stopHold()
	steps := s.steps
	s.steps = map[stepKey]*step{}
	s.restored = nil
	s.mu.Unlock()
	ep.Close(err)
	for _, st := range steps {
		st.err = err
		close(st.exit)
	}
	if len(steps) > 0 {
		s.log.Warn("session ended: its running steps fail", "steps", len(steps), "error", err)
	}
	s.resetWrites()
	s.forget()
	return true
}

// hold keeps the session for the agent to resume it until the session
// timeout, counted from the last contact with the agent (not from when
// its silence was noticed, a heartbeat timeout later); s.mu is held.
func (s *Session) hold(ep *reliable.Endpoint, why error) {
	if s.held != nil || s.ended != nil || s.ep != ep {
		return
	}
	now := time.Now()
	s.heldSince = now
	if ns := s.traffic.lastHeard.Load(); ns != 0 && ns < now.UnixNano() {
		s.heldSince = time.Unix(0, ns)
	}
	since := s.heldSince
	timeout := s.opts.SessionTimeout
	s.log.Warn("link to the agent lost: holding the session for it to resume", "error", why, "session_timeout", timeout,
		"last_contact", now.Sub(since).Round(time.Millisecond))
	var timer *time.Timer
	timer = time.AfterFunc(max(timeout-now.Sub(since), 0), func() {
		s.mu.Lock()
		mine := s.held == timer // not resumed meanwhile
		s.mu.Unlock()
		if !mine {
			return
		}
		err := fmt.Errorf("%w: no contact for %s (session_timeout %s; last: %v)", ErrAgentLost, time.Since(since).Round(time.Second), timeout, why)
		if s.end(ep, err) && s.opts.OnEnd != nil {
			s.opts.OnEnd(err)
		}
	})
	s.held = timer
}

// stopHold stops the session timeout; s.mu is held.
func (s *Session) stopHold() {
	if s.held != nil {
		s.held.Stop()
		s.held = nil
	}
}

// Link is one connection serving a node's session.
type Link struct {
	s          *Session
	conn       launcher.Conn
	secret     []byte
	resumable  bool
	frames     *reliable.Frames
	stopRead   context.CancelFunc
	pending    *wire.Frame           // a Hello that arrived while serving
	hinted     bool                  // the agent was asked to resume the held session
	dups       reliable.DuplicateRun // dropped since the last frame delivered
	shook      bool                  // Handshake ran on the link
	offers     []*offer              // live challenges, newest last (see offerHello)
	wrongN     int                   // answers in a row that did not prove the secret while no session lived
	wrongSince time.Time             // when the first of them came
	proven     *answer               // an offer the agent answered proving the secret: Handshake concludes it

	// OnReachable, when set, is told when a resumable link's agent falls
	// silent for the heartbeat timeout (the session is held, Serve goes on
	// waiting for it) and when it is heard again.
	OnReachable func(reachable bool, why error)

	crossWarned atomic.Bool // a frame of another node's session was logged at WARN (crossNode)
}

// Attach starts reading conn for the node's session. secret is the node's
// secret (empty for launchers without a secret manager: the transport
// authenticates the agent); resumable says whether the session may
// outlive conn (launcher.CapResume). The caller closes conn and calls
// Close on the link when done.
func (s *Session) Attach(conn launcher.Conn, secret []byte, resumable bool) *Link {
	ctx, cancel := context.WithCancel(context.Background())
	s.traffic.connections.Add(1)
	conn = countingConn{Conn: conn, t: &s.traffic}
	l := &Link{s: s, conn: conn, secret: secret, resumable: resumable, stopRead: cancel}
	l.frames = reliable.Read(ctx, conn, func(err error) {
		s.malformed.Add(1)
		s.log.Warn("dropped malformed frame", "error", err)
	})
	return l
}

// Close stops reading the connection.
func (l *Link) Close() { l.stopRead() }

// next returns the next frame, or the reason there is none.
func (l *Link) next(ctx context.Context, timeout <-chan time.Time) (*wire.Frame, error) {
	select {
	case f, ok := <-l.frames.C:
		if !ok {
			err := l.frames.Err()
			if errors.Is(err, io.EOF) {
				return nil, ErrClosed
			}
			return nil, fmt.Errorf("%w: %v", ErrClosed, err)
		}
		return f, nil
	case <-timeout:
		return nil, ErrAgentLost
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// sendRaw sends an unsigned frame outside any session epoch: challenges,
// refusals, answers to frames of no known session.
func (l *Link) sendRaw(m wire.Message, session uint64) error {
	f := wire.NewFrame(m)
	f.Session = session
	b, err := f.Encode()
	if err != nil {
		return err
	}
	return l.conn.Send(b)
}

// Handshake waits for an agent's Hello and runs the mutual
// authentication, for a new session or to resume the current one (the
// agent's Hello names it). It reports whether the session was resumed.
// It returns ErrAuth after telling an agent with a wrong secret so; it may
// then be called again for the agent's next attempt.
func (l *Link) Handshake(ctx context.Context) (*Agent, bool, error) {
	s := l.s
	// A held session (a new connection after the plugin or the master
	// restarted) is hinted at once: the agent resumes now, not when its
	// next ping arrives or its heartbeat timeout runs out.
	if !l.shook {
		l.shook = true
		if id := s.ID(); id != 0 && s.Live() {
			l.hint(id)
		} else if id := s.takeEnded(); id != 0 {
			l.tellUnknown(id) // the master stopped gracefully: its agent may still hold the session
		}
	}
	for {
		if p := l.proven; p != nil {
			l.proven = nil
			agent, resumed, err := l.conclude(p.o, p.f, p.legacy)
			if errors.Is(err, errRetryHello) {
				continue
			}
			return agent, resumed, err
		}
		f := l.pending
		l.pending = nil
		if f == nil {
			var err error
			if f, err = l.next(ctx, nil); err != nil {
				return nil, false, err
			}
		}
		msg, err := f.Message()
		if err != nil {
			s.malformed.Add(1)
			continue
		}
		switch m := msg.(type) {
		case *wire.Ping:
			if f.Session != 0 && !l.offered(f.Session) {
				// A ping of a session this link has no key for (unknown, or
				// held): an unsigned Pong would only be dropped as forged;
				// tell the agent to say hello instead.
				l.closeStale(f.Session)
				continue
			}
			_ = l.sendRaw(&wire.Pong{Nonce: m.Nonce, UnixNano: m.UnixNano}, f.Session)
		case *wire.Hello:
			if len(m.Nonce) != wire.NonceSize || (m.Node != "" && m.Node != s.opts.Node) || (f.Session != 0 && !m.Resume) {
				s.stale.Add(1)
				s.log.Warn("ignored hello", "node", m.Node, "session", fmt.Sprintf("%016x", f.Session))
				continue
			}
			// Challenged, and remembered with the other live offers: a
			// Hello injected meanwhile does not drop the offer the agent
			// is answering.
			if err := l.offerHello(f, m); err != nil {
				return nil, false, err
			}
		case *wire.Auth:
			o, legacy, mine := l.match(f, m)
			switch {
			case !mine:
				l.closeStale(f.Session)
				continue
			case o == nil:
				if err := l.wrongProof(f); err != nil {
					return nil, false, err
				}
				continue
			}
			l.offers = nil
			agent, resumed, err := l.conclude(o, f, legacy)
			if errors.Is(err, errRetryHello) {
				continue
			}
			return agent, resumed, err
		default:
			if l.offered(f.Session) {
				s.stale.Add(1) // the agent of an offer resends: it comes again after the handshake
				continue
			}
			l.closeStale(f.Session)
		}
	}
}

var errRetryHello = errors.New("handshake restarted")

// authError is a refusal of the agent's proof other than ErrAuth's
// wrong secret, matching ErrAuth for errors.Is.
type authError struct{ msg string }

func (e *authError) Error() string        { return e.msg }
func (e *authError) Is(target error) bool { return target == ErrAuth }

// closeStale drops a frame that arrived outside a handshake or belongs to a
// session this master does not know (its agent still talks to a master
// that restarted and lost the session, say) and tells that session, once,
// to end, so the agent says hello again at once instead of waiting for its
// heartbeat timeout. Nothing in the frame is executed. Frames of the
// current session (the agent resends while a handshake runs) are dropped
// quietly: they come again after the resume.
func (l *Link) closeStale(session uint64) {
	s := l.s
	if other := owners.otherNode(s.opts.Node, session); other != "" {
		l.crossNode(session, other)
		return
	}
	s.stale.Add(1)
	if session == 0 {
		return
	}
	if session == s.ID() && s.Live() {
		// The current session, held while this link has no key for it (the
		// master restarted, or the agent's frames arrive before its
		// resume): hint once that it should resume.
		l.hint(session)
		return
	}
	l.tellUnknown(session)
}

// crossNode drops a frame of node other's session that arrived on this
// node's link: no agent of this node ever had that session, so the frame
// was copied into the node's topic (an attack, or a misrouted topic). It
// is counted as forged and never answered: a Close would reach this
// node's agent with a session it never had. Logged at WARN once per link.
func (l *Link) crossNode(session uint64, other string) {
	s := l.s
	s.forged.Add(1)
	log := s.log.Debug
	if l.crossWarned.CompareAndSwap(false, true) {
		log = s.log.Warn
	}
	log("dropped a frame of another node's session on this node's link", "node", s.opts.Node, "owner", other,
		"session", fmt.Sprintf("%016x", session))
}

// tellUnknown tells session, once, that the master does not know it, so
// that its agent says hello again at once.
func (l *Link) tellUnknown(session uint64) {
	s := l.s
	s.mu.Lock()
	told := s.closed[session]
	if !told {
		if len(s.closed) >= maxClosedSessions {
			clear(s.closed)
		}
		s.closed[session] = true
	}
	s.mu.Unlock()
	if told {
		return
	}
	s.log.Info("telling an unknown session to end", "session", fmt.Sprintf("%016x", session))
	_ = l.sendRaw(&wire.Close{Reason: "unknown session: the master does not know it (it restarted, or the session timed out); say hello again"}, session)
}

// hint asks the agent of the held session to resume it, once per link: the
// Close is unsigned (the link has no key for the session), so it is only
// a hint; the agent resumes with a full mutual authentication, and
// nothing of the session changes before it succeeds.
func (l *Link) hint(session uint64) {
	s := l.s
	if held, _ := s.Held(); !held || l.hinted {
		return
	}
	l.hinted = true
	s.log.Info("asking the agent to resume the held session", "session", fmt.Sprintf("%016x", session))
	_ = l.sendRaw(&wire.Close{Reason: "the master has no key for this session on this connection: resume it"}, session)
}

// maxClosedSessions bounds the memory of closeStale.
const maxClosedSessions = 64

// offer is a challenge the master sent for an agent's Hello: the session
// it would start, or resume, once the agent proves the secret.
type offer struct {
	hello  *wire.Hello
	ep     *reliable.Endpoint
	id     uint64
	resume bool
	nonceM []byte
	by     time.Time // an answer after it is ignored
}

// answer is the agent's Auth proving the secret for an offer.
type answer struct {
	o      *offer
	f      *wire.Frame
	legacy bool // under the label of an agent that predates direction-bound frame keys
}

// challenge answers the Hello hf with a Challenge: for the current session
// if the agent asks to resume it and it lives, else for a new one (the
// agent then drops the steps of the session it asked for: nobody can
// report them). Nothing of the session changes before the agent proved
// the secret: the challenge goes outside the session's epoch.
func (l *Link) challenge(hello *wire.Hello, hf *wire.Frame) (*offer, error) {
	s := l.s
	s.mu.Lock()
	cur, live := s.ep, s.ended == nil
	s.mu.Unlock()
	o := &offer{hello: hello, ep: cur, id: hf.Session, by: time.Now().Add(s.opts.HeartbeatTimeout)}
	o.resume = hello.Resume && cur != nil && live && cur.Session() == hf.Session
	if !o.resume {
		o.ep, o.id = reliable.NewEndpoint(DefaultOutboxBytes), newSessionID()
	}
	o.nonceM = make([]byte, wire.NonceSize)
	_, _ = rand.Read(o.nonceM)
	if err := l.sendRaw(&wire.Challenge{Nonce: o.nonceM, Proof: wire.MasterProof(l.secret, hello.Nonce, o.nonceM)}, o.id); err != nil {
		return nil, err
	}
	return o, nil
}

// conclude concludes offer o, whose Auth f proved the secret: it
// establishes the session, unless the proof is under the label of an agent
// that predates direction-bound frame keys (legacy): that one is refused
// with ErrAgentOutdated, telling the agent why in a signed refusal.
func (l *Link) conclude(o *offer, f *wire.Frame, legacy bool) (*Agent, bool, error) {
	s := l.s
	l.wrongN, l.wrongSince = 0, time.Time{}
	if legacy {
		l.refuse(o, ErrAgentOutdated.Error())
		s.log.Warn("agent refused: it predates direction-bound frame keys", "node", s.opts.Node, "version", o.hello.AgentVersion)
		return nil, false, ErrAgentOutdated
	}
	return l.established(o, f)
}

// refuse sends the refusal of offer o, whose agent proved the secret,
// signed under the offer's RefusalKey: such an agent obeys no other
// refusal (anyone who saw the Challenge could inject one).
func (l *Link) refuse(o *offer, reason string) {
	f := wire.NewFrame(&wire.AuthResult{OK: false, Reason: reason})
	f.Session = o.id
	wire.Sign(wire.RefusalKey(l.secret, o.hello.Nonce, o.nonceM, o.id), f)
	if b, err := f.Encode(); err == nil {
		_ = l.conn.Send(b)
	}
}

// maxOffers bounds the challenges a link waits answers for.
const maxOffers = 8

// wrongProofsToReport is how many answers that do not prove the secret,
// with no genuine one among or after them, make Handshake report ErrAuth
// (see wrongProof).
const wrongProofsToReport = 3

// offerHello answers a Hello with a Challenge and remembers the offer (at
// most maxOffers, each for the heartbeat timeout). While the session is
// served (its agent heard, or silent and the session held) anyone able to
// write to the transport can send a Hello, so the session goes on,
// untouched. An Auth proving the secret for it (the agent restarted, or
// resumes after losing its own link) ends the serving with ErrRehello, and
// Handshake concludes it (resume or new session); during a handshake, it
// concludes it at once. An Auth that does not is counted as forged and
// changes nothing (wrongProof).
func (l *Link) offerHello(hf *wire.Frame, hello *wire.Hello) error {
	s := l.s
	o, err := l.challenge(hello, hf)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrClosed, err)
	}
	l.prune()
	if len(l.offers) >= maxOffers {
		l.offers = l.offers[1:]
	}
	l.offers = append(l.offers, o)
	s.log.Info("hello: challenged it; nothing changes until the secret is proven",
		"resume", o.resume, "session", fmt.Sprintf("%016x", o.id), "offers", len(l.offers))
	return nil
}

// prune forgets the offers whose time to be answered ran out.
func (l *Link) prune() {
	now := time.Now()
	l.offers = slices.DeleteFunc(l.offers, func(o *offer) bool { return now.After(o.by) })
}

// offered reports whether a live offer names session id.
func (l *Link) offered(id uint64) bool {
	l.prune()
	return slices.ContainsFunc(l.offers, func(o *offer) bool { return o.id == id })
}

// match finds the live offer whose secret the Auth f proves. mine says
// whether any live offer names f's session; legacy whether the proof is
// under the label of an agent that predates direction-bound frame keys.
// A wrong proof removes no offer: an injected Auth cannot cancel the one
// the agent is answering.
func (l *Link) match(f *wire.Frame, m *wire.Auth) (o *offer, legacy, mine bool) {
	l.prune()
	for _, o := range l.offers {
		if o.id != f.Session {
			continue
		}
		mine = true
		if wire.ProofEqual(m.Proof, wire.AgentProof(l.secret, o.nonceM, o.hello.Nonce)) {
			return o, false, true
		}
		if wire.ProofEqual(m.Proof, wire.LegacyAgentProof(l.secret, o.nonceM, o.hello.Nonce)) {
			return o, true, true
		}
	}
	return nil, false, mine
}

// wrongProof handles an Auth for a live offer that does not prove the
// secret. It is no evidence about the node's agent — anyone able to write
// to the transport can send one —, so it is counted as forged and changes
// no state. While a session lives (served or held for its agent) it is not
// answered. While none lives it is refused, unsigned, with ErrAuth's
// reason, so that an agent started with a wrong secret says so and backs
// off (an agent whose challenge proved the secret ignores an unsigned
// refusal); and Handshake reports ErrAuth (the node shows "wrong secret")
// only once such answers kept coming for the heartbeat timeout
// (wrongProofsToReport at least) without a genuine one: a healthy agent
// would have proven the secret by then, so injected answers cannot
// relabel a node whose agent connects.
func (l *Link) wrongProof(f *wire.Frame) error {
	s := l.s
	s.forged.Add(1)
	if s.Live() {
		s.log.Warn("dropped an answer to a challenge that does not prove the secret: the session goes on", "session", fmt.Sprintf("%016x", f.Session))
		return nil
	}
	_ = l.sendRaw(&wire.AuthResult{OK: false, Reason: ErrAuth.Error()}, f.Session)
	now := time.Now()
	if l.wrongN == 0 {
		l.wrongSince = now
	}
	l.wrongN++
	s.log.Warn("an answer to a challenge does not prove the secret: wrong secret, or injected", "node", s.opts.Node, "in_a_row", l.wrongN)
	if l.wrongN >= wrongProofsToReport && now.Sub(l.wrongSince) >= s.opts.HeartbeatTimeout {
		return ErrAuth
	}
	return nil
}

// answerOffer handles an Auth while the session is served; it reports
// whether f answered one of the link's offers.
func (l *Link) answerOffer(f *wire.Frame) (bool, error) {
	s := l.s
	if !l.offered(f.Session) {
		return false, nil
	}
	msg, err := f.Message()
	if err != nil {
		s.malformed.Add(1)
		return true, nil
	}
	o, legacy, _ := l.match(f, msg.(*wire.Auth))
	if o == nil {
		return true, l.wrongProof(f)
	}
	l.offers, l.proven = nil, &answer{o: o, f: f, legacy: legacy}
	return true, ErrRehello
}

// established installs the authenticated session (new or resumed) and
// sends what the agent lacks.
func (l *Link) established(o *offer, auth *wire.Frame) (*Agent, bool, error) {
	s := l.s
	ep, id, resume, hello, nonceM := o.ep, o.id, o.resume, o.hello, o.nonceM
	if resume {
		s.mu.Lock()
		live := s.ep == ep && s.ended == nil
		if live {
			s.stopHold() // under the same lock: the session timeout cannot end it now
		}
		s.mu.Unlock()
		if !live {
			l.refuse(o, "the session ended meanwhile; say hello again")
			return nil, false, errRetryHello
		}
	}
	ep.Begin(l.conn)
	ep.Established(id, wire.KeysFor(wire.SessionKey(l.secret, hello.Nonce, nonceM, id), wire.RoleMaster), auth.Seq)
	owners.add(s.opts.Node, id)
	// The AuthResult goes first: a step sent in the new session before it
	// would reach an agent without the key.
	s.traffic.heard(time.Now()) // the agent's proof: the last contact, should the link break at once
	// An accepting AuthResult's Reason announces what the master takes
	// beyond every master's frames (older agents ignore it).
	if err := ep.SendControl(&wire.AuthResult{OK: true, Session: id, Reason: wire.VersionWithFeatures("", wire.FeatureStats)}, id); err != nil {
		return nil, false, err
	}
	version, features := wire.SplitFeatures(hello.AgentVersion)
	s.mu.Lock()
	s.features = features
	s.ck.Features = features
	s.mu.Unlock()
	if resume {
		// Everything kept goes again: the Hello's LastSeq is not
		// authenticated, so only the agent's signed Acks release frames;
		// its inbox drops what it already has.
		if err := ep.Resend(0); err != nil {
			return nil, false, err
		}
		s.traffic.resumes.Add(1)
		s.log.Info("session resumed", "session", fmt.Sprintf("%016x", id), "agent_has", hello.LastSeq, "resent", ep.Pending().Frames)
	} else {
		s.mu.Lock()
		old := s.ep
		s.mu.Unlock()
		if old != nil {
			// The agent started afresh: whatever ran in the old session died
			// with the agent that ran it.
			s.end(old, fmt.Errorf("%w: the agent restarted (it started a new session)", ErrAgentLost))
			d, e := old.Dropped()
			s.dupDone.Add(d)
			s.earlyDone.Add(e)
		}
		s.mu.Lock()
		s.stopHold()
		s.ep, s.ended = ep, nil
		s.mu.Unlock()
		if l.resumable {
			if err := s.startPersisting(ep); err != nil {
				s.log.Error("the session cannot be persisted: a master restart will lose it", "error", err)
			}
		}
		s.log.Info("session established", "session", fmt.Sprintf("%016x", id))
	}
	return &Agent{Node: hello.Node, Version: version, OS: hello.OS, Arch: hello.Arch, Features: features}, resume, nil
}

func newSessionID() uint64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:])
		if id := binary.BigEndian.Uint64(b[:]); id != 0 {
			return id
		}
	}
}

// Serve serves the authenticated session on the link: it answers and sends
// heartbeats, acknowledges, and delivers step output and results, until
// the agent leaves, says hello again (ErrRehello: call Handshake), goes
// silent for the heartbeat timeout, the connection fails or ctx ends.
//
// On a resumable link a lost connection or a silent agent does not end
// the session: it is held for the agent to resume (Held). Otherwise, and
// when the agent said goodbye, the session ends and its running steps
// fail with the returned error.
func (l *Link) Serve(ctx context.Context) error {
	s := l.s
	s.mu.Lock()
	ep := s.ep
	s.mu.Unlock()
	err := l.serve(ctx, ep)
	l.dups.Report(s.log)
	if ctx.Err() != nil {
		// The connection closing as ctx ends is no reason of its own.
		err = context.Cause(ctx)
	}
	var closed *closedError
	switch {
	case errors.As(err, &closed), !l.resumable, ctx.Err() != nil, errors.Is(err, ErrUnacknowledged):
		s.end(ep, err)
	default:
		ep.Detach()
		s.mu.Lock()
		s.hold(ep, err)
		s.mu.Unlock()
	}
	return err
}

// closedError: the agent said goodbye.
type closedError struct{ reason string }

func (e *closedError) Error() string { return "the agent closed the session: " + e.reason }
func (e *closedError) Unwrap() error { return ErrClosed }

func (l *Link) serve(ctx context.Context, ep *reliable.Endpoint) error {
	s := l.s
	// Silence is checked four times per heartbeat timeout, so "unreachable"
	// shows soon after it; pings go every heartbeat.
	interval := min(s.opts.Heartbeat, s.opts.HeartbeatTimeout/4)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	lastSeen, lastPing := time.Now(), time.Now()
	silent := false
	var pingNonce uint64
	var unacked ackWatch
	broken := ep.Broken()
	// While a write failed, it is tried again every writeRetry.
	var retry <-chan time.Time
	for {
		if retry == nil && s.stalled() {
			retry = time.After(writeRetry)
		}
		select {
		case <-retry:
			retry = nil
			if err := s.retryWrites(ep); err != nil {
				return fmt.Errorf("%w: %v", ErrClosed, err)
			}
		case <-ctx.Done():
			return context.Cause(ctx) // "master stopped" when the master stops
		case <-broken:
			return fmt.Errorf("%w: sending to the agent failed", ErrClosed)
		case <-tick.C:
			if err := s.endedErr(ep); err != nil {
				return err // the session timeout expired while the agent was silent
			}
			if quiet := time.Since(lastSeen); !silent && quiet > s.opts.HeartbeatTimeout {
				err := fmt.Errorf("%w: nothing received for %s", ErrAgentLost, quiet.Round(time.Second))
				if !l.resumable {
					return err
				}
				// The agent may only have lost its own link: hold the session
				// and keep serving, the agent's frames resume it.
				silent = true
				s.mu.Lock()
				s.hold(ep, err)
				s.mu.Unlock()
				if l.OnReachable != nil {
					l.OnReachable(false, err)
				}
			}
			if !silent {
				if err := l.watchAcks(ep, &unacked); err != nil {
					return err
				}
			}
			if time.Since(lastPing) < s.opts.Heartbeat-interval/2 { // ticks jitter

				continue
			}
			lastPing = time.Now()
			pingNonce++
			if err := ep.SendControl(&wire.Ping{Nonce: pingNonce, UnixNano: time.Now().UnixNano()}, ep.Session()); err != nil {
				return fmt.Errorf("%w: %v", ErrClosed, err)
			}
			if s.isPersisting() {
				if s.checkpointDue(ep, true) {
					s.checkpointed(ep, s.checkpoint(ep))
				}
			} else if err := ep.FlushAck(); err != nil {
				return fmt.Errorf("%w: %v", ErrClosed, err)
			}
		case f, ok := <-l.frames.C:
			if !ok {
				if err := l.frames.Err(); err != nil && !errors.Is(err, io.EOF) {
					return fmt.Errorf("%w: %v", ErrClosed, err)
				}
				return ErrClosed
			}
			live, err := l.handle(ep, f)
			if err != nil {
				return err
			}
			if !live {
				continue
			}
			lastSeen = time.Now()
			s.traffic.heard(lastSeen)
			if silent && s.endedErr(ep) == nil {
				silent = false
				s.mu.Lock()
				s.stopHold()
				s.mu.Unlock()
				s.log.Info("the agent is heard again: session goes on")
				if l.OnReachable != nil {
					l.OnReachable(true, nil)
				}
			}
		}
	}
}

// ackWatch follows the master's frames waiting for the agent's
// acknowledgement while the agent is heard (see watchAcks).
type ackWatch struct {
	acked  uint64    // the outbox's highest acknowledged number when since was set
	since  time.Time // since when frames wait without the acknowledgement moving
	resent bool
}

// watchAcks bounds how long a numbered frame of the master (a RunStep, a
// Cancel, Stdin, Collect) may wait for the agent's acknowledgement while
// the agent is heard. The agent acknowledges what it handled within its
// heartbeat (and in its Pongs), so frames still waiting after half the
// heartbeat timeout (at least two heartbeats) were lost on the way (or
// dropped by the agent): they are sent again, in order, in the same epoch
// (the agent's inbox drops what it has). Still
// unacknowledged after the heartbeat timeout more, the session is reset:
// serving ends with ErrUnacknowledged, the session ends and its steps fail
// with that reason (the agent's frames of it are then stale, and it says
// hello again), instead of a build waiting for a step that never started.
func (l *Link) watchAcks(ep *reliable.Endpoint, w *ackWatch) error {
	s := l.s
	p := ep.Pending()
	now := time.Now()
	if p.Frames == 0 || p.Acked != w.acked || w.since.IsZero() {
		*w = ackWatch{acked: p.Acked, since: now}
		return nil
	}
	waited := now.Sub(w.since)
	resendAfter := max(s.opts.HeartbeatTimeout/2, 2*s.opts.Heartbeat) // the agent's Pongs carry its Ack
	switch {
	case waited >= resendAfter+s.opts.HeartbeatTimeout:
		return fmt.Errorf("%w: frames %d to %d waited %s, sent again after %s: session reset",
			ErrUnacknowledged, p.Acked+1, p.Last, waited.Round(time.Millisecond), resendAfter)
	case waited >= resendAfter && !w.resent:
		w.resent = true
		s.log.Warn("the agent did not acknowledge frames of the master: sending them again", "from", p.Acked+1, "to", p.Last, "waited", waited.Round(time.Millisecond))
		if err := ep.Resend(p.Acked); err != nil {
			return fmt.Errorf("%w: %v", ErrClosed, err)
		}
	}
	return nil
}

// endedErr is why ep ended, nil while it is the living session.
func (s *Session) endedErr(ep *reliable.Endpoint) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ep != ep {
		return fmt.Errorf("%w: replaced by a new session", ErrAgentLost)
	}
	return s.ended
}

// handle handles one frame of the serving link; it reports whether the
// frame was an authentic, fresh frame of the agent.
func (l *Link) handle(ep *reliable.Endpoint, f *wire.Frame) (bool, error) {
	s := l.s
	if f.Type == wire.TypeHello {
		// Only a plausible Hello of this node gets a challenge; the
		// session goes on until the agent proves the secret for it
		// (offerHello, answerOffer).
		if m, err := f.Message(); err == nil {
			if h := m.(*wire.Hello); len(h.Nonce) == wire.NonceSize && (h.Node == "" || h.Node == s.opts.Node) &&
				(f.Session == 0 || h.Resume) {
				return false, l.offerHello(f, h)
			}
		}
		s.stale.Add(1)
		return false, nil
	}
	if f.Type == wire.TypeAuth {
		if mine, err := l.answerOffer(f); mine {
			return false, err
		}
	}
	if f.Session != ep.Session() {
		l.closeStale(f.Session)
		return false, nil
	}
	// Every frame of the session carries a MAC under the epoch's key; a
	// numbered frame is delivered once and in order, any other frame's
	// counter rises: a forged, altered, replayed or reordered frame
	// injected into the transport is dropped, counted and never executed.
	switch v := ep.Receive(f); v {
	case reliable.Forged:
		s.forged.Add(1)
		s.log.Warn("dropped a frame with a bad MAC", "type", f.Type, "seq", f.Seq)
		return false, nil
	case reliable.Replayed:
		s.replayed.Add(1)
		s.log.Warn("dropped a replayed or reordered frame", "type", f.Type, "seq", f.Seq)
		return false, nil
	case reliable.Duplicate:
		l.dups.Add(f) // one line for the run, once it ends
		return false, nil
	case reliable.Gap:
		s.log.Debug("dropped a frame after a gap: it comes again", "type", f.Type, "seq", f.Seq)
		return false, nil
	}
	l.dups.Report(s.log)
	msg, err := f.Message()
	if err != nil {
		s.malformed.Add(1)
		return true, ep.Handled()
	}
	switch m := msg.(type) {
	case *wire.Stats:
		s.agentStats(m)
	case *wire.Ping:
		_ = ep.SendControl(&wire.Pong{Nonce: m.Nonce, UnixNano: m.UnixNano}, ep.Session())
	case *wire.Pong:
		s.traffic.pong(m.UnixNano, time.Now())
	case *wire.Ack:
	case *wire.Output, *wire.Exit, *wire.FileChunk:
		// Stored, or kept unacknowledged until it is (writes.go).
		s.deliver(ep, f.Seq, m)
	case *wire.Close:
		_ = ep.Handled()
		return true, &closedError{reason: m.Reason}
	default:
		s.unexpected.Add(1)
	}
	if !reliable.Sequenced(f.Type) {
		return true, nil
	}
	if s.isPersisting() {
		// Acknowledged only once durable: at a checkpoint.
		if s.checkpointDue(ep, false) && s.ckOK() {
			s.checkpointed(ep, s.checkpoint(ep))
		}
		return true, nil
	}
	// Acknowledged only once stored.
	if err := ep.HandledThrough(s.storedThrough(ep)); err != nil {
		return true, fmt.Errorf("%w: %v", ErrClosed, err)
	}
	return true, nil
}

func (s *Session) step(build string, index uint32, remove bool) *step {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := stepKey{build, index}
	st := s.steps[k]
	if remove {
		delete(s.steps, k)
	}
	return st
}

// StepResult is how a step ended.
type StepResult struct {
	Code  int
	Error string
}

// cancelGrace is how long RunStep waits for the agent to confirm a cancel.
var cancelGrace = 15 * time.Second

// RunStep runs one step on the agent, writing its output to out as it
// arrives. When ctx ends the step is cancelled on the agent with
// context.Cause(ctx) as the reason, and RunStep returns once the agent
// confirmed (or after a grace period). An error means the session ended.
//
// A held session keeps the step: its request, cancel and output wait in
// the outboxes until the agent resumes.
func (s *Session) RunStep(ctx context.Context, req *wire.RunStep, out io.Writer) (*StepResult, error) {
	return s.RunStepInput(ctx, req, nil, out)
}

// StdinChunk bounds the data of one Stdin frame.
const StdinChunk = 64 << 10

// RunStepInput is RunStep with stdin as the step's standard input (nil:
// /dev/null); the agent must announce wire.FeatureStdin, and
// wire.FeatureShell for a req with a Shell. Its first chunk
// goes before the RunStep, announcing it, the rest after (docs/protocol.md).
func (s *Session) RunStepInput(ctx context.Context, req *wire.RunStep, stdin []byte, out io.Writer) (*StepResult, error) {
	if stdin != nil && !s.Supports(wire.FeatureStdin) {
		return nil, fmt.Errorf("step stdin: %w", s.unsupported(wire.FeatureStdin))
	}
	if len(req.Shell) > 0 && !s.Supports(wire.FeatureShell) {
		// An older agent would drop the frame as malformed, or (were the
		// field dropped) run the step under /bin/sh: neither is what the
		// configuration asks.
		return nil, fmt.Errorf("step shell %q: %w", req.Shell, s.unsupported(wire.FeatureShell))
	}
	ep, st, err := s.register(req.BuildID, req.StepIndex, out, nil, false)
	if err != nil {
		return nil, err
	}
	chunk := func() *wire.Stdin {
		n := min(len(stdin), StdinChunk)
		m := &wire.Stdin{BuildID: req.BuildID, Data: stdin[:n], EOF: n == len(stdin)}
		stdin = stdin[n:]
		return m
	}
	if stdin != nil {
		if err := ep.Send(ctx, chunk()); err != nil {
			s.step(req.BuildID, req.StepIndex, true)
			return nil, fmt.Errorf("send stdin: %w", err)
		}
	}
	if err := ep.Send(ctx, req); err != nil {
		s.step(req.BuildID, req.StepIndex, true)
		return nil, fmt.Errorf("send step: %w", err)
	}
	for len(stdin) > 0 {
		if err := ep.Send(ctx, chunk()); err != nil {
			if ctx.Err() != nil {
				break // wait cancels the step
			}
			s.step(req.BuildID, req.StepIndex, true)
			return nil, fmt.Errorf("send stdin: %w", err)
		}
	}
	return s.wait(ctx, ep, st, req.BuildID, req.StepIndex)
}

// FileSink receives the files of a collection (see Collect), chunk after
// chunk in the order the agent sends them.
type FileSink interface {
	Chunk(path string, mode fs.FileMode, offset int64, data []byte, final bool) error
}

// ErrUnsupported: the agent does not announce a feature a request needs.
var ErrUnsupported = errors.New("the agent does not support it")

// Supports reports whether the session's agent announced feature.
func (s *Session) Supports(feature string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.features, feature)
}

func (s *Session) unsupported(feature string) error {
	return fmt.Errorf("%w: the agent does not announce the %q feature (it predates it: upgrade conveyor-agent)", ErrUnsupported, feature)
}

// Collect has the agent send the files of a build's workspace that match
// req.Patterns (wire.Collect): each goes to files as its chunks arrive,
// the agent's notes (patterns that matched nothing, files refused) to
// log. It returns once the agent reported the end, as RunStep does: code
// 0, 1 (a pattern matched nothing) or 2 (a file was refused), with its
// Error. The agent must announce wire.FeatureCollect.
func (s *Session) Collect(ctx context.Context, req *wire.Collect, log io.Writer, files FileSink) (*StepResult, error) {
	if !s.Supports(wire.FeatureCollect) {
		return nil, fmt.Errorf("artifacts: %w", s.unsupported(wire.FeatureCollect))
	}
	ep, st, err := s.register(req.BuildID, req.StepIndex, log, files, false)
	if err != nil {
		return nil, err
	}
	if err := ep.Send(ctx, req); err != nil {
		s.step(req.BuildID, req.StepIndex, true)
		return nil, fmt.Errorf("send collect: %w", err)
	}
	return s.wait(ctx, ep, st, req.BuildID, req.StepIndex)
}

// collecting is the collection of build under way, nil when none.
func (s *Session) collecting(build string) *step {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, st := range s.steps {
		if k.build == build && st.files != nil {
			return st
		}
	}
	return nil
}

// Wait re-attaches to a step of a restored session (see Reattach): the
// agent's output goes to out from the checkpoint on, and Wait returns as
// RunStep does.
func (s *Session) Wait(ctx context.Context, build string, index uint32, out io.Writer) (*StepResult, error) {
	ep, st, err := s.register(build, index, out, nil, true)
	if err != nil {
		return nil, err
	}
	return s.wait(ctx, ep, st, build, index)
}

// register makes out receive the output of a step of the current session.
func (s *Session) register(build string, index uint32, out io.Writer, files FileSink, restored bool) (*reliable.Endpoint, *step, error) {
	size, err := syncOut(out)
	if err != nil {
		return nil, nil, err
	}
	k := stepKey{build, index}
	st := &step{out: out, files: files, size: size, exit: make(chan *wire.Exit, 1)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ep == nil || s.ended != nil {
		return nil, nil, s.ended
	}
	if restored {
		if _, ok := s.restored[k]; !ok {
			return nil, nil, fmt.Errorf("step %d of %s is not part of the restored session", index, build)
		}
		delete(s.restored, k)
	}
	s.steps[k] = st
	return s.ep, st, nil
}

// wait waits for the step's end, cancelling it on the agent when ctx ends.
func (s *Session) wait(ctx context.Context, ep *reliable.Endpoint, st *step, build string, index uint32) (*StepResult, error) {
	select {
	case e, ok := <-st.exit:
		return result(st, e, ok)
	case <-ctx.Done():
	}
	reason := context.Cause(ctx).Error()
	sendCtx, cancel := context.WithTimeout(context.Background(), cancelGrace)
	defer cancel()
	if err := ep.Send(sendCtx, &wire.Cancel{BuildID: build, Reason: reason}); err != nil {
		return nil, fmt.Errorf("send cancel: %w", err)
	}
	select {
	case e, ok := <-st.exit:
		return result(st, e, ok)
	case <-sendCtx.Done():
		s.step(build, index, true)
		return &StepResult{Code: -1, Error: "cancelled: " + reason + " (the agent did not confirm)"}, nil
	}
}

func result(st *step, e *wire.Exit, ok bool) (*StepResult, error) {
	if !ok {
		return nil, st.err
	}
	return &StepResult{Code: int(e.Code), Error: e.Error}, nil
}
