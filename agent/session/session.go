// Package session is the agent's side of the master/agent protocol
// (docs/protocol.md) over one connection: the handshake with mutual
// authentication, heartbeats, stale-frame filtering, running steps and
// draining.
package session

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/agent/runner"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// Conn is a bidirectional stream of frames to the master (a Kafka topic
// pair, or stdin/stdout).
type Conn interface {
	Send(frame []byte) error
	Recv() ([]byte, error)
	Close() error
}

// Errors Serve ends with.
var (
	// ErrRefused: the master refused the agent's proof (wrong secret).
	ErrRefused = errors.New("the master refused the agent")
	// ErrMasterLost: nothing arrived from the master for the heartbeat timeout.
	ErrMasterLost = errors.New("master lost")
	// ErrMasterClosed: the master ended the session.
	ErrMasterClosed = errors.New("the master closed the session")
	// ErrDrained: the agent drained and said goodbye.
	ErrDrained = errors.New("agent drained")
)

// Config configures an agent.
type Config struct {
	// Node is the node's name, sent in Hello.
	Node string
	// Secret is the node's secret; empty for transports that authenticate
	// the agent themselves.
	Secret []byte
	// Version is the agent's version, sent in Hello.
	Version string
	// Workdir holds the builds' workspaces.
	Workdir string
	// Env is the environment steps start from (os.Environ() when nil).
	Env []string
	// Heartbeat is the ping interval (default 5s).
	Heartbeat time.Duration
	// HeartbeatTimeout is how long the master may stay silent (default 30s).
	HeartbeatTimeout time.Duration
	// HelloInterval is how often an unanswered Hello is repeated (default
	// 3s): over Kafka the master may not be reading yet.
	HelloInterval time.Duration
	// Grace is the time between SIGTERM and SIGKILL of a cancelled step.
	Grace time.Duration
	// Logger logs the agent's events.
	Logger hclog.Logger
}

// maxPendingChallenges bounds the challenges one hello answers.
const maxPendingChallenges = 16

// Counters count the frames the agent dropped.
type Counters struct {
	// Stale frames belonged to another session (or carried a forged or
	// outdated challenge); they were never executed.
	Stale uint64 `json:"stale"`
	// Malformed frames did not decode.
	Malformed uint64 `json:"malformed"`
	// Unexpected frames made no sense in the session's state.
	Unexpected uint64 `json:"unexpected"`
}

// Agent runs the agent's sessions, one at a time.
type Agent struct {
	cfg Config
	log hclog.Logger

	draining atomic.Bool
	drainCh  chan struct{}
	drainMu  sync.Once

	stale, malformed, unexpected atomic.Uint64

	mu    sync.Mutex
	steps map[string]*step // by build id
	wg    sync.WaitGroup   // running steps
}

type step struct {
	cancel context.CancelCauseFunc
	done   chan struct{}
}

// New returns an agent.
func New(cfg Config) *Agent {
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 5 * time.Second
	}
	if cfg.HeartbeatTimeout <= 0 {
		cfg.HeartbeatTimeout = 30 * time.Second
	}
	if cfg.HelloInterval <= 0 {
		cfg.HelloInterval = 3 * time.Second
	}
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
	return Counters{Stale: a.stale.Load(), Malformed: a.malformed.Load(), Unexpected: a.unexpected.Load()}
}

// Drain stops the agent taking new steps; the running session lets
// running steps finish (cancelling them once ctx ends), reports them, says
// Close and Serve returns ErrDrained.
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

// conn is one session's state on a connection.
type conn struct {
	a      *Agent
	c      Conn
	sendMu sync.Mutex
	seq    uint64
	ack    atomic.Uint64
	id     atomic.Uint64 // session id once authenticated
}

func (c *conn) send(m wire.Message, session uint64) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	f := wire.NewFrame(m)
	c.seq++
	f.Session, f.Seq, f.Ack = session, c.seq, c.ack.Load()
	b, err := f.Encode()
	if err != nil {
		return err
	}
	return c.c.Send(b)
}

type inFrame struct {
	f   *wire.Frame
	err error
}

// Serve runs sessions over c until the connection fails, the master is
// refused or lost, ctx ends or the agent drained. Steps still running when
// Serve returns are cancelled: they cannot be reported on a new session.
// drainTimeout bounds how long a drain waits for running steps.
func (a *Agent) Serve(ctx context.Context, c Conn, drainTimeout time.Duration) error {
	cn := &conn{a: a, c: c}
	in := make(chan inFrame, 64)
	readCtx, stopRead := context.WithCancel(ctx)
	defer stopRead()
	go func() {
		for {
			raw, err := c.Recv()
			if err != nil {
				select {
				case in <- inFrame{err: err}:
				case <-readCtx.Done():
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
			case <-readCtx.Done():
				return
			}
		}
	}()
	err := cn.run(ctx, in, drainTimeout)
	// A later issue resumes sessions across reconnects; until then a step
	// of an ended session can never be reported, so it stops here.
	a.cancelAll(fmt.Errorf("session ended: %v", err))
	a.wg.Wait()
	return err
}

func (cn *conn) run(ctx context.Context, in <-chan inFrame, drainTimeout time.Duration) error {
	a := cn.a
	nonceA := make([]byte, wire.NonceSize)
	// answered: sessions whose challenge this hello answered; verified: the
	// one whose master proved it holds the secret.
	var answered map[uint64]bool
	var verified uint64
	sendHello := func() error {
		_, _ = rand.Read(nonceA)
		answered, verified = map[uint64]bool{}, 0
		return cn.send(&wire.Hello{Node: a.cfg.Node, AgentVersion: a.cfg.Version, OS: runtime.GOOS, Arch: runtime.GOARCH, Nonce: nonceA}, 0)
	}
	if err := sendHello(); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	a.log.Debug("hello sent", "node", a.cfg.Node)
	helloTick := time.NewTicker(a.cfg.HelloInterval)
	defer helloTick.Stop()
	beat := time.NewTicker(a.cfg.Heartbeat)
	defer beat.Stop()
	lastSeen := time.Now()
	var pingNonce uint64
	drainCh := a.drainCh
	var drainDone chan struct{}

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-helloTick.C:
			if cn.id.Load() == 0 && verified == 0 {
				if a.draining.Load() {
					return ErrDrained
				}
				if err := sendHello(); err != nil {
					return fmt.Errorf("send hello: %w", err)
				}
			}
		case <-beat.C:
			if cn.id.Load() == 0 {
				continue
			}
			if silent := time.Since(lastSeen); silent > a.cfg.HeartbeatTimeout {
				return fmt.Errorf("%w: nothing received for %s", ErrMasterLost, silent.Round(time.Second))
			}
			pingNonce++
			if err := cn.send(&wire.Ping{Nonce: pingNonce, UnixNano: time.Now().UnixNano()}, cn.id.Load()); err != nil {
				return fmt.Errorf("send ping: %w", err)
			}
		case <-drainCh:
			drainCh = nil
			if cn.id.Load() == 0 {
				return ErrDrained
			}
			drainDone = make(chan struct{})
			go func() {
				defer close(drainDone)
				a.waitSteps(drainTimeout)
			}()
		case <-drainDone:
			_ = cn.send(&wire.Close{Reason: "agent shutting down"}, cn.id.Load())
			return ErrDrained
		case fr := <-in:
			if fr.err != nil {
				if errors.Is(fr.err, io.EOF) {
					return fmt.Errorf("%w: connection ended", ErrMasterClosed)
				}
				return fmt.Errorf("receive: %w", fr.err)
			}
			f := fr.f
			if f.Seq > cn.ack.Load() {
				cn.ack.Store(f.Seq)
			}
			msg, err := f.Message()
			if err != nil {
				a.malformed.Add(1)
				continue
			}
			id := cn.id.Load()
			if id == 0 {
				switch m := msg.(type) {
				case *wire.Ping:
					_ = cn.send(&wire.Pong{Nonce: m.Nonce, UnixNano: m.UnixNano}, f.Session)
				case *wire.Challenge:
					if f.Session == 0 || answered[f.Session] {
						a.stale.Add(1)
						continue
					}
					if !wire.ProofEqual(m.Proof, wire.MasterProof(a.cfg.Secret, nonceA, m.Nonce)) {
						// A stale challenge (answering an older hello), a forged
						// one, or a master holding another secret. Answer with an
						// empty proof while no genuine challenge was answered: the
						// master ignores it for a session it is not negotiating,
						// and refuses it for the current one, saying why, so the
						// node shows "wrong secret". Nothing runs either way.
						a.stale.Add(1)
						a.log.Warn("the master's proof does not verify: wrong secret on one side, or a stale challenge", "session", fmt.Sprintf("%016x", f.Session))
						if verified == 0 && len(answered) < maxPendingChallenges {
							answered[f.Session] = true
							if err := cn.send(&wire.Auth{}, f.Session); err != nil {
								return fmt.Errorf("send auth: %w", err)
							}
						}
						continue
					}
					answered[f.Session] = true
					verified = f.Session
					if err := cn.send(&wire.Auth{Proof: wire.AgentProof(a.cfg.Secret, m.Nonce, nonceA)}, f.Session); err != nil {
						return fmt.Errorf("send auth: %w", err)
					}
				case *wire.AuthResult:
					if !answered[f.Session] {
						a.stale.Add(1)
						continue
					}
					if !m.OK {
						a.log.Error("the master refused the agent", "reason", m.Reason)
						return fmt.Errorf("%w: %s", ErrRefused, m.Reason)
					}
					if f.Session != verified {
						a.stale.Add(1) // accepted without our proof: not our master
						continue
					}
					cn.id.Store(verified)
					lastSeen = time.Now()
					a.log.Info("session established", "node", a.cfg.Node, "session", fmt.Sprintf("%016x", verified))
				default:
					a.stale.Add(1) // a frame of an earlier session
				}
				continue
			}
			if f.Session != id {
				a.stale.Add(1)
				a.log.Debug("dropped frame of another session", "type", f.Type, "session", f.Session)
				continue
			}
			lastSeen = time.Now()
			switch m := msg.(type) {
			case *wire.Ping:
				_ = cn.send(&wire.Pong{Nonce: m.Nonce, UnixNano: m.UnixNano}, id)
			case *wire.Pong:
			case *wire.RunStep:
				cn.start(m, id)
			case *wire.Cancel:
				a.cancel(m.BuildID, errors.New(m.Reason))
			case *wire.Close:
				return fmt.Errorf("%w: %s", ErrMasterClosed, m.Reason)
			case *wire.Ack:
			default:
				a.unexpected.Add(1)
			}
		}
	}
}

// start runs a step in the background and reports its output and exit.
func (cn *conn) start(m *wire.RunStep, id uint64) {
	a := cn.a
	exit := func(code int32, msg string) {
		if err := cn.send(&wire.Exit{BuildID: m.BuildID, StepIndex: m.StepIndex, Code: code, Error: msg}, id); err != nil {
			a.log.Warn("could not report a step's exit", "build", m.BuildID, "error", err)
		}
	}
	if a.draining.Load() {
		exit(-1, "agent draining")
		return
	}
	if !filepath.IsLocal(m.Workdir) {
		exit(-1, fmt.Sprintf("workspace %q is not a relative path inside the agent's workdir", m.Workdir))
		return
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	st := &step{cancel: cancel, done: make(chan struct{})}
	a.mu.Lock()
	if _, busy := a.steps[m.BuildID]; busy {
		a.mu.Unlock()
		cancel(nil)
		exit(-1, "build "+m.BuildID+" already runs a step on this agent")
		return
	}
	a.steps[m.BuildID] = st
	a.wg.Add(1)
	a.mu.Unlock()

	env := append([]string(nil), a.cfg.Env...)
	for _, e := range m.Env {
		env = append(env, e.Name+"="+e.Value)
	}
	spec := runner.Spec{
		Command: m.Command,
		Dir:     filepath.Join(a.cfg.Workdir, m.Workdir),
		Env:     env,
		Timeout: time.Duration(m.TimeoutMillis) * time.Millisecond,
		Grace:   a.cfg.Grace,
	}
	log := a.log.With("build", m.BuildID, "step", m.StepName)
	log.Info("step started", "dir", spec.Dir)
	go func() {
		defer func() {
			a.mu.Lock()
			delete(a.steps, m.BuildID)
			a.mu.Unlock()
			close(st.done)
			a.wg.Done()
		}()
		var sendErr atomic.Value
		res := runner.Run(ctx, spec, func(s runner.Stream, p []byte) {
			if sendErr.Load() != nil {
				return
			}
			stream := wire.StreamStdout
			if s == runner.Stderr {
				stream = wire.StreamStderr
			}
			if err := cn.send(&wire.Output{BuildID: m.BuildID, StepIndex: m.StepIndex, Stream: stream, Data: p}, id); err != nil {
				sendErr.Store(err)
				cancel(fmt.Errorf("connection to the master failed: %w", err))
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
	if st != nil {
		a.log.Info("cancelling step", "build", build, "reason", reason)
		st.cancel(reason)
	}
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
	select {
	case <-done:
		return
	case <-time.After(timeout):
	}
	a.log.Warn("drain timeout: cancelling running steps", "timeout", timeout)
	a.cancelAll(fmt.Errorf("agent shutting down (drain timeout %s)", timeout))
	<-done
}
