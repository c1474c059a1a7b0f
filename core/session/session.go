// Package session is the master's side of the agent protocol
// (docs/protocol.md) over one launcher connection: the handshake with
// mutual authentication, heartbeats, stale-frame filtering and running
// steps.
package session

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/sdk/launcher"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// Errors a session ends with.
var (
	// ErrAuth: the agent failed to prove it holds the node's secret.
	ErrAuth = errors.New("authentication failed: wrong secret")
	// ErrAgentLost: nothing arrived from the agent for the heartbeat timeout.
	ErrAgentLost = errors.New("agent lost")
	// ErrRehello: the agent started a new handshake (it restarted).
	ErrRehello = errors.New("agent started a new session")
	// ErrClosed: the agent or the connection ended the session.
	ErrClosed = errors.New("connection closed")
)

// Options configures a session.
type Options struct {
	// Node is the node's name; a Hello naming another node is ignored.
	Node string
	// Secret is the node's secret; empty for launchers without a secret
	// manager (the transport authenticates the agent).
	Secret []byte
	// Heartbeat is the ping interval (default 5s).
	Heartbeat time.Duration
	// HeartbeatTimeout is how long the agent may stay silent (default 30s).
	HeartbeatTimeout time.Duration
	// Logger logs the session's events.
	Logger hclog.Logger
}

// Agent is what an agent said about itself in its Hello.
type Agent struct {
	Node    string
	Version string
	OS      string
	Arch    string
}

// Counters of dropped frames.
type Counters struct {
	// Stale frames belonged to another session.
	Stale uint64 `json:"stale"`
	// Malformed frames did not decode.
	Malformed uint64 `json:"malformed"`
	// Unexpect frames made no sense in the session's state.
	Unexpect uint64 `json:"unexpected"`
	// Forged frames carried no valid MAC under the session key.
	Forged uint64 `json:"forged"`
	// Replayed frames repeated or reordered an earlier Seq.
	Replayed uint64 `json:"replayed"`
}

// Session is the master's end of one agent connection.
type Session struct {
	conn launcher.Conn
	opts Options
	log  hclog.Logger

	in      chan *wire.Frame
	readErr error // set before in is closed

	sendMu sync.Mutex
	seq    uint64
	ack    atomic.Uint64

	id      atomic.Uint64
	pending *wire.Frame     // a Hello that arrived while serving
	closed  map[uint64]bool // unknown sessions told to end (closeStale)

	mu    sync.Mutex
	steps map[stepKey]*step
	ended error

	key    atomic.Pointer[[]byte] // the session key once authenticated
	lastIn uint64                 // highest Seq accepted in the session (serve only)

	stale, malformed, unexpected, forged, replayed atomic.Uint64
}

type stepKey struct {
	build string
	index uint32
}

type step struct {
	out  io.Writer
	exit chan *wire.Exit
}

// New starts reading frames from conn. The caller closes conn to end the
// session at any time.
func New(conn launcher.Conn, opts Options) *Session {
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 5 * time.Second
	}
	if opts.HeartbeatTimeout <= 0 {
		opts.HeartbeatTimeout = 30 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	s := &Session{conn: conn, opts: opts, log: opts.Logger, in: make(chan *wire.Frame, 64), steps: map[stepKey]*step{}, closed: map[uint64]bool{}}
	go s.read()
	return s
}

// read decodes frames into s.in; malformed frames are counted and dropped.
func (s *Session) read() {
	defer close(s.in)
	for {
		raw, err := s.conn.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = ErrClosed
			}
			s.readErr = err
			return
		}
		f, err := wire.Decode(raw, wire.MaxFrameSize)
		if err != nil {
			s.malformed.Add(1)
			s.log.Warn("dropped malformed frame", "error", err)
			continue
		}
		s.in <- f
	}
}

// next returns the next frame, or the reason there is none.
func (s *Session) next(ctx context.Context, timeout <-chan time.Time) (*wire.Frame, error) {
	select {
	case f, ok := <-s.in:
		if !ok {
			return nil, fmt.Errorf("%w: %v", ErrClosed, s.readErr)
		}
		return f, nil
	case <-timeout:
		return nil, ErrAgentLost
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// send encodes m in the current session and sends it.
func (s *Session) send(m wire.Message, session uint64) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	f := wire.NewFrame(m)
	s.seq++
	f.Session, f.Seq, f.Ack = session, s.seq, s.ack.Load()
	if key := s.key.Load(); key != nil && session == s.id.Load() {
		wire.Sign(*key, f)
	}
	b, err := f.Encode()
	if err != nil {
		return err
	}
	return s.conn.Send(b)
}

// Counters reports the frames dropped so far.
func (s *Session) Counters() Counters {
	return Counters{Stale: s.stale.Load(), Malformed: s.malformed.Load(), Unexpect: s.unexpected.Load(),
		Forged: s.forged.Load(), Replayed: s.replayed.Load()}
}

// Handshake waits for an agent's Hello and runs the mutual
// authentication. It returns ErrAuth after telling an agent with a wrong
// secret so; it may then be called again for the agent's next attempt.
func (s *Session) Handshake(ctx context.Context) (*Agent, error) {
	for {
		f := s.pending
		s.pending = nil
		if f == nil {
			var err error
			if f, err = s.next(ctx, nil); err != nil {
				return nil, err
			}
		}
		msg, err := f.Message()
		if err != nil {
			s.malformed.Add(1)
			continue
		}
		if f.Session != 0 && f.Type != wire.TypeHello {
			s.closeStale(f.Session)
			continue
		}
		switch m := msg.(type) {
		case *wire.Ping:
			_ = s.send(&wire.Pong{Nonce: m.Nonce, UnixNano: m.UnixNano}, 0)
			continue
		case *wire.Hello:
			if f.Session != 0 || len(m.Nonce) != wire.NonceSize || (m.Node != "" && m.Node != s.opts.Node) {
				s.stale.Add(1)
				s.log.Warn("ignored hello", "node", m.Node, "session", f.Session)
				continue
			}
			agent, err := s.authenticate(ctx, m)
			if errors.Is(err, errRetryHello) {
				continue
			}
			return agent, err
		default:
			s.stale.Add(1) // anything before a hello belongs to an older session
		}
	}
}

var errRetryHello = errors.New("handshake restarted")

// closeStale drops a frame of a session this master does not know (its
// agent still talks to a master that restarted, say) and tells that
// session, once, to end, so the agent says hello again at once instead of
// waiting for its heartbeat timeout. Nothing in the frame is executed.
func (s *Session) closeStale(session uint64) {
	s.stale.Add(1)
	if s.closed[session] {
		return
	}
	if len(s.closed) >= maxClosedSessions {
		clear(s.closed)
	}
	s.closed[session] = true
	s.log.Info("frame of an unknown session: telling it to end", "session", fmt.Sprintf("%016x", session))
	_ = s.send(&wire.Close{Reason: "unknown session: the master restarted; say hello again"}, session)
}

// maxClosedSessions bounds the memory of closeStale.
const maxClosedSessions = 64

func (s *Session) authenticate(ctx context.Context, hello *wire.Hello) (*Agent, error) {
	nonceM := make([]byte, wire.NonceSize)
	_, _ = rand.Read(nonceM)
	id := newSessionID()
	if err := s.send(&wire.Challenge{Nonce: nonceM, Proof: wire.MasterProof(s.opts.Secret, hello.Nonce, nonceM)}, id); err != nil {
		return nil, err
	}
	deadline := time.After(s.opts.HeartbeatTimeout)
	for {
		f, err := s.next(ctx, deadline)
		if errors.Is(err, ErrAgentLost) {
			s.log.Warn("agent did not answer the challenge", "timeout", s.opts.HeartbeatTimeout)
			return nil, errRetryHello
		}
		if err != nil {
			return nil, err
		}
		msg, err := f.Message()
		if err != nil {
			s.malformed.Add(1)
			continue
		}
		if f.Session != 0 && f.Session != id {
			s.closeStale(f.Session)
			continue
		}
		switch m := msg.(type) {
		case *wire.Ping:
			_ = s.send(&wire.Pong{Nonce: m.Nonce, UnixNano: m.UnixNano}, f.Session)
		case *wire.Hello:
			s.pending = f // the agent gave up on this handshake and started another
			return nil, errRetryHello
		case *wire.Auth:
			if f.Session != id {
				s.stale.Add(1)
				continue
			}
			if !wire.ProofEqual(m.Proof, wire.AgentProof(s.opts.Secret, nonceM, hello.Nonce)) {
				_ = s.send(&wire.AuthResult{OK: false, Reason: ErrAuth.Error()}, id)
				s.log.Warn("agent failed authentication", "node", s.opts.Node)
				return nil, ErrAuth
			}
			key := wire.SessionKey(s.opts.Secret, hello.Nonce, nonceM, id)
			s.key.Store(&key) // before the id: a frame of session id is always signed
			s.id.Store(id)
			s.mu.Lock()
			s.ended = nil // a new session: steps may run again
			s.mu.Unlock()
			s.lastIn = f.Seq
			if err := s.send(&wire.AuthResult{OK: true, Session: id}, id); err != nil {
				return nil, err
			}
			return &Agent{Node: hello.Node, Version: hello.AgentVersion, OS: hello.OS, Arch: hello.Arch}, nil
		default:
			s.stale.Add(1)
		}
	}
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

// Serve runs an authenticated session: it answers and sends heartbeats and
// delivers step output and results, until the agent is lost, leaves or
// restarts, the connection fails or ctx ends. Steps still running then
// fail with the returned error.
func (s *Session) Serve(ctx context.Context) error {
	err := s.serve(ctx)
	s.mu.Lock()
	s.ended = err
	for k, st := range s.steps {
		close(st.exit)
		delete(s.steps, k)
	}
	s.mu.Unlock()
	return err
}

func (s *Session) serve(ctx context.Context) error {
	tick := time.NewTicker(s.opts.Heartbeat)
	defer tick.Stop()
	lastSeen := time.Now()
	var pingNonce uint64
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			if silent := time.Since(lastSeen); silent > s.opts.HeartbeatTimeout {
				return fmt.Errorf("%w: nothing received for %s", ErrAgentLost, silent.Round(time.Second))
			}
			pingNonce++
			if err := s.send(&wire.Ping{Nonce: pingNonce, UnixNano: time.Now().UnixNano()}, s.id.Load()); err != nil {
				return fmt.Errorf("%w: %v", ErrClosed, err)
			}
			continue
		case f, ok := <-s.in:
			if !ok {
				return fmt.Errorf("%w: %v", ErrClosed, s.readErr)
			}
			if err := s.handle(f, &lastSeen); err != nil {
				return err
			}
		}
	}
}

func (s *Session) handle(f *wire.Frame, lastSeen *time.Time) error {
	if f.Type == wire.TypeHello && f.Session == 0 {
		// Only a plausible Hello of this node restarts the handshake; the
		// next Handshake checks it again.
		if m, err := f.Message(); err == nil {
			if h := m.(*wire.Hello); len(h.Nonce) == wire.NonceSize && (h.Node == "" || h.Node == s.opts.Node) {
				s.pending = f
				return ErrRehello
			}
		}
		s.stale.Add(1)
		return nil
	}
	if f.Session != s.id.Load() {
		if f.Session != 0 {
			s.closeStale(f.Session)
		} else {
			s.stale.Add(1)
		}
		return nil
	}
	// Every frame of the session carries a MAC under the session key and a
	// Seq above the last one: a forged, altered, replayed or reordered frame
	// injected into the transport is dropped, counted and never executed.
	if key := s.key.Load(); key == nil || !wire.Verify(*key, f) {
		s.forged.Add(1)
		s.log.Warn("dropped a frame with a bad MAC", "type", f.Type, "seq", f.Seq)
		return nil
	}
	if f.Seq <= s.lastIn {
		s.replayed.Add(1)
		s.log.Warn("dropped a replayed or reordered frame", "type", f.Type, "seq", f.Seq, "last", s.lastIn)
		return nil
	}
	s.lastIn = f.Seq
	if f.Seq > s.ack.Load() {
		s.ack.Store(f.Seq)
	}
	*lastSeen = time.Now()
	msg, err := f.Message()
	if err != nil {
		s.malformed.Add(1)
		return nil
	}
	switch m := msg.(type) {
	case *wire.Ping:
		_ = s.send(&wire.Pong{Nonce: m.Nonce, UnixNano: m.UnixNano}, s.id.Load())
	case *wire.Pong:
	case *wire.Output:
		if st := s.step(m.BuildID, m.StepIndex, false); st != nil {
			if _, err := st.out.Write(m.Data); err != nil {
				s.log.Error("writing build log", "build", m.BuildID, "error", err)
			}
		} else {
			s.unexpected.Add(1)
		}
	case *wire.Exit:
		if st := s.step(m.BuildID, m.StepIndex, true); st != nil {
			st.exit <- m
		} else {
			s.unexpected.Add(1)
		}
	case *wire.Close:
		return fmt.Errorf("%w: agent said %q", ErrClosed, m.Reason)
	default:
		s.unexpected.Add(1)
	}
	return nil
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
func (s *Session) RunStep(ctx context.Context, req *wire.RunStep, out io.Writer) (*StepResult, error) {
	k := stepKey{req.BuildID, req.StepIndex}
	st := &step{out: out, exit: make(chan *wire.Exit, 1)}
	s.mu.Lock()
	if ended := s.ended; ended != nil {
		s.mu.Unlock()
		return nil, ended
	}
	s.steps[k] = st
	s.mu.Unlock()
	if err := s.send(req, s.id.Load()); err != nil {
		s.step(req.BuildID, req.StepIndex, true)
		return nil, fmt.Errorf("send step: %w", err)
	}
	select {
	case e, ok := <-st.exit:
		return s.result(e, ok)
	case <-ctx.Done():
	}
	reason := context.Cause(ctx).Error()
	if err := s.send(&wire.Cancel{BuildID: req.BuildID, Reason: reason}, s.id.Load()); err != nil {
		return nil, fmt.Errorf("send cancel: %w", err)
	}
	select {
	case e, ok := <-st.exit:
		return s.result(e, ok)
	case <-time.After(cancelGrace):
		s.step(req.BuildID, req.StepIndex, true)
		return &StepResult{Code: -1, Error: "cancelled: " + reason + " (the agent did not confirm)"}, nil
	}
}

func (s *Session) result(e *wire.Exit, ok bool) (*StepResult, error) {
	if !ok {
		s.mu.Lock()
		err := s.ended
		s.mu.Unlock()
		return nil, err
	}
	return &StepResult{Code: int(e.Code), Error: e.Error}, nil
}

// ID is the session id, zero before the handshake.
func (s *Session) ID() uint64 { return s.id.Load() }
