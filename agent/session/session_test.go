package session

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/sdk/launcher"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// master plays the master's side of the protocol over an in-memory pipe.
type master struct {
	t    *testing.T
	conn *launcher.StreamConn
	seq  uint64
	in   chan *wire.Frame
	// skipHellos skips repeated Hellos while waiting for other frames.
	skipHellos bool
	// key signs the frames of session keyID, as the master does.
	key   []byte
	keyID uint64
}

// start runs an agent against a test master; it returns the master and a
// channel with Serve's result.
func start(t *testing.T, cfg Config) (*master, *Agent, <-chan error) {
	t.Helper()
	toAgentR, toAgentW := io.Pipe()
	toMasterR, toMasterW := io.Pipe()
	agentConn := launcher.NewStreamConn(toAgentR, toMasterW, func() error {
		toAgentR.Close()
		return toMasterW.Close()
	}, "test")
	m := &master{t: t, conn: launcher.NewStreamConn(toMasterR, toAgentW, func() error {
		toMasterR.Close()
		return toAgentW.Close()
	}, "test"), in: make(chan *wire.Frame, 256)}
	go func() {
		defer close(m.in)
		for {
			raw, err := m.conn.Recv()
			if err != nil {
				return
			}
			f, err := wire.Decode(raw, wire.MaxFrameSize)
			if err != nil {
				panic(err)
			}
			m.in <- f
		}
	}()
	if cfg.Workdir == "" {
		cfg.Workdir = t.TempDir()
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 5 * time.Second
	}
	a := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		done <- a.Serve(ctx, agentConn)
		close(finished)
	}()
	t.Cleanup(func() {
		cancel()
		m.conn.Close()
		select {
		case <-finished:
		case <-time.After(30 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return m, a, done
}

func (m *master) send(msg wire.Message, session uint64) {
	m.t.Helper()
	m.seq++
	m.sendSeq(msg, session, m.seq)
}

// sendSeq sends msg with the given Seq.
func (m *master) sendSeq(msg wire.Message, session, seq uint64) {
	m.t.Helper()
	f := wire.NewFrame(msg)
	f.Session, f.Seq = session, seq
	if m.key != nil && session == m.keyID {
		wire.Sign(m.key, f)
	}
	b, err := f.Encode()
	if err != nil {
		m.t.Fatal(err)
	}
	if err := m.conn.Send(b); err != nil {
		m.t.Fatal(err)
	}
}

// next returns the agent's next frame of type typ, skipping pings.
func (m *master) next(typ wire.Type) (*wire.Frame, wire.Message) {
	m.t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case f, ok := <-m.in:
			if !ok {
				m.t.Fatalf("connection ended waiting for %v", typ)
			}
			if f.Type == wire.TypePing && typ != wire.TypePing || m.skipHellos && f.Type == wire.TypeHello && typ != wire.TypeHello {
				continue
			}
			msg, err := f.Message()
			if err != nil {
				m.t.Fatal(err)
			}
			if f.Type != typ {
				m.t.Fatalf("got %T, want type %v", msg, typ)
			}
			return f, msg
		case <-timeout:
			m.t.Fatalf("no %v from the agent", typ)
		}
	}
}

// handshake authenticates the agent with secret and returns the session.
func (m *master) handshake(secret []byte) uint64 {
	m.t.Helper()
	_, msg := m.next(wire.TypeHello)
	return m.accept(secret, msg.(*wire.Hello), 0x1234)
}

// accept answers hello, completing the handshake for session id.
func (m *master) accept(secret []byte, hello *wire.Hello, id uint64) uint64 {
	m.t.Helper()
	nonceM := make([]byte, wire.NonceSize)
	_, _ = rand.Read(nonceM)
	m.send(&wire.Challenge{Nonce: nonceM, Proof: wire.MasterProof(secret, hello.Nonce, nonceM)}, id)
	f, msg := m.next(wire.TypeAuth)
	if f.Session != id || !wire.ProofEqual(msg.(*wire.Auth).Proof, wire.AgentProof(secret, nonceM, hello.Nonce)) {
		m.t.Fatalf("bad auth on session %x", f.Session)
	}
	m.key, m.keyID = wire.SessionKey(secret, hello.Nonce, nonceM, id), id
	m.send(&wire.AuthResult{OK: true, Session: id}, id)
	return id
}

// runStep sends a step and collects its output until its Exit.
func (m *master) runStep(id uint64, step *wire.RunStep) (string, *wire.Exit) {
	m.t.Helper()
	m.send(step, id)
	var out bytes.Buffer
	for {
		f := <-m.in
		if f == nil {
			m.t.Fatal("connection ended during a step")
		}
		msg, _ := f.Message()
		switch msg := msg.(type) {
		case *wire.Output:
			out.Write(msg.Data)
		case *wire.Exit:
			return out.String(), msg
		}
	}
}

var secret = []byte("0123456789abcdef0123456789abcdef")

func TestHandshakeAndSteps(t *testing.T) {
	for _, sec := range [][]byte{secret, nil} {
		m, a, _ := start(t, Config{Node: "n1", Secret: sec})
		id := m.handshake(sec)

		out, exit := m.runStep(id, &wire.RunStep{BuildID: "job#1", Command: "echo hi; exit 4", Workdir: "job/1"})
		if out != "hi\n" || exit.Code != 4 {
			t.Fatalf("output %q exit %+v", out, exit)
		}
		// A step of another session is dropped, never run.
		before := a.Counters().Stale
		m.send(&wire.RunStep{BuildID: "evil#1", Command: "echo pwned", Workdir: "evil"}, id+1)
		m.send(&wire.Ping{Nonce: 7}, id)
		_, pong := m.next(wire.TypePong)
		if pong.(*wire.Pong).Nonce != 7 {
			t.Fatalf("pong %+v", pong)
		}
		if a.Counters().Stale != before+1 {
			t.Fatalf("stale counter %d, want %d", a.Counters().Stale, before+1)
		}
		// A workspace escaping the workdir is refused.
		_, exit = m.runStep(id, &wire.RunStep{BuildID: "job#2", Command: "true", Workdir: "../x"})
		if exit.Code != -1 || !strings.Contains(exit.Error, "relative path inside") {
			t.Fatalf("escaping workspace: %+v", exit)
		}
	}
}

func TestCancel(t *testing.T) {
	m, _, _ := start(t, Config{Node: "n1", Secret: secret})
	id := m.handshake(secret)
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo started; sleep 600", Workdir: "b/1"}, id)
	_, msg := m.next(wire.TypeOutput)
	if string(msg.(*wire.Output).Data) != "started\n" {
		t.Fatalf("output %+v", msg)
	}
	m.send(&wire.Cancel{BuildID: "b#1", Reason: "by request"}, id)
	_, msg = m.next(wire.TypeExit)
	if e := msg.(*wire.Exit); e.Code != -1 || e.Error != "cancelled: by request" {
		t.Fatalf("exit %+v", e)
	}
}

// TestWrongSecret: the agent ignores a master that cannot prove the
// secret, answers its challenge with an empty proof so that the master can
// say why it refuses, and says hello again after a backoff.
func TestWrongSecret(t *testing.T) {
	m, a, _ := start(t, Config{Node: "n1", Secret: secret, RetryMin: 10 * time.Millisecond})
	_, msg := m.next(wire.TypeHello)
	hello := msg.(*wire.Hello)
	nonceM := make([]byte, wire.NonceSize)
	m.send(&wire.Challenge{Nonce: nonceM, Proof: wire.MasterProof([]byte("other"), hello.Nonce, nonceM)}, 9)
	f, msg := m.next(wire.TypeAuth)
	if f.Session != 9 || len(msg.(*wire.Auth).Proof) != 0 {
		t.Fatalf("auth %+v on %x: want an empty proof", msg, f.Session)
	}
	// A step sent before any session exists is never run.
	m.send(&wire.RunStep{BuildID: "x#1", Command: "touch pwned"}, 9)
	// An acceptance of the forged challenge does not make a session.
	m.send(&wire.AuthResult{OK: true, Session: 9}, 9)
	m.send(&wire.Ping{Nonce: 1}, 9)
	m.next(wire.TypePong)
	m.send(&wire.AuthResult{OK: false, Reason: "authentication failed: wrong secret"}, 9)
	_, msg = m.next(wire.TypeHello)
	if bytes.Equal(msg.(*wire.Hello).Nonce, hello.Nonce) {
		t.Fatal("the new hello reuses the nonce")
	}
	if a.Counters().Stale < 3 {
		t.Fatalf("counters %+v: the forged challenge, the step and the acceptance must count as stale", a.Counters())
	}
	if _, err := os.Stat(filepath.Join(a.cfg.Workdir, "pwned")); err == nil {
		t.Fatal("a step ran before the handshake")
	}
	// With the right secret, the session works.
	id := m.accept(secret, msg.(*wire.Hello), 0x77)
	if out, exit := m.runStep(id, &wire.RunStep{BuildID: "b#1", Command: "echo ok"}); out != "ok\n" || exit.Code != 0 {
		t.Fatalf("output %q exit %+v", out, exit)
	}
}

// TestHelloRepeated: an unanswered Hello is repeated, and a challenge
// answering one of the attempt's earlier Hellos is accepted.
func TestHelloRepeated(t *testing.T) {
	m, _, _ := start(t, Config{Node: "n1", Secret: secret, HelloInterval: 20 * time.Millisecond})
	m.skipHellos = true
	_, first := m.next(wire.TypeHello)
	_, second := m.next(wire.TypeHello)
	if bytes.Equal(first.(*wire.Hello).Nonce, second.(*wire.Hello).Nonce) {
		t.Fatal("repeated hello reuses the nonce")
	}
	id := m.accept(secret, first.(*wire.Hello), 0x55)
	if out, exit := m.runStep(id, &wire.RunStep{BuildID: "b#1", Command: "echo ok"}); out != "ok\n" || exit.Code != 0 {
		t.Fatalf("output %q exit %+v", out, exit)
	}
}

// TestMasterClosesSession: a Close from the master ends the session, the
// steps it ran are cancelled without being reported, and the agent says
// hello again at once.
func TestMasterClosesSession(t *testing.T) {
	m, a, _ := start(t, Config{Node: "n1", Secret: secret, Grace: 100 * time.Millisecond})
	id := m.handshake(secret)
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo started; sleep 600", Workdir: "b/1"}, id)
	m.next(wire.TypeOutput)
	m.send(&wire.Close{Reason: "unknown session: the master restarted; say hello again"}, id)
	f, msg := m.next(wire.TypeHello)
	if f.Session != 0 || f.Seq != 1 {
		t.Fatalf("new hello: session %x seq %d", f.Session, f.Seq)
	}
	if a.Running() != 0 {
		t.Fatal("the old session's step still runs")
	}
	id2 := m.accept(secret, msg.(*wire.Hello), 0x99)
	// The old session's frames are now stale.
	m.send(&wire.RunStep{BuildID: "old#1", Command: "touch pwned"}, id)
	if out, exit := m.runStep(id2, &wire.RunStep{BuildID: "b#2", Command: "ls"}); out != "b\n" || exit.Code != 0 {
		t.Fatalf("output %q exit %+v (want no trace of the stale step)", out, exit)
	}
}

// TestAuthResultTimeout: a genuine challenge whose AuthResult never comes
// leads to a new handshake after the heartbeat timeout.
func TestAuthResultTimeout(t *testing.T) {
	m, _, _ := start(t, Config{Node: "n1", Secret: secret, HelloInterval: 20 * time.Millisecond, HeartbeatTimeout: 200 * time.Millisecond, Heartbeat: 50 * time.Millisecond})
	m.skipHellos = true
	_, msg := m.next(wire.TypeHello)
	hello := msg.(*wire.Hello)
	nonceM := make([]byte, wire.NonceSize)
	m.send(&wire.Challenge{Nonce: nonceM, Proof: wire.MasterProof(secret, hello.Nonce, nonceM)}, 5)
	m.next(wire.TypeAuth)
	_, msg = m.next(wire.TypeHello)
	m.accept(secret, msg.(*wire.Hello), 6)
}

// TestDrain: the running step finishes, its exit is reported, then Close.
func TestDrain(t *testing.T) {
	work := t.TempDir()
	fifo := filepath.Join(work, "release")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	m, a, done := start(t, Config{Node: "n1", Secret: secret, Workdir: work})
	id := m.handshake(secret)
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo started; read x < " + fifo + "; echo done", Workdir: "b/1"}, id)
	m.next(wire.TypeOutput)
	a.Drain()
	m.send(&wire.RunStep{BuildID: "b#2", Command: "echo nope", Workdir: "b/2"}, id)
	_, msg := m.next(wire.TypeExit)
	if e := msg.(*wire.Exit); e.BuildID != "b#2" || e.Error != "agent draining" {
		t.Fatalf("new step while draining: %+v", e)
	}
	// Released, the first step finishes and is reported.
	if err := os.WriteFile(fifo, []byte("go\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, msg = m.next(wire.TypeOutput)
	if string(msg.(*wire.Output).Data) != "done\n" {
		t.Fatalf("output %+v", msg)
	}
	_, msg = m.next(wire.TypeExit)
	if e := msg.(*wire.Exit); e.BuildID != "b#1" || e.Code != 0 {
		t.Fatalf("exit %+v", e)
	}
	_, msg = m.next(wire.TypeClose)
	if msg.(*wire.Close).Reason != "agent shutting down" {
		t.Fatalf("close %+v", msg)
	}
	if err := <-done; !errors.Is(err, ErrDrained) {
		t.Fatalf("Serve: %v", err)
	}
}

// TestMasterLost: a silent master ends the session after the timeout, and
// the agent says hello again.
func TestMasterLost(t *testing.T) {
	m, _, _ := start(t, Config{Node: "n1", Secret: secret, Heartbeat: 20 * time.Millisecond, HeartbeatTimeout: 200 * time.Millisecond})
	id := m.handshake(secret)
	_, msg := m.next(wire.TypePing)
	m.send(&wire.Pong{Nonce: msg.(*wire.Ping).Nonce}, id)
	m.next(wire.TypeHello)
}

// TestEOF: the connection's end ends Serve with ErrDisconnected and
// cancels running steps.
func TestEOF(t *testing.T) {
	m, a, done := start(t, Config{Node: "n1", Secret: secret, Grace: 100 * time.Millisecond})
	id := m.handshake(secret)
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo started; sleep 600"}, id)
	m.next(wire.TypeOutput)
	m.conn.Close()
	if err := <-done; !errors.Is(err, ErrDisconnected) {
		t.Fatalf("Serve: %v", err)
	}
	if a.Running() != 0 {
		t.Fatal("a step still runs")
	}
}

// TestReplayedStepNotRun: a step or cancel whose Seq is not above the
// highest seen in the session is a replay and does not run; Close still
// ends the session whatever its Seq.
func TestReplayedStepNotRun(t *testing.T) {
	m, a, _ := start(t, Config{Node: "n1", Secret: secret, Heartbeat: 50 * time.Millisecond})
	id := m.handshake(secret)
	step := &wire.RunStep{BuildID: "m#1", Command: "echo ran >> marks"}
	m.send(step, id)
	replaySeq := m.seq
	m.next(wire.TypeExit)
	m.sendSeq(step, id, replaySeq)
	m.sendSeq(&wire.RunStep{BuildID: "m#2", Command: "echo ran >> marks"}, id, replaySeq-1)
	if out, _ := m.runStep(id, &wire.RunStep{BuildID: "c#1", Command: "cat marks"}); out != "ran\n" {
		t.Fatalf("marks %q: a replayed step ran", out)
	}
	if c := a.Counters(); c.Replayed != 2 {
		t.Fatalf("counters %+v, want 2 replayed", c)
	}
	// A restarted master cannot sign its Close for a session it does not
	// know: the agent checks with a ping, gets no signed answer, and says
	// hello again.
	m.key = nil
	m.sendSeq(&wire.Close{Reason: "unknown session"}, id, 1)
	m.next(wire.TypeHello)
	if c := a.Counters(); c.Forged != 0 {
		t.Fatalf("counters %+v: the unsigned close is a hint, not a forgery", c)
	}
}

// TestForgedFramesNotRun: frames of the live session without a valid MAC
// (none, another key, altered) are dropped, counted and never run.
func TestForgedFramesNotRun(t *testing.T) {
	m, a, _ := start(t, Config{Node: "n1", Secret: secret})
	id := m.handshake(secret)
	key := m.key
	m.key = nil
	m.send(&wire.RunStep{BuildID: "f#1", Command: "echo ran >> marks"}, id)
	m.key = wire.SessionKey([]byte("other"), nil, nil, id)
	m.send(&wire.RunStep{BuildID: "f#2", Command: "echo ran >> marks"}, id)
	m.key = key
	m.seq++
	f := wire.NewFrame(&wire.RunStep{BuildID: "f#3", Command: "true"})
	f.Session, f.Seq = id, m.seq
	wire.Sign(key, f)
	f.Payload = wire.NewFrame(&wire.RunStep{BuildID: "f#3", Command: "echo ran >> marks"}).Payload
	b, err := f.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.conn.Send(b); err != nil {
		t.Fatal(err)
	}
	if out, _ := m.runStep(id, &wire.RunStep{BuildID: "c#1", Command: "cat marks 2>/dev/null; true"}); out != "" {
		t.Fatalf("marks %q: a forged step ran", out)
	}
	if c := a.Counters(); c.Forged != 3 {
		t.Fatalf("counters %+v, want 3 forged", c)
	}
}
