// Package session is the agent's side of the master/agent protocol
// (docs/protocol.md) over one connection: the handshake with mutual
// authentication, heartbeats, stale-frame filtering, running steps and
// draining. One connection carries one session at a time; when a session
// ends (the master is lost, closes it or refuses the agent) the agent says
// Hello again on the same connection.
package session

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/agent/backoff"
	"github.com/conveyor-ci/conveyor/agent/runner"
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
)

// Defaults of Config.
const (
	DefaultHeartbeat        = 5 * time.Second
	DefaultHeartbeatTimeout = 30 * time.Second
	DefaultHelloInterval    = 3 * time.Second
	DefaultDrainTimeout     = 5 * time.Minute
	DefaultRetryMin         = 500 * time.Millisecond
	DefaultRetryMax         = 30 * time.Second
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
	// agent drops the session and says Hello again; it also bounds the
	// wait for an AuthResult.
	HeartbeatTimeout time.Duration
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

// Counters count the frames the agent dropped.
type Counters struct {
	// Stale frames belonged to another session (or carried a forged or
	// outdated challenge); they were never executed.
	Stale uint64 `json:"stale"`
	// Malformed frames did not decode.
	Malformed uint64 `json:"malformed"`
	// Unexpected frames made no sense in the session's state.
	Unexpected uint64 `json:"unexpected"`
	// Replayed frames repeated or reordered a frame of the current session
	// (their Seq was not above the highest seen); they were not executed.
	Replayed uint64 `json:"replayed"`
	// Forged frames of the current session carried no valid MAC under the
	// session key; they were not executed.
	Forged uint64 `json:"forged"`
}

// Agent runs the agent's sessions, one at a time, and their steps.
type Agent struct {
	cfg Config
	log hclog.Logger

	draining atomic.Bool
	drainCh  chan struct{}
	drainMu  sync.Once

	stale, malformed, unexpected, replayed, forged atomic.Uint64

	mu    sync.Mutex
	steps map[string]*step // by build id
	wg    sync.WaitGroup   // running steps
}

type step struct {
	cancel context.CancelCauseFunc
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
	if cfg.Env == nil {
		cfg.Env = os.Environ()
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	return &Agent{cfg: cfg, log: cfg.Logger, drainCh: make(chan struct{}), steps: map[string]*step{}}
}

// Counters reports the frames dropped so far.
func (a *Agent) Counters() Counters {
	return Counters{Stale: a.stale.Load(), Malformed: a.malformed.Load(), Unexpected: a.unexpected.Load(),
		Replayed: a.replayed.Load(), Forged: a.forged.Load()}
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

// link is a connection's sending half, shared by the sessions on it.
type link struct {
	c      Conn
	sendMu sync.Mutex
	seq    uint64        // frames sent in this session; guarded by sendMu
	key    []byte        // the session's key; guarded by sendMu
	keyID  uint64        // the session the key belongs to; guarded by sendMu
	ack    atomic.Uint64 // highest seq received in this session
}

// established makes key sign every frame of session id from now on.
func (l *link) established(id uint64, key []byte) {
	l.sendMu.Lock()
	l.key, l.keyID = key, id
	l.sendMu.Unlock()
}

func (l *link) send(m wire.Message, session uint64) error {
	l.sendMu.Lock()
	defer l.sendMu.Unlock()
	f := wire.NewFrame(m)
	l.seq++
	f.Session, f.Seq, f.Ack = session, l.seq, l.ack.Load()
	if l.key != nil && session == l.keyID {
		wire.Sign(l.key, f)
	}
	b, err := f.Encode()
	if err != nil {
		return fmt.Errorf("encode %v: %w", f.Type, err)
	}
	if err := l.c.Send(b); err != nil {
		return fmt.Errorf("send %v: %w", f.Type, err)
	}
	return nil
}

// restart starts the counters of a new session, whose first frame is the
// Hello about to be sent.
func (l *link) restart() {
	l.sendMu.Lock()
	l.seq, l.key, l.keyID = 0, nil, 0
	l.sendMu.Unlock()
	l.ack.Store(0)
}

// errSessionEnded is what a step's sends return once its session ended.
var errSessionEnded = errors.New("session ended")

// sess is one authenticated session: the steps it started report through
// it, and stop reporting once it ended.
type sess struct {
	l     *link
	id    uint64
	ended atomic.Bool
}

func (s *sess) send(m wire.Message) error {
	if s.ended.Load() {
		return errSessionEnded
	}
	return s.l.send(m, s.id)
}

type inFrame struct {
	f   *wire.Frame
	err error
}

// Serve runs sessions over c, one after the other, until the connection
// fails or ends (ErrDisconnected), ctx ends, or the agent drained
// (ErrDrained). Between sessions it says Hello again: at once after the
// master closed the session or went silent, after a backoff when the
// master refused the agent. Steps still running when a session ends are
// cancelled: they cannot be reported on the next one.
func (a *Agent) Serve(ctx context.Context, c Conn) error {
	l := &link{c: c}
	in := make(chan inFrame, 64)
	readCtx, stopRead := context.WithCancel(ctx)
	defer stopRead()
	go a.read(readCtx, c, in)

	retry := backoff.New(a.cfg.RetryMin, a.cfg.RetryMax)
	for {
		s, err := a.session(ctx, l, in)
		if s != nil {
			a.endSession(s, err)
			retry.Reset()
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
			if err := a.idle(ctx, l, in, wait); err != nil {
				return err
			}
		case errors.Is(err, ErrMasterLost), errors.Is(err, ErrMasterClosed):
			a.log.Warn("session ended; saying hello again", "error", err)
		default:
			return err
		}
	}
}

// read delivers the connection's frames to in until it fails.
func (a *Agent) read(ctx context.Context, c Conn, in chan<- inFrame) {
	for {
		raw, err := c.Recv()
		if err != nil {
			select {
			case in <- inFrame{err: err}:
			case <-ctx.Done():
			}
			return
		}
		f, err := wire.Decode(raw, wire.MaxFrameSize)
		if err != nil {
			a.malformed.Add(1)
			a.log.Warn("dropped malformed frame", "error", err)
			continue
		}
		select {
		case in <- inFrame{f: f}:
		case <-ctx.Done():
			return
		}
	}
}

// recvErr maps a receive error to the error Serve returns.
func recvErr(err error) error {
	if errors.Is(err, io.EOF) {
		return ErrDisconnected
	}
	return fmt.Errorf("receive: %w", err)
}

// idle waits d between sessions: it answers pings and drops everything
// else, returning early when the connection fails, ctx ends or the agent
// drains.
func (a *Agent) idle(ctx context.Context, l *link, in <-chan inFrame, d time.Duration) error {
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
		case fr := <-in:
			if fr.err != nil {
				return recvErr(fr.err)
			}
			if m, err := fr.f.Message(); err == nil {
				if p, ok := m.(*wire.Ping); ok {
					_ = l.send(&wire.Pong{Nonce: p.Nonce, UnixNano: p.UnixNano}, fr.f.Session)
					continue
				}
			}
			a.stale.Add(1)
		}
	}
}

// endSession stops what the session still runs and waits until it did.
//
// Resumable sessions (a later issue) will instead keep the steps running
// and hand them to the next session of the same agent, which reports
// their output from the master's last Ack on; this is where they stop
// being reported.
func (a *Agent) endSession(s *sess, err error) {
	s.ended.Store(true)
	if n := a.Running(); n > 0 {
		a.log.Warn("cancelling the session's running steps: they cannot be reported to another session", "steps", n)
	}
	a.cancelAll(fmt.Errorf("session ended: %v", err))
	a.wg.Wait()
}

// handshake is one handshake attempt's state.
type handshake struct {
	nonces   [][]byte          // of the latest Hellos, newest last
	answered map[uint64]bool   // challenges answered, genuine or not
	genuine  map[uint64]bool   // challenges whose master proved the secret
	keys     map[uint64][]byte // session keys of the genuine challenges
	authBy   time.Time         // when a genuine challenge's AuthResult is due
}

// session runs one handshake and, when it succeeds, the session that
// follows, until either ends. It returns the session (nil when none was
// established) and why it ended.
func (a *Agent) session(ctx context.Context, l *link, in <-chan inFrame) (*sess, error) {
	var hs handshake
	sendHello := func(fresh bool) error {
		if fresh {
			hs = handshake{answered: map[uint64]bool{}, genuine: map[uint64]bool{}, keys: map[uint64][]byte{}}
		}
		nonce := make([]byte, wire.NonceSize)
		_, _ = rand.Read(nonce)
		hs.nonces = append(hs.nonces, nonce)
		if len(hs.nonces) > maxHelloNonces {
			hs.nonces = hs.nonces[1:]
		}
		l.restart()
		return l.send(&wire.Hello{Node: a.cfg.Node, AgentVersion: a.cfg.Version, OS: runtime.GOOS, Arch: runtime.GOARCH, Nonce: nonce}, 0)
	}
	if a.draining.Load() {
		return nil, ErrDrained
	}
	if err := sendHello(true); err != nil {
		return nil, err
	}
	a.log.Debug("hello sent", "node", a.cfg.Node)
	helloTick := time.NewTicker(a.cfg.HelloInterval)
	defer helloTick.Stop()

	var s *sess    // the session once established
	var key []byte // its key: every frame of the session carries a MAC
	// suspectBy: an unauthenticated Close claimed the session is over (a
	// restarted master does not know its key); unless a genuine frame
	// arrives by then, the session is treated as lost.
	var suspectBy time.Time
	var beat <-chan time.Time
	var lastSeen time.Time
	var pingNonce uint64
	drainCh := a.drainCh
	var drainDone chan struct{}

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
			if !suspectBy.IsZero() && time.Now().After(suspectBy) {
				return s, fmt.Errorf("%w: the master said it does not know the session and answered no ping", ErrMasterClosed)
			}
			pingNonce++
			if err := l.send(&wire.Ping{Nonce: pingNonce, UnixNano: time.Now().UnixNano()}, s.id); err != nil {
				return s, err
			}
		case <-drainCh:
			drainCh = nil
			if s == nil {
				return nil, ErrDrained
			}
			a.log.Info("draining: waiting for running steps", "steps", a.Running(), "timeout", a.cfg.DrainTimeout)
			drainDone = make(chan struct{})
			go func() {
				defer close(drainDone)
				a.waitSteps(a.cfg.DrainTimeout)
			}()
		case <-drainDone:
			if err := l.send(&wire.Close{Reason: "agent shutting down"}, s.id); err != nil {
				a.log.Warn("could not say goodbye", "error", err)
			}
			return s, ErrDrained
		case fr := <-in:
			if fr.err != nil {
				return s, recvErr(fr.err)
			}
			f := fr.f
			msg, err := f.Message()
			if err != nil {
				a.malformed.Add(1)
				a.log.Warn("dropped undecodable frame", "type", f.Type, "error", err)
				continue
			}
			if s == nil {
				est, err := a.handshakeFrame(l, &hs, f, msg)
				if err != nil {
					return nil, err
				}
				if est != 0 {
					s = &sess{l: l, id: est}
					key = hs.keys[est]
					l.established(est, key)
					l.ack.Store(f.Seq)
					lastSeen = time.Now()
					t := time.NewTicker(a.cfg.Heartbeat)
					defer t.Stop()
					beat = t.C
					a.log.Info("session established", "node", a.cfg.Node, "session", fmt.Sprintf("%016x", est))
				}
				continue
			}
			if f.Session != s.id {
				n := a.stale.Add(1)
				a.log.Debug("dropped a frame of another session", "type", f.Type, "session", fmt.Sprintf("%016x", f.Session), "stale", n)
				continue
			}
			// Every frame of the session carries a MAC under the session key:
			// a frame injected into the transport without it, or altered, is
			// dropped and never executed.
			if !wire.Verify(key, f) {
				if m, ok := msg.(*wire.Close); ok {
					// A restarted master cannot sign: its Close for a session
					// it does not know is only a hint. Ask; a live master
					// answers the ping, signed.
					if suspectBy.IsZero() {
						a.log.Info("unauthenticated close: checking whether the master still knows the session", "reason", m.Reason)
						suspectBy = time.Now().Add(2 * a.cfg.Heartbeat)
						pingNonce++
						if err := l.send(&wire.Ping{Nonce: pingNonce, UnixNano: time.Now().UnixNano()}, s.id); err != nil {
							return s, err
						}
					}
					continue
				}
				n := a.forged.Add(1)
				a.log.Warn("dropped a frame with a bad MAC", "type", f.Type, "seq", f.Seq, "forged", n)
				continue
			}
			// The master numbers a session's frames upwards: a frame at or
			// below the highest Seq seen is a copy of an earlier one (a
			// replay into a Kafka topic, say) and never runs again.
			if f.Seq <= l.ack.Load() {
				n := a.replayed.Add(1)
				a.log.Warn("dropped a replayed frame", "type", f.Type, "seq", f.Seq, "highest", l.ack.Load(), "replayed", n)
				continue
			}
			l.ack.Store(f.Seq)
			lastSeen = time.Now()
			suspectBy = time.Time{}
			switch m := msg.(type) {
			case *wire.Ping:
				if err := l.send(&wire.Pong{Nonce: m.Nonce, UnixNano: m.UnixNano}, s.id); err != nil {
					return s, err
				}
			case *wire.Pong, *wire.Ack:
			case *wire.RunStep:
				a.start(s, m)
			case *wire.Cancel:
				a.cancel(m.BuildID, errors.New(m.Reason))
			case *wire.Close:
				return s, fmt.Errorf("%w: %s", ErrMasterClosed, m.Reason)
			default:
				a.unexpected.Add(1)
				a.log.Debug("dropped an unexpected frame", "type", f.Type)
			}
		}
	}
}

// handshakeFrame handles a frame that arrived before the session was
// established. It returns the session id once the master accepted the
// agent's genuine proof.
func (a *Agent) handshakeFrame(l *link, hs *handshake, f *wire.Frame, msg wire.Message) (uint64, error) {
	switch m := msg.(type) {
	case *wire.Ping:
		// Answered in any state: a ping executes nothing.
		if err := l.send(&wire.Pong{Nonce: m.Nonce, UnixNano: m.UnixNano}, f.Session); err != nil {
			return 0, err
		}
	case *wire.Challenge:
		if f.Session == 0 || hs.answered[f.Session] {
			a.stale.Add(1)
			return 0, nil
		}
		for _, nonceA := range hs.nonces {
			if wire.ProofEqual(m.Proof, wire.MasterProof(a.cfg.Secret, nonceA, m.Nonce)) {
				hs.answered[f.Session], hs.genuine[f.Session] = true, true
				hs.keys[f.Session] = wire.SessionKey(a.cfg.Secret, nonceA, m.Nonce, f.Session)
				hs.authBy = time.Now().Add(a.cfg.HeartbeatTimeout)
				a.log.Debug("the master proved the secret: answering its challenge", "session", fmt.Sprintf("%016x", f.Session))
				return 0, l.send(&wire.Auth{Proof: wire.AgentProof(a.cfg.Secret, m.Nonce, nonceA)}, f.Session)
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
		if len(hs.genuine) == 0 && len(hs.answered) < maxPendingChallenges {
			hs.answered[f.Session] = true
			return 0, l.send(&wire.Auth{}, f.Session)
		}
	case *wire.AuthResult:
		switch {
		case !hs.answered[f.Session]:
			a.stale.Add(1)
		case !m.OK:
			return 0, fmt.Errorf("%w: %s", ErrRefused, m.Reason)
		case !hs.genuine[f.Session] || m.Session != f.Session:
			a.stale.Add(1) // accepted without our proof: not our master
			a.log.Warn("ignored an acceptance of a challenge that did not prove the secret", "session", fmt.Sprintf("%016x", f.Session))
		case !wire.Verify(hs.keys[f.Session], f):
			n := a.forged.Add(1)
			a.log.Warn("dropped a frame with a bad MAC", "type", f.Type, "forged", n)
		default:
			return f.Session, nil
		}
	default:
		a.stale.Add(1) // a frame of an earlier session, or a forged one
		a.log.Debug("dropped a frame before the handshake completed", "type", f.Type, "session", fmt.Sprintf("%016x", f.Session))
	}
	return 0, nil
}

// start runs a step in the background and reports its output and exit.
func (a *Agent) start(s *sess, m *wire.RunStep) {
	log := a.log.With("build", m.BuildID, "step", m.StepName, "index", m.StepIndex)
	exit := func(code int32, msg string) {
		if err := s.send(&wire.Exit{BuildID: m.BuildID, StepIndex: m.StepIndex, Code: code, Error: msg}); err != nil {
			log.Warn("could not report the step's exit", "error", err)
		}
	}
	if a.draining.Load() {
		log.Info("refused a step: draining")
		exit(-1, "agent draining")
		return
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	a.mu.Lock()
	if _, busy := a.steps[m.BuildID]; busy {
		a.mu.Unlock()
		cancel(nil)
		exit(-1, "build "+m.BuildID+" already runs a step on this agent")
		return
	}
	a.steps[m.BuildID] = &step{cancel: cancel}
	a.wg.Add(1)
	a.mu.Unlock()

	env := append([]string(nil), a.cfg.Env...)
	for _, e := range m.Env {
		env = append(env, e.Name+"="+e.Value)
	}
	spec := runner.Spec{
		Command: m.Command,
		Root:    a.cfg.Workdir,
		Workdir: m.Workdir,
		Env:     env,
		Timeout: time.Duration(m.TimeoutMillis) * time.Millisecond,
		Grace:   a.cfg.Grace,
	}
	log.Info("step started", "workspace", m.Workdir)
	go func() {
		defer func() {
			a.mu.Lock()
			delete(a.steps, m.BuildID)
			a.mu.Unlock()
			a.wg.Done()
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
			if err := s.send(&wire.Output{BuildID: m.BuildID, StepIndex: m.StepIndex, Stream: stream, Data: p}); err != nil {
				if failed.CompareAndSwap(false, true) {
					cancel(fmt.Errorf("output cannot reach the master: %w", err))
				}
			}
		})
		log.Info("step finished", "code", res.Code, "error", res.Error)
		exit(int32(res.Code), res.Error)
	}()
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
}

// waitSteps waits for running steps to finish, cancelling them after
// timeout.
func (a *Agent) waitSteps(timeout time.Duration) {
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
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
