package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/sdk/launcher"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// guard bounds every wait of these tests. It only turns a hang into a
// failure: no test relies on it for synchronisation.
const guard = 10 * time.Second

// testNode is the node name the sessions of these tests serve.
const testNode = "builder-1"

var testSecret = []byte("the node's secret")

// ---------------------------------------------------------------------------
// An in-memory launcher.Conn.

// memQueue is one direction of an in-memory connection. It is unbounded, so
// a sender never blocks (like a Kafka topic), and it has one reader.
type memQueue struct {
	mu     sync.Mutex
	frames [][]byte
	closed bool
	notify chan struct{} // poked on every push and on close
}

func newMemQueue() *memQueue { return &memQueue{notify: make(chan struct{}, 1)} }

func (q *memQueue) poke() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

func (q *memQueue) push(b []byte) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return io.ErrClosedPipe
	}
	q.frames = append(q.frames, bytes.Clone(b))
	q.poke()
	return nil
}

func (q *memQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.poke()
}

// tryPop returns the next frame if one is queued; ok false if none is.
func (q *memQueue) tryPop() (b []byte, ok bool, closed bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.frames) > 0 {
		b = q.frames[0]
		q.frames = q.frames[1:]
		return b, true, false
	}
	return nil, false, q.closed
}

var errTimeout = errors.New("timed out")

// pop waits for the next frame; io.EOF once the queue is closed and
// drained, errTimeout when timeout fires first.
func (q *memQueue) pop(timeout <-chan time.Time) ([]byte, error) {
	for {
		b, ok, closed := q.tryPop()
		if ok {
			return b, nil
		}
		if closed {
			return nil, io.EOF
		}
		select {
		case <-q.notify:
		case <-timeout:
			return nil, errTimeout
		}
	}
}

// memConn is one end of an in-memory connection.
type memConn struct {
	in, out *memQueue
}

var _ launcher.Conn = (*memConn)(nil)

// memPipe returns the master's and the agent's ends of a connection.
func memPipe() (master, agent *memConn) {
	toMaster, toAgent := newMemQueue(), newMemQueue()
	return &memConn{in: toMaster, out: toAgent}, &memConn{in: toAgent, out: toMaster}
}

func (c *memConn) Send(frame []byte) error { return c.out.push(frame) }
func (c *memConn) Recv() ([]byte, error)   { return c.in.pop(nil) }

// Close ends both directions, as closing a socket does.
func (c *memConn) Close() error {
	c.in.close()
	c.out.close()
	return nil
}

// ---------------------------------------------------------------------------
// A test agent speaking the protocol with sdk/wire. It runs in the test's
// goroutine, so it may fail the test.

type testAgent struct {
	t       *testing.T
	conn    *memConn
	node    string
	secret  []byte
	nonce   []byte // nonceA of the last Hello
	seq     uint64
	ack     uint64
	session uint64 // once authenticated
	key     []byte // once authenticated
}

func newNonce(b byte) []byte { return bytes.Repeat([]byte{b}, wire.NonceSize) }

// frame returns m in a frame of session with the agent's next Seq, signed
// if key is not nil.
func (a *testAgent) frame(m wire.Message, session uint64, key []byte) *wire.Frame {
	f := wire.NewFrame(m)
	a.seq++
	f.Session, f.Seq, f.Ack = session, a.seq, a.ack
	if key != nil {
		wire.Sign(key, f)
	}
	return f
}

func (a *testAgent) sendFrame(f *wire.Frame) {
	a.t.Helper()
	b, err := f.Encode()
	if err != nil {
		a.t.Fatalf("encode %v: %v", f.Type, err)
	}
	if err := a.conn.Send(b); err != nil {
		a.t.Fatalf("agent send %v: %v", f.Type, err)
	}
}

// send sends m in session, signed with key if not nil.
func (a *testAgent) send(m wire.Message, session uint64, key []byte) {
	a.t.Helper()
	a.sendFrame(a.frame(m, session, key))
}

// sendInSession sends m in the established session, signed.
func (a *testAgent) sendInSession(m wire.Message) {
	a.t.Helper()
	a.send(m, a.session, a.key)
}

// hello sends a Hello for node with a fresh nonce.
func (a *testAgent) hello(nonceByte byte) {
	a.t.Helper()
	a.nonce = newNonce(nonceByte)
	a.send(&wire.Hello{Node: a.node, AgentVersion: "1.2.3", OS: "linux", Arch: "amd64", Nonce: a.nonce}, 0, nil)
}

// recv returns the next frame from the master and its message.
func (a *testAgent) recv() (*wire.Frame, wire.Message) {
	a.t.Helper()
	raw, err := a.conn.in.pop(time.After(guard))
	if err != nil {
		a.t.Fatalf("agent: waiting for a frame from the master: %v", err)
	}
	f, err := wire.Decode(raw, wire.MaxFrameSize)
	if err != nil {
		a.t.Fatalf("agent: master sent a malformed frame: %v", err)
	}
	m, err := f.Message()
	if err != nil {
		a.t.Fatalf("agent: master sent a bad %v: %v", f.Type, err)
	}
	if f.Seq > a.ack {
		a.ack = f.Seq
	}
	return f, m
}

// tryRecv returns a frame already queued for the agent, if any.
func (a *testAgent) tryRecv() (*wire.Frame, wire.Message, bool) {
	a.t.Helper()
	raw, ok, _ := a.conn.in.tryPop()
	if !ok {
		return nil, nil, false
	}
	f, err := wire.Decode(raw, wire.MaxFrameSize)
	if err != nil {
		a.t.Fatalf("agent: master sent a malformed frame: %v", err)
	}
	m, err := f.Message()
	if err != nil {
		a.t.Fatalf("agent: master sent a bad %v: %v", f.Type, err)
	}
	return f, m, true
}

// expect receives the next frame and requires it to carry a T.
func expect[T wire.Message](a *testAgent) (*wire.Frame, T) {
	a.t.Helper()
	f, m := a.recv()
	want, ok := m.(T)
	if !ok {
		var zero T
		a.t.Fatalf("agent: got %v %+v (session %x), want %T", f.Type, m, f.Session, zero)
	}
	return f, want
}

// expectInSession receives the next frame, requires a T in the agent's
// session carrying a valid MAC.
func expectInSession[T wire.Message](a *testAgent) (*wire.Frame, T) {
	a.t.Helper()
	f, m := expect[T](a)
	if f.Session != a.session {
		a.t.Fatalf("agent: %v in session %x, want %x", f.Type, f.Session, a.session)
	}
	if !wire.Verify(a.key, f) {
		a.t.Fatalf("agent: %v from the master carries no valid MAC", f.Type)
	}
	return f, m
}

// challenge receives the master's Challenge and checks its proof of the
// agent's nonce; it returns the negotiated session and the master's nonce.
func (a *testAgent) challenge(wantProofOK bool) (uint64, []byte) {
	a.t.Helper()
	f, ch := expect[*wire.Challenge](a)
	if f.Session == 0 {
		a.t.Fatalf("challenge in session 0")
	}
	if len(ch.Nonce) != wire.NonceSize {
		a.t.Fatalf("challenge nonce is %d bytes, want %d", len(ch.Nonce), wire.NonceSize)
	}
	if ok := wire.ProofEqual(ch.Proof, wire.MasterProof(a.secret, a.nonce, ch.Nonce)); ok != wantProofOK {
		a.t.Fatalf("master proof verifies under the agent's secret: %v, want %v", ok, wantProofOK)
	}
	return f.Session, bytes.Clone(ch.Nonce)
}

// authenticate answers a challenge with the genuine proof and checks the
// master's acceptance; the agent's session is then established.
func (a *testAgent) authenticate(session uint64, nonceM []byte) {
	a.t.Helper()
	a.send(&wire.Auth{Proof: wire.AgentProof(a.secret, nonceM, a.nonce)}, session, nil)
	f, res := expect[*wire.AuthResult](a)
	if !res.OK || res.Session != session || f.Session != session {
		a.t.Fatalf("AuthResult %+v in session %x, want ok for session %x", res, f.Session, session)
	}
	key := wire.SessionKey(a.secret, a.nonce, nonceM, session)
	if !wire.Verify(key, f) {
		a.t.Fatalf("AuthResult carries no valid MAC under the session key")
	}
	a.session, a.key = session, key
}

// handshake runs the agent's whole handshake.
func (a *testAgent) handshake(nonceByte byte) {
	a.t.Helper()
	a.hello(nonceByte)
	a.authenticate(a.challenge(true))
}

// ---------------------------------------------------------------------------
// The master's side, run in background goroutines.

type harness struct {
	t      *testing.T
	s      *Session
	conn   *memConn // the master's end
	agent  *testAgent
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newHarness(t *testing.T, opts Options) *harness {
	t.Helper()
	if opts.Node == "" {
		opts.Node = testNode
	}
	if opts.Heartbeat == 0 {
		opts.Heartbeat = time.Hour // no pings unless a test asks for them
	}
	if opts.HeartbeatTimeout == 0 {
		opts.HeartbeatTimeout = time.Hour
	}
	mc, ac := memPipe()
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, conn: mc, ctx: ctx, cancel: cancel,
		agent: &testAgent{t: t, conn: ac, node: opts.Node, secret: opts.Secret}}
	h.s = New(mc, opts)
	t.Cleanup(func() {
		cancel()
		_ = mc.Close()
		h.wg.Wait()
	})
	return h
}

func (h *harness) goroutine(f func()) {
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		f()
	}()
}

type handshakeResult struct {
	agent *Agent
	err   error
}

// startHandshake runs Handshake in the background.
func (h *harness) startHandshake() <-chan handshakeResult {
	c := make(chan handshakeResult, 1)
	h.goroutine(func() {
		a, err := h.s.Handshake(h.ctx)
		c <- handshakeResult{a, err}
	})
	return c
}

// startServe runs Serve in the background.
func (h *harness) startServe() <-chan error {
	c := make(chan error, 1)
	h.goroutine(func() { c <- h.s.Serve(h.ctx) })
	return c
}

type stepResult struct {
	res *StepResult
	err error
}

// startStep runs RunStep in the background.
func (h *harness) startStep(ctx context.Context, req *wire.RunStep, out io.Writer) <-chan stepResult {
	c := make(chan stepResult, 1)
	h.goroutine(func() {
		res, err := h.s.RunStep(ctx, req, out)
		c <- stepResult{res, err}
	})
	return c
}

// wait returns the value c delivers, failing the test after the guard.
func wait[T any](t *testing.T, c <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(guard):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// established returns a harness whose session is authenticated and served.
func established(t *testing.T, opts Options) (*harness, <-chan error) {
	t.Helper()
	if opts.Secret == nil {
		opts.Secret = testSecret
	}
	h := newHarness(t, opts)
	hs := h.startHandshake()
	h.agent.handshake(1)
	if r := wait(t, hs, "Handshake"); r.err != nil {
		t.Fatalf("Handshake: %v", r.err)
	}
	return h, h.startServe()
}

// chunkWriter records every Write.
type chunkWriter struct {
	mu     sync.Mutex
	chunks [][]byte
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.chunks = append(w.chunks, bytes.Clone(p))
	return len(p), nil
}

func (w *chunkWriter) joined() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return bytes.Join(w.chunks, nil)
}

func (w *chunkWriter) nonEmpty() [][]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out [][]byte
	for _, c := range w.chunks {
		if len(c) > 0 {
			out = append(out, c)
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// Handshake.

func TestHandshakeSucceeds(t *testing.T) {
	tests := []struct {
		name   string
		secret []byte
		// before runs before the agent's genuine Hello.
		before func(a *testAgent)
		// beforeAuth runs between the Challenge and the genuine Auth.
		beforeAuth func(a *testAgent, session uint64, nonceM []byte)
		wantStale  uint64
	}{
		{name: "right secret", secret: testSecret},
		{name: "empty secret", secret: nil},
		{name: "empty non-nil secret", secret: []byte{}},
		{
			name: "hello for another node ignored", secret: testSecret,
			before: func(a *testAgent) {
				a.send(&wire.Hello{Node: "builder-2", Nonce: newNonce(9)}, 0, nil)
			},
			wantStale: 1,
		},
		{
			name: "hello with a short nonce ignored", secret: testSecret,
			before: func(a *testAgent) {
				a.send(&wire.Hello{Node: testNode, Nonce: []byte("short")}, 0, nil)
			},
			wantStale: 1,
		},
		{
			name: "hello in a non-zero session ignored", secret: testSecret,
			before: func(a *testAgent) {
				a.send(&wire.Hello{Node: testNode, Nonce: newNonce(9)}, 42, nil)
			},
			wantStale: 1,
		},
		{
			name: "frame of an unknown session dropped and told to end", secret: testSecret,
			before: func(a *testAgent) {
				a.send(&wire.Output{BuildID: "old#1", Stream: wire.StreamStdout, Data: []byte("stale")}, 77, nil)
				a.send(&wire.Exit{BuildID: "old#1", Code: 0}, 77, nil)
				f, cl := expect[*wire.Close](a)
				if f.Session != 77 || !strings.Contains(cl.Reason, "unknown session") {
					a.t.Fatalf("got Close %+v in session %d, want one for session 77 saying unknown session", cl, f.Session)
				}
			},
			wantStale: 2,
		},
		{
			name: "frames before any hello dropped", secret: testSecret,
			before: func(a *testAgent) {
				a.send(&wire.Auth{Proof: []byte("x")}, 0, nil)
				a.send(&wire.Exit{BuildID: "b#1"}, 0, nil)
			},
			wantStale: 2,
		},
		{
			name: "ping before hello answered", secret: testSecret,
			before: func(a *testAgent) {
				a.send(&wire.Ping{Nonce: 7, UnixNano: 99}, 0, nil)
				f, p := expect[*wire.Pong](a)
				if f.Session != 0 || p.Nonce != 7 || p.UnixNano != 99 {
					a.t.Fatalf("got Pong %+v in session %d, want nonce 7 in session 0", p, f.Session)
				}
			},
		},
		{
			name: "ping during the handshake answered", secret: testSecret,
			beforeAuth: func(a *testAgent, session uint64, _ []byte) {
				a.send(&wire.Ping{Nonce: 8}, session, nil)
				f, p := expect[*wire.Pong](a)
				if f.Session != session || p.Nonce != 8 {
					a.t.Fatalf("got Pong %+v in session %x, want nonce 8 in session %x", p, f.Session, session)
				}
			},
		},
		{
			name: "auth for a session not negotiated ignored", secret: testSecret,
			beforeAuth: func(a *testAgent, session uint64, nonceM []byte) {
				proof := wire.AgentProof(a.secret, nonceM, a.nonce)
				a.send(&wire.Auth{Proof: proof}, 0, nil)
				a.send(&wire.Auth{Proof: proof}, session+1, nil)
				f, cl := expect[*wire.Close](a)
				if f.Session != session+1 || !strings.Contains(cl.Reason, "unknown session") {
					a.t.Fatalf("got Close %+v in session %x, want one for session %x", cl, f.Session, session+1)
				}
			},
			wantStale: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Options{Secret: tt.secret})
			a := h.agent
			hs := h.startHandshake()
			if tt.before != nil {
				tt.before(a)
			}
			a.hello(1)
			session, nonceM := a.challenge(true)
			if tt.beforeAuth != nil {
				tt.beforeAuth(a, session, nonceM)
			}
			a.authenticate(session, nonceM)
			r := wait(t, hs, "Handshake")
			if r.err != nil {
				t.Fatalf("Handshake: %v", r.err)
			}
			want := &Agent{Node: testNode, Version: "1.2.3", OS: "linux", Arch: "amd64"}
			if !reflect.DeepEqual(r.agent, want) {
				t.Errorf("Handshake agent = %+v, want %+v", r.agent, want)
			}
			if got := h.s.ID(); got != session {
				t.Errorf("ID() = %x, want the negotiated session %x", got, session)
			}
			if got := h.s.Counters().Stale; got != tt.wantStale {
				t.Errorf("Counters().Stale = %d, want %d", got, tt.wantStale)
			}
		})
	}
}

func TestHandshakeWrongProof(t *testing.T) {
	otherSecret := []byte("another secret")
	tests := []struct {
		name string
		// agentSecret is the secret the agent holds.
		agentSecret []byte
		proof       func(a *testAgent, nonceM, masterProof []byte) []byte
	}{
		{
			name: "empty proof from an agent with another secret", agentSecret: otherSecret,
			proof: func(*testAgent, []byte, []byte) []byte { return nil },
		},
		{
			name: "proof under another secret", agentSecret: otherSecret,
			proof: func(a *testAgent, nonceM, _ []byte) []byte { return wire.AgentProof(otherSecret, nonceM, a.nonce) },
		},
		{
			name: "proof with the nonces swapped", agentSecret: testSecret,
			proof: func(a *testAgent, nonceM, _ []byte) []byte { return wire.AgentProof(testSecret, a.nonce, nonceM) },
		},
		{
			name: "master proof reflected", agentSecret: testSecret,
			proof: func(_ *testAgent, _, masterProof []byte) []byte { return masterProof },
		},
		{
			name: "proof under the empty secret", agentSecret: testSecret,
			proof: func(a *testAgent, nonceM, _ []byte) []byte { return wire.AgentProof(nil, nonceM, a.nonce) },
		},
		{
			name: "truncated proof", agentSecret: testSecret,
			proof: func(a *testAgent, nonceM, _ []byte) []byte { return wire.AgentProof(testSecret, nonceM, a.nonce)[:16] },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Options{Secret: testSecret})
			a := h.agent
			a.secret = tt.agentSecret
			hs := h.startHandshake()

			a.hello(1)
			sameSecret := bytes.Equal(tt.agentSecret, testSecret)
			f, ch := expect[*wire.Challenge](a)
			if ok := wire.ProofEqual(ch.Proof, wire.MasterProof(a.secret, a.nonce, ch.Nonce)); ok != sameSecret {
				t.Fatalf("master proof verifies under the agent's secret: %v, want %v", ok, sameSecret)
			}
			a.send(&wire.Auth{Proof: tt.proof(a, ch.Nonce, ch.Proof)}, f.Session, nil)

			rf, res := expect[*wire.AuthResult](a)
			want := wire.AuthResult{OK: false, Reason: "authentication failed: wrong secret"}
			if rf.Session != f.Session || *res != want {
				t.Errorf("agent got AuthResult %+v in session %x, want %+v in session %x", *res, rf.Session, want, f.Session)
			}
			r := wait(t, hs, "Handshake")
			if !errors.Is(r.err, ErrAuth) || r.agent != nil {
				t.Fatalf("Handshake = %v, %v; want nil, ErrAuth", r.agent, r.err)
			}
			if got := h.s.ID(); got != 0 {
				t.Errorf("ID() = %x after a failed handshake, want 0", got)
			}

			// The agent, restarted with the right secret, tries again on
			// the same connection (as core/nodes does).
			a.secret = testSecret
			hs = h.startHandshake()
			a.handshake(2)
			if r := wait(t, hs, "second Handshake"); r.err != nil {
				t.Fatalf("second Handshake: %v", r.err)
			}
			if h.s.ID() != a.session || a.session == f.Session {
				t.Errorf("ID() = %x, agent session %x, refused session %x: want a fresh session", h.s.ID(), a.session, f.Session)
			}
		})
	}
}

func TestHandshakeEnds(t *testing.T) {
	tests := []struct {
		name    string
		end     func(h *harness)
		wantErr error
	}{
		{name: "connection EOF", end: func(h *harness) { _ = h.agent.conn.Close() }, wantErr: ErrClosed},
		{name: "master closes the connection", end: func(h *harness) { _ = h.conn.Close() }, wantErr: ErrClosed},
		{name: "context cancelled", end: func(h *harness) { h.cancel() }, wantErr: context.Canceled},
		{
			name: "EOF while negotiating",
			end: func(h *harness) {
				h.agent.hello(1)
				h.agent.challenge(true)
				_ = h.agent.conn.Close()
			},
			wantErr: ErrClosed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Options{Secret: testSecret})
			hs := h.startHandshake()
			tt.end(h)
			r := wait(t, hs, "Handshake")
			if !errors.Is(r.err, tt.wantErr) {
				t.Errorf("Handshake error = %v, want %v", r.err, tt.wantErr)
			}
		})
	}
}

// A new Hello while a challenge is pending restarts the handshake for that
// Hello.
func TestHandshakeHelloDuringNegotiation(t *testing.T) {
	h := newHarness(t, Options{Secret: testSecret})
	a := h.agent
	hs := h.startHandshake()
	a.hello(1)
	first, _ := a.challenge(true)
	a.hello(2)
	second, nonceM := a.challenge(true) // proves nonce 2
	if second == first {
		t.Fatalf("second challenge reuses session %x", second)
	}
	a.authenticate(second, nonceM)
	if r := wait(t, hs, "Handshake"); r.err != nil || h.s.ID() != second {
		t.Fatalf("Handshake = %v, ID %x; want success in session %x", r.err, h.s.ID(), second)
	}
}

// An agent that does not answer the challenge within the heartbeat timeout
// loses it: its genuine Auth for that session is no longer accepted, and a
// later Hello is served.
func TestHandshakeUnansweredChallenge(t *testing.T) {
	h := newHarness(t, Options{Secret: testSecret, HeartbeatTimeout: 50 * time.Millisecond})
	a := h.agent
	hs := h.startHandshake()
	a.hello(1)
	first, nonceM := a.challenge(true)
	// While the master negotiates session first, it answers pings of that
	// session; once it gave up, that session is unknown and told to end.
	for i := uint64(1); ; i++ {
		a.send(&wire.Ping{Nonce: i}, first, nil)
		f, m := a.recv()
		if _, ok := m.(*wire.Close); ok && f.Session == first {
			break
		}
		if p, ok := m.(*wire.Pong); !ok || p.Nonce != i || f.Session != first {
			t.Fatalf("got %v %+v in session %x, want Pong %d or Close for session %x", f.Type, m, f.Session, i, first)
		}
	}
	a.send(&wire.Auth{Proof: wire.AgentProof(a.secret, nonceM, a.nonce)}, first, nil) // too late: dropped
	a.hello(2)
	second, nonceM2 := a.challenge(true) // not an AuthResult for first
	if second == first {
		t.Fatalf("second challenge reuses session %x", second)
	}
	a.authenticate(second, nonceM2)
	if r := wait(t, hs, "Handshake"); r.err != nil || h.s.ID() != second {
		t.Fatalf("Handshake = %v, ID %x; want success in session %x", r.err, h.s.ID(), second)
	}
}

// ---------------------------------------------------------------------------
// Liveness.

func TestPingAnsweredInSession(t *testing.T) {
	tests := []struct {
		name  string
		nonce uint64
		clock int64
	}{
		{"small nonce", 1, 12345},
		{"large nonce", 1<<64 - 1, -1},
		{"zero", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, serve := established(t, Options{})
			a := h.agent
			a.sendInSession(&wire.Ping{Nonce: tt.nonce, UnixNano: tt.clock})
			_, p := expectInSession[*wire.Pong](a)
			if p.Nonce != tt.nonce || p.UnixNano != tt.clock {
				t.Errorf("Pong = %+v, want nonce %d clock %d", p, tt.nonce, tt.clock)
			}
			select {
			case err := <-serve:
				t.Fatalf("Serve ended: %v", err)
			default:
			}
		})
	}
}

// The master pings an agent and declares it lost after the heartbeat timeout
// when nothing genuine arrived: frames it drops do not count as signs of
// life.
func TestServeAgentLost(t *testing.T) {
	tests := []struct {
		name string
		// answer is what the agent sends for each of the master's pings.
		answer func(a *testAgent, ping *wire.Ping, replay *wire.Frame)
	}{
		{name: "silent"},
		{name: "only frames of another session", answer: func(a *testAgent, p *wire.Ping, _ *wire.Frame) {
			a.send(&wire.Pong{Nonce: p.Nonce}, a.session+1, a.key)
		}},
		{name: "only frames of session zero", answer: func(a *testAgent, p *wire.Ping, _ *wire.Frame) {
			a.send(&wire.Pong{Nonce: p.Nonce}, 0, nil)
		}},
		{name: "only frames without a valid MAC", answer: func(a *testAgent, p *wire.Ping, _ *wire.Frame) {
			a.send(&wire.Pong{Nonce: p.Nonce}, a.session, nil)
		}},
		{name: "only replayed frames", answer: func(a *testAgent, _ *wire.Ping, replay *wire.Frame) {
			a.sendFrame(replay)
		}},
		{name: "only malformed frames", answer: func(a *testAgent, _ *wire.Ping, _ *wire.Frame) {
			_ = a.conn.Send([]byte{0, 0, 0, 1, 0})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, serve := established(t, Options{Heartbeat: 20 * time.Millisecond, HeartbeatTimeout: 150 * time.Millisecond})
			a := h.agent
			// One genuine frame, which the replay case sends again.
			replay := a.frame(&wire.Pong{Nonce: 1 << 40}, a.session, a.key)
			a.sendFrame(replay)
			var last uint64
			deadline := time.After(guard)
			for {
				select {
				case err := <-serve:
					if !errors.Is(err, ErrAgentLost) {
						t.Fatalf("Serve = %v, want ErrAgentLost", err)
					}
					if last < 2 {
						t.Errorf("the master sent %d pings before giving up, want several", last)
					}
					// A step asked for after the end fails with that error.
					if _, err := h.s.RunStep(context.Background(), &wire.RunStep{BuildID: "j#1"}, io.Discard); !errors.Is(err, ErrAgentLost) {
						t.Errorf("RunStep after the session ended = %v, want ErrAgentLost", err)
					}
					return
				case <-deadline:
					t.Fatalf("Serve still runs after %v; the master sent %d pings", guard, last)
				default:
				}
				// The pings stop when Serve ends: wait for one only briefly
				// before looking at Serve again.
				raw, err := a.conn.in.pop(time.After(50 * time.Millisecond))
				if err != nil {
					continue
				}
				f, err := wire.Decode(raw, wire.MaxFrameSize)
				if err != nil {
					t.Fatal(err)
				}
				m, _ := f.Message()
				if _, isClose := m.(*wire.Close); isClose && f.Session == a.session+1 {
					continue // the other session is told to end
				}
				p, ok := m.(*wire.Ping)
				if !ok || f.Session != a.session || !wire.Verify(a.key, f) {
					t.Fatalf("agent got %v %+v in session %x, want a signed Ping", f.Type, m, f.Session)
				}
				if p.Nonce <= last {
					t.Errorf("ping nonce %d after %d", p.Nonce, last)
				}
				last = p.Nonce
				if tt.answer != nil {
					tt.answer(a, p, replay)
				}
			}
		})
	}
}

// An agent answering the master's pings stays connected well beyond the
// heartbeat timeout; once it falls silent it is lost.
func TestServeHeartbeatKeepsSessionAlive(t *testing.T) {
	const timeout = 300 * time.Millisecond
	h, serve := established(t, Options{Heartbeat: 25 * time.Millisecond, HeartbeatTimeout: timeout})
	a := h.agent
	start := time.Now()
	var maxGap time.Duration
	lastSent := start
	early := func(err error) {
		t.Helper()
		if maxGap > timeout/2 {
			t.Skipf("machine too loaded to judge (the agent stalled %v): Serve = %v", maxGap, err)
		}
		t.Fatalf("Serve ended after %v while the agent answered every ping (max gap %v): %v", time.Since(start), maxGap, err)
	}
	for time.Since(start) < 3*timeout {
		// The master pings every 25ms: no ping for a whole timeout means
		// Serve ended, which the check below reports.
		raw, err := a.conn.in.pop(time.After(timeout))
		if err != nil {
			break
		}
		f, err := wire.Decode(raw, wire.MaxFrameSize)
		if err != nil {
			t.Fatal(err)
		}
		m, err := f.Message()
		p, ok := m.(*wire.Ping)
		if err != nil || !ok || f.Session != a.session || !wire.Verify(a.key, f) {
			t.Fatalf("agent got %v %+v (%v) in session %x, want a signed Ping", f.Type, m, err, f.Session)
		}
		now := time.Now()
		maxGap = max(maxGap, now.Sub(lastSent))
		a.sendInSession(&wire.Pong{Nonce: p.Nonce, UnixNano: p.UnixNano})
		lastSent = now
		select {
		case err := <-serve:
			early(err)
		default:
		}
	}
	select {
	case err := <-serve:
		early(err)
	default:
	}
	err := wait(t, serve, "Serve to give up on the agent once silent")
	if !errors.Is(err, ErrAgentLost) {
		t.Fatalf("Serve = %v, want ErrAgentLost", err)
	}
}

// ---------------------------------------------------------------------------
// How Serve ends.

func TestServeEnds(t *testing.T) {
	tests := []struct {
		name    string
		end     func(h *harness)
		wantErr error
	}{
		{name: "connection EOF", end: func(h *harness) { _ = h.agent.conn.Close() }, wantErr: ErrClosed},
		{name: "master closes the connection", end: func(h *harness) { _ = h.conn.Close() }, wantErr: ErrClosed},
		{name: "agent says close", end: func(h *harness) { h.agent.sendInSession(&wire.Close{Reason: "agent shutting down"}) }, wantErr: ErrClosed},
		{name: "second hello", end: func(h *harness) { h.agent.hello(2) }, wantErr: ErrRehello},
		{name: "context cancelled", end: func(h *harness) { h.cancel() }, wantErr: context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, serve := established(t, Options{})
			a := h.agent
			// A step is running when the session ends.
			req := &wire.RunStep{BuildID: "job#1", StepIndex: 0, Command: "sleep 100"}
			step := h.startStep(context.Background(), req, io.Discard)
			expectInSession[*wire.RunStep](a)

			tt.end(h)
			err := wait(t, serve, "Serve")
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Serve = %v, want %v", err, tt.wantErr)
			}
			r := wait(t, step, "RunStep")
			if !errors.Is(r.err, tt.wantErr) || r.res != nil {
				t.Errorf("running RunStep = %+v, %v; want nil, %v", r.res, r.err, tt.wantErr)
			}
		})
	}
}

func TestServeCloseReason(t *testing.T) {
	h, serve := established(t, Options{})
	h.agent.sendInSession(&wire.Close{Reason: "agent shutting down"})
	err := wait(t, serve, "Serve")
	if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "agent shutting down") {
		t.Errorf("Serve = %v, want ErrClosed with the agent's reason", err)
	}
}

// After a second Hello ends a session, the next Handshake answers that
// Hello (the agent does not have to repeat it) and starts a new session in
// which frames of the old one are stale.
func TestRehelloStartsNewSession(t *testing.T) {
	h, serve := rehello(t)
	a := h.agent
	old := a.session
	hs := h.startHandshake()
	session, nonceM := a.challenge(true) // answers the pending Hello
	if session == old {
		t.Fatalf("new session reuses id %x", old)
	}
	a.authenticate(session, nonceM)
	if r := wait(t, hs, "Handshake"); r.err != nil {
		t.Fatalf("Handshake: %v", r.err)
	}
	if err := <-serve; !errors.Is(err, ErrRehello) {
		t.Fatalf("first Serve = %v", err)
	}
	serve = h.startServe()
	a.send(&wire.Ping{Nonce: 1}, old, a.key)
	a.sendInSession(&wire.Ping{Nonce: 2})
	if f, cl := expect[*wire.Close](a); f.Session != old {
		t.Errorf("got Close %+v for session %x, want one for the old session %x", cl, f.Session, old)
	}
	if _, p := expectInSession[*wire.Pong](a); p.Nonce != 2 {
		t.Errorf("Pong nonce %d, want 2 (the old session's ping is not answered)", p.Nonce)
	}
	select {
	case err := <-serve:
		t.Fatalf("Serve ended: %v", err)
	default:
	}
}

// rehello establishes a session, ends it with a second Hello (the agent
// restarted) and returns the first Serve's result, already delivered.
func rehello(t *testing.T) (*harness, <-chan error) {
	t.Helper()
	h, serve := established(t, Options{})
	a := h.agent
	a.seq = 0 // a restarted agent counts from 1 again
	a.hello(2)
	err := wait(t, serve, "Serve")
	if !errors.Is(err, ErrRehello) {
		t.Fatalf("Serve = %v, want ErrRehello", err)
	}
	c := make(chan error, 1)
	c <- err
	return h, c
}

// Steps run in a session that followed a re-hello on the same Session.
func TestRunStepAfterRehello(t *testing.T) {
	h, _ := rehello(t)
	a := h.agent
	hs := h.startHandshake()
	a.authenticate(a.challenge(true))
	if r := wait(t, hs, "Handshake"); r.err != nil {
		t.Fatalf("Handshake: %v", r.err)
	}
	h.startServe()
	var out chunkWriter
	step := h.startStep(context.Background(), &wire.RunStep{BuildID: "job#2", Command: "true"}, &out)
	expectInSession[*wire.RunStep](a)
	a.sendInSession(&wire.Output{BuildID: "job#2", Stream: wire.StreamStdout, Data: []byte("new session")})
	a.sendInSession(&wire.Exit{BuildID: "job#2", Code: 0})
	r := wait(t, step, "RunStep")
	if r.err != nil || r.res.Code != 0 {
		t.Fatalf("RunStep = %+v, %v; want code 0", r.res, r.err)
	}
	if got := string(out.joined()); got != "new session" {
		t.Errorf("output = %q", got)
	}
}

// A Hello naming another node must not end a healthy session: Options.Node
// says such a Hello is ignored, and Handshake ignores it.
func TestServeIgnoresHelloForAnotherNode(t *testing.T) {
	h, serve := established(t, Options{})
	a := h.agent
	a.send(&wire.Hello{Node: "builder-2", Nonce: newNonce(9)}, 0, nil)
	a.sendInSession(&wire.Ping{Nonce: 5})
	if _, p := expectInSession[*wire.Pong](a); p.Nonce != 5 {
		t.Fatalf("Pong nonce %d, want 5", p.Nonce)
	}
	select {
	case err := <-serve:
		t.Fatalf("Serve ended on a Hello for another node: %v", err)
	default:
	}
	if got := h.s.Counters().Stale; got != 1 {
		t.Errorf("Counters().Stale = %d, want 1", got)
	}
}

// ---------------------------------------------------------------------------
// Steps.

func TestRunStep(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 32<<10/16) // one 32 KiB chunk
	tests := []struct {
		name    string
		outputs []*wire.Output
		exit    wire.Exit
		want    StepResult
	}{
		{
			name: "success with output",
			outputs: []*wire.Output{
				{Stream: wire.StreamStdout, Data: []byte("hello ")},
				{Stream: wire.StreamStderr, Data: []byte("warning\n")},
				{Stream: wire.StreamStdout, Data: []byte("world\n")},
			},
			exit: wire.Exit{Code: 0},
			want: StepResult{Code: 0},
		},
		{
			name:    "no output",
			outputs: nil,
			exit:    wire.Exit{Code: 0},
			want:    StepResult{Code: 0},
		},
		{
			name: "binary data and empty chunks byte for byte",
			outputs: []*wire.Output{
				{Stream: wire.StreamStdout, Data: []byte{0, 1, 2, 0xff, '\r', '\n'}},
				{Stream: wire.StreamStdout, Data: nil},
				{Stream: wire.StreamStderr, Data: []byte("\xe2\x82")}, // half a rune
				{Stream: wire.StreamStderr, Data: []byte("\xac")},
				{Stream: wire.StreamStdout, Data: big},
				{Stream: wire.StreamStdout, Data: []byte("tail")},
			},
			exit: wire.Exit{Code: 0},
			want: StepResult{Code: 0},
		},
		{
			name:    "non-zero exit",
			outputs: []*wire.Output{{Stream: wire.StreamStderr, Data: []byte("make: *** [all] Error 2\n")}},
			exit:    wire.Exit{Code: 2},
			want:    StepResult{Code: 2},
		},
		{
			name:    "exit code 255",
			outputs: nil,
			exit:    wire.Exit{Code: 255},
			want:    StepResult{Code: 255},
		},
		{
			name: "step could not start",
			exit: wire.Exit{Code: -1, Error: "chdir: no such file or directory"},
			want: StepResult{Code: -1, Error: "chdir: no such file or directory"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := established(t, Options{})
			a := h.agent
			req := &wire.RunStep{BuildID: "job#7", StepIndex: 3, StepName: "compile", Command: "make all",
				Env: []wire.EnvVar{{Name: "CI", Value: "true"}, {Name: "EMPTY", Value: ""}}, Workdir: "job/7", TimeoutMillis: 60000}
			var out chunkWriter
			step := h.startStep(context.Background(), req, &out)

			_, got := expectInSession[*wire.RunStep](a)
			if !reflect.DeepEqual(got, req) {
				t.Fatalf("agent got %+v, want %+v", got, req)
			}
			var want [][]byte
			for _, o := range tt.outputs {
				o.BuildID, o.StepIndex = req.BuildID, req.StepIndex
				a.sendInSession(o)
				if len(o.Data) > 0 {
					want = append(want, o.Data)
				}
			}
			e := tt.exit
			e.BuildID, e.StepIndex = req.BuildID, req.StepIndex
			a.sendInSession(&e)

			r := wait(t, step, "RunStep")
			if r.err != nil {
				t.Fatalf("RunStep: %v", r.err)
			}
			if *r.res != tt.want {
				t.Errorf("RunStep = %+v, want %+v", *r.res, tt.want)
			}
			if got := out.nonEmpty(); !reflect.DeepEqual(got, want) {
				t.Errorf("writes = %q, want %q", got, want)
			}
			if c := h.s.Counters(); c != (Counters{}) {
				t.Errorf("Counters() = %+v, want none dropped", c)
			}
		})
	}
}

// Concurrent steps (one per executor) each get their own output and exit,
// whatever the order the agent interleaves them in.
func TestRunStepConcurrent(t *testing.T) {
	h, _ := established(t, Options{})
	a := h.agent
	const n = 4
	outs := make([]chunkWriter, n)
	steps := make([]<-chan stepResult, n)
	for i := range n {
		steps[i] = h.startStep(context.Background(), &wire.RunStep{BuildID: fmt.Sprintf("job#%d", i), StepIndex: uint32(i)}, &outs[i])
	}
	seen := map[string]bool{}
	for range n {
		_, rs := expectInSession[*wire.RunStep](a)
		seen[rs.BuildID] = true
	}
	if len(seen) != n {
		t.Fatalf("agent got steps %v, want %d distinct", seen, n)
	}
	for round := range 3 {
		for i := n - 1; i >= 0; i-- {
			a.sendInSession(&wire.Output{BuildID: fmt.Sprintf("job#%d", i), StepIndex: uint32(i), Stream: wire.StreamStdout,
				Data: fmt.Appendf(nil, "%d.%d;", i, round)})
		}
	}
	for i := range n {
		a.sendInSession(&wire.Exit{BuildID: fmt.Sprintf("job#%d", i), StepIndex: uint32(i), Code: int32(i)})
	}
	for i := range n {
		r := wait(t, steps[i], "RunStep")
		if r.err != nil {
			t.Errorf("step %d: RunStep: %v", i, r.err)
			continue
		}
		if r.res.Code != i {
			t.Errorf("step %d: RunStep = %+v, want code %d", i, r.res, i)
		}
		if got, want := string(outs[i].joined()), fmt.Sprintf("%d.0;%d.1;%d.2;", i, i, i); got != want {
			t.Errorf("step %d output = %q, want %q", i, got, want)
		}
	}
}

// Frames that do not belong to the session or the step are dropped,
// counted, never delivered as a step's output, and do not end it.
func TestDroppedFrames(t *testing.T) {
	tests := []struct {
		name string
		// inject sends the frames to drop while the step runs.
		inject func(a *testAgent)
		want   Counters
		// wantClose is the unknown session told to end, if any.
		wantClose uint64
	}{
		{
			name: "wrong session",
			inject: func(a *testAgent) {
				a.send(&wire.Output{BuildID: "job#1", Stream: wire.StreamStdout, Data: []byte("STALE")}, a.session+1, a.key)
				a.send(&wire.Output{BuildID: "job#1", Stream: wire.StreamStdout, Data: []byte("STALE")}, a.session+1, nil)
				a.send(&wire.Exit{BuildID: "job#1", Code: 99}, a.session+1, nil)
			},
			want:      Counters{Stale: 3},
			wantClose: 1, // relative to the agent's session: session+1
		},
		{
			name: "session zero",
			inject: func(a *testAgent) {
				a.send(&wire.Output{BuildID: "job#1", Stream: wire.StreamStdout, Data: []byte("STALE")}, 0, nil)
				a.send(&wire.Exit{BuildID: "job#1", Code: 99}, 0, nil)
			},
			want: Counters{Stale: 2},
		},
		{
			name: "no MAC",
			inject: func(a *testAgent) {
				a.send(&wire.Output{BuildID: "job#1", Stream: wire.StreamStdout, Data: []byte("FORGED")}, a.session, nil)
				a.send(&wire.Exit{BuildID: "job#1", Code: 99}, a.session, nil)
			},
			want: Counters{Forged: 2},
		},
		{
			name: "MAC under another key",
			inject: func(a *testAgent) {
				a.send(&wire.Output{BuildID: "job#1", Stream: wire.StreamStdout, Data: []byte("FORGED")}, a.session,
					wire.SessionKey([]byte("other"), a.nonce, a.nonce, a.session))
			},
			want: Counters{Forged: 1},
		},
		{
			name: "altered payload",
			inject: func(a *testAgent) {
				f := a.frame(&wire.Output{BuildID: "job#1", Stream: wire.StreamStdout, Data: []byte("genuine")}, a.session, a.key)
				f.Payload = wire.NewFrame(&wire.Output{BuildID: "job#1", Stream: wire.StreamStdout, Data: []byte("ALTERED")}).Payload
				a.sendFrame(f)
			},
			want: Counters{Forged: 1},
		},
		{
			name: "replayed seq",
			inject: func(a *testAgent) {
				f := a.frame(&wire.Output{BuildID: "job#1", Stream: wire.StreamStdout, Data: []byte("x")}, a.session, a.key)
				a.sendFrame(f)
				a.sendFrame(f) // the same frame again
				old := wire.NewFrame(&wire.Exit{BuildID: "job#1", Code: 99})
				old.Session, old.Seq = a.session, f.Seq-1 // reordered
				wire.Sign(a.key, old)
				a.sendFrame(old)
			},
			want: Counters{Replayed: 2},
		},
		{
			name: "another step",
			inject: func(a *testAgent) {
				a.sendInSession(&wire.Output{BuildID: "job#2", Stream: wire.StreamStdout, Data: []byte("OTHER")})
				a.sendInSession(&wire.Output{BuildID: "job#1", StepIndex: 1, Stream: wire.StreamStdout, Data: []byte("OTHER")})
				a.sendInSession(&wire.Exit{BuildID: "job#1", StepIndex: 1, Code: 99})
			},
			want: Counters{Unexpect: 3},
		},
		{
			name: "messages only the master sends",
			inject: func(a *testAgent) {
				a.sendInSession(&wire.RunStep{BuildID: "job#1", Command: "rm -rf /"})
				a.sendInSession(&wire.Cancel{BuildID: "job#1"})
			},
			want: Counters{Unexpect: 2},
		},
		{
			name: "malformed bytes",
			inject: func(a *testAgent) {
				if err := a.conn.Send([]byte{0, 0, 0, 1, 9}); err != nil {
					a.t.Fatal(err)
				}
			},
			want: Counters{Malformed: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, serve := established(t, Options{})
			a := h.agent
			var out chunkWriter
			step := h.startStep(context.Background(), &wire.RunStep{BuildID: "job#1", StepIndex: 0, Command: "true"}, &out)
			expectInSession[*wire.RunStep](a)

			a.sendInSession(&wire.Output{BuildID: "job#1", Stream: wire.StreamStdout, Data: []byte("a")})
			tt.inject(a)
			a.sendInSession(&wire.Output{BuildID: "job#1", Stream: wire.StreamStdout, Data: []byte("b")})
			a.sendInSession(&wire.Exit{BuildID: "job#1", Code: 0})

			r := wait(t, step, "RunStep")
			if r.err != nil || r.res.Code != 0 {
				t.Fatalf("RunStep = %+v, %v; want code 0 from the genuine exit", r.res, r.err)
			}
			want := "a"
			if tt.name == "replayed seq" {
				want += "x" // the original, once
			}
			want += "b"
			if got := string(out.joined()); got != want {
				t.Errorf("step output = %q, want %q", got, want)
			}
			if got := h.s.Counters(); got != tt.want {
				t.Errorf("Counters() = %+v, want %+v", got, tt.want)
			}
			// The frames were handled before the genuine Exit: anything the
			// master answered is already queued for the agent.
			var closes []uint64
			for {
				f, m, ok := a.tryRecv()
				if !ok {
					break
				}
				if cl, isClose := m.(*wire.Close); isClose {
					closes = append(closes, f.Session)
					if !strings.Contains(cl.Reason, "unknown session") {
						t.Errorf("Close reason %q", cl.Reason)
					}
					continue
				}
				t.Errorf("master answered a dropped frame with %v %+v", f.Type, m)
			}
			var wantCloses []uint64
			if tt.wantClose != 0 {
				wantCloses = []uint64{a.session + tt.wantClose} // told once
			}
			if !reflect.DeepEqual(closes, wantCloses) {
				t.Errorf("Close sent to sessions %x, want %x", closes, wantCloses)
			}
			select {
			case err := <-serve:
				t.Fatalf("Serve ended: %v", err)
			default:
			}
		})
	}
}

func TestRunStepCancel(t *testing.T) {
	tests := []struct {
		name string
		// confirm is the agent's Exit after the Cancel; nil: none.
		confirm *wire.Exit
		want    StepResult
	}{
		{
			name:    "agent confirms",
			confirm: &wire.Exit{BuildID: "job#1", Code: -1, Error: "cancelled: aborted by alice"},
			want:    StepResult{Code: -1, Error: "cancelled: aborted by alice"},
		},
		{
			name:    "step finished meanwhile",
			confirm: &wire.Exit{BuildID: "job#1", Code: 0},
			want:    StepResult{Code: 0},
		},
		{
			name: "agent does not confirm",
			want: StepResult{Code: -1, Error: "cancelled: aborted by alice (the agent did not confirm)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.confirm == nil {
				saved := cancelGrace
				cancelGrace = 50 * time.Millisecond
				t.Cleanup(func() { cancelGrace = saved }) // runs after the harness waited for RunStep
			}
			h, serve := established(t, Options{})
			a := h.agent
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			var out chunkWriter
			step := h.startStep(ctx, &wire.RunStep{BuildID: "job#1", Command: "sleep 1000"}, &out)
			expectInSession[*wire.RunStep](a)
			a.sendInSession(&wire.Output{BuildID: "job#1", Stream: wire.StreamStdout, Data: []byte("started\n")})

			cancel(errors.New("aborted by alice"))
			_, c := expectInSession[*wire.Cancel](a)
			if want := (wire.Cancel{BuildID: "job#1", Reason: "aborted by alice"}); *c != want {
				t.Errorf("agent got Cancel %+v, want %+v", *c, want)
			}
			if tt.confirm != nil {
				a.sendInSession(tt.confirm)
			}
			r := wait(t, step, "RunStep")
			if r.err != nil {
				t.Fatalf("RunStep: %v", r.err)
			}
			if *r.res != tt.want {
				t.Errorf("RunStep = %+v, want %+v", *r.res, tt.want)
			}
			if got := string(out.joined()); got != "started\n" {
				t.Errorf("output = %q", got)
			}
			if tt.confirm == nil {
				// A late confirmation is dropped as unexpected.
				a.sendInSession(&wire.Exit{BuildID: "job#1", Code: -1})
				a.sendInSession(&wire.Ping{Nonce: 1})
				expectInSession[*wire.Pong](a)
				if got := h.s.Counters().Unexpect; got != 1 {
					t.Errorf("Counters().Unexpect = %d after a late exit, want 1", got)
				}
			}
			select {
			case err := <-serve:
				t.Fatalf("Serve ended: %v", err)
			default:
			}
		})
	}
}
