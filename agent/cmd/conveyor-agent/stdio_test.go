package main

// These tests build conveyor-agent (CGO_ENABLED=0, as shipped) and drive
// it over `-transport stdio` with wire frames, playing the master.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/sdk/launcher"
	"github.com/conveyor-ci/conveyor/sdk/reliable"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// waitTimeout bounds every wait of these tests; none of them is a sleep.
const waitTimeout = 30 * time.Second

var agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "conveyor-agent-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "conveyor-agent")
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(gobin, "build", "-o", agentBin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building conveyor-agent: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// masterEnd is the master's end of a connection to the agent. It records
// what it sent, so that a test can replay it as an attacker would.
type masterEnd struct {
	conn interface{ Send([]byte) error }

	mu   sync.Mutex
	sent [][]byte
}

func (c *masterEnd) Send(b []byte) error {
	c.mu.Lock()
	c.sent = append(c.sent, append([]byte(nil), b...))
	c.mu.Unlock()
	return c.conn.Send(b)
}

// last returns the last frame of type typ sent, encoded.
func (c *masterEnd) last(typ wire.Type) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.sent) - 1; i >= 0; i-- {
		if f, err := wire.Decode(c.sent[i], wire.MaxFrameSize); err == nil && f.Type == typ {
			return c.sent[i]
		}
	}
	return nil
}

// proc is a running agent and the test's master end of its connection.
// The test plays the master as core/session does: a reliable.Endpoint
// holds the session — it numbers the master's numbered frames, counts the
// others, signs them under the epoch's key, checks the agent's frames and
// acknowledges them.
type proc struct {
	t       *testing.T
	cmd     *exec.Cmd
	conn    *masterEnd
	stdin   io.WriteCloser
	stdout  io.ReadCloser
	workdir string
	in      chan *wire.Frame
	// skipHellos skips repeated Hellos while waiting for other frames.
	skipHellos bool
	// silent: the master answers no ping (it seems gone to the agent).
	silent bool

	// The session as the master holds it: its endpoint, its id, and the
	// key of the current epoch (nil while the master has none: before the
	// handshake, or after a restart).
	ep  *reliable.Endpoint
	id  uint64
	key []byte
	// dups counts the agent's numbered frames dropped as duplicates.
	dups int

	logMu sync.Mutex
	log   bytes.Buffer

	exited chan struct{}
	err    error // Wait's, once exited is closed
}

// syncWriter collects the agent's log.
type syncWriter struct{ p *proc }

func (w syncWriter) Write(b []byte) (int, error) {
	w.p.logMu.Lock()
	defer w.p.logMu.Unlock()
	return w.p.log.Write(b)
}

func (p *proc) logText() string {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	return p.log.String()
}

// startAgent runs the agent with -transport stdio and extra arguments.
func startAgent(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, workdir: t.TempDir(), in: make(chan *wire.Frame, 1024), exited: make(chan struct{})}
	p.cmd = exec.Command(agentBin, append([]string{"-transport", "stdio", "-name", "n1", "-workdir", p.workdir, "-log-level", "debug"}, args...)...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = syncWriter{p}
	stdin, err := p.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	// Not StdoutPipe: Wait closes that as soon as the agent exited, and
	// the frames the agent wrote last (its Close) would be lost.
	stdout, stdoutW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout = stdoutW
	err = p.cmd.Start()
	stdoutW.Close()
	if err != nil {
		stdout.Close()
		t.Fatal(err)
	}
	p.stdin, p.stdout = stdin, stdout
	conn := launcher.NewStreamConn(stdout, stdin, stdin.Close, "test")
	p.conn = &masterEnd{conn: conn}
	go func() {
		defer close(p.in)
		for {
			raw, err := conn.Recv()
			if err != nil {
				if err != io.EOF {
					p.in <- nil // anything but frames on stdout fails the test
				}
				return
			}
			f, err := wire.Decode(raw, wire.MaxFrameSize)
			if err != nil {
				p.in <- nil
				return
			}
			p.in <- f
		}
	}()
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
		stdout.Close()
		if t.Failed() {
			t.Logf("agent log:\n%s", p.logText())
		}
	})
	return p
}

// send sends msg in session: through the endpoint (numbered or counted,
// and signed) when it is the master's session and the master holds its
// key, unsigned outside any epoch otherwise (a frame of another session,
// or of a master that lost the key).
func (p *proc) send(msg wire.Message, session uint64) {
	p.t.Helper()
	if p.key == nil || session != p.id {
		p.sendRaw(msg, session)
		return
	}
	var err error
	if reliable.Sequenced(msg.Type()) {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		err = p.ep.Send(ctx, msg)
		cancel()
	} else {
		err = p.ep.SendControl(msg, session)
	}
	if err == nil {
		select {
		case <-p.ep.Broken():
			err = errors.New("the connection broke")
		default:
		}
	}
	if err != nil {
		p.t.Fatalf("send %v: %v", msg.Type(), err)
	}
}

// sendRaw sends msg unsigned, outside any epoch (Seq 0), as the master
// sends a Challenge or a hint to a session it has no key for.
func (p *proc) sendRaw(msg wire.Message, session uint64) {
	p.t.Helper()
	f := wire.NewFrame(msg)
	f.Session = session
	p.sendFrame(f)
}

// sendFrame sends a hand-crafted frame.
func (p *proc) sendFrame(f *wire.Frame) {
	p.t.Helper()
	p.sendBytes(f.Append(nil))
}

// sendBytes sends an encoded frame as it is (a replay).
func (p *proc) sendBytes(b []byte) {
	p.t.Helper()
	if err := p.conn.Send(b); err != nil {
		p.t.Fatalf("send: %v", err)
	}
}

// handshakeType reports whether frames of type t belong to a handshake:
// they go outside the session's epoch, or start it.
func handshakeType(t wire.Type) bool {
	switch t {
	case wire.TypeHello, wire.TypeChallenge, wire.TypeAuth, wire.TypeAuthResult:
		return true
	}
	return false
}

// recv returns the agent's next frame, waiting until deadline. A frame of
// the master's session is checked as the master checks it: it must carry
// a valid MAC under the epoch's key, and come in order (numbered frames
// once each, the others with a rising counter); anything else the agent
// sends is a bug, but for duplicates (resent after a resume), which are
// counted and skipped. A numbered frame delivered is acknowledged (marked
// handled, as the master does once it wrote it down), a ping answered
// unless the master is silent.
func (p *proc) recv(deadline <-chan time.Time) *wire.Frame {
	p.t.Helper()
	for {
		select {
		case f, ok := <-p.in:
			if !ok || f == nil {
				p.t.Fatal("the connection ended or carried something other than frames")
			}
			if p.key == nil || f.Session != p.id || handshakeType(f.Type) {
				return f
			}
			switch v := p.ep.Receive(f); v {
			case reliable.Deliver:
			case reliable.Duplicate:
				p.dups++
				continue
			default:
				p.t.Fatalf("the agent sent a %v frame: %v seq %d ack %d", v, f.Type, f.Seq, f.Ack)
			}
			if reliable.Sequenced(f.Type) {
				if err := p.ep.Handled(); err != nil {
					p.t.Fatalf("acknowledge: %v", err)
				}
			}
			if f.Type == wire.TypePing && !p.silent {
				msg, err := f.Message()
				if err != nil {
					p.t.Fatal(err)
				}
				ping := msg.(*wire.Ping)
				p.send(&wire.Pong{Nonce: ping.Nonce, UnixNano: ping.UnixNano}, p.id)
			}
			return f
		case <-deadline:
			p.t.Fatal("no frame from the agent")
		}
	}
}

// next returns the agent's next frame other than a Ping or an Ack; it
// fails unless the frame has type typ.
func (p *proc) next(typ wire.Type) (*wire.Frame, wire.Message) {
	p.t.Helper()
	timeout := time.NewTimer(waitTimeout)
	defer timeout.Stop()
	for {
		f := p.recv(timeout.C)
		if f.Type != typ && (f.Type == wire.TypePing || f.Type == wire.TypeAck || p.skipHellos && f.Type == wire.TypeHello) {
			continue
		}
		msg, err := f.Message()
		if err != nil {
			p.t.Fatalf("frame %v: %v", f.Type, err)
		}
		if f.Type != typ {
			p.t.Fatalf("got %v %+v, want %v", f.Type, msg, typ)
		}
		return f, msg
	}
}

// nextAuth returns the agent's Auth, skipping the Hellos it repeated
// before it saw the challenge.
func (p *proc) nextAuth() (*wire.Frame, *wire.Auth) {
	p.t.Helper()
	skip := p.skipHellos
	p.skipHellos = true
	defer func() { p.skipHellos = skip }()
	f, msg := p.next(wire.TypeAuth)
	return f, msg.(*wire.Auth)
}

// handshake authenticates the agent holding secret as session id.
func (p *proc) handshake(secret []byte, id uint64) {
	p.t.Helper()
	f, msg := p.next(wire.TypeHello)
	hello := msg.(*wire.Hello)
	if f.Session != 0 || hello.Resume || hello.Node != "n1" || len(hello.Nonce) != wire.NonceSize || hello.OS != runtime.GOOS {
		p.t.Fatalf("hello %+v on session %x", hello, f.Session)
	}
	p.accept(secret, hello, id)
}

// accept answers hello as the master: session id is new, or resumed when
// it is the master's session (the master then sends again what the agent
// has not acknowledged). It reports whether the session was resumed.
func (p *proc) accept(secret []byte, hello *wire.Hello, id uint64) bool {
	p.t.Helper()
	nonceM := make([]byte, wire.NonceSize)
	_, _ = rand.Read(nonceM)
	p.sendRaw(&wire.Challenge{Nonce: nonceM, Proof: wire.MasterProof(secret, hello.Nonce, nonceM)}, id)
	f, auth := p.nextAuth()
	if f.Session != id || !wire.ProofEqual(auth.Proof, wire.AgentProof(secret, nonceM, hello.Nonce)) || len(f.MAC) != 0 {
		p.t.Fatalf("bad auth %+v on session %x (MAC %x)", auth, f.Session, f.MAC)
	}
	resume := p.ep != nil && p.id == id
	if !resume {
		p.ep = reliable.NewEndpoint(16 << 20)
	}
	p.ep.Begin(p.conn)
	keys := wire.KeysFor(wire.SessionKey(secret, hello.Nonce, nonceM, id), wire.RoleMaster)
	p.id, p.key = id, keys.Send
	p.ep.Established(id, keys, f.Seq)
	p.send(&wire.AuthResult{OK: true, Session: id}, id)
	if resume {
		if err := p.ep.Resend(0); err != nil {
			p.t.Fatalf("resend: %v", err)
		}
	}
	return resume
}

// restart forgets the epoch's key, as a restarted master has none: the
// agent's frames are no longer checked, the master's go unsigned. With
// keep the session stays, to be resumed; without, it is forgotten.
func (p *proc) restart(keep bool) {
	if p.ep != nil {
		p.ep.Detach()
	}
	p.key = nil
	if !keep {
		p.ep, p.id = nil, 0
	}
}

// result is a step's output and exit as the master saw them.
type result struct {
	stdout, stderr bytes.Buffer
	chunks         int
	exit           *wire.Exit
}

// collect gathers a step's frames until its Exit.
func (p *proc) collect(id uint64, build string) *result {
	p.t.Helper()
	r := &result{}
	for {
		f, msg := p.nextAny()
		if f.Session != id {
			p.t.Fatalf("%v on session %x, want %x", f.Type, f.Session, id)
		}
		switch m := msg.(type) {
		case *wire.Output:
			if m.BuildID != build {
				p.t.Fatalf("output of %q, want %q", m.BuildID, build)
			}
			if len(m.Data) > 32<<10 {
				p.t.Fatalf("output chunk of %d bytes", len(m.Data))
			}
			r.chunks++
			if m.Stream == wire.StreamStderr {
				r.stderr.Write(m.Data)
			} else {
				r.stdout.Write(m.Data)
			}
		case *wire.Exit:
			if m.BuildID != build {
				p.t.Fatalf("exit of %q, want %q", m.BuildID, build)
			}
			r.exit = m
			return r
		default:
			p.t.Fatalf("unexpected %v during a step", f.Type)
		}
	}
}

// nextAny returns the agent's next frame other than a Ping or an Ack.
func (p *proc) nextAny() (*wire.Frame, wire.Message) {
	p.t.Helper()
	return p.nextFrame(func(f *wire.Frame) bool { return f.Type != wire.TypePing && f.Type != wire.TypeAck })
}

// nextFrame returns the agent's next frame that satisfies match, skipping
// the others.
func (p *proc) nextFrame(match func(*wire.Frame) bool) (*wire.Frame, wire.Message) {
	p.t.Helper()
	timeout := time.NewTimer(waitTimeout)
	defer timeout.Stop()
	for {
		f := p.recv(timeout.C)
		if !match(f) {
			continue
		}
		msg, err := f.Message()
		if err != nil {
			p.t.Fatal(err)
		}
		return f, msg
	}
}

func (p *proc) run(id uint64, step *wire.RunStep) *result {
	p.t.Helper()
	p.send(step, id)
	return p.collect(id, step.BuildID)
}

// wait waits for the agent to exit and returns its exit status.
func (p *proc) wait() int {
	p.t.Helper()
	select {
	case <-p.exited:
	case <-time.After(waitTimeout):
		p.t.Fatal("the agent did not exit")
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	p.t.Fatal(p.err)
	return -1
}

func TestStdioHandshakeAndStep(t *testing.T) {
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		secret []byte
		env    []string
		args   []string
	}{
		{name: "no secret", secret: nil},
		{name: "secret file", secret: secret, args: []string{"-secret-file", secretFile}},
		{name: "secret from env", secret: secret, env: []string{"CONVEYOR_AGENT_SECRET=" + hex.EncodeToString(secret)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startAgent(t, tc.env, tc.args...)
			p.handshake(tc.secret, 0x42)
			p.send(&wire.Ping{Nonce: 99, UnixNano: 12345}, 0x42)
			if _, msg := p.next(wire.TypePong); msg.(*wire.Pong).Nonce != 99 || msg.(*wire.Pong).UnixNano != 12345 {
				t.Fatalf("pong %+v", msg)
			}
			r := p.run(0x42, &wire.RunStep{BuildID: "job#1", StepName: "build", Command: `echo "out $FOO"; echo err >&2; env | grep -c CONVEYOR_AGENT_; pwd; exit 3`,
				Env: []wire.EnvVar{{Name: "FOO", Value: "bar"}}, Workdir: "job/1"})
			want := "out bar\n0\n" + filepath.Join(p.workdir, "job", "1") + "\n"
			if r.stdout.String() != want || r.stderr.String() != "err\n" || r.exit.Code != 3 || r.exit.Error != "" {
				t.Fatalf("stdout %q stderr %q exit %+v; want stdout %q", r.stdout.String(), r.stderr.String(), r.exit, want)
			}
			// The master goes away: stdin's EOF ends the agent.
			p.stdin.Close()
			if code := p.wait(); code != 0 {
				t.Fatalf("exit status %d after EOF", code)
			}
		})
	}
}

// TestStdioForgedChallengeAndStaleFrames: a challenge whose proof does not
// verify gets an empty Auth and no session; frames of another session
// (stale before the handshake completes, forged after it: the agent never
// had that session), frames of the session without a valid MAC, and
// replayed frames are dropped without being executed.
func TestStdioForgedChallengeAndStaleFrames(t *testing.T) {
	secret := []byte("0123456789abcdef")
	p := startAgent(t, nil, "-secret", hex.EncodeToString(secret))
	_, msg := p.next(wire.TypeHello)
	hello := msg.(*wire.Hello)
	nonceM := make([]byte, wire.NonceSize)
	p.sendRaw(&wire.Challenge{Nonce: nonceM, Proof: wire.MasterProof([]byte("not the secret"), hello.Nonce, nonceM)}, 0x666)
	if f, auth := p.nextAuth(); f.Session != 0x666 || len(auth.Proof) != 0 {
		t.Fatalf("auth %+v on %x, want an empty proof", auth, f.Session)
	}
	p.sendRaw(&wire.RunStep{BuildID: "evil#1", Command: "touch pwned-before"}, 0x666)
	// The genuine master answers the same hello.
	p.accept(secret, hello, 0x777)
	p.sendRaw(&wire.RunStep{BuildID: "evil#2", Command: "touch pwned-stranger"}, 0x666)
	p.sendRaw(&wire.RunStep{BuildID: "evil#3", Command: "touch pwned-zero"}, 0)
	// Frames of the session injected by someone without the key: unsigned,
	// or signed with another key, numbered as the master's next frame.
	forged := wire.NewFrame(&wire.RunStep{BuildID: "evil#4", Command: "touch pwned-unsigned"})
	forged.Session, forged.Seq = 0x777, p.ep.Pending().Last+1
	p.sendFrame(forged)
	forged = wire.NewFrame(&wire.RunStep{BuildID: "evil#5", Command: "touch pwned-forged"})
	forged.Session, forged.Seq = 0x777, p.ep.Pending().Last+1
	wire.Sign(wire.SessionKey([]byte("not the secret"), hello.Nonce, nonceM, 0x777), forged)
	p.sendFrame(forged)
	r := p.run(0x777, &wire.RunStep{BuildID: "b#1", Command: "ls"})
	if r.stdout.String() != "" || r.exit.Code != 0 {
		t.Fatalf("stale or forged steps ran: ls shows %q, exit %+v", r.stdout.String(), r.exit)
	}
	// A genuine step replayed byte for byte (as anyone able to write to a
	// Kafka topic could) does not run again: the agent has it already.
	p.send(&wire.RunStep{BuildID: "m#1", Command: "echo ran >> marks"}, 0x777)
	step := p.conn.last(wire.TypeRunStep)
	p.collect(0x777, "m#1")
	p.sendBytes(step)
	// Nor is a replayed control frame answered twice.
	p.send(&wire.Ping{Nonce: 77}, 0x777)
	ping := p.conn.last(wire.TypePing)
	if _, msg := p.next(wire.TypePong); msg.(*wire.Pong).Nonce != 77 {
		t.Fatalf("pong %+v", msg)
	}
	p.sendBytes(ping)
	// (A second Pong or another run of m#1 would show up here.)
	r = p.run(0x777, &wire.RunStep{BuildID: "b#2", Command: "cat marks"})
	if r.stdout.String() != "ran\n" {
		t.Fatalf("marks %q: the replayed step ran", r.stdout.String())
	}
	p.stdin.Close()
	if code := p.wait(); code != 0 {
		t.Fatalf("exit status %d", code)
	}
	log := p.logText()
	for _, want := range []string{"the master's proof does not verify", "dropped a frame before the handshake completed",
		"dropped a frame of a session this agent never had", "dropped a frame with a bad MAC", "dropped duplicate frames", "dropped a replayed frame"} {
		if !strings.Contains(log, want) {
			t.Fatalf("log does not say %q:\n%s", want, log)
		}
	}
	if n := strings.Count(log, "dropped a frame with a bad MAC"); n != 2 {
		t.Fatalf("log mentions %d forged frames, want 2:\n%s", n, log)
	}
	if !strings.Contains(log, "stale_frames=3") || !strings.Contains(log, "forged_frames=3") || !strings.Contains(log, "replayed_frames=1") {
		t.Fatalf("log does not count 3 stale frames (forged challenge, 2 steps), 3 forged (the forged challenge's session after the handshake, 2 bad MACs) and 1 replayed (the ping):\n%s", log)
	}
}

// TestStdioLargeOutput: a few MiB of binary output arrive byte for byte.
func TestStdioLargeOutput(t *testing.T) {
	p := startAgent(t, nil)
	data := make([]byte, 5<<20+12345)
	_, _ = rand.Read(data)
	if err := os.WriteFile(filepath.Join(p.workdir, "data"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	p.handshake(nil, 1)
	r := p.run(1, &wire.RunStep{BuildID: "big#1", Command: "cat ../data", Workdir: "big"})
	if r.exit.Code != 0 {
		t.Fatalf("exit %+v", r.exit)
	}
	if got, want := sha256.Sum256(r.stdout.Bytes()), sha256.Sum256(data); got != want || r.stdout.Len() != len(data) {
		t.Fatalf("got %d bytes (sha256 %x), want %d (sha256 %x)", r.stdout.Len(), got, len(data), want)
	}
	if min := len(data) / (32 << 10); r.chunks < min {
		t.Fatalf("%d chunks, want at least %d", r.chunks, min)
	}
}

// TestStdioSmallBuffer: a step printing far more than -buffer-mib waits
// for the master's acknowledgements instead of buffering without bound;
// its output arrives whole, without waiting for heartbeats (they are rare
// here). The master acknowledges as core/session does (reliable.Endpoint:
// every AckEvery frames or AckBytes handled, and on every frame it sends).
func TestStdioSmallBuffer(t *testing.T) {
	for _, mib := range []string{"2", "1"} {
		t.Run(mib+"MiB", func(t *testing.T) {
			p := startAgent(t, nil, "-buffer-mib", mib, "-heartbeat", "1m", "-heartbeat-timeout", "2m")
			data := make([]byte, 5<<20+12345)
			_, _ = rand.Read(data)
			if err := os.WriteFile(filepath.Join(p.workdir, "data"), data, 0o600); err != nil {
				t.Fatal(err)
			}
			p.handshake(nil, 1)
			r := p.run(1, &wire.RunStep{BuildID: "big#1", Command: "cat data"})
			if r.exit.Code != 0 {
				t.Fatalf("exit %+v", r.exit)
			}
			if !bytes.Equal(r.stdout.Bytes(), data) {
				t.Fatalf("got %d bytes, want %d", r.stdout.Len(), len(data))
			}
		})
	}
}

// TestStdioResume: when the master falls silent the agent keeps its
// session and its steps, and says hello on the same connection to resume
// the session; the master resumes it and the step's output goes on where
// the master stopped, each byte once.
func TestStdioResume(t *testing.T) {
	p := startAgent(t, nil, "-heartbeat", "200ms", "-heartbeat-timeout", "4s")
	fifo := filepath.Join(p.workdir, "release")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	p.handshake(nil, 0x51)
	p.send(&wire.RunStep{BuildID: "r#1", Command: "echo before; read x < ../release; echo after", Workdir: "r"}, 0x51)
	if _, msg := p.next(wire.TypeOutput); string(msg.(*wire.Output).Data) != "before\n" {
		t.Fatalf("output %+v", msg)
	}
	// The master stops answering: the agent's pings go unanswered until it
	// says hello, resuming.
	p.silent = true
	f, msg := p.next(wire.TypeHello)
	p.silent = false
	hello := msg.(*wire.Hello)
	if f.Session != 0x51 || !hello.Resume || hello.LastSeq != 1 {
		t.Fatalf("hello %+v on session %x, want to resume session 51 holding frame 1", hello, f.Session)
	}
	if !p.accept(nil, hello, 0x51) {
		t.Fatal("not resumed")
	}
	if err := os.WriteFile(fifo, []byte("go\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := p.collect(0x51, "r#1")
	if r.stdout.String() != "after\n" || r.exit.Code != 0 {
		t.Fatalf("after the resume: stdout %q exit %+v", r.stdout.String(), r.exit)
	}
	r = p.run(0x51, &wire.RunStep{BuildID: "r#2", Command: "echo again"})
	if r.stdout.String() != "again\n" || r.exit.Code != 0 {
		t.Fatalf("next step: stdout %q exit %+v", r.stdout.String(), r.exit)
	}
	if p.dups != 0 {
		t.Fatalf("the agent sent %d duplicates", p.dups)
	}
	waitFor(t, func() bool { return strings.Contains(p.logText(), "session resumed") })
	if log := p.logText(); strings.Contains(log, "cancelling") {
		t.Fatalf("the resume cancelled steps:\n%s", log)
	}
}

// TestStdioCancelAndTimeout: Cancel kills the step's whole process group;
// a step's timeout is enforced by the agent.
func TestStdioCancelAndTimeout(t *testing.T) {
	p := startAgent(t, nil)
	p.handshake(nil, 7)
	p.send(&wire.RunStep{BuildID: "c#1", Command: "sleep 1000 & echo $!; wait", Workdir: "c/1"}, 7)
	_, msg := p.next(wire.TypeOutput)
	pid, err := strconv.Atoi(strings.TrimSpace(string(msg.(*wire.Output).Data)))
	if err != nil {
		t.Fatalf("pid from %q", msg.(*wire.Output).Data)
	}
	p.send(&wire.Cancel{BuildID: "c#1", Reason: "aborted by alice"}, 7)
	_, msg = p.next(wire.TypeExit)
	if e := msg.(*wire.Exit); e.BuildID != "c#1" || e.Code != -1 || e.Error != "cancelled: aborted by alice" {
		t.Fatalf("exit %+v", e)
	}
	waitGone(t, pid)

	r := p.run(7, &wire.RunStep{BuildID: "t#1", Command: "echo started; sleep 1000", TimeoutMillis: 300})
	if r.stdout.String() != "started\n" || r.exit.Code != -1 || !strings.Contains(r.exit.Error, "timed out") {
		t.Fatalf("stdout %q exit %+v", r.stdout.String(), r.exit)
	}
	r = p.run(7, &wire.RunStep{BuildID: "w#1", Command: "true", Workdir: "../../etc"})
	if r.exit.Code != -1 || !strings.Contains(r.exit.Error, "workspace") {
		t.Fatalf("escaping workspace: exit %+v", r.exit)
	}
}

// TestStdioConcurrentSteps: steps of different builds run at once.
func TestStdioConcurrentSteps(t *testing.T) {
	p := startAgent(t, nil)
	p.handshake(nil, 3)
	fifo := filepath.Join(p.workdir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// a waits for b to write the fifo: they can only both end if they run
	// together.
	p.send(&wire.RunStep{BuildID: "a#1", Command: "cat ../fifo", Workdir: "a"}, 3)
	p.send(&wire.RunStep{BuildID: "b#1", Command: "echo from-b > ../fifo", Workdir: "b"}, 3)
	exits := map[string]int32{}
	var out string
	for len(exits) < 2 {
		_, msg := p.nextAny()
		switch m := msg.(type) {
		case *wire.Output:
			out += string(m.Data)
		case *wire.Exit:
			exits[m.BuildID] = m.Code
		}
	}
	if out != "from-b\n" || exits["a#1"] != 0 || exits["b#1"] != 0 {
		t.Fatalf("output %q exits %v", out, exits)
	}
}

// TestStdioDrain: on SIGTERM the agent refuses new steps, lets the running
// one finish and report, says Close and exits 0.
func TestStdioDrain(t *testing.T) {
	p := startAgent(t, nil)
	fifo := filepath.Join(p.workdir, "release")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	p.handshake(nil, 9)
	p.send(&wire.RunStep{BuildID: "d#1", Command: "echo started; read x < ../release; echo finished", Workdir: "d"}, 9)
	p.next(wire.TypeOutput)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Wait until the agent drains: new steps are refused.
	for i := 0; ; i++ {
		r := p.run(9, &wire.RunStep{BuildID: fmt.Sprintf("late#%d", i), Command: "echo ran"})
		if r.exit.Error == "agent draining" && r.exit.Code == -1 && r.stdout.Len() == 0 {
			break
		}
		if r.exit.Code != 0 {
			t.Fatalf("late step: %+v", r.exit)
		}
	}
	if err := os.WriteFile(fifo, []byte("go\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := p.collect(9, "d#1")
	if r.stdout.String() != "finished\n" || r.exit.Code != 0 {
		t.Fatalf("drained step: stdout %q exit %+v", r.stdout.String(), r.exit)
	}
	if _, msg := p.next(wire.TypeClose); msg.(*wire.Close).Reason != "agent shutting down" {
		t.Fatalf("close %+v", msg)
	}
	if code := p.wait(); code != 0 {
		t.Fatalf("exit status %d", code)
	}
}

// TestStdioDrainTimeout: steps still running at the drain timeout are
// cancelled and reported before Close.
func TestStdioDrainTimeout(t *testing.T) {
	p := startAgent(t, nil, "-drain-timeout", "200ms")
	p.handshake(nil, 9)
	p.send(&wire.RunStep{BuildID: "d#1", Command: "echo started; sleep 1000", Workdir: "d"}, 9)
	p.next(wire.TypeOutput)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_, msg := p.next(wire.TypeExit)
	if e := msg.(*wire.Exit); e.Code != -1 || !strings.Contains(e.Error, "drain timeout") {
		t.Fatalf("exit %+v", e)
	}
	p.next(wire.TypeClose)
	if code := p.wait(); code != 0 {
		t.Fatalf("exit status %d", code)
	}
}

// TestStdioEOFCancelsSteps: when stdin ends the agent kills running steps
// and exits.
func TestStdioEOFCancelsSteps(t *testing.T) {
	p := startAgent(t, nil)
	p.handshake(nil, 5)
	p.send(&wire.RunStep{BuildID: "e#1", Command: "sleep 1000 & echo $!; wait"}, 5)
	_, msg := p.next(wire.TypeOutput)
	pid, err := strconv.Atoi(strings.TrimSpace(string(msg.(*wire.Output).Data)))
	if err != nil {
		t.Fatalf("pid from %q", msg.(*wire.Output).Data)
	}
	p.stdin.Close()
	if code := p.wait(); code != 0 {
		t.Fatalf("exit status %d", code)
	}
	waitGone(t, pid)
}

// TestStdioStdoutClosed: when the master stops reading (its end of stdout
// closed), the agent stops its steps and exits instead of dying of SIGPIPE
// and leaving them behind.
func TestStdioStdoutClosed(t *testing.T) {
	p := startAgent(t, nil, "-heartbeat", "100ms", "-heartbeat-timeout", "10s")
	p.handshake(nil, 5)
	p.send(&wire.RunStep{BuildID: "e#1", Command: "trap '' PIPE; sleep 1000 & echo $!; wait"}, 5)
	_, msg := p.next(wire.TypeOutput)
	pid, err := strconv.Atoi(strings.TrimSpace(string(msg.(*wire.Output).Data)))
	if err != nil {
		t.Fatalf("pid from %q", msg.(*wire.Output).Data)
	}
	p.stdout.Close()
	if code := p.wait(); code != 1 {
		t.Fatalf("exit status %d, want 1", code)
	}
	if log := p.logText(); !strings.Contains(log, "broken pipe") {
		t.Fatalf("log does not say why:\n%s", log)
	}
	waitGone(t, pid)
}

// waitGone waits until process pid is gone (or a zombie awaiting reaping).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || strings.Contains(string(b), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("process %d survived: %s", pid, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
