package session

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/sdk/reliable"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// guard bounds every wait of the tests. It is generous, for a busy
// machine: a test only hits it when something hangs.
const guard = 30 * time.Second

// queue is one direction of an in-memory connection. Frames queue without
// bound, as on a topic: a sender never waits for a slow reader.
type queue struct {
	mu     sync.Mutex
	frames [][]byte
	closed bool
	wake   chan struct{}
}

func newQueue() *queue { return &queue{wake: make(chan struct{}, 1)} }

func (q *queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *queue) put(b []byte) error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return io.ErrClosedPipe
	}
	q.frames = append(q.frames, append([]byte(nil), b...))
	q.mu.Unlock()
	q.signal()
	return nil
}

// get returns the next frame; once the queue is closed it returns io.EOF
// and the frames still queued are lost, as on a broken link.
func (q *queue) get() ([]byte, error) {
	for {
		q.mu.Lock()
		switch {
		case q.closed:
			q.mu.Unlock()
			return nil, io.EOF
		case len(q.frames) > 0:
			b := q.frames[0]
			q.frames = q.frames[1:]
			q.mu.Unlock()
			return b, nil
		}
		q.mu.Unlock()
		<-q.wake
	}
}

func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.signal()
}

// memConn is one end of an in-memory connection carrying whole frames (a
// message transport, as Kafka): a malformed frame does not break it.
// Closing either end breaks both directions at once, losing the frames in
// flight. It records what its end sent, for replay attacks.
type memConn struct {
	in, out *queue

	mu   sync.Mutex
	sent [][]byte
}

func newPipe() (agentEnd, masterEnd *memConn) {
	toAgent, toMaster := newQueue(), newQueue()
	return &memConn{in: toAgent, out: toMaster}, &memConn{in: toMaster, out: toAgent}
}

func (c *memConn) Send(b []byte) error {
	c.mu.Lock()
	c.sent = append(c.sent, append([]byte(nil), b...))
	c.mu.Unlock()
	return c.out.put(b)
}

func (c *memConn) Recv() ([]byte, error) { return c.in.get() }

func (c *memConn) Close() error {
	c.in.close()
	c.out.close()
	return nil
}

// sentOf returns the frames of type typ this end sent, encoded.
func (c *memConn) sentOf(typ wire.Type) [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out [][]byte
	for _, b := range c.sent {
		if f, err := wire.Decode(b, wire.MaxFrameSize); err == nil && f.Type == typ {
			out = append(out, b)
		}
	}
	return out
}

// master plays the master's side of the protocol, with a reliable.Endpoint
// as the real master does, over in-memory connections it hands to the
// agent's Serve, one after the other. Its methods run on the test's
// goroutine.
type master struct {
	t      *testing.T
	a      *Agent
	secret []byte
	ctx    context.Context

	conn *memConn           // the current connection
	in   <-chan *wire.Frame // what the agent sent on it

	ep  *reliable.Endpoint // the session; nil before the first handshake
	id  uint64
	key []byte // the current epoch's key of the master's frames

	// backlog holds the agent's delivered frames not yet taken.
	backlog []*wire.Frame
	pings   int // pings of the agent delivered

	// holdAcks: numbered frames are not marked handled, so the agent's
	// outbox is not released. ackEach: each numbered frame handled is
	// acknowledged at once with an Ack frame. noPong: pings go unanswered.
	holdAcks, ackEach, noPong bool

	// beforeResult, when set, runs in accept once the agent's proof
	// checked, before the accepting AuthResult goes (to inject frames).
	beforeResult func(id uint64, h *wire.Hello, nonceM []byte)

	serves sync.WaitGroup

	wrap func(Conn) Conn // wraps the agent's end of each connection; nil: none

	features string // the Reason of its accepting AuthResults (" features=...")
}

// start runs an agent against a test master on a first connection; it
// returns the master, the agent and Serve's result.
func start(t *testing.T, cfg Config, wrap ...func(Conn) Conn) (*master, *Agent, <-chan error) {
	t.Helper()
	if cfg.Workdir == "" {
		cfg.Workdir = t.TempDir()
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 5 * time.Second
	}
	if cfg.Grace == 0 {
		cfg.Grace = 100 * time.Millisecond
	}
	a := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	m := &master{t: t, a: a, secret: cfg.Secret, ctx: ctx}
	if len(wrap) > 0 {
		m.wrap = wrap[0]
	}
	t.Cleanup(func() {
		cancel()
		if m.conn != nil {
			m.conn.Close()
		}
		served := make(chan struct{})
		go func() { m.serves.Wait(); close(served) }()
		select {
		case <-served:
		case <-time.After(guard):
			t.Error("Serve did not return")
			return
		}
		// A held session's steps outlive Serve: end them before the
		// workdir goes.
		ended := make(chan struct{})
		go func() {
			defer close(ended)
			a.mu.Lock()
			cur := a.cur
			a.mu.Unlock()
			if cur != nil {
				a.endSession(cur, errors.New("test over"))
			}
			a.cancelAll(errors.New("test over"))
			for a.Running() > 0 { // steps of sessions that ended already
				time.Sleep(10 * time.Millisecond)
			}
		}()
		select {
		case <-ended:
		case <-time.After(guard):
			t.Error("the agent's steps did not end")
		}
	})
	return m, a, m.connect()
}

// connect hands a new connection to the agent's Serve; it returns Serve's
// result.
func (m *master) connect() <-chan error {
	agentEnd, masterEnd := newPipe()
	in := make(chan *wire.Frame, 1<<14)
	m.conn, m.in = masterEnd, in
	t := m.t
	go func() {
		defer close(in)
		for {
			raw, err := masterEnd.Recv()
			if err != nil {
				return
			}
			f, err := wire.Decode(raw, wire.MaxFrameSize)
			if err != nil {
				t.Errorf("the agent sent an undecodable frame: %v", err)
				return
			}
			in <- f
		}
	}()
	done := make(chan error, 1)
	var conn Conn = agentEnd
	if m.wrap != nil {
		conn = m.wrap(conn)
	}
	m.serves.Add(1)
	go func() {
		defer m.serves.Done()
		done <- m.a.Serve(m.ctx, conn)
	}()
	return done
}

// cut breaks the current connection, as a failing link does.
func (m *master) cut() {
	m.conn.Close()
	if m.ep != nil {
		m.ep.Detach()
	}
}

// frame returns the agent's next frame on the current connection.
func (m *master) frame() *wire.Frame {
	m.t.Helper()
	select {
	case f, ok := <-m.in:
		if !ok {
			m.t.Fatal("the connection ended")
		}
		return f
	case <-time.After(guard):
		m.t.Fatal("nothing from the agent")
	}
	return nil
}

// handshakeFrame returns the agent's next frame that is not a Hello (the
// agent repeats an unanswered one).
func (m *master) handshakeFrame() *wire.Frame {
	m.t.Helper()
	for {
		if f := m.frame(); f.Type != wire.TypeHello {
			return f
		}
	}
}

// hello waits for the agent's next Hello, dropping everything before it
// unread (a silent master).
func (m *master) hello() (*wire.Frame, *wire.Hello) {
	m.t.Helper()
	for {
		f := m.frame()
		if f.Type != wire.TypeHello {
			continue
		}
		msg, err := f.Message()
		if err != nil {
			m.t.Fatal(err)
		}
		h := msg.(*wire.Hello)
		if len(f.MAC) != 0 || f.Seq != 0 || len(h.Nonce) != wire.NonceSize {
			m.t.Fatalf("hello %+v: seq %d, %d bytes of MAC", h, f.Seq, len(f.MAC))
		}
		return f, h
	}
}

// handshake waits for a fresh Hello and starts session id.
func (m *master) handshake(id uint64) uint64 {
	m.t.Helper()
	hf, h := m.hello()
	if hf.Session != 0 || h.Resume || h.LastSeq != 0 || h.Node != m.a.cfg.Node {
		m.t.Fatalf("fresh hello %+v on session %x", h, hf.Session)
	}
	m.accept(hf, h, id)
	return id
}

// resume waits for a Hello resuming the current session, checks that the
// agent handled lastSeq of the master's numbered frames, and resumes.
func (m *master) resume(lastSeq uint64) {
	m.t.Helper()
	hf, h := m.hello()
	if hf.Session != m.id || !h.Resume || h.LastSeq != lastSeq {
		m.t.Fatalf("hello %+v on session %x: want a resume of %x after %d", h, hf.Session, m.id, lastSeq)
	}
	m.accept(hf, h, m.id)
}

// accept answers a Hello with a challenge for session id, checks the
// agent's proof and accepts it. Session id is resumed when it is the
// master's current one (the master then sends again what the agent did not
// handle), otherwise a new session starts.
func (m *master) accept(hf *wire.Frame, h *wire.Hello, id uint64) {
	m.t.Helper()
	resume := m.ep != nil && id == m.id
	if resume && (!h.Resume || hf.Session != id) {
		m.t.Fatalf("resume of %x answering hello %+v on session %x", id, h, hf.Session)
	}
	ep := m.ep
	if !resume {
		ep = reliable.NewEndpoint(1 << 20)
	}
	ep.Begin(m.conn)
	nonceM := make([]byte, wire.NonceSize)
	_, _ = rand.Read(nonceM)
	if err := ep.SendControl(&wire.Challenge{Nonce: nonceM, Proof: wire.MasterProof(m.secret, h.Nonce, nonceM)}, id); err != nil {
		m.t.Fatal(err)
	}
	var af *wire.Frame
	for af == nil {
		f := m.frame()
		switch {
		case f.Type == wire.TypeHello: // a repeated hello: the agent accepts a challenge for any recent one
		case f.Type == wire.TypeAuth && f.Session == id:
			af = f
		default:
			m.t.Fatalf("got %v on session %x waiting for the agent's proof", f.Type, f.Session)
		}
	}
	msg, err := af.Message()
	if err != nil {
		m.t.Fatal(err)
	}
	if !wire.ProofEqual(msg.(*wire.Auth).Proof, wire.AgentProof(m.secret, nonceM, h.Nonce)) {
		m.t.Fatalf("bad proof on session %x", id)
	}
	if af.Seq != 1 || len(af.MAC) != 0 {
		m.t.Fatalf("auth: seq %d, %d bytes of MAC; want seq 1, unsigned", af.Seq, len(af.MAC))
	}
	if m.beforeResult != nil {
		m.beforeResult(id, h, nonceM)
	}
	keys := wire.KeysFor(wire.SessionKey(m.secret, h.Nonce, nonceM, id), wire.RoleMaster)
	ep.Established(id, keys, af.Seq)
	if !resume {
		m.backlog, m.pings = nil, 0
	}
	m.ep, m.id, m.key = ep, id, keys.Send
	if err := ep.SendControl(&wire.AuthResult{OK: true, Session: id, Reason: m.features}, id); err != nil {
		m.t.Fatal(err)
	}
	if resume {
		if err := ep.Resend(h.LastSeq); err != nil {
			m.t.Fatal(err)
		}
	}
}

// send sends m in the session: numbered (kept until acknowledged, sent
// again after a resume) or not.
func (m *master) send(msg wire.Message) {
	m.t.Helper()
	if reliable.Sequenced(msg.Type()) {
		ctx, cancel := context.WithTimeout(context.Background(), guard)
		defer cancel()
		if err := m.ep.Send(ctx, msg); err != nil {
			m.t.Fatal(err)
		}
		return
	}
	if err := m.ep.SendControl(msg, m.id); err != nil {
		m.t.Fatal(err)
	}
}

// nextSeq is the number the master's next numbered frame gets.
func (m *master) nextSeq() uint64 { return m.ep.Pending().Last + 1 }

// craft builds a frame by hand, signed with key unless nil.
func craft(msg wire.Message, session, seq uint64, key []byte) *wire.Frame {
	f := wire.NewFrame(msg)
	f.Session, f.Seq = session, seq
	if key != nil {
		wire.Sign(key, f)
	}
	return f
}

// raw sends a hand-made frame.
func (m *master) raw(f *wire.Frame) {
	m.t.Helper()
	b, err := f.Encode()
	if err != nil {
		m.t.Fatal(err)
	}
	m.rawBytes(b)
}

func (m *master) rawBytes(b []byte) {
	m.t.Helper()
	if err := m.conn.Send(b); err != nil {
		m.t.Fatal(err)
	}
}

// process handles one frame of the agent in the established session, as
// the master does: a frame the agent sends must be authentic and fresh;
// duplicates and early frames (after a resume) are dropped.
func (m *master) process(f *wire.Frame) {
	m.t.Helper()
	if f.Type == wire.TypeHello {
		m.t.Fatalf("unexpected hello on session %x", f.Session)
	}
	if f.Session != m.id {
		m.t.Fatalf("%v of session %x in session %x", f.Type, f.Session, m.id)
	}
	switch v := m.ep.Receive(f); v {
	case reliable.Deliver:
	case reliable.Duplicate, reliable.Gap:
		return
	default:
		m.t.Fatalf("%v frame of the agent, seq %d: %v", f.Type, f.Seq, v)
	}
	msg, err := f.Message()
	if err != nil {
		m.t.Fatal(err)
	}
	switch msg := msg.(type) {
	case *wire.Ack:
		return
	case *wire.Ping:
		m.pings++
		if !m.noPong {
			if err := m.ep.SendControl(&wire.Pong{Nonce: msg.Nonce, UnixNano: msg.UnixNano}, m.id); err != nil {
				m.t.Fatal(err)
			}
		}
	}
	if reliable.Sequenced(f.Type) && !m.holdAcks {
		if err := m.ep.Handled(); err != nil {
			m.t.Fatal(err)
		}
		if m.ackEach {
			if err := m.ep.FlushAck(); err != nil {
				m.t.Fatal(err)
			}
		}
	}
	m.backlog = append(m.backlog, f)
}

// recv returns the agent's next delivered frame (Ack frames aside).
func (m *master) recv() *wire.Frame {
	m.t.Helper()
	for len(m.backlog) == 0 {
		m.process(m.frame())
	}
	f := m.backlog[0]
	m.backlog = m.backlog[1:]
	return f
}

// next returns the agent's next delivered frame, of type typ, skipping
// pings and pongs.
func (m *master) next(typ wire.Type) (*wire.Frame, wire.Message) {
	m.t.Helper()
	for {
		f := m.recv()
		if f.Type != typ && (f.Type == wire.TypePing || f.Type == wire.TypePong) {
			continue
		}
		msg, err := f.Message()
		if err != nil {
			m.t.Fatal(err)
		}
		if f.Type != typ {
			m.t.Fatalf("got %T %+v, want type %v", msg, msg, typ)
		}
		return f, msg
	}
}

// until serves the session (answering pings, handling frames into the
// backlog) until cond holds.
func (m *master) until(what string, cond func() bool) {
	m.t.Helper()
	deadline := time.Now().Add(guard)
	for !cond() {
		if time.Now().After(deadline) {
			m.t.Fatalf("timed out waiting for %s", what)
		}
		select {
		case f, ok := <-m.in:
			if !ok {
				m.t.Fatalf("the connection ended waiting for %s", what)
			}
			m.process(f)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// collect receives the output of the named builds until the Exit of each;
// a frame of another build fails the test.
func (m *master) collect(builds ...string) (map[string]string, map[string]*wire.Exit) {
	m.t.Helper()
	outs, exits := map[string]*strings.Builder{}, map[string]*wire.Exit{}
	for _, b := range builds {
		outs[b] = &strings.Builder{}
	}
	for len(exits) < len(builds) {
		f := m.recv()
		msg, err := f.Message()
		if err != nil {
			m.t.Fatal(err)
		}
		switch msg := msg.(type) {
		case *wire.Ping, *wire.Pong:
		case *wire.Output:
			if outs[msg.BuildID] == nil || exits[msg.BuildID] != nil {
				m.t.Fatalf("unexpected output %q of build %s", msg.Data, msg.BuildID)
			}
			outs[msg.BuildID].Write(msg.Data)
		case *wire.Exit:
			if outs[msg.BuildID] == nil || exits[msg.BuildID] != nil {
				m.t.Fatalf("unexpected exit %+v", msg)
			}
			exits[msg.BuildID] = msg
		default:
			m.t.Fatalf("got %T %+v collecting the output of %v", msg, msg, builds)
		}
	}
	res := map[string]string{}
	for b, o := range outs {
		res[b] = o.String()
	}
	return res, exits
}

// runStep sends a step and collects its output until its Exit.
func (m *master) runStep(step *wire.RunStep) (string, *wire.Exit) {
	m.t.Helper()
	m.send(step)
	outs, exits := m.collect(step.BuildID)
	return outs[step.BuildID], exits[step.BuildID]
}

// pending reports what the agent's current session keeps in its outbox.
func pending(a *Agent) reliable.Pending {
	a.mu.Lock()
	cur := a.cur
	a.mu.Unlock()
	if cur == nil {
		return reliable.Pending{}
	}
	return cur.ep.Pending()
}

// current is the agent's current session id, 0 when none.
func current(a *Agent) uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cur == nil {
		return 0
	}
	return a.cur.id
}

// waitFor polls cond, without serving the session, until it holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(guard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// served waits for Serve's result.
func served(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(guard):
		t.Fatal("Serve did not return")
	}
	return nil
}

// linesCmd prints lines from..to (see lines), one per loop iteration.
func linesCmd(from, to int) string {
	return fmt.Sprintf(`i=%d; while [ $i -le %d ]; do printf 'line %%05d %%s\n' $i %s; i=$((i+1)); done`, from, to, pad)
}

var pad = strings.Repeat("x", 100)

// lines is the output of linesCmd(from, to).
func lines(from, to int) string {
	var b strings.Builder
	for i := from; i <= to; i++ {
		fmt.Fprintf(&b, "line %05d %s\n", i, pad)
	}
	return b.String()
}
