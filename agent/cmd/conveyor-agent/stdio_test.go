package main

// These tests build conveyor-agent (CGO_ENABLED=0, as shipped) and drive
// it over `-transport stdio` with wire frames, playing the master.

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
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

// proc is a running agent and the test's master end of its stdio.
type proc struct {
	t       *testing.T
	cmd     *exec.Cmd
	conn    interface{ Send([]byte) error }
	stdin   io.WriteCloser
	stdout  io.ReadCloser
	workdir string
	in      chan *wire.Frame
	seq     uint64
	// skipHellos skips repeated Hellos while waiting for other frames.
	skipHellos bool
	// key signs the frames of session keyID, as the master does.
	key   []byte
	keyID uint64

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
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.stdin, p.stdout = stdin, stdout
	conn := launcher.NewStreamConn(stdout, stdin, stdin.Close, "test")
	p.conn = conn
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
		if t.Failed() {
			t.Logf("agent log:\n%s", p.logText())
		}
	})
	return p
}

func (p *proc) send(msg wire.Message, session uint64) {
	p.t.Helper()
	p.seq++
	f := wire.NewFrame(msg)
	f.Session, f.Seq = session, p.seq
	if p.key != nil && session == p.keyID {
		wire.Sign(p.key, f)
	}
	if err := p.conn.Send(f.Append(nil)); err != nil {
		p.t.Fatalf("send %v: %v", f.Type, err)
	}
}

// next returns the agent's next frame other than a Ping; it fails unless
// the frame has type typ.
func (p *proc) next(typ wire.Type) (*wire.Frame, wire.Message) {
	p.t.Helper()
	timeout := time.NewTimer(waitTimeout)
	defer timeout.Stop()
	for {
		select {
		case f, ok := <-p.in:
			if !ok {
				p.t.Fatalf("stdout ended waiting for %v", typ)
			}
			if f == nil {
				p.t.Fatal("stdout carried something other than frames")
			}
			if f.Type == wire.TypePing && typ != wire.TypePing || p.skipHellos && f.Type == wire.TypeHello && typ != wire.TypeHello {
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
		case <-timeout.C:
			p.t.Fatalf("no %v from the agent", typ)
		}
	}
}

// handshake authenticates the agent holding secret; it returns session id.
func (p *proc) handshake(secret []byte, id uint64) {
	p.t.Helper()
	f, msg := p.next(wire.TypeHello)
	hello := msg.(*wire.Hello)
	if f.Session != 0 || hello.Node != "n1" || len(hello.Nonce) != wire.NonceSize || hello.OS != runtime.GOOS {
		p.t.Fatalf("hello %+v on session %x", hello, f.Session)
	}
	p.accept(secret, hello, id)
}

func (p *proc) accept(secret []byte, hello *wire.Hello, id uint64) {
	p.t.Helper()
	nonceM := make([]byte, wire.NonceSize)
	_, _ = rand.Read(nonceM)
	p.send(&wire.Challenge{Nonce: nonceM, Proof: wire.MasterProof(secret, hello.Nonce, nonceM)}, id)
	f, msg := p.next(wire.TypeAuth)
	if f.Session != id || !wire.ProofEqual(msg.(*wire.Auth).Proof, wire.AgentProof(secret, nonceM, hello.Nonce)) {
		p.t.Fatalf("bad auth %+v on session %x", msg, f.Session)
	}
	p.key, p.keyID = wire.SessionKey(secret, hello.Nonce, nonceM, id), id
	p.send(&wire.AuthResult{OK: true, Session: id}, id)
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

// nextAny returns the agent's next frame other than a Ping.
func (p *proc) nextAny() (*wire.Frame, wire.Message) {
	p.t.Helper()
	return p.nextFrame(func(f *wire.Frame) bool { return f.Type != wire.TypePing })
}

// nextFrame returns the agent's next frame that satisfies match, skipping
// the others.
func (p *proc) nextFrame(match func(*wire.Frame) bool) (*wire.Frame, wire.Message) {
	p.t.Helper()
	timeout := time.NewTimer(waitTimeout)
	defer timeout.Stop()
	for {
		select {
		case f, ok := <-p.in:
			if !ok || f == nil {
				p.t.Fatal("the connection ended or carried something other than frames")
			}
			if !match(f) {
				continue
			}
			msg, err := f.Message()
			if err != nil {
				p.t.Fatal(err)
			}
			return f, msg
		case <-timeout.C:
			p.t.Fatal("no frame from the agent")
		}
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
// verify gets an empty Auth and no session; frames of another session are
// dropped without being executed.
func TestStdioForgedChallengeAndStaleFrames(t *testing.T) {
	secret := []byte("0123456789abcdef")
	p := startAgent(t, nil, "-secret", hex.EncodeToString(secret))
	_, msg := p.next(wire.TypeHello)
	hello := msg.(*wire.Hello)
	nonceM := make([]byte, wire.NonceSize)
	p.send(&wire.Challenge{Nonce: nonceM, Proof: wire.MasterProof([]byte("not the secret"), hello.Nonce, nonceM)}, 0x666)
	if f, msg := p.next(wire.TypeAuth); f.Session != 0x666 || len(msg.(*wire.Auth).Proof) != 0 {
		t.Fatalf("auth %+v on %x, want an empty proof", msg, f.Session)
	}
	p.send(&wire.RunStep{BuildID: "evil#1", Command: "touch pwned-before"}, 0x666)
	// The genuine master answers the same hello.
	p.accept(secret, hello, 0x777)
	p.send(&wire.RunStep{BuildID: "evil#2", Command: "touch pwned-stale"}, 0x666)
	p.send(&wire.RunStep{BuildID: "evil#3", Command: "touch pwned-zero"}, 0)
	r := p.run(0x777, &wire.RunStep{BuildID: "b#1", Command: "ls"})
	if r.stdout.String() != "" || r.exit.Code != 0 {
		t.Fatalf("stale steps ran: ls shows %q, exit %+v", r.stdout.String(), r.exit)
	}
	// A genuine step replayed byte for byte (as anyone able to write to a
	// Kafka topic could) does not run again.
	p.seq++
	genuine := wire.NewFrame(&wire.RunStep{BuildID: "m#1", Command: "echo ran >> marks"})
	genuine.Session, genuine.Seq = 0x777, p.seq
	wire.Sign(p.key, genuine)
	raw := genuine.Append(nil)
	if err := p.conn.Send(raw); err != nil {
		t.Fatal(err)
	}
	p.collect(0x777, "m#1")
	if err := p.conn.Send(raw); err != nil {
		t.Fatal(err)
	}
	r = p.run(0x777, &wire.RunStep{BuildID: "b#2", Command: "cat marks"})
	if r.stdout.String() != "ran\n" {
		t.Fatalf("marks %q: the replayed step ran", r.stdout.String())
	}
	p.stdin.Close()
	if code := p.wait(); code != 0 {
		t.Fatalf("exit status %d", code)
	}
	log := p.logText()
	if !strings.Contains(log, "the master's proof does not verify") || !strings.Contains(log, "dropped a frame of another session") {
		t.Fatalf("log does not mention the dropped frames:\n%s", log)
	}
	if !strings.Contains(log, "stale_frames=4") || !strings.Contains(log, "replayed_frames=1") {
		t.Fatalf("log does not count 4 stale frames (forged challenge, 3 steps) and 1 replayed:\n%s", log)
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
