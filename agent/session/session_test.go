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
	a := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		done <- a.Serve(ctx, agentConn, 5*time.Second)
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
	f := wire.NewFrame(msg)
	f.Session, f.Seq = session, m.seq
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
			if f.Type == wire.TypePing && typ != wire.TypePing {
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
	hello := msg.(*wire.Hello)
	nonceM := make([]byte, wire.NonceSize)
	_, _ = rand.Read(nonceM)
	const id = 0x1234
	m.send(&wire.Challenge{Nonce: nonceM, Proof: wire.MasterProof(secret, hello.Nonce, nonceM)}, id)
	f, msg := m.next(wire.TypeAuth)
	if f.Session != id || !wire.ProofEqual(msg.(*wire.Auth).Proof, wire.AgentProof(secret, nonceM, hello.Nonce)) {
		m.t.Fatalf("bad auth on session %x", f.Session)
	}
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
		if exit.Code != -1 || !strings.Contains(exit.Error, "not a relative path") {
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
// say why it refuses, and stops on the refusal.
func TestWrongSecret(t *testing.T) {
	m, a, done := start(t, Config{Node: "n1", Secret: secret})
	_, msg := m.next(wire.TypeHello)
	hello := msg.(*wire.Hello)
	nonceM := make([]byte, wire.NonceSize)
	m.send(&wire.Challenge{Nonce: nonceM, Proof: wire.MasterProof([]byte("other"), hello.Nonce, nonceM)}, 9)
	f, msg := m.next(wire.TypeAuth)
	if f.Session != 9 || len(msg.(*wire.Auth).Proof) != 0 {
		t.Fatalf("auth %+v on %x: want an empty proof", msg, f.Session)
	}
	// A step sent before any session exists is never run.
	m.send(&wire.RunStep{BuildID: "x#1", Command: "echo pwned"}, 9)
	m.send(&wire.AuthResult{OK: false, Reason: "authentication failed: wrong secret"}, 9)
	select {
	case err := <-done:
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "wrong secret") {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not end on the refusal")
	}
	if a.Counters().Stale < 2 {
		t.Fatalf("counters %+v: the forged challenge and the step must count as stale", a.Counters())
	}
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

// TestMasterLost: a silent master ends the session after the timeout.
func TestMasterLost(t *testing.T) {
	m, _, done := start(t, Config{Node: "n1", Secret: secret, Heartbeat: 20 * time.Millisecond, HeartbeatTimeout: 200 * time.Millisecond})
	m.handshake(secret)
	select {
	case err := <-done:
		if !errors.Is(err, ErrMasterLost) {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a silent master was not noticed")
	}
}
