package nodes

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// waitTimeout bounds every wait on a condition: generous, because the
// machine running the tests may be busy; passing tests never wait that long.
const waitTimeout = 30 * time.Second

// syncBuffer is a bytes.Buffer safe for the concurrent writes of loggers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// count is how many lines of the log hold every one of parts.
func (s *syncBuffer) count(parts ...string) int {
	n := 0
	for _, line := range strings.Split(s.String(), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

// testLauncher is an in-process launcher.Launcher whose Launch the test
// decides; it counts the launches.
type testLauncher struct {
	launches atomic.Int32
	launch   func(ctx context.Context, n int) (launcher.Conn, error)
	// last is the node of the last launch.
	last atomic.Pointer[launcher.Node]
}

func (l *testLauncher) Info(context.Context) (*launcher.Info, error) { return &launcher.Info{}, nil }
func (l *testLauncher) Schema(context.Context) (*launcher.Schema, error) {
	return &launcher.Schema{}, nil
}
func (l *testLauncher) Configure(context.Context, *launcher.Config) error { return nil }
func (l *testLauncher) Teardown(context.Context, string) error            { return nil }
func (l *testLauncher) Launch(ctx context.Context, node *launcher.Node) (launcher.Conn, error) {
	l.last.Store(node)
	return l.launch(ctx, int(l.launches.Add(1)))
}

// testPlugin stands for a *plugins.Plugin running l.
type testPlugin struct {
	proc       *launcher.Process
	restarting atomic.Int32
	restarted  chan struct{}
}

func (p *testPlugin) Process() *launcher.Process { return p.proc }
func (p *testPlugin) Restarting() int            { return int(p.restarting.Load()) }
func (p *testPlugin) Subscribe() <-chan struct{} { return p.restarted }

// startNode runs a manager of one node "n1" of launcher "test" backed by l
// until the test ends; it returns the manager, its plugin and its log.
func startNode(t *testing.T, l *testLauncher, node config.Node, setup func(*Manager)) (*Manager, *testPlugin, *syncBuffer) {
	t.Helper()
	node.Name, node.Launcher, node.Executors = "n1", "test", 1
	var buf syncBuffer
	logger := hclog.New(&hclog.LoggerOptions{Name: "nodes", Level: hclog.Debug, Output: &buf})
	m := NewManager(&config.Config{Nodes: []*config.Node{&node}}, nil, Options{Heartbeat: 100 * time.Millisecond, HeartbeatTimeout: 2 * time.Second}, logger)
	p := &testPlugin{proc: &launcher.Process{Launcher: l, Info: &launcher.Info{}}, restarted: make(chan struct{}, 1)}
	m.plugin = func(name string) plugin {
		if name == "test" {
			return p
		}
		return nil
	}
	if setup != nil {
		setup(m)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("log:\n%s", buf.String())
		}
	})
	return m, p, &buf
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A launch refused for good is asked again every permanentRetry; while the
// answer stays the same refusal, the node stays offline with it: no
// launching flip, no new since, no new log line. A different refusal is
// shown (and logged) once.
func TestPermanentRefusalIsAskedAgainQuietly(t *testing.T) {
	refusal := atomic.Value{}
	refusal.Store("host key refused: want SHA256:aaa, got SHA256:bbb")
	l := &testLauncher{launch: func(context.Context, int) (launcher.Conn, error) {
		if r := refusal.Load().(string); r != "" {
			return nil, launcher.Permanent(errors.New(r))
		}
		return newPipeConn(), nil // an agent that never speaks
	}}
	m, _, log := startNode(t, l, config.Node{}, func(m *Manager) { m.permanentRetry = 20 * time.Millisecond })
	n := m.Get("n1")
	waitFor(t, "the first refusal", func() bool { return n.Status().Reason == refusal.Load().(string) })
	first := n.Status()
	asked := l.launches.Load()
	waitFor(t, "five more asks", func() bool { return l.launches.Load() >= asked+5 })
	// Sample the state between asks: it never leaves offline.
	for range 20 {
		if st := n.Status(); st.State != StateOffline || !st.Since.Equal(first.Since) || st.Reason != first.Reason {
			t.Fatalf("while re-asked: state %q since %v reason %q, want %q since %v reason %q",
				st.State, st.Since, st.Reason, StateOffline, first.Since, first.Reason)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := log.count("node state:", "state=launching"); got != 1 {
		t.Errorf("%d \"launching\" state lines, want 1 (the first launch)", got)
	}
	if got := log.count("node state:", "SHA256:bbb"); got != 1 {
		t.Errorf("%d state lines with the refusal, want 1", got)
	}

	refusal.Store("host key refused: want SHA256:aaa, got SHA256:ccc")
	waitFor(t, "the new refusal", func() bool { return n.Status().Reason == refusal.Load().(string) })
	asked = l.launches.Load()
	waitFor(t, "five more asks", func() bool { return l.launches.Load() >= asked+5 })
	if got := log.count("node state:", "SHA256:ccc"); got != 1 {
		t.Errorf("%d state lines with the new refusal, want 1", got)
	}
	if got := log.count("node state:", "state=launching"); got != 1 {
		t.Errorf("%d \"launching\" state lines, want 1", got)
	}

	// Fixed: the next ask launches, and the node says it waits for its
	// agent.
	refusal.Store("")
	waitFor(t, "the node to wait for its agent", func() bool {
		st := n.Status()
		return st.State == StateLaunching && st.Reason == "waiting for the agent to connect"
	})
}

// pipeConn is a launcher.Conn whose other end the test plays.
type pipeConn struct {
	toAgent, toMaster chan []byte
	closed            chan struct{}
	once              sync.Once
}

func newPipeConn() *pipeConn {
	return &pipeConn{toAgent: make(chan []byte, 64), toMaster: make(chan []byte, 64), closed: make(chan struct{})}
}

func (c *pipeConn) Send(b []byte) error {
	select {
	case c.toAgent <- b:
		return nil
	case <-c.closed:
		return io.ErrClosedPipe
	}
}

func (c *pipeConn) Recv() ([]byte, error) {
	select {
	case b := <-c.toMaster:
		return b, nil
	case <-c.closed:
		return nil, io.EOF
	}
}

func (c *pipeConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// wrongSecretAgent plays an agent that answers every challenge with a
// wrong proof and says hello again, until the connection closes.
func wrongSecretAgent(c *pipeConn) {
	send := func(m wire.Message, session uint64) bool {
		f := wire.NewFrame(m)
		f.Session = session
		b, err := f.Encode()
		if err != nil {
			panic(err)
		}
		select {
		case c.toMaster <- b:
			return true
		case <-c.closed:
			return false
		}
	}
	for {
		nonce := bytes.Repeat([]byte{7}, wire.NonceSize)
		if !send(&wire.Hello{Node: "n1", AgentVersion: "test", OS: "linux", Arch: "amd64", Nonce: nonce}, 0) {
			return
		}
		for {
			var b []byte
			select {
			case b = <-c.toAgent:
			case <-c.closed:
				return
			}
			f, err := wire.Decode(b, wire.MaxFrameSize)
			if err != nil {
				continue
			}
			m, err := f.Message()
			if err != nil {
				continue
			}
			if _, ok := m.(*wire.Challenge); ok {
				if !send(&wire.Auth{Proof: bytes.Repeat([]byte{9}, 32)}, f.Session) {
					return
				}
			}
			if _, ok := m.(*wire.AuthResult); ok {
				break
			}
		}
	}
}

// An agent that keeps failing to authenticate on its connection gets the
// node's heartbeat timeout from its first refusal: then the connection is
// closed and the node relaunched, staying offline with the refusal as its
// reason (relaunches that meet it again change nothing).
func TestRefusedAgentHandshakeIsBounded(t *testing.T) {
	var conns []*pipeConn
	var mu sync.Mutex
	l := &testLauncher{launch: func(context.Context, int) (launcher.Conn, error) {
		c := newPipeConn()
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		go wrongSecretAgent(c)
		return c, nil
	}}
	m, _, log := startNode(t, l, config.Node{HeartbeatTimeout: 300 * time.Millisecond}, nil)
	waitFor(t, "two relaunches", func() bool { return l.launches.Load() >= 3 })
	mu.Lock()
	first := conns[0]
	mu.Unlock()
	select {
	case <-first.closed:
	default:
		t.Fatal("the first connection is still open after the relaunch")
	}
	if st := m.Get("n1").Status(); st.State != StateOffline || st.Reason != "authentication failed: wrong secret" {
		t.Errorf("node %s %q, want offline with the refusal", st.State, st.Reason)
	}
	if got := log.count("no authenticated hello within the heartbeat timeout", "timeout=300ms"); got < 2 {
		t.Errorf("%d lines saying the handshake was given up, want 2 or more", got)
	}
	if got := log.count("node state:", "state=launching"); got != 2 {
		t.Errorf("%d \"launching\" state lines, want 2 (the first launch and its waiting)", got)
	}
	if got := log.count("node state:", "wrong secret"); got != 1 {
		t.Errorf("%d state lines with the refusal, want 1", got)
	}
}

// A launcher that ignores its context is given up on after the master's
// backstop, with a reason that says so.
func TestLaunchBackstop(t *testing.T) {
	never := make(chan struct{})
	t.Cleanup(func() { close(never) })
	l := &testLauncher{launch: func(context.Context, int) (launcher.Conn, error) {
		<-never // ignores its context
		return nil, errors.New("too late")
	}}
	m, _, _ := startNode(t, l, config.Node{}, func(m *Manager) { m.launchBackstop = 200 * time.Millisecond })
	n := m.Get("n1")
	want := "launch not done within 200ms (the master's backstop; the launcher did not bound its launch)"
	waitFor(t, "the backstop's reason", func() bool {
		st := n.Status()
		return st.State == StateOffline && st.Reason == want
	})
	waitFor(t, "a relaunch", func() bool { return l.launches.Load() >= 2 })
}

// While the launcher plugin restarts, the node's reason says so, with the
// attempt, rather than the error its calls fail with.
func TestPluginRestartingReason(t *testing.T) {
	l := &testLauncher{launch: func(context.Context, int) (launcher.Conn, error) {
		return nil, errors.New("kafka launcher is not configured")
	}}
	m, p, _ := startNode(t, l, config.Node{}, func(m *Manager) {
		m.plugin("test").(*testPlugin).restarting.Store(3) // before the first launch
	})
	n := m.Get("n1")
	waitFor(t, "the restarting reason", func() bool {
		st := n.Status()
		return st.State == StateOffline && st.Reason == "launcher test restarting (attempt 3)"
	})
	p.restarting.Store(0)
	p.restarted <- struct{}{}
	waitFor(t, "the launcher's own error once it is back", func() bool {
		return n.Status().Reason == "kafka launcher is not configured"
	})
}
