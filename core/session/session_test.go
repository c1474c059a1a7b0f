package session

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/sdk/launcher"
	"github.com/conveyor-ci/conveyor/sdk/reliable"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// guard bounds every wait of these tests. It only turns a hang into a
// failure: no test relies on it for synchronisation.
const guard = 10 * time.Second

// never is a timeout no test reaches: the heartbeat and session timeouts of
// the tests that are not about them.
const never = time.Hour

// testNode is the node name the sessions of these tests serve.
const testNode = "builder-1"

var testSecret = []byte("the node's secret")

// ---------------------------------------------------------------------------
// An in-memory launcher.Conn.

// memQueue is one direction of an in-memory connection. It is unbounded, so
// a sender never blocks (like a Kafka topic), and it has one reader.
type memQueue struct {
	mu      sync.Mutex
	frames  [][]byte
	closed  bool
	discard bool          // frames pushed are lost in flight
	notify  chan struct{} // poked on every push and on close
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
	if q.discard {
		return nil // the sender cannot tell
	}
	q.frames = append(q.frames, bytes.Clone(b))
	q.poke()
	return nil
}

// close ends the queue; drop loses the frames still queued (in flight).
func (q *memQueue) close(drop bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	if drop {
		q.frames = nil
	}
	q.poke()
}

// blackhole makes every frame pushed from now on vanish in flight.
func (q *memQueue) blackhole() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.discard = true
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

// memConn is one end of an in-memory connection. It records what it sent
// (for the tests that replay frames) and may rewrite the next frame it
// sends (for the tests that alter one).
type memConn struct {
	in, out *memQueue

	mu      sync.Mutex
	sent    [][]byte
	rewrite func(f *wire.Frame)
}

var _ launcher.Conn = (*memConn)(nil)

// memPipe returns the master's and the agent's ends of a connection.
func memPipe() (master, agent *memConn) {
	toMaster, toAgent := newMemQueue(), newMemQueue()
	return &memConn{in: toMaster, out: toAgent}, &memConn{in: toAgent, out: toMaster}
}

func (c *memConn) Send(b []byte) error {
	c.mu.Lock()
	rewrite := c.rewrite
	c.rewrite = nil
	c.mu.Unlock()
	if rewrite != nil {
		f, err := wire.Decode(bytes.Clone(b), wire.MaxFrameSize)
		if err != nil {
			return err
		}
		rewrite(f)
		if b, err = f.Encode(); err != nil {
			return err
		}
	}
	c.mu.Lock()
	c.sent = append(c.sent, bytes.Clone(b))
	c.mu.Unlock()
	return c.out.push(b)
}

func (c *memConn) Recv() ([]byte, error) { return c.in.pop(nil) }

// Close ends both directions, as closing a socket does; frames already sent
// still arrive.
func (c *memConn) Close() error {
	c.in.close(false)
	c.out.close(false)
	return nil
}

// cut breaks the connection as a network failure does: both ends see it
// closed and the frames in flight are lost.
func (c *memConn) cut() {
	c.in.close(true)
	c.out.close(true)
}

// rewriteNext makes f alter the next frame sent.
func (c *memConn) rewriteNext(f func(*wire.Frame)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rewrite = f
}

// lastSent is the last frame sent, as encoded.
func (c *memConn) lastSent() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sent[len(c.sent)-1]
}

// sentOf returns the encoded frames of type typ sent so far.
func (c *memConn) sentOf(t *testing.T, typ wire.Type) [][]byte {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	var out [][]byte
	for _, b := range c.sent {
		f, err := wire.Decode(bytes.Clone(b), wire.MaxFrameSize)
		if err != nil {
			t.Fatal(err)
		}
		if f.Type == typ {
			out = append(out, b)
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// A test agent speaking the protocol as the real agent does: a
// reliable.Endpoint numbers, signs, keeps and resends its frames and checks
// the master's. It runs in the test's goroutine, so it may fail the test.
// The tests that play an attacker or a faulty transport craft raw frames.

type testAgent struct {
	t       *testing.T
	conn    *memConn // the agent's end of the current connection
	node    string
	secret  []byte
	nonce   []byte             // nonceA of the last Hello
	ep      *reliable.Endpoint // the agent's session; nil before the first
	session uint64             // once authenticated
	key     []byte             // the current epoch's key of the agent's frames
}

func newNonce(b byte) []byte { return bytes.Repeat([]byte{b}, wire.NonceSize) }

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

// craft returns m in a hand-made frame of session with seq, signed under
// key if not nil.
func (a *testAgent) craft(m wire.Message, session, seq uint64, key []byte) *wire.Frame {
	f := wire.NewFrame(m)
	f.Session, f.Seq = session, seq
	if a.ep != nil {
		f.Ack = a.ep.Acked()
	}
	if key != nil {
		wire.Sign(key, f)
	}
	return f
}

// sendRaw sends m in a hand-made frame (see craft).
func (a *testAgent) sendRaw(m wire.Message, session, seq uint64, key []byte) {
	a.t.Helper()
	a.sendFrame(a.craft(m, session, seq, key))
}

// replay sends an encoded frame again, as an attacker or a transport
// delivering a record twice does.
func (a *testAgent) replay(b []byte) {
	a.t.Helper()
	if err := a.conn.Send(b); err != nil {
		a.t.Fatalf("agent replay: %v", err)
	}
}

// nextSeq is the number the agent's next numbered frame gets.
func (a *testAgent) nextSeq() uint64 { return a.ep.Pending().Last + 1 }

// send sends m in the established session: numbered (kept until the master
// acknowledges it) or under the epoch's counter.
func (a *testAgent) send(m wire.Message) {
	a.t.Helper()
	var err error
	if reliable.Sequenced(m.Type()) {
		ctx, cancel := context.WithTimeout(context.Background(), guard)
		err = a.ep.Send(ctx, m)
		cancel()
	} else {
		err = a.ep.SendControl(m, a.session)
	}
	if err != nil {
		a.t.Fatalf("agent send %v: %v", m.Type(), err)
	}
}

// hello sends a fresh Hello (a new session) with a new nonce.
func (a *testAgent) hello(nonceByte byte) {
	a.t.Helper()
	a.nonce = newNonce(nonceByte)
	a.sendRaw(&wire.Hello{Node: a.node, AgentVersion: "1.2.3", OS: "linux", Arch: "amd64", Nonce: a.nonce}, 0, 0, nil)
}

// helloResume sends a Hello asking to resume session, whose master frames
// the agent handled up to lastSeq.
func (a *testAgent) helloResume(nonceByte byte, session, lastSeq uint64) {
	a.t.Helper()
	a.nonce = newNonce(nonceByte)
	a.sendRaw(&wire.Hello{Node: a.node, AgentVersion: "1.2.3", OS: "linux", Arch: "amd64", Nonce: a.nonce,
		Resume: true, LastSeq: lastSeq}, session, 0, nil)
}

// recv returns the next frame from the master and its message.
func (a *testAgent) recv() (*wire.Frame, wire.Message) {
	a.t.Helper()
	raw, err := a.conn.in.pop(time.After(guard))
	if err != nil {
		a.t.Fatalf("agent: waiting for a frame from the master: %v", err)
	}
	return a.decode(raw)
}

func (a *testAgent) decode(raw []byte) (*wire.Frame, wire.Message) {
	a.t.Helper()
	f, err := wire.Decode(raw, wire.MaxFrameSize)
	if err != nil {
		a.t.Fatalf("agent: master sent a malformed frame: %v", err)
	}
	m, err := f.Message()
	if err != nil {
		a.t.Fatalf("agent: master sent a bad %v: %v", f.Type, err)
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
	f, m := a.decode(raw)
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

// expectInSession receives the next frame of the agent's session that is
// not a heartbeat (Pings and Acks are checked and skipped), requires a T
// that the agent's endpoint accepts (a valid MAC, in order) and handles it.
func expectInSession[T wire.Message](a *testAgent) (*wire.Frame, T) {
	a.t.Helper()
	for {
		f, m := a.recv()
		if f.Session != a.session {
			a.t.Fatalf("agent: %v %+v in session %x, want %x", f.Type, m, f.Session, a.session)
		}
		if v := a.ep.Receive(f); v != reliable.Deliver {
			a.t.Fatalf("agent: %v %+v (seq %d) from the master: %v, want deliver", f.Type, m, f.Seq, v)
		}
		if reliable.Sequenced(f.Type) {
			if err := a.ep.Handled(); err != nil {
				a.t.Fatalf("agent: acknowledge: %v", err)
			}
		}
		if want, ok := m.(T); ok {
			return f, want
		}
		switch m.(type) {
		case *wire.Ping, *wire.Ack:
			continue
		}
		var zero T
		a.t.Fatalf("agent: got %v %+v, want %T", f.Type, m, zero)
	}
}

// challenge receives the master's Challenge and checks its proof of the
// agent's nonce; it returns the negotiated session and the master's nonce.
func (a *testAgent) challenge(wantProofOK bool) (uint64, []byte) {
	a.t.Helper()
	// A new link of a held session starts with the master's hint to
	// resume it (unsigned: the link has no key yet); the agent resumes
	// anyway.
	f, m := a.recv()
	for isHint(f, m) {
		f, m = a.recv()
	}
	ch, ok := m.(*wire.Challenge)
	if !ok {
		a.t.Fatalf("agent: got %v %+v (session %x), want a Challenge", f.Type, m, f.Session)
	}
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

// isHint reports whether f is the master's unsigned hint to resume a held
// session.
func isHint(f *wire.Frame, m wire.Message) bool {
	cl, ok := m.(*wire.Close)
	return ok && len(f.MAC) == 0 && strings.Contains(cl.Reason, "resume it")
}

// authenticate answers a challenge for session with the genuine proof, as
// the real agent does: a new endpoint unless it resumes its session, a new
// epoch on the connection, Auth with the epoch's counter 1. It checks the
// master's acceptance and returns the AuthResult frame (its Ack tells what
// to resend).
func (a *testAgent) authenticate(session uint64, nonceM []byte) *wire.Frame {
	a.t.Helper()
	a.sendAuth(session, nonceM)
	return a.accepted(session, nonceM)
}

// sendAuth answers a challenge for session with the genuine proof (the
// first half of authenticate).
func (a *testAgent) sendAuth(session uint64, nonceM []byte) {
	a.t.Helper()
	if a.ep == nil || session != a.session {
		a.ep = reliable.NewEndpoint(DefaultOutboxBytes)
	}
	a.ep.Begin(a.conn)
	if err := a.ep.SendControl(&wire.Auth{Proof: wire.AgentProof(a.secret, nonceM, a.nonce)}, session); err != nil {
		a.t.Fatalf("agent send Auth: %v", err)
	}
}

// accepted waits for the master's acceptance of the proof sendAuth sent
// and establishes the agent's end (the second half of authenticate).
func (a *testAgent) accepted(session uint64, nonceM []byte) *wire.Frame {
	a.t.Helper()
	f, res := expect[*wire.AuthResult](a)
	if !res.OK || res.Session != session || f.Session != session {
		a.t.Fatalf("AuthResult %+v in session %x, want ok for session %x", res, f.Session, session)
	}
	keys := wire.KeysFor(wire.SessionKey(a.secret, a.nonce, nonceM, session), wire.RoleAgent)
	if !wire.Verify(keys.Receive, f) {
		a.t.Fatalf("AuthResult carries no valid MAC under the master's frame key")
	}
	a.ep.Established(session, keys, f.Seq)
	a.session, a.key = session, keys.Send
	return f
}

// handshake runs the agent's whole handshake for a new session.
func (a *testAgent) handshake(nonceByte byte) {
	a.t.Helper()
	a.hello(nonceByte)
	a.authenticate(a.challenge(true))
}

// resume runs the agent's handshake resuming its session and returns the
// AuthResult frame; the caller resends (a.ep.Resend) after its Ack.
func (a *testAgent) resume(nonceByte byte) *wire.Frame {
	a.t.Helper()
	a.helloResume(nonceByte, a.session, a.ep.Acked())
	id, nonceM := a.challenge(true)
	if id != a.session {
		a.t.Fatalf("challenge for session %x, want the resumed session %x", id, a.session)
	}
	return a.authenticate(id, nonceM)
}

// resendAfter resends the agent's numbered frames after ack.
func (a *testAgent) resendAfter(ack uint64) {
	a.t.Helper()
	if err := a.ep.Resend(ack); err != nil {
		a.t.Fatalf("agent resend: %v", err)
	}
}

// ---------------------------------------------------------------------------
// The master's side, run in background goroutines.

// syncBuffer collects the session's log; it is printed when a test fails.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

type reachEvent struct {
	reachable bool
	why       error
}

type harness struct {
	t      *testing.T
	s      *Session
	secret []byte // the master's secret for the node
	agent  *testAgent
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	link *Link    // the current connection's
	conn *memConn // the master's end of the current connection

	ended chan error      // OnEnd calls
	reach chan reachEvent // OnReachable calls of every link
	logs  syncBuffer

	mu    sync.Mutex
	conns []*memConn
	links []*Link
}

// newHarness returns a node's session, not connected yet. Timeouts the test
// does not set are never reached; the master and the agent share
// testSecret.
func newHarness(t *testing.T, opts Options) *harness {
	t.Helper()
	if opts.Node == "" {
		opts.Node = testNode
	}
	if opts.Heartbeat == 0 {
		opts.Heartbeat = never // no pings unless a test asks for them
	}
	if opts.HeartbeatTimeout == 0 {
		opts.HeartbeatTimeout = never
	}
	if opts.SessionTimeout == 0 {
		opts.SessionTimeout = never
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, secret: testSecret, ctx: ctx, cancel: cancel,
		agent: &testAgent{t: t, node: opts.Node, secret: testSecret},
		ended: make(chan error, 16), reach: make(chan reachEvent, 256)}
	// Both callbacks may run after the test (a session timeout of a held
	// session): they must not block nor touch t.
	opts.OnEnd = func(err error) {
		select {
		case h.ended <- err:
		default:
		}
	}
	opts.Logger = hclog.New(&hclog.LoggerOptions{Name: "session", Level: hclog.Debug, Output: &h.logs})
	h.s = New(opts)
	t.Cleanup(func() {
		cancel()
		h.mu.Lock()
		for _, c := range h.conns {
			_ = c.Close()
		}
		for _, l := range h.links {
			l.Close()
		}
		h.mu.Unlock()
		done := make(chan struct{})
		go func() {
			h.wg.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(guard):
			t.Errorf("Handshake, Serve or RunStep still running %v after the test", guard)
		}
		if t.Failed() {
			t.Logf("session log:\n%s", h.logs.String())
		}
	})
	return h
}

// connect gives the session a new connection (a launch of the node).
func (h *harness) connect(resumable bool) {
	mc, ac := memPipe()
	l := h.s.Attach(mc, h.secret, resumable)
	l.OnReachable = func(reachable bool, why error) {
		select {
		case h.reach <- reachEvent{reachable, why}:
		default:
		}
	}
	h.mu.Lock()
	h.conns = append(h.conns, mc)
	h.links = append(h.links, l)
	h.mu.Unlock()
	h.link, h.conn, h.agent.conn = l, mc, ac
}

func (h *harness) goroutine(f func()) {
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		f()
	}()
}

type handshakeResult struct {
	agent   *Agent
	resumed bool
	err     error
}

// startHandshake runs Handshake on the current link in the background.
func (h *harness) startHandshake() <-chan handshakeResult {
	c := make(chan handshakeResult, 1)
	l := h.link
	h.goroutine(func() {
		a, resumed, err := l.Handshake(h.ctx)
		c <- handshakeResult{a, resumed, err}
	})
	return c
}

// startServe runs Serve on the current link in the background.
func (h *harness) startServe() <-chan error {
	c := make(chan error, 1)
	l := h.link
	h.goroutine(func() { c <- l.Serve(h.ctx) })
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

// notYet fails the test if c already delivered: what must still be
// running.
func notYet[T any](t *testing.T, c <-chan T, what string) {
	t.Helper()
	select {
	case v := <-c:
		t.Fatalf("%s ended too early: %+v", what, v)
	default:
	}
}

// eventually waits until cond holds, failing the test after the guard.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(guard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// handshakeOK waits for a Handshake and requires it to succeed.
func handshakeOK(t *testing.T, hs <-chan handshakeResult, wantResumed bool) *Agent {
	t.Helper()
	r := wait(t, hs, "Handshake")
	if r.err != nil || r.resumed != wantResumed {
		t.Fatalf("Handshake = %+v, resumed %v, %v; want resumed %v", r.agent, r.resumed, r.err, wantResumed)
	}
	return r.agent
}

// established returns a harness whose session is authenticated and served
// on a connection.
func established(t *testing.T, opts Options, resumable bool) (*harness, <-chan error) {
	t.Helper()
	h := newHarness(t, opts)
	h.connect(resumable)
	hs := h.startHandshake()
	h.agent.handshake(1)
	handshakeOK(t, hs, false)
	return h, h.startServe()
}

// running starts a step and waits until the agent got it.
func (h *harness) running(ctx context.Context, req *wire.RunStep, out io.Writer) <-chan stepResult {
	h.t.Helper()
	step := h.startStep(ctx, req, out)
	if _, got := expectInSession[*wire.RunStep](h.agent); got.BuildID != req.BuildID || got.StepIndex != req.StepIndex {
		h.t.Fatalf("agent got step %s/%d, want %s/%d", got.BuildID, got.StepIndex, req.BuildID, req.StepIndex)
	}
	return step
}

// sync makes sure the master handled every frame the agent sent so far:
// it answers a Ping after them.
func (a *testAgent) sync(nonce uint64) {
	a.t.Helper()
	a.send(&wire.Ping{Nonce: nonce})
	if _, p := expectInSession[*wire.Pong](a); p.Nonce != nonce {
		a.t.Fatalf("Pong nonce %d, want %d", p.Nonce, nonce)
	}
}

// linkLost cuts the current connection (frames in flight are lost), waits
// for serve to end with ErrClosed and checks that the session is held.
func (h *harness) linkLost(serve <-chan error) {
	h.t.Helper()
	h.cutLink(serve)
	held, until := h.s.Held()
	if !held || !h.s.Live() {
		h.t.Fatalf("after the link was lost: Held() = %v, Live() = %v; want a held, live session", held, h.s.Live())
	}
	if !until.After(time.Now()) {
		h.t.Errorf("Held() until %v: already past", until)
	}
}

// cutLink cuts the current connection and waits for serve to end with
// ErrClosed. Unlike linkLost it checks nothing about the session, which a
// short session timeout may already have ended.
func (h *harness) cutLink(serve <-chan error) {
	h.t.Helper()
	h.conn.cut()
	if err := wait(h.t, serve, "Serve"); !errors.Is(err, ErrClosed) {
		h.t.Fatalf("Serve = %v, want ErrClosed", err)
	}
}

// noEnd fails the test if OnEnd was called.
func (h *harness) noEnd() {
	h.t.Helper()
	select {
	case err := <-h.ended:
		h.t.Errorf("OnEnd(%v) called", err)
	default:
	}
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

func stdout(build string, index uint32, data string) *wire.Output {
	return &wire.Output{BuildID: build, StepIndex: index, Stream: wire.StreamStdout, Data: []byte(data)}
}

// ---------------------------------------------------------------------------
// Before any session.

func TestNoSessionYet(t *testing.T) {
	s := New(Options{Node: testNode})
	if _, err := s.RunStep(context.Background(), &wire.RunStep{BuildID: "j#1"}, io.Discard); err == nil {
		t.Errorf("RunStep without a session succeeded")
	}
	if held, _ := s.Held(); s.ID() != 0 || s.Live() || held {
		t.Errorf("ID() = %x, Live() = %v, Held() = %v; want 0, false, false", s.ID(), s.Live(), held)
	}
	if s.Pending() != (reliable.Pending{}) || s.Counters() != (Counters{}) {
		t.Errorf("Pending() = %+v, Counters() = %+v; want zero", s.Pending(), s.Counters())
	}
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
				a.sendRaw(&wire.Hello{Node: "builder-2", Nonce: newNonce(9)}, 0, 0, nil)
			},
			wantStale: 1,
		},
		{
			name: "hello with a short nonce ignored", secret: testSecret,
			before: func(a *testAgent) {
				a.sendRaw(&wire.Hello{Node: testNode, Nonce: []byte("short")}, 0, 0, nil)
			},
			wantStale: 1,
		},
		{
			name: "hello in a non-zero session without resume ignored", secret: testSecret,
			before: func(a *testAgent) {
				a.sendRaw(&wire.Hello{Node: testNode, Nonce: newNonce(9)}, 42, 0, nil)
			},
			wantStale: 1,
		},
		{
			name: "frame of an unknown session dropped and told to end once", secret: testSecret,
			before: func(a *testAgent) {
				a.sendRaw(stdout("old#1", 0, "stale"), 77, 1, nil)
				a.sendRaw(&wire.Exit{BuildID: "old#1", Code: 0}, 77, 2, nil)
				f, cl := expect[*wire.Close](a) // the next frame is the Challenge
				if f.Session != 77 || !strings.Contains(cl.Reason, "unknown session") {
					a.t.Fatalf("got Close %+v in session %d, want one for session 77 saying unknown session", cl, f.Session)
				}
			},
			wantStale: 2,
		},
		{
			name: "frames before any hello dropped", secret: testSecret,
			before: func(a *testAgent) {
				a.sendRaw(&wire.Auth{Proof: []byte("x")}, 0, 1, nil)
				a.sendRaw(&wire.Exit{BuildID: "b#1"}, 0, 1, nil)
			},
			wantStale: 2,
		},
		{
			name: "ping before hello answered", secret: testSecret,
			before: func(a *testAgent) {
				a.sendRaw(&wire.Ping{Nonce: 7, UnixNano: 99}, 0, 0, nil)
				f, p := expect[*wire.Pong](a)
				if f.Session != 0 || p.Nonce != 7 || p.UnixNano != 99 {
					a.t.Fatalf("got Pong %+v in session %d, want nonce 7 in session 0", p, f.Session)
				}
			},
		},
		{
			name: "ping during the handshake answered", secret: testSecret,
			beforeAuth: func(a *testAgent, session uint64, _ []byte) {
				a.sendRaw(&wire.Ping{Nonce: 8}, session, 0, nil)
				f, p := expect[*wire.Pong](a)
				if f.Session != session || p.Nonce != 8 {
					a.t.Fatalf("got Pong %+v in session %x, want nonce 8 in session %x", p, f.Session, session)
				}
			},
		},
		{
			name: "output of the negotiated session before auth dropped", secret: testSecret,
			beforeAuth: func(a *testAgent, session uint64, _ []byte) {
				a.sendRaw(stdout("b#1", 0, "early"), session, 1, nil)
			},
			wantStale: 1,
		},
		{
			name: "auth for a session not negotiated ignored", secret: testSecret,
			beforeAuth: func(a *testAgent, session uint64, nonceM []byte) {
				proof := wire.AgentProof(a.secret, nonceM, a.nonce)
				a.sendRaw(&wire.Auth{Proof: proof}, 0, 1, nil)
				a.sendRaw(&wire.Auth{Proof: proof}, session+1, 1, nil)
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
			h := newHarness(t, Options{})
			h.secret, h.agent.secret = tt.secret, tt.secret
			h.connect(false)
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
			got := handshakeOK(t, hs, false)
			want := &Agent{Node: testNode, Version: "1.2.3", OS: "linux", Arch: "amd64"}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Handshake agent = %+v, want %+v", got, want)
			}
			if id := h.s.ID(); id != session {
				t.Errorf("ID() = %x, want the negotiated session %x", id, session)
			}
			if held, _ := h.s.Held(); !h.s.Live() || held {
				t.Errorf("Live() = %v, Held() = %v; want a live session, not held", h.s.Live(), held)
			}
			if got := h.s.Counters(); got != (Counters{Stale: tt.wantStale}) {
				t.Errorf("Counters() = %+v, want %d stale", got, tt.wantStale)
			}
		})
	}
}

// TestHandshakeWrongProof: while no session lives, an answer that does
// not prove the secret is refused (unsigned) and counted as forged, and
// the node is told "wrong secret" (ErrAuth) only once such answers kept
// coming for the heartbeat timeout with no genuine one: one injected Auth
// does not relabel the node. Before, the first wrong answer did.
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
			const timeout = 200 * time.Millisecond
			h := newHarness(t, Options{HeartbeatTimeout: timeout})
			h.connect(false)
			a := h.agent
			a.secret = tt.agentSecret
			hs := h.startHandshake()

			// Each wrong answer is refused (unsigned) and counted as forged;
			// Handshake reports ErrAuth only once they kept coming for the
			// heartbeat timeout, wrongProofsToReport at least.
			sameSecret := bytes.Equal(tt.agentSecret, testSecret)
			var first time.Time
			var f *wire.Frame
			var r handshakeResult
			n := 0
			for done := false; !done; {
				a.hello(byte(1 + n))
				var ch *wire.Challenge
				f, ch = expect[*wire.Challenge](a)
				if ok := wire.ProofEqual(ch.Proof, wire.MasterProof(a.secret, a.nonce, ch.Nonce)); ok != sameSecret {
					t.Fatalf("master proof verifies under the agent's secret: %v, want %v", ok, sameSecret)
				}
				if n == 0 {
					first = time.Now()
				}
				a.sendRaw(&wire.Auth{Proof: tt.proof(a, ch.Nonce, ch.Proof)}, f.Session, 1, nil)
				n++
				rf, res := expect[*wire.AuthResult](a)
				want := wire.AuthResult{OK: false, Reason: "authentication failed: wrong secret"}
				if rf.Session != f.Session || *res != want || len(rf.MAC) != 0 {
					t.Errorf("agent got AuthResult %+v in session %x (MAC %x), want %+v in session %x, unsigned", *res, rf.Session, rf.MAC, want, f.Session)
				}
				select {
				case r = <-hs:
					done = true
				case <-time.After(timeout / 4):
				}
				if n > 1000 {
					t.Fatal("Handshake never reported the wrong secret")
				}
			}
			if !errors.Is(r.err, ErrAuth) || r.agent != nil || r.resumed {
				t.Fatalf("Handshake = %v, %v, %v; want nil, false, ErrAuth", r.agent, r.resumed, r.err)
			}
			if n < wrongProofsToReport || time.Since(first) < timeout {
				t.Errorf("ErrAuth after %d wrong answers in %v; want %d at least over %v", n, time.Since(first), wrongProofsToReport, timeout)
			}
			if c := h.s.Counters(); c.Forged != uint64(n) {
				t.Errorf("counters %+v, want the %d wrong answers forged", c, n)
			}
			if h.s.ID() != 0 || h.s.Live() {
				t.Errorf("ID() = %x, Live() = %v after a failed handshake, want 0, false", h.s.ID(), h.s.Live())
			}

			// The agent, restarted with the right secret, tries again on
			// the same connection (as core/nodes does).
			a.secret = testSecret
			hs = h.startHandshake()
			a.handshake(2)
			handshakeOK(t, hs, false)
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
		{name: "connection cut", end: func(h *harness) { h.conn.cut() }, wantErr: ErrClosed},
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
			h := newHarness(t, Options{})
			h.connect(false)
			hs := h.startHandshake()
			tt.end(h)
			r := wait(t, hs, "Handshake")
			if !errors.Is(r.err, tt.wantErr) {
				t.Errorf("Handshake error = %v, want %v", r.err, tt.wantErr)
			}
			if h.s.Live() {
				t.Errorf("Live() after a failed handshake")
			}
		})
	}
}

// A new Hello while a challenge is pending restarts the handshake for that
// Hello.
func TestHandshakeHelloDuringNegotiation(t *testing.T) {
	h := newHarness(t, Options{})
	h.connect(false)
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
	handshakeOK(t, hs, false)
	if h.s.ID() != second {
		t.Fatalf("ID %x; want session %x", h.s.ID(), second)
	}
}

// An agent that does not answer the challenge within the heartbeat timeout
// loses it: its genuine Auth for that session is no longer accepted, and a
// later Hello is served.
func TestHandshakeUnansweredChallenge(t *testing.T) {
	h := newHarness(t, Options{HeartbeatTimeout: 50 * time.Millisecond})
	h.connect(false)
	a := h.agent
	hs := h.startHandshake()
	a.hello(1)
	first, nonceM := a.challenge(true)
	// While the master negotiates session first, it drops an Ack of that
	// session quietly and answers its pings; once it gave up, that session
	// is unknown and told to end, once: its pings are not answered (an
	// unsigned Pong would only be dropped as forged).
	for i := uint64(1); ; i++ {
		a.sendRaw(&wire.Ack{}, first, 0, nil)
		a.sendRaw(&wire.Ping{Nonce: i}, first, 0, nil)
		f, m := a.recv()
		if cl, ok := m.(*wire.Close); ok {
			if f.Session != first || !strings.Contains(cl.Reason, "unknown session") {
				t.Fatalf("got Close %+v in session %x, want one for session %x", cl, f.Session, first)
			}
			break
		}
		if p, ok := m.(*wire.Pong); !ok || p.Nonce != i || f.Session != first {
			t.Fatalf("got %v %+v in session %x, want Pong %d or Close for session %x", f.Type, m, f.Session, i, first)
		}
		time.Sleep(5 * time.Millisecond) // pacing only
	}
	a.sendRaw(&wire.Auth{Proof: wire.AgentProof(a.secret, nonceM, a.nonce)}, first, 1, nil) // too late: dropped
	a.hello(2)
	second, nonceM2 := a.challenge(true) // not an AuthResult for first
	if second == first {
		t.Fatalf("second challenge reuses session %x", second)
	}
	a.authenticate(second, nonceM2)
	handshakeOK(t, hs, false)
	if h.s.ID() != second {
		t.Fatalf("ID %x; want session %x", h.s.ID(), second)
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
			h, serve := established(t, Options{}, false)
			a := h.agent
			a.send(&wire.Ping{Nonce: tt.nonce, UnixNano: tt.clock})
			f, p := expectInSession[*wire.Pong](a) // signed, counter rising
			if p.Nonce != tt.nonce || p.UnixNano != tt.clock {
				t.Errorf("Pong = %+v, want nonce %d clock %d", p, tt.nonce, tt.clock)
			}
			if f.Flags&wire.FlagControl == 0 {
				t.Errorf("Pong flags %v: not a control frame", f.Flags)
			}
			notYet(t, serve, "Serve")
		})
	}
}

// On a link that cannot resume, the master pings an agent and declares it
// lost after the heartbeat timeout when nothing genuine arrived: frames it
// drops do not count as signs of life.
func TestServeAgentLost(t *testing.T) {
	type genuine struct{ pong, output []byte } // encoded frames the agent sent
	tests := []struct {
		name string
		// answer is what the agent sends for each of the master's pings.
		answer func(a *testAgent, ping *wire.Ping, g genuine)
	}{
		{name: "silent"},
		{name: "only frames of another session", answer: func(a *testAgent, p *wire.Ping, _ genuine) {
			a.sendRaw(&wire.Pong{Nonce: p.Nonce}, a.session+1, 1<<40+p.Nonce, a.key)
		}},
		{name: "only frames of session zero", answer: func(a *testAgent, p *wire.Ping, _ genuine) {
			a.sendRaw(&wire.Pong{Nonce: p.Nonce}, 0, 0, nil)
		}},
		{name: "only frames without a valid MAC", answer: func(a *testAgent, p *wire.Ping, _ genuine) {
			a.sendRaw(&wire.Pong{Nonce: p.Nonce}, a.session, 1<<40+p.Nonce, nil)
		}},
		{name: "only replayed control frames", answer: func(a *testAgent, _ *wire.Ping, g genuine) {
			a.replay(g.pong)
		}},
		{name: "only duplicate numbered frames", answer: func(a *testAgent, _ *wire.Ping, g genuine) {
			a.replay(g.output)
		}},
		{name: "only malformed frames", answer: func(a *testAgent, _ *wire.Ping, _ genuine) {
			_ = a.conn.Send([]byte{0, 0, 0, 1, 0})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, serve := established(t, Options{Heartbeat: 20 * time.Millisecond, HeartbeatTimeout: 150 * time.Millisecond}, false)
			a := h.agent
			// Genuine frames, which the replay cases send again.
			var g genuine
			a.send(&wire.Pong{Nonce: 1 << 40})
			g.pong = a.conn.lastSent()
			a.send(stdout("nobody#1", 0, "x"))
			g.output = a.conn.lastSent()
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
					if h.s.Live() {
						t.Errorf("Live() after the agent was lost on a link that cannot resume")
					}
					// A step asked for after the end fails with that error.
					if _, err := h.s.RunStep(context.Background(), &wire.RunStep{BuildID: "j#1"}, io.Discard); !errors.Is(err, ErrAgentLost) {
						t.Errorf("RunStep after the session ended = %v, want ErrAgentLost", err)
					}
					h.noEnd()
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
				f, m := a.decode(raw)
				if _, isClose := m.(*wire.Close); isClose && f.Session == a.session+1 {
					continue // the other session is told to end
				}
				p, ok := m.(*wire.Ping)
				if !ok || f.Session != a.session {
					t.Fatalf("agent got %v %+v in session %x, want a Ping", f.Type, m, f.Session)
				}
				if v := a.ep.Receive(f); v != reliable.Deliver {
					t.Fatalf("master's Ping: %v, want deliver", v)
				}
				if p.Nonce <= last {
					t.Errorf("ping nonce %d after %d", p.Nonce, last)
				}
				last = p.Nonce
				if tt.answer != nil {
					tt.answer(a, p, g)
				}
			}
		})
	}
}

// An agent answering the master's pings stays connected well beyond the
// heartbeat timeout; once it falls silent it is lost.
func TestServeHeartbeatKeepsSessionAlive(t *testing.T) {
	const timeout = 500 * time.Millisecond
	h, serve := established(t, Options{Heartbeat: 25 * time.Millisecond, HeartbeatTimeout: timeout}, false)
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
		f, m := a.decode(raw)
		p, ok := m.(*wire.Ping)
		if !ok || f.Session != a.session || a.ep.Receive(f) != reliable.Deliver {
			t.Fatalf("agent got %v %+v in session %x, want a genuine Ping", f.Type, m, f.Session)
		}
		now := time.Now()
		maxGap = max(maxGap, now.Sub(lastSent))
		a.send(&wire.Pong{Nonce: p.Nonce, UnixNano: p.UnixNano})
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
		name      string
		resumable bool
		end       func(h *harness)
		wantErr   error
		// held: the session outlives the link (the step keeps running);
		// otherwise it ends and the step fails with wantErr.
		held bool
	}{
		{name: "connection EOF", end: func(h *harness) { _ = h.agent.conn.Close() }, wantErr: ErrClosed},
		{name: "connection cut", end: func(h *harness) { h.conn.cut() }, wantErr: ErrClosed},
		{name: "master closes the connection", end: func(h *harness) { _ = h.conn.Close() }, wantErr: ErrClosed},
		{name: "agent says close", end: func(h *harness) { h.agent.send(&wire.Close{Reason: "agent shutting down"}) }, wantErr: ErrClosed},
		{name: "second hello, secret proven", end: func(h *harness) {
			h.agent.hello(2)
			h.agent.sendAuth(h.agent.challenge(true))
		}, wantErr: ErrRehello},
		{name: "context cancelled", end: func(h *harness) { h.cancel() }, wantErr: context.Canceled},

		{name: "resumable: connection EOF", resumable: true, end: func(h *harness) { _ = h.agent.conn.Close() }, wantErr: ErrClosed, held: true},
		{name: "resumable: connection cut", resumable: true, end: func(h *harness) { h.conn.cut() }, wantErr: ErrClosed, held: true},
		{name: "resumable: second hello, secret proven", resumable: true, end: func(h *harness) {
			h.agent.hello(2)
			h.agent.sendAuth(h.agent.challenge(true))
		}, wantErr: ErrRehello, held: true},
		{name: "resumable: agent says close", resumable: true, end: func(h *harness) { h.agent.send(&wire.Close{Reason: "agent shutting down"}) }, wantErr: ErrClosed},
		{name: "resumable: context cancelled", resumable: true, end: func(h *harness) { h.cancel() }, wantErr: context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, serve := established(t, Options{}, tt.resumable)
			a := h.agent
			// A step is running when the link ends.
			step := h.running(context.Background(), &wire.RunStep{BuildID: "job#1", StepIndex: 0, Command: "sleep 100"}, io.Discard)

			tt.end(h)
			err := wait(t, serve, "Serve")
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Serve = %v, want %v", err, tt.wantErr)
			}
			held, _ := h.s.Held()
			if !tt.held {
				r := wait(t, step, "RunStep")
				if !errors.Is(r.err, tt.wantErr) || r.res != nil {
					t.Errorf("running RunStep = %+v, %v; want nil, %v", r.res, r.err, tt.wantErr)
				}
				if h.s.Live() || held {
					t.Errorf("Live() = %v, Held() = %v after the session ended", h.s.Live(), held)
				}
				h.noEnd()
				return
			}
			if !h.s.Live() || !held {
				t.Fatalf("Live() = %v, Held() = %v; want the session held for the agent", h.s.Live(), held)
			}
			notYet(t, step, "RunStep in a held session")
			// The agent, restarted, starts a new session: the step fails.
			h.connect(true)
			hs := h.startHandshake()
			a.handshake(3)
			handshakeOK(t, hs, false)
			if r := wait(t, step, "RunStep"); !errors.Is(r.err, ErrAgentLost) {
				t.Errorf("RunStep = %+v, %v; want ErrAgentLost", r.res, r.err)
			}
		})
	}
}

func TestServeCloseReason(t *testing.T) {
	h, serve := established(t, Options{}, false)
	h.agent.send(&wire.Close{Reason: "agent shutting down"})
	err := wait(t, serve, "Serve")
	if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "agent shutting down") {
		t.Errorf("Serve = %v, want ErrClosed with the agent's reason", err)
	}
}

// rehello establishes a session on a link that cannot resume, ends it with
// a second Hello (the agent restarted) and the agent's proof answering the
// serving link's challenge, and returns the first Serve's result, already
// delivered, and the challenge answered (the next Handshake concludes it).
func rehello(t *testing.T) (*harness, <-chan error, uint64, []byte) {
	t.Helper()
	h, serve := established(t, Options{}, false)
	old := h.agent.session
	h.agent.hello(2)
	session, nonceM := h.agent.challenge(true)
	if session == old {
		t.Fatalf("new session reuses id %x", old)
	}
	notYet(t, serve, "Serve before the agent proved the secret")
	h.agent.sendAuth(session, nonceM)
	err := wait(t, serve, "Serve")
	if !errors.Is(err, ErrRehello) {
		t.Fatalf("Serve = %v, want ErrRehello", err)
	}
	c := make(chan error, 1)
	c <- err
	return h, c, session, nonceM
}

// After a second Hello ends a session, the next Handshake answers that
// Hello (the agent does not have to repeat it) and starts a new session in
// which frames of the old one are stale.
func TestRehelloStartsNewSession(t *testing.T) {
	h, serve, session, nonceM := rehello(t)
	a := h.agent
	old, oldKey := a.session, a.key
	hs := h.startHandshake() // concludes the answered challenge
	a.accepted(session, nonceM)
	handshakeOK(t, hs, false)
	if err := <-serve; !errors.Is(err, ErrRehello) {
		t.Fatalf("first Serve = %v", err)
	}
	serve = h.startServe()
	a.sendRaw(&wire.Ping{Nonce: 1}, old, 1<<20, oldKey)
	a.sendRaw(&wire.Ping{Nonce: 1}, old, 1<<20+1, oldKey) // told once only
	a.send(&wire.Ping{Nonce: 2})
	if f, cl := expect[*wire.Close](a); f.Session != old {
		t.Errorf("got Close %+v for session %x, want one for the old session %x", cl, f.Session, old)
	}
	if _, p := expectInSession[*wire.Pong](a); p.Nonce != 2 {
		t.Errorf("Pong nonce %d, want 2 (the old session's ping is not answered)", p.Nonce)
	}
	notYet(t, serve, "Serve")
}

// Steps run in a session that followed a re-hello on the same link.
func TestRunStepAfterRehello(t *testing.T) {
	h, _, session, nonceM := rehello(t)
	a := h.agent
	hs := h.startHandshake()
	a.accepted(session, nonceM)
	handshakeOK(t, hs, false)
	h.startServe()
	var out chunkWriter
	step := h.running(context.Background(), &wire.RunStep{BuildID: "job#2", Command: "true"}, &out)
	a.send(stdout("job#2", 0, "new session"))
	a.send(&wire.Exit{BuildID: "job#2", Code: 0})
	r := wait(t, step, "RunStep")
	if r.err != nil || r.res.Code != 0 {
		t.Fatalf("RunStep = %+v, %v; want code 0", r.res, r.err)
	}
	if got := string(out.joined()); got != "new session" {
		t.Errorf("output = %q", got)
	}
}

// A Hello that could not start a handshake here (another node, no valid
// nonce) must not end a healthy session.
func TestServeIgnoresImplausibleHello(t *testing.T) {
	for _, resumable := range []bool{false, true} {
		t.Run(fmt.Sprintf("resumable=%v", resumable), func(t *testing.T) {
			h, serve := established(t, Options{}, resumable)
			a := h.agent
			a.sendRaw(&wire.Hello{Node: "builder-2", Nonce: newNonce(9)}, 0, 0, nil)
			a.sendRaw(&wire.Hello{Node: "builder-2", Nonce: newNonce(9), Resume: true}, a.session, 0, nil)
			a.sendRaw(&wire.Hello{Node: testNode, Nonce: []byte("short")}, 0, 0, nil)
			a.sync(5)
			notYet(t, serve, "Serve")
			if got := h.s.Counters(); got != (Counters{Stale: 3}) {
				t.Errorf("Counters() = %+v, want 3 stale", got)
			}
			if held, _ := h.s.Held(); held {
				t.Errorf("session held after an implausible hello")
			}
		})
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
			h, _ := established(t, Options{}, false)
			a := h.agent
			req := &wire.RunStep{BuildID: "job#7", StepIndex: 3, StepName: "compile", Command: "make all",
				Env: []wire.EnvVar{{Name: "CI", Value: "true"}, {Name: "EMPTY", Value: ""}}, Workdir: "job/7", TimeoutMillis: 60000}
			var out chunkWriter
			step := h.startStep(context.Background(), req, &out)

			f, got := expectInSession[*wire.RunStep](a)
			if !reflect.DeepEqual(got, req) {
				t.Fatalf("agent got %+v, want %+v", got, req)
			}
			if f.Seq != 1 {
				t.Errorf("the session's first numbered frame has seq %d, want 1", f.Seq)
			}
			var want [][]byte
			for _, o := range tt.outputs {
				o.BuildID, o.StepIndex = req.BuildID, req.StepIndex
				a.send(o)
				if len(o.Data) > 0 {
					want = append(want, o.Data)
				}
			}
			e := tt.exit
			e.BuildID, e.StepIndex = req.BuildID, req.StepIndex
			a.send(&e)

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
			// The agent's frames acknowledged the step request.
			if p := h.s.Pending(); p.Frames != 0 || p.Last != 1 || p.Acked != 1 {
				t.Errorf("Pending() = %+v, want the step request sent and acknowledged", p)
			}
		})
	}
}

// Concurrent steps (one per executor) each get their own output and exit,
// whatever the order the agent interleaves them in.
func TestRunStepConcurrent(t *testing.T) {
	h, _ := established(t, Options{}, false)
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
			a.send(stdout(fmt.Sprintf("job#%d", i), uint32(i), fmt.Sprintf("%d.%d;", i, round)))
		}
	}
	for i := range n {
		a.send(&wire.Exit{BuildID: fmt.Sprintf("job#%d", i), StepIndex: uint32(i), Code: int32(i)})
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
	if p := h.s.Pending(); p.Frames != 0 {
		t.Errorf("Pending() = %+v after every step ended, want nothing waiting", p)
	}
}

// The master acknowledges a long output with explicit Acks, so that the
// agent's outbox drains while the master has nothing else to send.
func TestServeAcknowledgesBulkOutput(t *testing.T) {
	h, _ := established(t, Options{}, false)
	a := h.agent
	var out chunkWriter
	step := h.running(context.Background(), &wire.RunStep{BuildID: "job#1"}, &out)
	const n = 2*reliable.AckEvery + 5
	var want strings.Builder
	for i := range n {
		line := fmt.Sprintf("line %d\n", i)
		want.WriteString(line)
		a.send(stdout("job#1", 0, line))
	}
	for _, seq := range []uint64{reliable.AckEvery, 2 * reliable.AckEvery} {
		if _, ack := expectInSession[*wire.Ack](a); ack.Seq != seq {
			t.Fatalf("Ack %d, want %d", ack.Seq, seq)
		}
	}
	if p := a.ep.Pending(); p.Frames != n-2*reliable.AckEvery {
		t.Errorf("agent's outbox after the master's Acks: %+v, want %d frames", p, n-2*reliable.AckEvery)
	}
	a.send(&wire.Exit{BuildID: "job#1"})
	if r := wait(t, step, "RunStep"); r.err != nil || r.res.Code != 0 {
		t.Fatalf("RunStep = %+v, %v", r.res, r.err)
	}
	if got := string(out.joined()); got != want.String() {
		t.Errorf("output = %q, want %q", got, want.String())
	}
}

// Frames that do not belong to the session or the step are dropped,
// counted, never delivered as a step's output, and do not end it.
func TestDroppedFrames(t *testing.T) {
	output := func(data string) *wire.Output { return stdout("job#1", 0, data) }
	tests := []struct {
		name string
		// inject sends the frames to drop while the step runs.
		inject func(a *testAgent)
		want   Counters
		// wantOut is what the step writes between the genuine "a" and "b".
		wantOut string
		// wantClose is the unknown session told to end, if any, relative to
		// the agent's session.
		wantClose uint64
	}{
		{
			name: "wrong session",
			inject: func(a *testAgent) {
				a.sendRaw(output("STALE"), a.session+1, a.nextSeq(), a.key)
				a.sendRaw(output("STALE"), a.session+1, a.nextSeq(), nil)
				a.sendRaw(&wire.Exit{BuildID: "job#1", Code: 99}, a.session+1, a.nextSeq(), nil)
			},
			want:      Counters{Stale: 3},
			wantClose: 1,
		},
		{
			name: "session zero",
			inject: func(a *testAgent) {
				a.sendRaw(output("STALE"), 0, a.nextSeq(), nil)
				a.sendRaw(&wire.Exit{BuildID: "job#1", Code: 99}, 0, a.nextSeq(), nil)
			},
			want: Counters{Stale: 2},
		},
		{
			name: "no MAC",
			inject: func(a *testAgent) {
				a.sendRaw(output("FORGED"), a.session, a.nextSeq(), nil)
				a.sendRaw(&wire.Exit{BuildID: "job#1", Code: 99}, a.session, a.nextSeq(), nil)
				a.sendRaw(&wire.Ping{Nonce: 1}, a.session, 1<<40, nil)
			},
			want: Counters{Forged: 3},
		},
		{
			name: "MAC under another key",
			inject: func(a *testAgent) {
				a.sendRaw(output("FORGED"), a.session, a.nextSeq(), wire.SessionKey([]byte("other"), a.nonce, a.nonce, a.session))
			},
			want: Counters{Forged: 1},
		},
		{
			name: "altered payload",
			inject: func(a *testAgent) {
				f := a.craft(output("genuine"), a.session, a.nextSeq(), a.key)
				f.Payload = wire.NewFrame(output("ALTERED")).Payload
				a.sendFrame(f)
			},
			want: Counters{Forged: 1},
		},
		{
			name: "altered sequence number",
			inject: func(a *testAgent) {
				f := a.craft(output("genuine"), a.session, a.nextSeq()+1, a.key)
				f.Seq--
				a.sendFrame(f)
			},
			want: Counters{Forged: 1},
		},
		{
			name: "duplicate numbered frame",
			inject: func(a *testAgent) {
				a.send(output("x"))
				a.replay(a.conn.lastSent()) // delivered twice by the transport
				a.replay(a.conn.lastSent())
			},
			want:    Counters{Duplicate: 2},
			wantOut: "x", // once
		},
		{
			name: "numbered frame after a gap",
			inject: func(a *testAgent) {
				a.sendRaw(output("EARLY"), a.session, a.nextSeq()+1, a.key)
			},
			want: Counters{Early: 1},
		},
		{
			name: "replayed or reordered control frame",
			inject: func(a *testAgent) {
				a.send(&wire.Pong{Nonce: 1})
				first := a.conn.lastSent()
				a.replay(first) // the same frame again
				a.send(&wire.Pong{Nonce: 2})
				f, _ := wire.Decode(bytes.Clone(first), wire.MaxFrameSize)
				a.sendRaw(&wire.Pong{Nonce: 3}, a.session, f.Seq, a.key) // a lower counter than the last
			},
			want: Counters{Replayed: 2},
		},
		{
			name: "another step",
			inject: func(a *testAgent) {
				a.send(stdout("job#2", 0, "OTHER"))
				a.send(stdout("job#1", 1, "OTHER"))
				a.send(&wire.Exit{BuildID: "job#1", StepIndex: 1, Code: 99})
			},
			want: Counters{Unexpect: 3},
		},
		{
			name: "messages only the master sends",
			inject: func(a *testAgent) {
				a.send(&wire.RunStep{BuildID: "job#1", Command: "rm -rf /"})
				a.send(&wire.Cancel{BuildID: "job#1"})
				a.send(&wire.Auth{Proof: []byte("x")})
			},
			want: Counters{Unexpect: 3},
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
		{
			name: "authentic numbered frame with a malformed body",
			inject: func(a *testAgent) {
				a.conn.rewriteNext(func(f *wire.Frame) {
					f.Payload = []byte{0xff} // a truncated length
					wire.Sign(a.key, f)
				})
				a.send(output("MANGLED")) // its number is used up: what follows is delivered
			},
			want: Counters{Malformed: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, serve := established(t, Options{}, false)
			a := h.agent
			var out chunkWriter
			step := h.running(context.Background(), &wire.RunStep{BuildID: "job#1", StepIndex: 0, Command: "true"}, &out)

			a.send(output("a"))
			tt.inject(a)
			a.send(output("b"))
			a.send(&wire.Exit{BuildID: "job#1", Code: 0})

			r := wait(t, step, "RunStep")
			if r.err != nil || r.res.Code != 0 {
				t.Fatalf("RunStep = %+v, %v; want code 0 from the genuine exit", r.res, r.err)
			}
			if got, want := string(out.joined()), "a"+tt.wantOut+"b"; got != want {
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
			notYet(t, serve, "Serve")
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
			h, serve := established(t, Options{}, false)
			a := h.agent
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			var out chunkWriter
			step := h.running(ctx, &wire.RunStep{BuildID: "job#1", Command: "sleep 1000"}, &out)
			a.send(stdout("job#1", 0, "started\n"))

			cancel(errors.New("aborted by alice"))
			f, c := expectInSession[*wire.Cancel](a)
			if want := (wire.Cancel{BuildID: "job#1", Reason: "aborted by alice"}); *c != want {
				t.Errorf("agent got Cancel %+v, want %+v", *c, want)
			}
			if f.Seq != 2 || f.Flags&wire.FlagControl == 0 {
				t.Errorf("Cancel seq %d flags %v, want the second numbered frame, a control frame", f.Seq, f.Flags)
			}
			if tt.confirm != nil {
				a.send(tt.confirm)
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
				a.send(&wire.Exit{BuildID: "job#1", Code: -1})
				a.sync(1)
				if got := h.s.Counters().Unexpect; got != 1 {
					t.Errorf("Counters().Unexpect = %d after a late exit, want 1", got)
				}
			}
			notYet(t, serve, "Serve")
		})
	}
}

// ---------------------------------------------------------------------------
// Resumable sessions.

// A resumable link breaks while a step prints (frames in flight both ways
// are lost, more steps are asked for meanwhile); the agent resumes on a new
// connection; every Output is written once, in order, and the Exit ends
// the step. How the agent and the transport resend must not matter.
func TestResumeExactlyOnce(t *testing.T) {
	tests := []struct {
		name string
		// resend resends the agent's frames after the resume; ar is the
		// AuthResult, old the agent's end of the lost connection.
		resend func(a *testAgent, ar *wire.Frame, old *memConn) int
		// want is what the master drops, given what resend returned.
		want func(n int) Counters
	}{
		{
			name:   "the agent resends after the master's ack",
			resend: func(a *testAgent, ar *wire.Frame, _ *memConn) int { a.resendAfter(ar.Ack); return 0 },
			want:   func(int) Counters { return Counters{} },
		},
		{
			name: "the agent resends all it keeps",
			// The agent's outbox still holds "line 4", which the master
			// handled without telling the agent before the link broke.
			resend: func(a *testAgent, _ *wire.Frame, _ *memConn) int { a.resendAfter(0); return 0 },
			want:   func(int) Counters { return Counters{Duplicate: 1} },
		},
		{
			name: "the transport delivers the resent frames twice",
			resend: func(a *testAgent, ar *wire.Frame, _ *memConn) int {
				a.resendAfter(ar.Ack)
				again := a.conn.sentOf(a.t, wire.TypeOutput)
				for _, b := range again {
					a.replay(b)
				}
				return len(again)
			},
			want: func(n int) Counters { return Counters{Duplicate: uint64(n)} },
		},
		{
			name: "frames of the lost connection replayed on the new one",
			resend: func(a *testAgent, ar *wire.Frame, old *memConn) int {
				a.resendAfter(ar.Ack)
				stale := old.sentOf(a.t, wire.TypeOutput) // signed under the old epoch's key
				for _, b := range stale {
					a.replay(b)
				}
				return len(stale)
			},
			want: func(n int) Counters { return Counters{Forged: uint64(n)} },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, serve := established(t, Options{}, true)
			a := h.agent
			id := h.s.ID()
			var out1, out2, out3 chunkWriter
			step1 := h.running(context.Background(), &wire.RunStep{BuildID: "job#1", Command: "make"}, &out1)
			var want [][]byte
			line := func(i int) {
				t.Helper()
				b := fmt.Appendf(nil, "line %d\n", i)
				want = append(want, b)
				a.send(stdout("job#1", 0, string(b)))
			}
			// Lines 1-3 acknowledged by the master's Pong; line 4 handled,
			// its acknowledgement never reaches the agent.
			for i := 1; i <= 3; i++ {
				line(i)
			}
			a.sync(1)
			if p := a.ep.Pending(); p.Frames != 0 {
				t.Fatalf("agent's outbox after the master's Pong: %+v, want empty", p)
			}
			line(4)
			eventually(t, "line 4 is written", func() bool { return len(out1.nonEmpty()) == 4 })

			// The link breaks: lines 5 and 6 and the request of step 2 are
			// lost in flight; line 7 is printed while disconnected; step 3
			// is asked for while the session is held.
			a.conn.out.blackhole()
			h.conn.out.blackhole()
			line(5)
			line(6)
			step2 := h.startStep(context.Background(), &wire.RunStep{BuildID: "job#2"}, &out2)
			eventually(t, "step 2 is sent", func() bool { return h.s.Pending().Last == 2 })
			old := a.conn
			h.linkLost(serve)
			line(7)
			step3 := h.startStep(context.Background(), &wire.RunStep{BuildID: "job#3"}, &out3)
			eventually(t, "step 3 waits in the outbox", func() bool { return h.s.Pending().Last == 3 })
			notYet(t, step1, "RunStep of step 1")
			if c := h.s.Counters(); c != (Counters{}) {
				t.Errorf("Counters() before the resume = %+v, want none", c)
			}

			// The agent resumes on a new connection.
			h.connect(true)
			hs := h.startHandshake()
			ar := a.resume(2)
			if ar.Ack != 4 {
				t.Errorf("AuthResult acknowledges %d, want 4 (line 4 was handled)", ar.Ack)
			}
			n := tt.resend(a, ar, old) // at once, before it reads the master's frames
			handshakeOK(t, hs, true)
			if h.s.ID() != id {
				t.Errorf("ID() = %x after the resume, want %x", h.s.ID(), id)
			}
			if held, _ := h.s.Held(); held || !h.s.Live() {
				t.Errorf("Held() = %v, Live() = %v after the resume; want live, not held", held, h.s.Live())
			}
			// The master resends what the agent lacks, in order.
			for _, build := range []string{"job#2", "job#3"} {
				if _, rs := expectInSession[*wire.RunStep](a); rs.BuildID != build {
					t.Fatalf("agent got step %s after the resume, want %s", rs.BuildID, build)
				}
			}
			h.startServe()
			line(8)
			a.send(&wire.Exit{BuildID: "job#1", Code: 3})
			a.send(stdout("job#2", 0, "two"))
			a.send(&wire.Exit{BuildID: "job#2", Code: 0})
			a.send(stdout("job#3", 0, "three"))
			a.send(&wire.Exit{BuildID: "job#3", Code: 0})

			r := wait(t, step1, "RunStep of step 1")
			if r.err != nil || r.res.Code != 3 {
				t.Fatalf("RunStep = %+v, %v; want code 3", r.res, r.err)
			}
			if got := out1.nonEmpty(); !reflect.DeepEqual(got, want) {
				t.Errorf("step 1 writes = %q, want each line once, in order: %q", got, want)
			}
			for i, c := range []struct {
				step <-chan stepResult
				out  *chunkWriter
				want string
			}{{step2, &out2, "two"}, {step3, &out3, "three"}} {
				r := wait(t, c.step, "RunStep")
				if r.err != nil || r.res.Code != 0 || string(c.out.joined()) != c.want {
					t.Errorf("step %d: RunStep = %+v, %v, output %q; want code 0, %q", i+2, r.res, r.err, c.out.joined(), c.want)
				}
			}
			if got, want := h.s.Counters(), tt.want(n); got != want {
				t.Errorf("Counters() = %+v, want %+v", got, want)
			}
			if p := h.s.Pending(); p.Frames != 0 || p.Last != 3 {
				t.Errorf("Pending() = %+v, want the 3 step requests acknowledged", p)
			}
			h.noEnd()
		})
	}
}

// A step cancelled while its session is held: the Cancel waits in the
// outbox and reaches the agent when it resumes.
func TestCancelWhileHeld(t *testing.T) {
	h, serve := established(t, Options{}, true)
	a := h.agent
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	var out chunkWriter
	step := h.running(ctx, &wire.RunStep{BuildID: "job#1", Command: "sleep 1000"}, &out)
	a.send(stdout("job#1", 0, "started\n"))
	a.sync(1)
	h.linkLost(serve)

	cancel(errors.New("aborted by alice"))
	eventually(t, "the Cancel waits in the outbox", func() bool { return h.s.Pending().Last == 2 })
	h.connect(true)
	hs := h.startHandshake()
	a.resendAfter(a.resume(2).Ack)
	handshakeOK(t, hs, true)
	if _, c := expectInSession[*wire.Cancel](a); c.BuildID != "job#1" || c.Reason != "aborted by alice" {
		t.Errorf("agent got Cancel %+v", c)
	}
	h.startServe()
	a.send(&wire.Exit{BuildID: "job#1", Code: -1, Error: "cancelled"})
	r := wait(t, step, "RunStep")
	if r.err != nil || *r.res != (StepResult{Code: -1, Error: "cancelled"}) {
		t.Errorf("RunStep = %+v, %v; want the agent's confirmation", r.res, r.err)
	}
}

// A resume must prove the secret like a new session; a failed attempt
// (anyone can send one) is counted as forged, gets no answer and leaves
// the session held for the genuine agent, whose resume the same
// Handshake then concludes.
func TestResumeWrongProof(t *testing.T) {
	h, serve := established(t, Options{}, true)
	a := h.agent
	var out chunkWriter
	step := h.running(context.Background(), &wire.RunStep{BuildID: "job#1"}, &out)
	a.send(stdout("job#1", 0, "one "))
	h.linkLost(serve)
	id := h.s.ID()

	h.connect(true)
	hs := h.startHandshake()
	a.helloResume(2, id, a.ep.Acked())
	f, nonceM := a.challenge(true)
	if f != id {
		t.Fatalf("challenge for session %x, want %x", f, id)
	}
	a.sendRaw(&wire.Auth{Proof: wire.AgentProof([]byte("guessed"), nonceM, a.nonce)}, id, 1, nil)
	eventually(t, "the wrong proof counted as forged", func() bool { return h.s.Counters().Forged == 1 })
	if f, m, ok := a.tryRecv(); ok {
		t.Fatalf("the master answered a wrong proof: %v %+v", f.Type, m)
	}
	notYet(t, hs, "Handshake after a wrong proof while the session is held")
	if held, _ := h.s.Held(); !held || !h.s.Live() || h.s.ID() != id {
		t.Fatalf("after a failed resume: Held() = %v, Live() = %v, ID() = %x; want session %x still held", held, h.s.Live(), h.s.ID(), id)
	}
	notYet(t, step, "RunStep")

	a.resendAfter(a.resume(3).Ack)
	handshakeOK(t, hs, true)
	h.startServe()
	a.send(stdout("job#1", 0, "two"))
	a.send(&wire.Exit{BuildID: "job#1"})
	if r := wait(t, step, "RunStep"); r.err != nil || r.res.Code != 0 {
		t.Fatalf("RunStep = %+v, %v", r.res, r.err)
	}
	if got := string(out.joined()); got != "one two" {
		t.Errorf("output = %q, want %q", got, "one two")
	}
}

// The agent may also resume on the same connection (its own end of the
// transport broke and came back): the serving link challenges its
// resuming Hello, its proof ends Serve with ErrRehello, and Handshake
// resumes.
func TestResumeOnSameLink(t *testing.T) {
	h, serve := established(t, Options{}, true)
	a := h.agent
	id := h.s.ID()
	var out chunkWriter
	step := h.running(context.Background(), &wire.RunStep{BuildID: "job#1"}, &out)
	a.send(stdout("job#1", 0, "one "))
	a.sync(1)
	a.helloResume(2, id, a.ep.Acked())
	sid, nonceM := a.challenge(true) // the serving link answers the Hello
	if sid != id {
		t.Fatalf("challenge for session %x, want %x", sid, id)
	}
	notYet(t, serve, "Serve before the agent proved the secret")
	a.sendAuth(sid, nonceM)
	if err := wait(t, serve, "Serve"); !errors.Is(err, ErrRehello) {
		t.Fatalf("Serve = %v, want ErrRehello", err)
	}
	if held, _ := h.s.Held(); !held || !h.s.Live() {
		t.Fatalf("Held() = %v, Live() = %v; want held", held, h.s.Live())
	}
	hs := h.startHandshake()
	a.resendAfter(a.accepted(sid, nonceM).Ack)
	handshakeOK(t, hs, true)
	h.startServe()
	a.send(stdout("job#1", 0, "two"))
	a.send(&wire.Exit{BuildID: "job#1", Code: 1})
	if r := wait(t, step, "RunStep"); r.err != nil || r.res.Code != 1 {
		t.Fatalf("RunStep = %+v, %v", r.res, r.err)
	}
	if got := string(out.joined()); got != "one two" {
		t.Errorf("output = %q", got)
	}
}

// A link that cannot resume ends the session when it breaks: its steps
// fail at once, and a later resume gets a new session.
func TestLinkLostWithoutResume(t *testing.T) {
	h, serve := established(t, Options{}, false)
	a := h.agent
	old := h.s.ID()
	var out chunkWriter
	step := h.running(context.Background(), &wire.RunStep{BuildID: "job#1"}, &out)
	a.send(stdout("job#1", 0, "one "))
	a.conn.out.blackhole()
	a.send(stdout("job#1", 0, "lost"))
	h.conn.cut()
	if err := wait(t, serve, "Serve"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Serve = %v, want ErrClosed", err)
	}
	r := wait(t, step, "RunStep")
	if !errors.Is(r.err, ErrClosed) || r.res != nil {
		t.Errorf("RunStep = %+v, %v; want ErrClosed", r.res, r.err)
	}
	if held, _ := h.s.Held(); held || h.s.Live() {
		t.Errorf("Held() = %v, Live() = %v; want the session ended", held, h.s.Live())
	}
	if _, err := h.s.RunStep(context.Background(), &wire.RunStep{BuildID: "job#2"}, io.Discard); !errors.Is(err, ErrClosed) {
		t.Errorf("RunStep after the end = %v, want ErrClosed", err)
	}
	h.noEnd()

	h.connect(false)
	hs := h.startHandshake()
	a.helloResume(2, old, a.ep.Acked())
	id, nonceM := a.challenge(true)
	if id == old {
		t.Fatalf("the ended session %x was resumed", old)
	}
	a.authenticate(id, nonceM)
	handshakeOK(t, hs, false)
}

// A session not resumed within the session timeout ends: its steps fail
// with ErrAgentLost and OnEnd is called. The agent's next resume gets a new
// session.
func TestSessionTimeout(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		// lose makes the agent unreachable; serve is the link's Serve.
		lose func(h *harness, serve <-chan error)
	}{
		{
			name: "link lost",
			opts: Options{SessionTimeout: 300 * time.Millisecond},
			lose: func(h *harness, serve <-chan error) { h.cutLink(serve) },
		},
		{
			name: "agent silent on the link",
			opts: Options{Heartbeat: 20 * time.Millisecond, HeartbeatTimeout: 100 * time.Millisecond, SessionTimeout: 300 * time.Millisecond},
			lose: func(h *harness, serve <-chan error) {
				ev := wait(h.t, h.reach, "OnReachable")
				if ev.reachable || !errors.Is(ev.why, ErrAgentLost) {
					h.t.Fatalf("OnReachable(%v, %v), want false, ErrAgentLost", ev.reachable, ev.why)
				}
				err := wait(h.t, serve, "Serve")
				if !errors.Is(err, ErrAgentLost) {
					h.t.Errorf("Serve = %v, want ErrAgentLost", err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, serve := established(t, tt.opts, true)
			a := h.agent
			old := h.s.ID()
			step := h.running(context.Background(), &wire.RunStep{BuildID: "job#1"}, io.Discard)
			tt.lose(h, serve)
			r := wait(t, step, "RunStep")
			if !errors.Is(r.err, ErrAgentLost) || !strings.Contains(r.err.Error(), "session_timeout") || r.res != nil {
				t.Errorf("RunStep = %+v, %v; want ErrAgentLost after the session timeout", r.res, r.err)
			}
			if err := wait(t, h.ended, "OnEnd"); !errors.Is(err, ErrAgentLost) {
				t.Errorf("OnEnd(%v), want ErrAgentLost", err)
			}
			if held, _ := h.s.Held(); held || h.s.Live() {
				t.Errorf("Held() = %v, Live() = %v after the session timeout", held, h.s.Live())
			}
			if _, err := h.s.RunStep(context.Background(), &wire.RunStep{BuildID: "job#2"}, io.Discard); !errors.Is(err, ErrAgentLost) {
				t.Errorf("RunStep after the session timeout = %v, want ErrAgentLost", err)
			}

			h.connect(true)
			hs := h.startHandshake()
			a.helloResume(2, old, a.ep.Acked())
			id, nonceM := a.challenge(true)
			if id == old {
				t.Fatalf("the timed out session %x was resumed", old)
			}
			a.authenticate(id, nonceM)
			handshakeOK(t, hs, false)
			if !h.s.Live() || h.s.ID() != id {
				t.Errorf("Live() = %v, ID() = %x; want the new session %x", h.s.Live(), h.s.ID(), id)
			}
		})
	}
}

// An agent that restarted says a fresh Hello: once it proved the secret,
// the steps of its old session (held or live) fail at once, whatever the
// session timeout; the new session works.
func TestAgentRestartEndsOldSession(t *testing.T) {
	tests := []struct {
		name string
		// restart makes the restarted agent say hello.
		restart func(h *harness, serve <-chan error)
		// serving: the link still serves the session, and challenges
		// the Hello itself.
		serving bool
	}{
		{
			name: "held session, hello on a new connection",
			restart: func(h *harness, serve <-chan error) {
				h.linkLost(serve)
				h.connect(true)
				h.agent.hello(2)
			},
		},
		{
			name: "live session, hello on its link", serving: true,
			restart: func(h *harness, serve <-chan error) {
				h.agent.hello(2)
			},
		},
		{
			name: "held session, hello on a link that cannot resume",
			restart: func(h *harness, serve <-chan error) {
				h.linkLost(serve)
				h.connect(false)
				h.agent.hello(2)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, serve := established(t, Options{}, true)
			a := h.agent
			old, oldKey := h.s.ID(), a.key
			step := h.running(context.Background(), &wire.RunStep{BuildID: "job#1"}, io.Discard)
			a.send(stdout("job#1", 0, "x"))
			a.replay(a.conn.lastSent())
			a.sync(1)
			if got := h.s.Counters().Duplicate; got != 1 {
				t.Fatalf("Counters().Duplicate = %d, want 1", got)
			}

			tt.restart(h, serve)
			var hs <-chan handshakeResult
			if !tt.serving {
				hs = h.startHandshake()
			}
			id, nonceM := a.challenge(true)
			if id == old {
				t.Fatalf("a fresh hello got the old session %x", old)
			}
			notYet(t, step, "RunStep before the restarted agent proved the secret")
			if tt.serving {
				notYet(t, serve, "Serve before the restarted agent proved the secret")
				a.sendAuth(id, nonceM)
				if err := wait(h.t, serve, "Serve"); !errors.Is(err, ErrRehello) {
					h.t.Fatalf("Serve = %v, want ErrRehello", err)
				}
				if held, _ := h.s.Held(); !held || !h.s.Live() {
					h.t.Fatalf("Held() = %v, Live() = %v after the proof; want held until the handshake concludes", held, h.s.Live())
				}
				hs = h.startHandshake()
				a.accepted(id, nonceM)
			} else {
				a.authenticate(id, nonceM)
			}
			handshakeOK(t, hs, false)
			r := wait(t, step, "RunStep")
			if !errors.Is(r.err, ErrAgentLost) || !strings.Contains(r.err.Error(), "restarted") || r.res != nil {
				t.Errorf("RunStep = %+v, %v; want ErrAgentLost saying the agent restarted", r.res, r.err)
			}
			if held, _ := h.s.Held(); held || !h.s.Live() || h.s.ID() != id {
				t.Errorf("Held() = %v, Live() = %v, ID() = %x; want the new session %x live", held, h.s.Live(), h.s.ID(), id)
			}
			if got := h.s.Counters().Duplicate; got != 1 {
				t.Errorf("Counters().Duplicate = %d after the new session, want the old session's 1 kept", got)
			}
			h.noEnd()

			// The new session runs steps; the old one's frames are stale.
			h.startServe()
			a.sendRaw(stdout("job#1", 0, "ghost"), old, 9, oldKey)
			if f, _ := expect[*wire.Close](a); f.Session != old {
				t.Errorf("Close for session %x, want the old %x", f.Session, old)
			}
			var out chunkWriter
			step = h.running(context.Background(), &wire.RunStep{BuildID: "job#1"}, &out)
			a.send(stdout("job#1", 0, "again"))
			a.send(&wire.Exit{BuildID: "job#1"})
			if r := wait(t, step, "RunStep"); r.err != nil || r.res.Code != 0 || string(out.joined()) != "again" {
				t.Errorf("RunStep in the new session = %+v, %v, output %q", r.res, r.err, out.joined())
			}
		})
	}
}

// A resumable link whose agent falls silent for the heartbeat timeout
// holds the session (the node shows unreachable); the agent's next
// authentic frame makes it reachable again and the step goes on.
func TestSilentAgentHeardAgain(t *testing.T) {
	h, serve := established(t, Options{Heartbeat: 20 * time.Millisecond, HeartbeatTimeout: 150 * time.Millisecond}, true)
	a := h.agent
	var out chunkWriter
	step := h.running(context.Background(), &wire.RunStep{BuildID: "job#1"}, &out)
	a.send(stdout("job#1", 0, "before "))

	ev := wait(t, h.reach, "OnReachable")
	if ev.reachable || !errors.Is(ev.why, ErrAgentLost) {
		t.Fatalf("OnReachable(%v, %v), want false, ErrAgentLost", ev.reachable, ev.why)
	}
	if held, _ := h.s.Held(); !held || !h.s.Live() {
		t.Fatalf("Held() = %v, Live() = %v while the agent is silent; want held", held, h.s.Live())
	}
	notYet(t, serve, "Serve")
	notYet(t, step, "RunStep")

	// A forged frame is no sign of life. The unknown session's frame after
	// it is answered with a Close: by then the forged one was handled.
	a.sendRaw(stdout("job#1", 0, "FORGED"), a.session, a.nextSeq(), nil)
	a.sendRaw(&wire.Ping{}, a.session+1, 1, nil)
	for {
		f, m := a.recv()
		if _, ok := m.(*wire.Close); ok && f.Session == a.session+1 {
			break
		}
		if _, ok := m.(*wire.Ping); !ok {
			t.Fatalf("agent got %v %+v, want Pings and a Close", f.Type, m)
		}
	}
	select {
	case ev := <-h.reach:
		t.Fatalf("OnReachable(%v, %v) after a forged frame", ev.reachable, ev.why)
	default:
	}

	a.send(stdout("job#1", 0, "after"))
	ev = wait(t, h.reach, "OnReachable")
	if !ev.reachable || ev.why != nil {
		t.Fatalf("OnReachable(%v, %v), want true, nil", ev.reachable, ev.why)
	}
	a.send(&wire.Exit{BuildID: "job#1", Code: 0})
	if r := wait(t, step, "RunStep"); r.err != nil || r.res.Code != 0 {
		t.Fatalf("RunStep = %+v, %v", r.res, r.err)
	}
	if got := string(out.joined()); got != "before after" {
		t.Errorf("output = %q", got)
	}
	if !h.s.Live() {
		t.Errorf("session ended")
	}
	if got := h.s.Counters().Forged; got != 1 {
		t.Errorf("Counters().Forged = %d, want 1", got)
	}
	notYet(t, serve, "Serve")
	h.noEnd()
}

// A resuming Hello that names a session the master does not hold gets a
// new session (the agent then drops the steps of the one it asked for).
func TestResumeUnknownSession(t *testing.T) {
	tests := []struct {
		name string
		// setup prepares the master; it returns the session to name and
		// the step that must fail once the new session is established.
		setup func(h *harness) (uint64, <-chan stepResult)
	}{
		{
			name:  "no session yet",
			setup: func(h *harness) (uint64, <-chan stepResult) { h.connect(true); return 0x5e55, nil },
		},
		{
			name: "not the held session",
			setup: func(h *harness) (uint64, <-chan stepResult) {
				h.connect(true)
				hs := h.startHandshake()
				h.agent.handshake(1)
				handshakeOK(h.t, hs, false)
				serve := h.startServe()
				step := h.running(context.Background(), &wire.RunStep{BuildID: "job#1"}, io.Discard)
				h.linkLost(serve)
				h.connect(true)
				return h.s.ID() + 1, step
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Options{})
			named, step := tt.setup(h)
			before := h.s.ID()
			a := h.agent
			hs := h.startHandshake()
			a.helloResume(2, named, 5)
			id, nonceM := a.challenge(true)
			if id == named || id == before {
				t.Fatalf("challenge for session %x; want a new one (asked %x, held %x)", id, named, before)
			}
			a.authenticate(id, nonceM)
			handshakeOK(t, hs, false)
			if h.s.ID() != id || !h.s.Live() {
				t.Errorf("ID() = %x, Live() = %v; want the new session %x", h.s.ID(), h.s.Live(), id)
			}
			if step != nil {
				if r := wait(t, step, "RunStep"); !errors.Is(r.err, ErrAgentLost) {
					t.Errorf("RunStep of the replaced session = %+v, %v; want ErrAgentLost", r.res, r.err)
				}
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Races around the session timeout and unauthenticated resume data.

// A resume handshake that straddles the session timeout: the session was
// held when the Hello came, its timeout expired before the Auth. Handshake
// must not report as resumed a session that ended.
func TestResumeAfterSessionTimeoutDuringHandshake(t *testing.T) {
	h, serve := established(t, Options{SessionTimeout: time.Second}, true)
	a := h.agent
	old := h.s.ID()
	step := h.running(context.Background(), &wire.RunStep{BuildID: "job#1"}, io.Discard)
	h.cutLink(serve)
	h.connect(true)
	hs := h.startHandshake()
	a.helloResume(2, old, a.ep.Acked())
	id, nonceM := a.challenge(true)
	if id != old {
		t.Skipf("the session timed out before the Hello was handled: nothing to check")
	}
	if err := wait(t, h.ended, "OnEnd"); !errors.Is(err, ErrAgentLost) {
		t.Fatalf("OnEnd(%v)", err)
	}
	if r := wait(t, step, "RunStep"); !errors.Is(r.err, ErrAgentLost) {
		t.Fatalf("RunStep = %+v, %v; want ErrAgentLost", r.res, r.err)
	}
	a.ep.Begin(a.conn)
	if err := a.ep.SendControl(&wire.Auth{Proof: wire.AgentProof(a.secret, nonceM, a.nonce)}, id); err != nil {
		t.Fatal(err)
	}
	// The master refuses the resume of an ended session and waits for the
	// agent's next Hello; the agent then starts a new session.
	for {
		f, m := a.recv()
		if r, ok := m.(*wire.AuthResult); ok {
			if r.OK || f.Session != id {
				t.Fatalf("AuthResult %+v in session %x; want a refusal of the ended session", r, f.Session)
			}
			break
		}
	}
	a.handshake(3)
	r := wait(t, hs, "Handshake")
	if r.err != nil || r.resumed || h.s.ID() == old || !h.s.Live() {
		t.Fatalf("Handshake after the refused resume = resumed %v, %v; session %x (old %x), live %v", r.resumed, r.err, h.s.ID(), old, h.s.Live())
	}
}

// LastSeq in a resuming Hello is not authenticated (the Hello is not
// signed, the proofs cover only the nonces), yet the master drops from its
// outbox every frame up to it. A transport that alters it makes frames the
// agent never got vanish: here the request of a step.
func TestResumeTrustsUnauthenticatedLastSeq(t *testing.T) {
	h, serve := established(t, Options{}, true)
	a := h.agent
	h.linkLost(serve)
	step := h.startStep(context.Background(), &wire.RunStep{BuildID: "job#1"}, io.Discard)
	eventually(t, "the step request waits in the outbox", func() bool { return h.s.Pending().Last == 1 })
	h.connect(true)
	hs := h.startHandshake()
	a.helloResume(2, a.session, 1) // the genuine agent said 0: it never got frame 1
	id, nonceM := a.challenge(true)
	a.resendAfter(a.authenticate(id, nonceM).Ack)
	handshakeOK(t, hs, true)
	h.startServe()
	expectInSession[*wire.RunStep](a) // never comes: the master forgot it
	a.send(&wire.Exit{BuildID: "job#1"})
	wait(t, step, "RunStep")
}

// TestHeldSessionHintedAtOnce: a new link of a held session (the plugin or
// the master restarted) asks the agent to resume at once, before any
// frame of the agent arrives, and only once per link; the hint is
// unsigned and changes nothing of the session.
func TestHeldSessionHintedAtOnce(t *testing.T) {
	h, serve := established(t, Options{}, true)
	a := h.agent
	h.linkLost(serve)
	id := h.s.ID()

	h.connect(true)
	hs := h.startHandshake()
	f, m := a.recv() // the agent sent nothing on this link yet
	if !isHint(f, m) || f.Session != id {
		t.Fatalf("first frame on the new link: %v %+v in session %x; want the unsigned hint to resume %x", f.Type, m, f.Session, id)
	}
	// Its frames of the held session are not hinted again on this link,
	// and its pings get no unsigned Pong.
	a.sendRaw(&wire.Ping{Nonce: 7}, id, 0, nil)
	a.sendRaw(&wire.Ping{Nonce: 8}, 0, 0, nil)
	if f, p := expect[*wire.Pong](a); p.Nonce != 8 || f.Session != 0 {
		t.Fatalf("got Pong %+v in session %x, want the pong of the sessionless ping", p, f.Session)
	}
	if held, _ := h.s.Held(); !held || h.s.ID() != id {
		t.Fatalf("the hint changed the session: held %v, id %x", held, h.s.ID())
	}
	a.helloResume(2, id, a.ep.Acked())
	got, nonceM := a.challenge(true)
	if got != id {
		t.Fatalf("challenge for %x, want %x", got, id)
	}
	a.authenticate(id, nonceM)
	handshakeOK(t, hs, true)
}

// TestUnknownSessionPingTold: a ping of a session the master does not know
// (it restarted after a SIGTERM, which ended the session) is answered by
// telling the agent once that the session is unknown, so that it says
// hello at once; an unsigned Pong would be dropped as forged.
func TestUnknownSessionPingTold(t *testing.T) {
	h := newHarness(t, Options{})
	h.connect(true)
	a := h.agent
	h.startHandshake()
	const old = 0xdead
	a.sendRaw(&wire.Ping{Nonce: 1}, old, 0, nil)
	f, m := a.recv()
	cl, ok := m.(*wire.Close)
	if !ok || f.Session != old || len(f.MAC) != 0 || !strings.Contains(cl.Reason, "unknown session") {
		t.Fatalf("answer to a ping of an unknown session: %v %+v in session %x; want Close \"unknown session\"", f.Type, m, f.Session)
	}
	a.sendRaw(&wire.Ping{Nonce: 2}, old, 0, nil)
	a.sendRaw(&wire.Ping{Nonce: 3}, 0, 0, nil)
	if f, p := expect[*wire.Pong](a); p.Nonce != 3 || f.Session != 0 {
		t.Fatalf("got Pong %+v in session %x, want only the sessionless ping answered", p, f.Session)
	}
}

// TestSessionTimeoutFromLastContact: the session timeout counts from the
// agent's last frame, not from when its silence was noticed a heartbeat
// timeout later, and the reason states the real silence.
func TestSessionTimeoutFromLastContact(t *testing.T) {
	const hbTimeout, sessTimeout = time.Second, 3 * time.Second
	h, _ := established(t, Options{Heartbeat: 100 * time.Millisecond, HeartbeatTimeout: hbTimeout, SessionTimeout: sessTimeout}, true)
	a := h.agent
	var out chunkWriter
	step := h.running(context.Background(), &wire.RunStep{BuildID: "job#1"}, &out)
	a.send(stdout("job#1", 0, "last words"))
	a.sync(1)
	last := time.Now() // the agent falls silent
	r := wait(t, step, "RunStep")
	took := time.Since(last)
	if !errors.Is(r.err, ErrAgentLost) || !strings.Contains(r.err.Error(), "no contact for 3s") {
		t.Fatalf("RunStep = %+v, %v; want agent lost after no contact for 3s", r.res, r.err)
	}
	// The old count (heartbeat timeout + session timeout) ends it after 4s.
	if took < sessTimeout-100*time.Millisecond || took >= hbTimeout+sessTimeout-200*time.Millisecond {
		t.Fatalf("the session ended %s after the last contact; want the session timeout, %s", took, sessTimeout)
	}
	t.Logf("the session ended %s after the agent's last frame", took.Round(time.Millisecond))
}

// TestAgentStats: the master announces that it takes Stats in its
// AuthResult; the agent's signed Stats are what AgentCounters reports,
// and a Stats frame without a valid MAC is dropped as forged.
func TestAgentStats(t *testing.T) {
	h := newHarness(t, Options{})
	h.connect(true)
	a := h.agent
	hs := h.startHandshake()
	a.hello(1)
	id, nonceM := a.challenge(true)
	f := a.authenticate(id, nonceM)
	handshakeOK(t, hs, false)
	h.startServe()
	m, _ := f.Message()
	if _, features := wire.SplitFeatures(m.(*wire.AuthResult).Reason); !slices.Contains(features, wire.FeatureStats) {
		t.Fatalf("AuthResult %+v does not announce %q", m, wire.FeatureStats)
	}
	if c := h.s.AgentCounters(); c != nil {
		t.Fatalf("AgentCounters() = %v before any Stats", c)
	}
	a.sendRaw(&wire.Stats{Counters: []wire.Counter{{Name: "forged", Value: 99}}}, id, a.nextSeq(), nil)
	a.send(&wire.Stats{Counters: []wire.Counter{{Name: "forged", Value: 2}, {Name: "hint", Value: 5}, {Name: "", Value: 1}}})
	a.sync(1)
	want := map[string]uint64{"forged": 2, "hint": 5}
	if c := h.s.AgentCounters(); !maps.Equal(c, want) {
		t.Fatalf("AgentCounters() = %v, want %v", c, want)
	}
	if c := h.s.Counters(); c.Forged != 1 {
		t.Fatalf("Counters() = %+v, want the unsigned Stats counted as forged", c)
	}
}

// TestGracefulStopToldAtRestart: a master stopped gracefully ends its
// sessions but keeps a record of each end; restarted, it tells the agent,
// on the first link and before any frame of the agent arrives, that the
// session is over, so that the agent says hello at once instead of
// waiting for its next ping. A fresh hello then gets a new session.
func TestGracefulStopToldAtRestart(t *testing.T) {
	var mu sync.Mutex
	var last *Record
	h := newHarness(t, Options{Persist: func(r *Record) error {
		mu.Lock()
		defer mu.Unlock()
		last = r
		return nil
	}})
	h.connect(true)
	hs := h.startHandshake()
	h.agent.handshake(1)
	handshakeOK(t, hs, false)
	serve := h.startServe()
	id := h.s.ID()
	h.cancel() // the master stops
	wait(t, serve, "Serve")
	mu.Lock()
	rec := last
	mu.Unlock()
	if rec == nil || !rec.Ended || rec.ID != id {
		t.Fatalf("persisted after the stop: %+v; want the end of session %x", rec, id)
	}

	h2 := newHarness(t, Options{}) // the restarted master
	if err := h2.s.Restore(rec); err != nil {
		t.Fatal(err)
	}
	if held, _ := h2.s.Held(); held || h2.s.Live() || h2.s.ID() != 0 {
		t.Fatalf("an ended session was restored: held %v, live %v, id %x", held, h2.s.Live(), h2.s.ID())
	}
	h2.connect(true)
	hs2 := h2.startHandshake()
	f, m := h2.agent.recv()
	cl, ok := m.(*wire.Close)
	if !ok || f.Session != id || len(f.MAC) != 0 || !strings.Contains(cl.Reason, "unknown session") {
		t.Fatalf("first frame on the restarted master's link: %v %+v in session %x; want Close \"unknown session\" for %x", f.Type, m, f.Session, id)
	}
	h2.agent.handshake(2)
	handshakeOK(t, hs2, false)
	if h2.s.ID() == id || h2.s.ID() == 0 {
		t.Fatalf("session %x after a fresh hello, want a new one", h2.s.ID())
	}
}

// TestHandshakeOutdatedAgent: an agent proving the secret the way agents
// did before frame keys were bound to the direction is refused with a
// reason saying to upgrade it, not "wrong secret".
func TestHandshakeOutdatedAgent(t *testing.T) {
	h := newHarness(t, Options{})
	h.connect(false)
	a := h.agent
	hs := h.startHandshake()
	a.hello(1)
	session, nonceM := a.challenge(true)
	a.sendRaw(&wire.Auth{Proof: wire.LegacyAgentProof(a.secret, nonceM, a.nonce)}, session, 1, nil)
	_, res := expect[*wire.AuthResult](a)
	if res.OK || res.Reason != ErrAgentOutdated.Error() || !strings.Contains(res.Reason, "upgrade conveyor-agent") {
		t.Errorf("AuthResult %+v, want a refusal saying to upgrade the agent", res)
	}
	r := wait(t, hs, "Handshake")
	if r.err != ErrAgentOutdated || !errors.Is(r.err, ErrAuth) || h.s.Live() {
		t.Fatalf("Handshake = %v (live %v), want ErrAgentOutdated matching ErrAuth and no session", r.err, h.s.Live())
	}
}

// TestReflectedFramesForgedAtMaster: the master's own signed frames
// written back to it with the number the agent's next frame gets (a
// RunStep copied from the commands topic into the events topic) are
// forged; the agent's genuine Exit with that number ends the step. With
// one key for both directions the reflected frame was delivered and the
// Exit dropped as a duplicate: the build ran forever.
func TestReflectedFramesForgedAtMaster(t *testing.T) {
	h, _ := established(t, Options{}, false)
	a := h.agent
	step := h.running(context.Background(), &wire.RunStep{BuildID: "job#1", Command: "true"}, io.Discard)
	a.sync(1)
	if a.nextSeq() != 1 {
		t.Fatalf("the agent's next number is %d, want 1", a.nextSeq())
	}
	for _, typ := range []wire.Type{wire.TypeRunStep, wire.TypePing, wire.TypePong} {
		for _, b := range h.conn.sentOf(t, typ) {
			a.replay(b)
		}
	}
	a.send(&wire.Exit{BuildID: "job#1", Code: 0})
	if r := wait(t, step, "RunStep"); r.err != nil || r.res.Code != 0 {
		t.Fatalf("RunStep = %+v, %v; want the agent's exit 0", r.res, r.err)
	}
	if c := h.s.Counters(); c.Forged < 2 || c.Duplicate != 0 || c.Unexpect != 0 {
		t.Fatalf("counters %+v: the reflected frames must count as forged", c)
	}
}

// TestInjectedHelloLeavesSessionAlone: Hellos injected into a healthy
// session (a new session, a resume of it) only get a challenge: Serve
// goes on, the steps keep running, nothing tells the node unreachable;
// an Auth that does not prove the secret (empty, or under another
// secret) is counted as forged and refused nothing; the session then
// works as before. Before, a Hello alone ended Serve (ErrRehello) and
// a wrong Auth made the node "authentication failed: wrong secret".
func TestInjectedHelloLeavesSessionAlone(t *testing.T) {
	for _, resumable := range []bool{false, true} {
		t.Run(fmt.Sprintf("resumable=%v", resumable), func(t *testing.T) {
			h, serve := established(t, Options{}, resumable)
			a := h.agent
			step := h.running(context.Background(), &wire.RunStep{BuildID: "job#1"}, io.Discard)
			id := a.session
			attacker := &testAgent{t: t, conn: a.conn, node: testNode, secret: []byte("guessed")}
			attacker.hello(7)
			f, _ := expect[*wire.Challenge](a)
			attacker.sendRaw(&wire.Auth{}, f.Session, 1, nil)
			attacker.helloResume(8, id, 0)
			f, ch := expect[*wire.Challenge](a)
			if f.Session != id {
				t.Fatalf("challenge of the resuming hello for session %x, want %x", f.Session, id)
			}
			attacker.sendRaw(&wire.Auth{Proof: wire.AgentProof(attacker.secret, ch.Nonce, attacker.nonce)}, id, 1, nil)
			attacker.hello(9) // never answered
			expect[*wire.Challenge](a)
			a.sync(1)
			notYet(t, serve, "Serve")
			notYet(t, step, "RunStep")
			select {
			case ev := <-h.reach:
				t.Fatalf("the node was told reachable=%v (%v) by an injected hello", ev.reachable, ev.why)
			default:
			}
			if c := h.s.Counters(); c.Forged != 2 {
				t.Errorf("counters %+v, want the 2 wrong answers forged", c)
			}
			a.send(&wire.Exit{BuildID: "job#1", Code: 0})
			if r := wait(t, step, "RunStep"); r.err != nil || r.res.Code != 0 {
				t.Fatalf("RunStep = %+v, %v; want exit 0 in the untouched session", r.res, r.err)
			}
			if h.s.ID() != id || !h.s.Live() {
				t.Errorf("ID() = %x, live %v; want the session %x", h.s.ID(), h.s.Live(), id)
			}
		})
	}
}

// TestInjectedHelloDuringHandshake: while the master waits for the
// agent's answer to its challenge — a link with no session yet, or a new
// link of a held session —, injected Hellos get challenges of their own
// and wrong Auths (for their challenges and for the agent's) are counted
// as forged; the agent's genuine answer to its challenge still concludes
// the handshake, and Handshake never reports a wrong secret. Before, each
// injected Hello replaced the offer being answered (the agent's proof then
// found no offer), and with no session a wrong Auth made the node
// "authentication failed: wrong secret" at once.
func TestInjectedHelloDuringHandshake(t *testing.T) {
	for _, held := range []bool{false, true} {
		t.Run(fmt.Sprintf("held=%v", held), func(t *testing.T) {
			var h *harness
			var step <-chan stepResult
			var id uint64
			if held {
				var serve <-chan error
				h, serve = established(t, Options{}, true)
				step = h.running(context.Background(), &wire.RunStep{BuildID: "job#1"}, io.Discard)
				id = h.s.ID()
				h.linkLost(serve)
				h.connect(true)
			} else {
				h = newHarness(t, Options{})
				h.connect(false)
			}
			a := h.agent
			next := func() (*wire.Frame, wire.Message) {
				f, m := a.recv()
				for isHint(f, m) {
					f, m = a.recv()
				}
				return f, m
			}
			hs := h.startHandshake()
			if held {
				a.helloResume(1, id, a.ep.Acked())
			} else {
				a.hello(1)
			}
			mine, nonceM := a.challenge(true)
			attacker := &testAgent{t: t, conn: a.conn, node: testNode, secret: []byte("guessed")}
			wrong := 0
			refused := func() {
				t.Helper()
				if held {
					return // no answer while a session lives
				}
				f, m := next()
				if r, ok := m.(*wire.AuthResult); !ok || r.OK || len(f.MAC) != 0 {
					t.Fatalf("got %v %+v (MAC %x), want an unsigned refusal", f.Type, m, f.MAC)
				}
			}
			for i := range 4 {
				if i%2 == 1 && held {
					attacker.helloResume(byte(10+i), id, 0)
				} else {
					attacker.hello(byte(10 + i))
				}
				f, m := next()
				ch, ok := m.(*wire.Challenge)
				if !ok {
					t.Fatalf("got %v %+v, want a Challenge for the injected hello", f.Type, m)
				}
				attacker.sendRaw(&wire.Auth{Proof: wire.AgentProof(attacker.secret, ch.Nonce, attacker.nonce)}, f.Session, 1, nil)
				wrong++
				refused()
				attacker.sendRaw(&wire.Auth{}, mine, 1, nil) // a wrong answer to the agent's challenge
				wrong++
				refused()
			}
			notYet(t, hs, "Handshake under injected hellos")
			if held {
				a.resendAfter(a.authenticate(mine, nonceM).Ack)
				handshakeOK(t, hs, true)
			} else {
				a.authenticate(mine, nonceM)
				handshakeOK(t, hs, false)
			}
			if h.s.ID() != mine {
				t.Errorf("ID() = %x, want the agent's session %x", h.s.ID(), mine)
			}
			if c := h.s.Counters(); c.Forged != uint64(wrong) {
				t.Errorf("counters %+v, want the %d wrong answers forged", c, wrong)
			}
			if held {
				h.startServe()
				a.send(&wire.Exit{BuildID: "job#1", Code: 0})
				if r := wait(t, step, "RunStep"); r.err != nil || r.res.Code != 0 {
					t.Fatalf("RunStep = %+v, %v; want exit 0 in the resumed session", r.res, r.err)
				}
			}
		})
	}
}

// TestUnacknowledgedCommandResentThenReset: a RunStep the agent, heard all
// along, does not acknowledge is sent again after half the heartbeat
// timeout; one never acknowledged resets the session after the heartbeat
// timeout more, and the step fails saying so. Before, the step waited
// forever: a lost command (or one swallowed by a reflected frame) kept
// its build running.
func TestUnacknowledgedCommandResentThenReset(t *testing.T) {
	for _, tt := range []struct {
		name      string
		resumable bool
		drop      int // RunStep frames the agent drops (-1: all)
	}{
		{name: "resent once", drop: 1},
		{name: "never acknowledged", drop: -1},
		{name: "never acknowledged, resumable", resumable: true, drop: -1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h, serve := established(t, Options{Heartbeat: 20 * time.Millisecond, HeartbeatTimeout: 400 * time.Millisecond}, tt.resumable)
			a := h.agent
			start := time.Now()
			step := h.startStep(context.Background(), &wire.RunStep{BuildID: "job#1", Command: "true"}, io.Discard)
			dropped := 0
			var served error
			// The agent answers every ping (it is heard all along) and drops
			// RunSteps as a lossy transport would.
			for served == nil && time.Since(start) < guard {
				select {
				case served = <-serve:
					continue
				default:
				}
				raw, err := a.conn.in.pop(time.After(50 * time.Millisecond))
				if errors.Is(err, errTimeout) {
					continue
				}
				if err != nil {
					t.Fatalf("agent: %v", err)
				}
				f, m := a.decode(raw)
				if f.Type == wire.TypeRunStep && (tt.drop < 0 || dropped < tt.drop) {
					dropped++ // lost on the way: never delivered, never acknowledged
					continue
				}
				if v := a.ep.Receive(f); v != reliable.Deliver {
					t.Fatalf("agent: %v from the master: %v", f.Type, v)
				}
				switch m := m.(type) {
				case *wire.Ping:
					a.send(&wire.Pong{Nonce: m.Nonce, UnixNano: m.UnixNano})
				case *wire.RunStep:
					if err := a.ep.Handled(); err != nil {
						t.Fatal(err)
					}
					a.send(&wire.Exit{BuildID: m.BuildID, Code: 0})
				}
				select {
				case r := <-step:
					if tt.drop < 0 {
						t.Fatalf("RunStep = %+v, %v, though the agent never got it", r.res, r.err)
					}
					if r.err != nil || r.res.Code != 0 {
						t.Fatalf("RunStep = %+v, %v; want the resent step's exit 0", r.res, r.err)
					}
					if dropped != tt.drop {
						t.Errorf("the agent dropped %d RunSteps, want %d", dropped, tt.drop)
					}
					notYet(t, serve, "Serve")
					return
				default:
				}
			}
			if tt.drop > 0 {
				t.Fatalf("the step never ended (Serve: %v): the dropped RunStep was not sent again", served)
			}
			if !errors.Is(served, ErrUnacknowledged) {
				t.Fatalf("Serve = %v, want ErrUnacknowledged", served)
			}
			if took := time.Since(start); took < 600*time.Millisecond {
				t.Errorf("the session was reset after %v, before the heartbeat timeout and a half", took)
			}
			if dropped != 2 {
				t.Errorf("the agent got the RunStep %d times, want 2 (sent again once)", dropped)
			}
			r := wait(t, step, "RunStep")
			if !errors.Is(r.err, ErrUnacknowledged) || !strings.Contains(r.err.Error(), "session reset") {
				t.Fatalf("RunStep = %+v, %v; want the session reset as the reason", r.res, r.err)
			}
			if h.s.Live() {
				t.Error("the session lives on after the reset")
			}
		})
	}
}
