package session

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/sdk/reliable"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

var secret = []byte("0123456789abcdef0123456789abcdef")

// fifo makes a named pipe in dir: a step reading it waits until the test
// writes it.
func fifo(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "gate")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// release lets a step waiting on fifo p go on.
func release(t *testing.T, p string) {
	t.Helper()
	if err := os.WriteFile(p, []byte("go\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func exists(dir, name string) bool {
	_, err := os.Stat(filepath.Join(dir, name))
	return err == nil
}

func TestHandshakeAndSteps(t *testing.T) {
	for _, sec := range [][]byte{secret, nil} {
		m, a, _ := start(t, Config{Node: "n1", Secret: sec})
		id := m.handshake(0x1234)

		out, exit := m.runStep(&wire.RunStep{BuildID: "job#1", Command: "echo hi; echo err >&2; exit 4", Workdir: "job/1"})
		if out != "hi\nerr\n" && out != "err\nhi\n" || exit.Code != 4 {
			t.Fatalf("output %q exit %+v", out, exit)
		}
		// A step of a session this agent never had (another node's,
		// copied into its topic) is dropped as forged, never run.
		before := a.Counters().Forged
		m.raw(craft(&wire.RunStep{BuildID: "evil#1", Command: "echo pwned > pwned"}, id+1, m.nextSeq(), m.key))
		m.send(&wire.Ping{Nonce: 7})
		_, pong := m.next(wire.TypePong)
		if pong.(*wire.Pong).Nonce != 7 {
			t.Fatalf("pong %+v", pong)
		}
		if a.Counters().Forged != before+1 {
			t.Fatalf("forged counter %d, want %d", a.Counters().Forged, before+1)
		}
		// A workspace escaping the workdir is refused.
		_, exit = m.runStep(&wire.RunStep{BuildID: "job#2", Command: "true", Workdir: "../x"})
		if exit.Code != -1 || !strings.Contains(exit.Error, "relative path inside") {
			t.Fatalf("escaping workspace: %+v", exit)
		}
		if exists(a.cfg.Workdir, "pwned") {
			t.Fatal("a step of another session ran")
		}
		// On a healthy connection nothing is sent twice or lost.
		if d, g := m.ep.Dropped(); d != 0 || g != 0 {
			t.Fatalf("the master dropped %d duplicates and %d early frames", d, g)
		}
		if c := a.Counters(); c.Duplicate != 0 || c.Forged != 1 || c.Replayed != 0 || c.Malformed != 0 || c.Stale != 0 {
			t.Fatalf("counters %+v", c)
		}
	}
}

// TestNumbering: the agent's numbered frames count 1, 2, 3… and every
// frame carries the number of the master's frames it handled.
func TestNumbering(t *testing.T) {
	m, _, _ := start(t, Config{Node: "n1", Secret: secret})
	m.handshake(0x1234)
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo one; echo two"})
	m.send(&wire.RunStep{BuildID: "b#2", Command: "true"})
	var seqs []uint64
	exits := 0
	var ack uint64
	for exits < 2 {
		f := m.recv()
		if f.Ack < ack || f.Ack > 2 {
			t.Fatalf("%v carries ack %d after %d: the master sent 2 numbered frames", f.Type, f.Ack, ack)
		}
		ack = f.Ack
		if !reliable.Sequenced(f.Type) {
			continue
		}
		seqs = append(seqs, f.Seq)
		if f.Type == wire.TypeExit {
			exits++
		}
	}
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("numbers %v, want 1, 2, 3…", seqs)
		}
	}
	// The pong to a ping sent after the steps acknowledges both.
	m.send(&wire.Ping{Nonce: 1})
	if f, _ := m.next(wire.TypePong); f.Ack != 2 {
		t.Fatalf("pong acks %d, want 2", f.Ack)
	}
}

func TestCancel(t *testing.T) {
	m, _, _ := start(t, Config{Node: "n1", Secret: secret})
	m.handshake(0x1234)
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo started; sleep 600", Workdir: "b/1"})
	_, msg := m.next(wire.TypeOutput)
	if string(msg.(*wire.Output).Data) != "started\n" {
		t.Fatalf("output %+v", msg)
	}
	m.send(&wire.Cancel{BuildID: "b#1", Reason: "by request"})
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
	hf, hello := m.hello()
	if hf.Session != 0 || hello.Resume {
		t.Fatalf("hello %+v on session %x", hello, hf.Session)
	}
	nonceM := make([]byte, wire.NonceSize)
	m.raw(craft(&wire.Challenge{Nonce: nonceM, Proof: wire.MasterProof([]byte("other"), hello.Nonce, nonceM)}, 9, 1, nil))
	f := m.handshakeFrame()
	msg, err := f.Message()
	if err != nil || f.Type != wire.TypeAuth || f.Session != 9 || len(msg.(*wire.Auth).Proof) != 0 {
		t.Fatalf("%v %+v on %x: want an empty proof", f.Type, msg, f.Session)
	}
	// A step sent before any session exists is never run.
	m.raw(craft(&wire.RunStep{BuildID: "x#1", Command: "touch pwned"}, 9, 1, nil))
	// An acceptance of the forged challenge does not make a session.
	m.raw(craft(&wire.AuthResult{OK: true, Session: 9}, 9, 2, nil))
	m.raw(craft(&wire.Ping{Nonce: 1}, 9, 3, nil))
	if f := m.handshakeFrame(); f.Type != wire.TypePong || f.Session != 9 {
		t.Fatalf("got %v on %x, want a pong", f.Type, f.Session)
	}
	m.raw(craft(&wire.AuthResult{OK: false, Reason: "authentication failed: wrong secret"}, 9, 4, nil))
	hf, hello2 := m.hello()
	if bytes.Equal(hello2.Nonce, hello.Nonce) {
		t.Fatal("the new hello reuses the nonce")
	}
	if hf.Session != 0 || hello2.Resume {
		t.Fatalf("hello %+v on session %x", hello2, hf.Session)
	}
	if a.Counters().Stale < 3 {
		t.Fatalf("counters %+v: the forged challenge, the step and the acceptance must count as stale", a.Counters())
	}
	if exists(a.cfg.Workdir, "pwned") {
		t.Fatal("a step ran before the handshake")
	}
	// With the right secret, the session works.
	m.accept(hf, hello2, 0x77)
	if out, exit := m.runStep(&wire.RunStep{BuildID: "b#1", Command: "echo ok"}); out != "ok\n" || exit.Code != 0 {
		t.Fatalf("output %q exit %+v", out, exit)
	}
}

// TestHandshakeAttacks: before the session is established, challenges and
// acceptances that do not come from the master holding the secret, or do
// not carry the session key's MAC, make no session.
func TestHandshakeAttacks(t *testing.T) {
	m, a, _ := start(t, Config{Node: "n1", Secret: secret})
	_, hello := m.hello()
	nonceM := make([]byte, wire.NonceSize)
	_, _ = rand.Read(nonceM)
	proof := wire.MasterProof(secret, hello.Nonce, nonceM)
	// A challenge without a session is dropped.
	m.raw(craft(&wire.Challenge{Nonce: nonceM, Proof: proof}, 0, 1, nil))
	// The genuine challenge.
	m.raw(craft(&wire.Challenge{Nonce: nonceM, Proof: proof}, 0x42, 1, nil))
	f := m.handshakeFrame()
	msg, _ := f.Message()
	if f.Type != wire.TypeAuth || f.Session != 0x42 || !wire.ProofEqual(msg.(*wire.Auth).Proof, wire.AgentProof(secret, nonceM, hello.Nonce)) {
		t.Fatalf("%v %+v on %x: want the agent's proof", f.Type, msg, f.Session)
	}
	sessionKey := wire.SessionKey(secret, hello.Nonce, nonceM, 0x42)
	key := wire.FrameKey(sessionKey, wire.RoleMaster)
	// The same challenge again is not answered again.
	m.raw(craft(&wire.Challenge{Nonce: nonceM, Proof: proof}, 0x42, 2, nil))
	// An acceptance without the session key's MAC, or with another key's.
	m.raw(craft(&wire.AuthResult{OK: true, Session: 0x42}, 0x42, 2, nil))
	m.raw(craft(&wire.AuthResult{OK: true, Session: 0x42}, 0x42, 2, wire.FrameKey(wire.SessionKey([]byte("other"), hello.Nonce, nonceM, 0x42), wire.RoleMaster)))
	// A step before the acceptance.
	m.raw(craft(&wire.RunStep{BuildID: "x#1", Command: "touch pwned"}, 0x42, 1, key))
	// The genuine acceptance establishes the session: the master's frames
	// count on from its counter.
	m.raw(craft(&wire.AuthResult{OK: true, Session: 0x42}, 0x42, 2, key))
	m.raw(craft(&wire.Ping{Nonce: 5}, 0x42, 3, key))
	if f := m.handshakeFrame(); f.Type != wire.TypePong || f.Session != 0x42 || !wire.Verify(wire.FrameKey(sessionKey, wire.RoleAgent), f) {
		t.Fatalf("got %v on %x, want a signed pong", f.Type, f.Session)
	}
	if c := a.Counters(); c.Stale != 3 || c.Forged != 2 {
		t.Fatalf("counters %+v, want 3 stale (challenge of no session, challenge again, early step) and 2 forged", c)
	}
	m.raw(craft(&wire.RunStep{BuildID: "c#1", Command: "ls"}, 0x42, 1, key))
	for {
		f := m.handshakeFrame()
		if f.Type == wire.TypeExit {
			break
		}
		if f.Type == wire.TypeOutput {
			msg, _ := f.Message()
			if o := msg.(*wire.Output); len(o.Data) != 0 {
				t.Fatalf("output %q: the early step ran", o.Data)
			}
		}
	}
}

// TestHelloRepeated: an unanswered Hello is repeated, and a challenge
// answering one of the attempt's earlier Hellos is accepted.
func TestHelloRepeated(t *testing.T) {
	m, _, _ := start(t, Config{Node: "n1", Secret: secret, HelloInterval: 100 * time.Millisecond})
	hf, first := m.hello()
	_, second := m.hello()
	if bytes.Equal(first.Nonce, second.Nonce) {
		t.Fatal("repeated hello reuses the nonce")
	}
	m.accept(hf, first, 0x55)
	if out, exit := m.runStep(&wire.RunStep{BuildID: "b#1", Command: "echo ok"}); out != "ok\n" || exit.Code != 0 {
		t.Fatalf("output %q exit %+v", out, exit)
	}
}

// TestMasterClosesSession: a Close from the master ends the session, the
// steps it ran are cancelled without being reported, and the agent says a
// fresh hello at once.
func TestMasterClosesSession(t *testing.T) {
	m, a, _ := start(t, Config{Node: "n1", Secret: secret})
	id := m.handshake(0x1234)
	oldKey := m.key
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo started; sleep 600; touch finished", Workdir: "b/1"})
	m.next(wire.TypeOutput)
	m.send(&wire.Close{Reason: "the master shuts down"})
	hf, hello := m.hello()
	if hf.Session != 0 || hello.Resume {
		t.Fatalf("new hello %+v on session %x", hello, hf.Session)
	}
	if a.Running() != 0 {
		t.Fatal("the old session's step still runs")
	}
	m.accept(hf, hello, 0x99)
	// The old session's frames are now stale.
	m.raw(craft(&wire.RunStep{BuildID: "old#1", Command: "touch pwned"}, id, 3, oldKey))
	if out, exit := m.runStep(&wire.RunStep{BuildID: "b#2", Command: "ls; ls b/1"}); out != "b\n" || exit.Code != 0 {
		t.Fatalf("output %q exit %+v (want no trace of the stale step nor of the cancelled one's end)", out, exit)
	}
	if c := a.Counters(); c.Stale != 1 {
		t.Fatalf("counters %+v, want 1 stale", c)
	}
}

// TestAuthResultTimeout: a genuine challenge whose AuthResult never comes
// leads to a new handshake after the heartbeat timeout.
func TestAuthResultTimeout(t *testing.T) {
	m, _, _ := start(t, Config{Node: "n1", Secret: secret, HelloInterval: 100 * time.Millisecond, HeartbeatTimeout: 300 * time.Millisecond})
	_, first := m.hello()
	nonceM := make([]byte, wire.NonceSize)
	m.raw(craft(&wire.Challenge{Nonce: nonceM, Proof: wire.MasterProof(secret, first.Nonce, nonceM)}, 5, 1, nil))
	for f := m.frame(); f.Type != wire.TypeAuth; f = m.frame() {
	}
	hf, hello := m.hello()
	if hf.Session != 0 || hello.Resume {
		t.Fatalf("hello %+v on %x", hello, hf.Session)
	}
	m.accept(hf, hello, 6)
	if out, _ := m.runStep(&wire.RunStep{BuildID: "b#1", Command: "echo ok"}); out != "ok\n" {
		t.Fatalf("output %q", out)
	}
}

// TestDrain: the running step finishes, its exit is reported, then Close.
func TestDrain(t *testing.T) {
	work := t.TempDir()
	gate := fifo(t, work)
	m, a, done := start(t, Config{Node: "n1", Secret: secret, Workdir: work})
	m.handshake(0x1234)
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo started; read x < " + gate + "; echo done", Workdir: "b/1"})
	m.next(wire.TypeOutput)
	a.Drain()
	m.send(&wire.RunStep{BuildID: "b#2", Command: "echo nope", Workdir: "b/2"})
	_, msg := m.next(wire.TypeExit)
	if e := msg.(*wire.Exit); e.BuildID != "b#2" || e.Error != "agent draining" {
		t.Fatalf("new step while draining: %+v", e)
	}
	// Released, the first step finishes and is reported.
	release(t, gate)
	outs, exits := m.collect("b#1")
	if outs["b#1"] != "done\n" || exits["b#1"].Code != 0 {
		t.Fatalf("output %q exit %+v", outs["b#1"], exits["b#1"])
	}
	_, msg = m.next(wire.TypeClose)
	if msg.(*wire.Close).Reason != "agent shutting down" {
		t.Fatalf("close %+v", msg)
	}
	if err := served(t, done); !errors.Is(err, ErrDrained) {
		t.Fatalf("Serve: %v", err)
	}
}

// TestDrainWithoutSession: Serve returns at once.
func TestDrainWithoutSession(t *testing.T) {
	a := New(Config{Node: "n1", Secret: secret, Workdir: t.TempDir()})
	a.Drain()
	agentEnd, masterEnd := newPipe()
	defer masterEnd.Close()
	done := make(chan error, 1)
	go func() { done <- a.Serve(t.Context(), agentEnd) }()
	if err := served(t, done); !errors.Is(err, ErrDrained) {
		t.Fatalf("Serve: %v", err)
	}
}

// TestDrainWhileDisconnected: a drain requested while the session waits
// for a resume happens once it is resumed: running steps finish and are
// reported, new ones are refused, then Close.
func TestDrainWhileDisconnected(t *testing.T) {
	work := t.TempDir()
	gate := fifo(t, work)
	m, a, done := start(t, Config{Node: "n1", Secret: secret, Workdir: work})
	m.handshake(0x1234)
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo started; read x < " + gate + "; echo done"})
	m.next(wire.TypeOutput)
	m.cut()
	if err := served(t, done); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("Serve: %v", err)
	}
	a.Drain()
	done = m.connect()
	m.resume(1)
	m.send(&wire.RunStep{BuildID: "b#2", Command: "echo nope"})
	_, msg := m.next(wire.TypeExit)
	if e := msg.(*wire.Exit); e.BuildID != "b#2" || e.Error != "agent draining" {
		t.Fatalf("new step while draining: %+v", e)
	}
	release(t, gate)
	outs, exits := m.collect("b#1")
	if outs["b#1"] != "done\n" || exits["b#1"].Code != 0 {
		t.Fatalf("output %q exit %+v", outs["b#1"], exits["b#1"])
	}
	m.next(wire.TypeClose)
	if err := served(t, done); !errors.Is(err, ErrDrained) {
		t.Fatalf("Serve: %v", err)
	}
}

// TestReplayedFramesNotRun: a numbered frame the agent handled already
// (replayed as recorded, or numbered again with an old number) is a
// duplicate and does not run again; one after a gap is dropped; a control
// frame whose counter does not rise is a replay.
func TestReplayedFramesNotRun(t *testing.T) {
	m, a, _ := start(t, Config{Node: "n1", Secret: secret})
	id := m.handshake(0x1234)
	m.runStep(&wire.RunStep{BuildID: "m#1", Command: "echo ran >> marks"})
	recorded := m.conn.sentOf(wire.TypeRunStep)
	if len(recorded) != 1 {
		t.Fatalf("%d steps recorded", len(recorded))
	}
	m.rawBytes(recorded[0])
	m.raw(craft(&wire.RunStep{BuildID: "m#2", Command: "echo ran >> marks"}, id, 1, m.key))
	m.raw(craft(&wire.RunStep{BuildID: "m#3", Command: "echo ran >> marks"}, id, m.nextSeq()+1, m.key))
	// A ping answered, replayed, and one numbered as the handshake's.
	m.send(&wire.Ping{Nonce: 7})
	if _, msg := m.next(wire.TypePong); msg.(*wire.Pong).Nonce != 7 {
		t.Fatalf("pong %+v", msg)
	}
	pings := m.conn.sentOf(wire.TypePing)
	m.rawBytes(pings[len(pings)-1])
	m.raw(craft(&wire.Ping{Nonce: 9}, id, 2, m.key))
	m.send(&wire.Ping{Nonce: 8})
	if _, msg := m.next(wire.TypePong); msg.(*wire.Pong).Nonce != 8 {
		t.Fatalf("pong %+v: a replayed ping was answered", msg)
	}
	if out, _ := m.runStep(&wire.RunStep{BuildID: "c#1", Command: "cat marks"}); out != "ran\n" {
		t.Fatalf("marks %q: a replayed step ran", out)
	}
	if c := a.Counters(); c.Replayed != 2 || c.Duplicate != 2 || c.Forged != 0 {
		t.Fatalf("counters %+v, want 2 replayed, 2 duplicates", c)
	}
}

// TestForgedFramesNotRun: frames of the live session without a valid MAC
// (none, another key, altered) are dropped, counted and never run.
func TestForgedFramesNotRun(t *testing.T) {
	work := t.TempDir()
	gate := fifo(t, work)
	m, a, _ := start(t, Config{Node: "n1", Secret: secret, Workdir: work})
	id := m.handshake(0x1234)
	m.send(&wire.RunStep{BuildID: "long#1", Command: "echo started; read x < " + gate + "; echo done"})
	m.next(wire.TypeOutput)
	seq := m.nextSeq()
	other := wire.SessionKey([]byte("other"), nil, nil, id)
	m.raw(craft(&wire.RunStep{BuildID: "f#1", Command: "echo ran >> marks"}, id, seq, nil))
	m.raw(craft(&wire.RunStep{BuildID: "f#2", Command: "echo ran >> marks"}, id, seq, other))
	f := craft(&wire.RunStep{BuildID: "f#3", Command: "true"}, id, seq, m.key)
	f.Payload = wire.NewFrame(&wire.RunStep{BuildID: "f#3", Command: "echo ran >> marks"}).Payload
	m.raw(f)
	f = craft(&wire.RunStep{BuildID: "f#4", Command: "echo ran >> marks"}, id, seq, m.key)
	f.Seq++ // altered header
	m.raw(f)
	m.raw(craft(&wire.Cancel{BuildID: "long#1", Reason: "forged"}, id, seq, nil))
	m.raw(craft(&wire.Ping{Nonce: 66}, id, 1000, nil))
	// An Ack forged to release the agent's outbox; no effect.
	m.raw(craft(&wire.Ack{Seq: 1}, id, 1000, other))
	m.send(&wire.Ping{Nonce: 1})
	if _, msg := m.next(wire.TypePong); msg.(*wire.Pong).Nonce != 1 {
		t.Fatalf("pong %+v: a forged ping was answered", msg)
	}
	release(t, gate)
	outs, exits := m.collect("long#1")
	if outs["long#1"] != "done\n" || exits["long#1"].Code != 0 {
		t.Fatalf("output %q exit %+v: a forged cancel took effect", outs["long#1"], exits["long#1"])
	}
	if out, _ := m.runStep(&wire.RunStep{BuildID: "c#1", Command: "cat marks 2>/dev/null; true"}); out != "" {
		t.Fatalf("marks %q: a forged step ran", out)
	}
	if c := a.Counters(); c.Forged != 7 {
		t.Fatalf("counters %+v, want 7 forged", c)
	}
}

// TestMalformedFrames: bytes that are no frame, and frames whose message
// does not decode, are dropped and counted; the session goes on.
func TestMalformedFrames(t *testing.T) {
	m, a, _ := start(t, Config{Node: "n1", Secret: secret})
	id := m.handshake(0x1234)
	m.rawBytes([]byte("garbage"))
	m.rawBytes(nil)
	good, err := craft(&wire.Ping{Nonce: 3}, id, 1000, m.key).Encode()
	if err != nil {
		t.Fatal(err)
	}
	m.rawBytes(append(good, 0)) // trailing byte
	bad := craft(&wire.Ping{}, id, 1000, nil)
	bad.Type, bad.Payload = wire.TypeRunStep, []byte{0xff, 0xff, 0xff}
	wire.Sign(m.key, bad)
	m.raw(bad)
	m.raw(&wire.Frame{Type: wire.Type(200), Session: id, Seq: 1000})
	m.send(&wire.Ping{Nonce: 4})
	if _, msg := m.next(wire.TypePong); msg.(*wire.Pong).Nonce != 4 {
		t.Fatalf("pong %+v", msg)
	}
	if c := a.Counters(); c.Malformed != 5 {
		t.Fatalf("counters %+v, want 5 malformed", c)
	}
	if out, exit := m.runStep(&wire.RunStep{BuildID: "b#1", Command: "echo ok"}); out != "ok\n" || exit.Code != 0 {
		t.Fatalf("output %q exit %+v", out, exit)
	}
}

// TestResumeAfterDisconnect: the connection breaks while a step prints.
// Serve returns, the step goes on, its output waits; the next Serve
// resumes the session and the master gets every byte exactly once, in
// order, then the exit; the step the master sent meanwhile runs once.
func TestResumeAfterDisconnect(t *testing.T) {
	work := t.TempDir()
	gate := fifo(t, work)
	m, a, done := start(t, Config{Node: "n1", Secret: secret, Workdir: work})
	id := m.handshake(0x1234)
	m.send(&wire.RunStep{BuildID: "b#1", Command: linesCmd(1, 300) + "; read x < " + gate + "; " + linesCmd(301, 1000), Workdir: "b/1"})
	var got strings.Builder
	_, msg := m.next(wire.TypeOutput)
	got.Write(msg.(*wire.Output).Data)
	m.cut() // output in flight is lost
	if err := served(t, done); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("Serve: %v", err)
	}
	if a.Running() != 1 || current(a) != id {
		t.Fatalf("%d steps run in session %x: the session must outlive the connection", a.Running(), current(a))
	}
	oldRunStep := m.conn.sentOf(wire.TypeRunStep)[0]
	// The master sends a step while the link is down: it waits.
	m.send(&wire.RunStep{BuildID: "b#2", Command: "echo second", Workdir: "b/2"})
	release(t, gate)
	waitFor(t, "the step to finish", func() bool { return a.Running() == 0 })

	done = m.connect()
	m.resume(1)
	outs, exits := m.collect("b#1", "b#2")
	got.WriteString(outs["b#1"])
	if want := lines(1, 1000); got.String() != want {
		t.Fatalf("output: %d bytes, want %d: lost or repeated output", got.Len(), len(want))
	}
	if e := exits["b#1"]; e.Code != 0 || e.Error != "" {
		t.Fatalf("exit %+v", e)
	}
	if outs["b#2"] != "second\n" || exits["b#2"].Code != 0 {
		t.Fatalf("step sent while disconnected: output %q exit %+v", outs["b#2"], exits["b#2"])
	}
	// The agent sent again exactly what the master had not handled.
	if d, g := m.ep.Dropped(); d != 0 || g != 0 {
		t.Fatalf("the master dropped %d duplicates and %d early frames", d, g)
	}
	// A frame of the old connection replayed on the new one carries the
	// old epoch's MAC: dropped, never run.
	m.rawBytes(oldRunStep)
	if out, _ := m.runStep(&wire.RunStep{BuildID: "c#1", Command: "ls b"}); out != "1\n2\n" {
		t.Fatalf("output %q", out)
	}
	if c := a.Counters(); c.Forged != 1 || c.Duplicate != 0 {
		t.Fatalf("counters %+v, want 1 forged", c)
	}
	select {
	case err := <-done:
		t.Fatalf("Serve returned %v", err)
	default:
	}
}

// TestResumeRepeatedly: the connection breaks again and again while a step
// prints; each new connection resumes the session, and the master gets the
// output exactly once, in order.
func TestResumeRepeatedly(t *testing.T) {
	m, a, done := start(t, Config{Node: "n1", Secret: secret})
	id := m.handshake(0x1234)
	m.send(&wire.RunStep{BuildID: "b#1", Command: linesCmd(1, 5000)})
	var got strings.Builder
	frames, cuts, running := 0, 0, 0
	for {
		f := m.recv()
		msg, err := f.Message()
		if err != nil {
			t.Fatal(err)
		}
		if o, ok := msg.(*wire.Output); ok {
			got.Write(o.Data)
			frames++
		}
		if e, ok := msg.(*wire.Exit); ok {
			if e.Code != 0 {
				t.Fatalf("exit %+v", e)
			}
			break
		}
		if frames%3 == 0 && cuts < 5 && f.Type == wire.TypeOutput {
			cuts++
			if a.Running() == 1 {
				running++
			}
			m.cut()
			// The agent may notice the break sending (resending, say)
			// rather than receiving.
			if err := served(t, done); !errors.Is(err, ErrDisconnected) && !errors.Is(err, io.ErrClosedPipe) {
				t.Fatalf("Serve: %v", err)
			}
			done = m.connect()
			m.resume(1)
		}
	}
	if want := lines(1, 5000); got.String() != want {
		t.Fatalf("output after %d cuts: %d bytes, want %d", cuts, got.Len(), len(want))
	}
	if current(a) != id {
		t.Fatalf("session %x, want %x", current(a), id)
	}
	t.Logf("%d cuts, %d while the step ran", cuts, running)
}

// TestResumeAfterSilence: a master silent for the heartbeat timeout is
// asked, on the same connection, to resume; the step running meanwhile is
// reported after the resume.
func TestResumeAfterSilence(t *testing.T) {
	work := t.TempDir()
	gate := fifo(t, work)
	m, a, done := start(t, Config{Node: "n1", Secret: secret, Workdir: work, Heartbeat: 50 * time.Millisecond, HeartbeatTimeout: time.Second})
	id := m.handshake(0x1234)
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo started; read x < " + gate + "; echo done"})
	if _, msg := m.next(wire.TypeOutput); string(msg.(*wire.Output).Data) != "started\n" {
		t.Fatalf("output %+v", msg)
	}
	// The master falls silent: the agent's pings go unanswered.
	m.resume(1)
	if a.Running() != 1 || current(a) != id {
		t.Fatal("the session ended with the master's silence")
	}
	select {
	case err := <-done:
		t.Fatalf("Serve returned %v", err)
	default:
	}
	release(t, gate)
	outs, exits := m.collect("b#1")
	if outs["b#1"] != "done\n" || exits["b#1"].Code != 0 {
		t.Fatalf("output %q exit %+v", outs["b#1"], exits["b#1"])
	}
	// The master's first step, numbered 1 again in the new epoch, is a
	// duplicate: it does not run twice.
	m.raw(craft(&wire.RunStep{BuildID: "b#1", Command: "touch again"}, id, 1, m.key))
	if out, exit := m.runStep(&wire.RunStep{BuildID: "b#2", Command: "echo ok"}); out != "ok\n" || exit.Code != 0 {
		t.Fatalf("output %q exit %+v", out, exit)
	}
	if exists(work, "again") {
		t.Fatal("a duplicate step ran")
	}
	if c := a.Counters(); c.Duplicate != 1 || c.Forged != 0 {
		t.Fatalf("counters %+v, want 1 duplicate", c)
	}
	if d, g := m.ep.Dropped(); d != 0 || g != 0 {
		t.Fatalf("the master dropped %d duplicates and %d early frames", d, g)
	}
}

// TestSessionTimeout: a session not resumed within the session timeout
// ends: its steps are cancelled and the next Hello starts a new session.
func TestSessionTimeout(t *testing.T) {
	work := t.TempDir()
	m, a, done := start(t, Config{Node: "n1", Secret: secret, Workdir: work, SessionTimeout: 300 * time.Millisecond})
	m.handshake(0x1234)
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo started; sleep 60; touch finished"})
	m.next(wire.TypeOutput)
	m.cut()
	if err := served(t, done); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("Serve: %v", err)
	}
	// Long before the step's sleep ends, the session times out and the step
	// is killed.
	waitFor(t, "the step to be cancelled", func() bool { return a.Running() == 0 && current(a) == 0 })
	if exists(work, "finished") {
		t.Fatal("the step finished")
	}
	m.connect()
	hf, hello := m.hello()
	if hf.Session != 0 || hello.Resume {
		t.Fatalf("hello %+v on session %x: want a fresh one", hello, hf.Session)
	}
	m.ep = nil // the master forgot the session too
	m.accept(hf, hello, 0x99)
	m.send(&wire.Ping{Nonce: 3})
	if _, msg := m.next(wire.TypePong); msg.(*wire.Pong).Nonce != 3 {
		t.Fatalf("pong %+v", msg)
	}
	if current(a) != 0x99 {
		t.Fatalf("session %x", current(a))
	}
}

// TestStepAfterSessionTimeout: a step of the session that follows one
// ended by the session timeout.
func TestStepAfterSessionTimeout(t *testing.T) {
	work := t.TempDir()
	m, a, done := start(t, Config{Node: "n1", Secret: secret, Workdir: work, SessionTimeout: 300 * time.Millisecond})
	m.handshake(0x1234)
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo started; sleep 60; touch finished"})
	m.next(wire.TypeOutput)
	m.cut()
	served(t, done)
	waitFor(t, "the step to be cancelled", func() bool { return a.Running() == 0 && current(a) == 0 })
	m.connect()
	hf, hello := m.hello()
	m.ep = nil
	m.accept(hf, hello, 0x99)
	if out, exit := m.runStep(&wire.RunStep{BuildID: "b#2", Command: "echo ok"}); out != "ok\n" || exit.Code != 0 {
		t.Fatalf("output %q exit %+v", out, exit)
	}
	if exists(work, "finished") {
		t.Fatal("the step finished")
	}
}

// TestSessionTimeoutWhileSilent: a master silent for longer than the
// session timeout on the same connection; once the session ended, the
// agent asks for a new one, not for the resume of the ended one.
func TestSessionTimeoutWhileSilent(t *testing.T) {
	work := t.TempDir()
	m, a, _ := start(t, Config{Node: "n1", Secret: secret, Workdir: work,
		Heartbeat: 50 * time.Millisecond, HeartbeatTimeout: 300 * time.Millisecond, SessionTimeout: 500 * time.Millisecond, HelloInterval: 100 * time.Millisecond})
	id := m.handshake(0x1234)
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo started; sleep 60; touch finished"})
	m.next(wire.TypeOutput)
	// Silent: the agent asks to resume, and asks again.
	hf, hello := m.hello()
	if hf.Session != id || !hello.Resume {
		t.Fatalf("hello %+v on %x: want a resume", hello, hf.Session)
	}
	waitFor(t, "the session timeout", func() bool { return a.Running() == 0 && current(a) == 0 })
	// Hellos in flight when the session ended may still resume it; those
	// sent after must not.
	for i := 0; ; i++ {
		hf, hello = m.hello()
		if hf.Session == 0 && !hello.Resume {
			break
		}
		if i == 5 {
			t.Fatalf("hello %+v on %x after the session ended: want a fresh one", hello, hf.Session)
		}
	}
	m.ep = nil
	m.accept(hf, hello, 0x99)
	if out, exit := m.runStep(&wire.RunStep{BuildID: "b#2", Command: "echo ok"}); out != "ok\n" || exit.Code != 0 {
		t.Fatalf("output %q exit %+v", out, exit)
	}
}

// TestResumeOfEndedSession: a master still holding a session the agent
// ended (its session timeout ran out during the handshake) must not get it
// back: its steps would never be reported.
func TestResumeOfEndedSession(t *testing.T) {
	work := t.TempDir()
	m, a, done := start(t, Config{Node: "n1", Secret: secret, Workdir: work, SessionTimeout: 500 * time.Millisecond, HeartbeatTimeout: 10 * time.Minute})
	id := m.handshake(0x1234)
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo started; sleep 60"})
	m.next(wire.TypeOutput)
	m.cut()
	served(t, done)
	m.connect()
	hf, hello := m.hello()
	if hf.Session != id || !hello.Resume {
		t.Fatalf("hello %+v on %x: want a resume", hello, hf.Session)
	}
	// The master answers late: the agent's session timed out meanwhile.
	waitFor(t, "the session timeout", func() bool { return current(a) == 0 && a.Running() == 0 })
	nonceM := make([]byte, wire.NonceSize)
	_, _ = rand.Read(nonceM)
	m.ep.Begin(m.conn)
	if err := m.ep.SendControl(&wire.Challenge{Nonce: nonceM, Proof: wire.MasterProof(secret, hello.Nonce, nonceM)}, id); err != nil {
		t.Fatal(err)
	}
	// The agent may ignore the challenge and start afresh, or answer it
	// and then start afresh, or report the step it is given: it must not
	// take the step in the ended session and never report it.
	deadline := time.After(15 * time.Second)
	for {
		var f *wire.Frame
		select {
		case f = <-m.in:
		case <-deadline:
			t.Fatal("the agent serves the ended session: the step is never reported")
		}
		if f == nil {
			t.Fatal("the connection ended")
		}
		switch {
		case f.Type == wire.TypeHello && f.Session == 0:
			return
		case f.Type == wire.TypeAuth:
			keys := wire.KeysFor(wire.SessionKey(secret, hello.Nonce, nonceM, id), wire.RoleMaster)
			m.ep.Established(id, keys, f.Seq)
			m.key = keys.Send
			if err := m.ep.SendControl(&wire.AuthResult{OK: true, Session: id}, id); err != nil {
				t.Fatal(err)
			}
			m.send(&wire.RunStep{BuildID: "b#2", Command: "echo ok"})
		case f.Type == wire.TypeExit:
			return
		}
	}
}

// TestResumeAnsweredWithNewSession: a master that no longer knows the
// session answers the resume with a new one; the old session's steps are
// cancelled (nobody can report them) and the new session works.
func TestResumeAnsweredWithNewSession(t *testing.T) {
	work := t.TempDir()
	m, a, done := start(t, Config{Node: "n1", Secret: secret, Workdir: work})
	id := m.handshake(0x1234)
	oldKey := m.key
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo started; sleep 60; touch finished"})
	m.next(wire.TypeOutput)
	m.cut()
	if err := served(t, done); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("Serve: %v", err)
	}
	if a.Running() != 1 {
		t.Fatal("the step stopped with the connection")
	}
	m.connect()
	hf, hello := m.hello()
	if hf.Session != id || !hello.Resume || hello.LastSeq != 1 {
		t.Fatalf("hello %+v on %x: want a resume", hello, hf.Session)
	}
	m.ep = nil // a restarted master
	m.accept(hf, hello, 0x99)
	// Frames of the old session are stale now.
	m.raw(craft(&wire.RunStep{BuildID: "old#1", Command: "touch pwned"}, id, 2, oldKey))
	// Only the new session's step is reported: nothing of b#1.
	if out, exit := m.runStep(&wire.RunStep{BuildID: "b#2", Command: "echo ok"}); out != "ok\n" || exit.Code != 0 {
		t.Fatalf("output %q exit %+v", out, exit)
	}
	waitFor(t, "the steps to end", func() bool { return a.Running() == 0 })
	if current(a) != 0x99 {
		t.Fatalf("session %x", current(a))
	}
	if exists(work, "finished") || exists(work, "pwned") {
		t.Fatal("the old session's step finished, or a stale one ran")
	}
	if c := a.Counters(); c.Stale != 1 {
		t.Fatalf("counters %+v, want 1 stale", c)
	}
}

// TestUnsignedCloseIsAHint: a restarted master cannot sign its Close of a
// session it does not know. The agent takes it as a hint and says Hello at
// once, resuming (not after two heartbeats: they are an hour here); the
// restarted master starts a new session and the old session's step is
// cancelled. The hint counts as a hint, not a forgery.
func TestUnsignedCloseIsAHint(t *testing.T) {
	work := t.TempDir()
	m, a, _ := start(t, Config{Node: "n1", Secret: secret, Workdir: work, Heartbeat: time.Hour, HeartbeatTimeout: time.Hour})
	id := m.handshake(0x1234)
	if out, exit := m.runStep(&wire.RunStep{BuildID: "b#0", Command: "echo ok"}); out != "ok\n" || exit.Code != 0 {
		t.Fatalf("output %q exit %+v", out, exit)
	}
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo started; sleep 60; touch finished"})
	m.next(wire.TypeOutput)
	m.raw(craft(&wire.Close{Reason: "unknown session"}, id, 1, nil))
	hf, hello := m.hello()
	if hf.Session != id || !hello.Resume || hello.LastSeq != 2 {
		t.Fatalf("hello %+v on %x: want a resume after 2", hello, hf.Session)
	}
	if a.Running() != 1 {
		t.Fatal("the step stopped before the master said it lost the session")
	}
	m.ep = nil
	m.accept(hf, hello, 0x99)
	if out, exit := m.runStep(&wire.RunStep{BuildID: "b#2", Command: "echo new"}); out != "new\n" || exit.Code != 0 {
		t.Fatalf("output %q exit %+v", out, exit)
	}
	// A step leaves the agent's table just after its exit is sent.
	waitFor(t, "the steps to end", func() bool { return a.Running() == 0 })
	if exists(work, "finished") {
		t.Fatal("the old session's step was not cancelled")
	}
	if c := a.Counters(); c.Forged != 0 || c.Hints != 1 {
		t.Fatalf("counters %+v: want the unsigned close counted as 1 hint, not a forgery", c)
	}
}

// TestUnsignedCloseChecked: hints make the agent resume at a bounded rate
// (hintBurst within as many heartbeats). Beyond it, a hint is checked with
// a ping at once, and the session goes on when the master answers it: a
// flood of injected hints costs hintBurst handshakes, and changes nothing
// of the session. The hints beyond the rate (Closes, and unsigned Pongs)
// are counted as forged, so the flood shows; before, as hints.
func TestUnsignedCloseChecked(t *testing.T) {
	m, a, _ := start(t, Config{Node: "n1", Secret: secret, Heartbeat: time.Hour, HeartbeatTimeout: time.Hour})
	id := m.handshake(0x1234)
	for range hintBurst {
		m.raw(craft(&wire.Close{Reason: "unknown session"}, id, m.nextSeq(), nil))
		m.resume(0)
	}
	for range 20 {
		m.raw(craft(&wire.Close{Reason: "unknown session"}, id, m.nextSeq(), nil))
	}
	for i := range 5 {
		m.raw(craft(&wire.Pong{Nonce: uint64(100 + i)}, id, uint64(1000+i), nil))
	}
	m.next(wire.TypePing) // answered by the master; a hello would fail the test
	if out, exit := m.runStep(&wire.RunStep{BuildID: "b#1", Command: "echo ok"}); out != "ok\n" || exit.Code != 0 {
		t.Fatalf("output %q exit %+v", out, exit)
	}
	if current(a) != id {
		t.Fatalf("session %x, want %x", current(a), id)
	}
	if c := a.Counters(); c.Forged != 25 || c.Hints != hintBurst {
		t.Fatalf("counters %+v, want %d hints and the 25 beyond the rate forged", c, hintBurst)
	}
}

// TestWronglySignedClose: only an unsigned Close is a hint; one with a MAC
// that does not verify is forged.
func TestWronglySignedClose(t *testing.T) {
	m, a, _ := start(t, Config{Node: "n1", Secret: secret})
	id := m.handshake(0x1234)
	m.raw(craft(&wire.Close{Reason: "forged"}, id, m.nextSeq(), wire.SessionKey([]byte("other"), nil, nil, id)))
	m.send(&wire.Ping{Nonce: 1})
	m.next(wire.TypePong)
	if c := a.Counters(); c.Forged != 1 {
		t.Fatalf("counters %+v, want 1 forged", c)
	}
}

// bigStep prints more than the step's pipe, one outbox frame and the chunk
// the runner holds can take, then marks that it finished.
var bigStep = linesCmd(1, 3000) + "; touch finished"

// TestOutboxBound: output the master did not acknowledge is kept up to the
// outbox bound; then the step waits (nothing is lost, nothing more is
// sent), and it completes, every byte delivered, once the master
// acknowledges.
func TestOutboxBound(t *testing.T) {
	work := t.TempDir()
	m, a, _ := start(t, Config{Node: "n1", Secret: secret, Workdir: work, OutboxBytes: 1})
	m.handshake(0x1234)
	m.holdAcks = true
	m.send(&wire.RunStep{BuildID: "b#1", Command: bigStep})
	var got strings.Builder
	_, msg := m.next(wire.TypeOutput)
	got.Write(msg.(*wire.Output).Data)
	// Without acknowledgement the agent sends nothing more and the step
	// cannot finish.
	deadline := time.Now().Add(500 * time.Millisecond)
	m.until("a while", func() bool { return time.Now().After(deadline) })
	for _, f := range m.backlog {
		if f.Type == wire.TypeOutput || f.Type == wire.TypeExit {
			t.Fatalf("the agent sent %v beyond its outbox bound", f.Type)
		}
	}
	if a.Running() != 1 || exists(work, "finished") {
		t.Fatal("the step finished: output was dropped, or buffered without bound")
	}
	if p := pending(a); p.Frames != 1 {
		t.Fatalf("outbox %+v, want one frame waiting", p)
	}
	// The master acknowledges: everything comes, in order.
	m.holdAcks, m.ackEach = false, true
	if err := m.ep.Handled(); err != nil {
		t.Fatal(err)
	}
	if err := m.ep.FlushAck(); err != nil {
		t.Fatal(err)
	}
	var exit *wire.Exit
	for exit == nil {
		if p := pending(a); p.Frames > 1 {
			t.Fatalf("outbox %+v beyond its bound", p)
		}
		f := m.recv()
		msg, err := f.Message()
		if err != nil {
			t.Fatal(err)
		}
		switch msg := msg.(type) {
		case *wire.Output:
			got.Write(msg.Data)
		case *wire.Exit:
			exit = msg
		}
	}
	if want := lines(1, 3000); got.String() != want {
		t.Fatalf("output: %d bytes, want %d", got.Len(), len(want))
	}
	if exit.Code != 0 || !exists(work, "finished") {
		t.Fatalf("exit %+v", exit)
	}
}

// TestRefusedStepWhileOutboxFull: refusing a step (its build already runs
// one, or the agent drains) while the outbox is full must not stop the
// agent reading the master's frames: the acknowledgements that free the
// outbox are among them.
func TestRefusedStepWhileOutboxFull(t *testing.T) {
	work := t.TempDir()
	m, _, _ := start(t, Config{Node: "n1", Secret: secret, Workdir: work, OutboxBytes: 1})
	m.handshake(0x1234)
	m.holdAcks = true
	step := &wire.RunStep{BuildID: "b#1", Command: bigStep}
	m.send(step)
	var got strings.Builder
	_, msg := m.next(wire.TypeOutput)
	got.Write(msg.(*wire.Output).Data)
	// The same build again: refused, while the outbox waits for the ack.
	m.send(&wire.RunStep{BuildID: "b#1", StepIndex: 1, Command: "true"})
	m.holdAcks, m.ackEach = false, true
	if err := m.ep.Handled(); err != nil {
		t.Fatal(err)
	}
	if err := m.ep.FlushAck(); err != nil {
		t.Fatal(err)
	}
	var refused, exit *wire.Exit
	for refused == nil || exit == nil {
		f := m.recv()
		msg, err := f.Message()
		if err != nil {
			t.Fatal(err)
		}
		switch msg := msg.(type) {
		case *wire.Output:
			got.Write(msg.Data)
		case *wire.Exit:
			if msg.StepIndex == 1 {
				refused = msg
			} else {
				exit = msg
			}
		}
	}
	if refused.Code != -1 || !strings.Contains(refused.Error, "already runs") {
		t.Fatalf("refusal %+v", refused)
	}
	if want := lines(1, 3000); got.String() != want || exit.Code != 0 {
		t.Fatalf("output: %d bytes, want %d; exit %+v", got.Len(), len(want), exit)
	}
}

// TestDrainCloseWhileOutboxFull: the drain's Close, sent while the outbox
// waits for the acknowledgement of the last exit, must not stop the agent
// reading that acknowledgement.
func TestDrainCloseWhileOutboxFull(t *testing.T) {
	work := t.TempDir()
	m, a, done := start(t, Config{Node: "n1", Secret: secret, Workdir: work, OutboxBytes: 1})
	m.handshake(0x1234)
	m.holdAcks = true
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo hi"})
	m.next(wire.TypeOutput)
	a.Drain()
	if err := m.ep.Handled(); err != nil { // acknowledges the output only
		t.Fatal(err)
	}
	if err := m.ep.FlushAck(); err != nil {
		t.Fatal(err)
	}
	m.next(wire.TypeExit)
	// The step is over: the drain says Close, which waits for the exit's
	// acknowledgement.
	waitFor(t, "the step to end", func() bool { return a.Running() == 0 })
	time.Sleep(200 * time.Millisecond) // lets the agent start sending Close (with the bug: deadlock)
	m.holdAcks = false
	if err := m.ep.Handled(); err != nil {
		t.Fatal(err)
	}
	if err := m.ep.FlushAck(); err != nil {
		t.Fatal(err)
	}
	m.next(wire.TypeClose)
	if err := served(t, done); !errors.Is(err, ErrDrained) {
		t.Fatalf("Serve: %v", err)
	}
}

// frozenConn is a connection whose sends can be frozen: a send then waits
// until thawed, as on a broker stopped with SIGSTOP.
type frozenConn struct {
	Conn
	mu     sync.Mutex
	frozen chan struct{} // closed at the thaw; nil when not frozen
}

func (c *frozenConn) freeze() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.frozen == nil {
		c.frozen = make(chan struct{})
	}
}

func (c *frozenConn) thaw() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.frozen != nil {
		close(c.frozen)
		c.frozen = nil
	}
}

func (c *frozenConn) Send(b []byte) error {
	c.mu.Lock()
	f := c.frozen
	c.mu.Unlock()
	if f != nil {
		<-f
	}
	return c.Conn.Send(b)
}

// TestFrozenTransport: sends that never return (a frozen broker) do not
// stop the agent's liveness timers. The master's silence is noticed after
// the heartbeat timeout, and the session timeout then ends the session and
// kills its step, while every send is still stuck.
func TestFrozenTransport(t *testing.T) {
	work := t.TempDir()
	var fc *frozenConn
	m, a, _ := start(t, Config{Node: "n1", Secret: secret, Workdir: work, Heartbeat: 20 * time.Millisecond,
		HeartbeatTimeout: 200 * time.Millisecond, SessionTimeout: 300 * time.Millisecond},
		func(c Conn) Conn { fc = &frozenConn{Conn: c}; return fc })
	t.Cleanup(func() { fc.thaw() }) // before the agent's end: its stuck sends go then
	id := m.handshake(0x1234)
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo $$ > pid; echo started; exec sleep 60"})
	m.next(wire.TypeOutput)
	b, err := os.ReadFile(filepath.Join(work, "pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	fc.freeze()
	waitFor(t, "the session timeout to end the session", func() bool { return current(a) != id })
	waitFor(t, "the step to be killed", func() bool { return syscall.Kill(pid, 0) == syscall.ESRCH })
}

// TestStatsWithHeartbeats: to a master that announced it takes them, the
// agent sends its counters of dropped frames with its heartbeats, signed
// in the session (process checks the MAC); a master that did not announce
// them gets none (every other test).
func TestStatsWithHeartbeats(t *testing.T) {
	m, _, _ := start(t, Config{Node: "n1", Secret: secret, Heartbeat: 20 * time.Millisecond},
		func(c Conn) Conn { return countingConn{c} })
	m.features = wire.VersionWithFeatures("", wire.FeatureStats)
	id := m.handshake(0x1234)
	// An unsigned Cancel: forged.
	m.raw(craft(&wire.Cancel{BuildID: "b#1", Reason: "forged"}, id, m.nextSeq(), nil))
	for {
		_, msg := m.next(wire.TypeStats)
		got := map[string]uint64{}
		for _, c := range msg.(*wire.Stats).Counters {
			got[c.Name] = c.Value
		}
		if got["forged"] == 1 {
			if got["transport_malformed"] != 7 {
				t.Errorf("stats %v: want the transport's 7 malformed records", got)
			}
			for _, name := range []string{"stale", "malformed", "unexpected", "replayed", "duplicate", "hint"} {
				if _, ok := got[name]; !ok {
					t.Errorf("stats %v lack %q", got, name)
				}
			}
			return
		}
	}
}

// countingConn is a transport that counts what it dropped itself, as
// kafkatransport.Conn does.
type countingConn struct{ Conn }

func (countingConn) Malformed() uint64 { return 7 }

// TestHintsRateBounded: a hint beyond the rate (hintBurst resumes within
// as many heartbeats), from a master that answers no ping (it restarted
// again), makes the agent resume as soon as the rate allows it: not sooner,
// not heartbeats later.
func TestHintsRateBounded(t *testing.T) {
	const hb = time.Second
	m, _, _ := start(t, Config{Node: "n1", Secret: secret, Heartbeat: hb, HeartbeatTimeout: time.Hour})
	id := m.handshake(0x1234)
	first := time.Now()
	for range hintBurst {
		m.raw(craft(&wire.Close{Reason: "resume it"}, id, m.nextSeq(), nil))
		m.resume(0)
	}
	m.raw(craft(&wire.Close{Reason: "resume it"}, id, m.nextSeq(), nil))
	hf, hello := m.hello() // the master stays silent: nothing answers the agent's ping
	took := time.Since(first)
	if hf.Session != id || !hello.Resume {
		t.Fatalf("hello %+v on %x: want a resume of %x", hello, hf.Session, id)
	}
	if want := hintBurst * hb; took < want-100*time.Millisecond || took > want+1500*time.Millisecond {
		t.Fatalf("resume %d came %s after the first hint; want when the rate allows, after %s", hintBurst+1, took, want)
	}
}

// TestReflectedFramesForged: the agent's own signed frames written back to
// it with the number the master's next frame gets (an Exit copied from
// the events topic into the commands topic) are forged: the genuine
// RunStep and Cancel that follow with that number run. With one key for
// both directions the reflected frame was delivered and the genuine
// command dropped as a duplicate.
func TestReflectedFramesForged(t *testing.T) {
	m, a, _ := start(t, Config{Node: "n1", Secret: secret, Workdir: t.TempDir()})
	m.handshake(0x1234)
	sent := map[uint64]*wire.Frame{} // the agent's numbered frames by number
	until := func(typ wire.Type) wire.Message {
		t.Helper()
		deadline := time.Now().Add(guard) // the agent's pings come meanwhile
		for {
			if time.Now().After(deadline) {
				t.Fatalf("no %v from the agent within %v: the command was lost", typ, guard)
			}
			f := m.recv()
			if reliable.Sequenced(f.Type) {
				sent[f.Seq] = f
			}
			if f.Type == typ {
				msg, err := f.Message()
				if err != nil {
					t.Fatal(err)
				}
				return msg
			}
		}
	}
	reflect := func() {
		t.Helper()
		f := sent[m.nextSeq()]
		if f == nil {
			t.Fatalf("no frame of the agent numbered %d to reflect", m.nextSeq())
		}
		m.raw(f)
	}
	m.send(&wire.RunStep{BuildID: "a#1", Command: "echo a"}) // the master's #1
	until(wire.TypeExit)                                     // the agent's #1 (Output), #2 (Exit)
	reflect()                                                // its Exit as the master's #2
	m.send(&wire.RunStep{BuildID: "b#1", Command: "echo b"}) // the master's #2
	if out := until(wire.TypeOutput).(*wire.Output); out.BuildID != "b#1" || string(out.Data) != "b\n" {
		t.Fatalf("output %+v, want b#1's", out)
	}
	until(wire.TypeExit)                                                     // the agent's #4
	m.send(&wire.RunStep{BuildID: "c#1", Command: "echo started; sleep 60"}) // the master's #3
	until(wire.TypeOutput)
	reflect() // the agent's Exit #4 as the master's #4
	m.send(&wire.Cancel{BuildID: "c#1", Reason: "stop"})
	if exit := until(wire.TypeExit).(*wire.Exit); exit.BuildID != "c#1" || exit.Code != -1 {
		t.Fatalf("exit %+v, want c#1 cancelled", exit)
	}
	if c := a.Counters(); c.Forged != 2 || c.Unexpected != 0 {
		t.Fatalf("counters %+v, want the 2 reflected frames forged", c)
	}
}

// TestForgedRefusalIgnored: once the master's Challenge proved the secret,
// the agent obeys only a refusal signed under the handshake's RefusalKey:
// an unsigned one (anyone who saw the Challenge can send it), one signed
// under another key, and one whose reason was changed under a genuine MAC
// are counted as forged and ignored, and the master's acceptance that
// follows establishes the session. Before, the unsigned refusal made the
// agent log an error and back off.
func TestForgedRefusalIgnored(t *testing.T) {
	secret := []byte("s3cret")
	m, a, _ := start(t, Config{Node: "n1", Secret: secret, RetryMin: time.Minute, RetryMax: time.Minute})
	m.beforeResult = func(id uint64, h *wire.Hello, nonceM []byte) {
		m.raw(craft(&wire.AuthResult{OK: false, Reason: "authentication failed: wrong secret"}, id, 0, nil))
		keys := wire.KeysFor(wire.SessionKey(secret, h.Nonce, nonceM, id), wire.RoleMaster)
		m.raw(craft(&wire.AuthResult{OK: false, Reason: "refused"}, id, 0, keys.Send))
		genuine := craft(&wire.AuthResult{OK: false, Reason: "refused"}, id, 0, wire.RefusalKey(secret, h.Nonce, nonceM, id))
		altered := craft(&wire.AuthResult{OK: false, Reason: "refused, altered"}, id, 0, nil)
		altered.MAC = genuine.MAC
		m.raw(altered)
	}
	m.handshake(0x55)
	m.beforeResult = nil
	out, exit := m.runStep(&wire.RunStep{BuildID: "b#1", Command: "echo ok"})
	if exit.Code != 0 || out != "ok\n" {
		t.Fatalf("step: exit %+v, output %q; want the session established despite the forged refusals", exit, out)
	}
	if c := a.Counters(); c.Forged != 3 {
		t.Fatalf("counters %+v, want the 3 forged refusals counted", c)
	}
}

// TestSignedRefusalObeyed: a refusal signed under the handshake's
// RefusalKey is the master's: the agent backs off and says hello again,
// counting nothing as forged.
func TestSignedRefusalObeyed(t *testing.T) {
	secret := []byte("s3cret")
	m, a, _ := start(t, Config{Node: "n1", Secret: secret, RetryMin: 10 * time.Millisecond})
	hf, h := m.hello()
	nonceM := make([]byte, wire.NonceSize)
	_, _ = rand.Read(nonceM)
	m.raw(craft(&wire.Challenge{Nonce: nonceM, Proof: wire.MasterProof(secret, h.Nonce, nonceM)}, 0x66, hf.Seq, nil))
	if f := m.handshakeFrame(); f.Type != wire.TypeAuth || f.Session != 0x66 {
		t.Fatalf("got %v on %x, want the agent's Auth", f.Type, f.Session)
	}
	m.raw(craft(&wire.AuthResult{OK: false, Reason: "the session ended meanwhile; say hello again"}, 0x66, 0, wire.RefusalKey(secret, h.Nonce, nonceM, 0x66)))
	_, h2 := m.hello()
	if bytes.Equal(h2.Nonce, h.Nonce) {
		t.Fatal("the hello after the refusal reuses the nonce")
	}
	if c := a.Counters(); c.Forged != 0 {
		t.Fatalf("counters %+v: a signed refusal is not forged", c)
	}
}

// TestResumeAfterInjectedChallenge: while the agent resumes, a challenge
// for its session that answers someone else's Hello (an injected Hello
// resuming the same session) comes before the master's answer to the
// agent's: the agent answers the first with an empty proof and still
// answers the genuine one, resuming. Before, the first challenge of a
// session closed it: the agent dropped the genuine one as stale and never
// resumed (found by the e2e TestInjectedHelloLeavesHeldSessionAlone).
func TestResumeAfterInjectedChallenge(t *testing.T) {
	m, a, _ := start(t, Config{Node: "n1", Secret: secret, Heartbeat: time.Hour, HeartbeatTimeout: time.Hour})
	id := m.handshake(0x1234)
	m.raw(craft(&wire.Close{Reason: "resume it"}, id, m.nextSeq(), nil))
	hf, hello := m.hello()
	if hf.Session != id || !hello.Resume {
		t.Fatalf("hello %+v on %x: want a resume of %x", hello, hf.Session, id)
	}
	other, nonceM := bytes.Repeat([]byte{7}, wire.NonceSize), bytes.Repeat([]byte{8}, wire.NonceSize)
	m.raw(craft(&wire.Challenge{Nonce: nonceM, Proof: wire.MasterProof(secret, other, nonceM)}, id, 1, nil))
	f := m.handshakeFrame()
	if msg, err := f.Message(); err != nil || f.Type != wire.TypeAuth || f.Session != id || len(msg.(*wire.Auth).Proof) != 0 {
		t.Fatalf("%v %+v on %x: want an empty proof for the challenge of another hello", f.Type, msg, f.Session)
	}
	m.accept(hf, hello, id)
	if out, exit := m.runStep(&wire.RunStep{BuildID: "b#1", Command: "echo ok"}); out != "ok\n" || exit.Code != 0 {
		t.Fatalf("output %q exit %+v", out, exit)
	}
	if current(a) != id {
		t.Fatalf("session %x, want the resumed %x", current(a), id)
	}
}
