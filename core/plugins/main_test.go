package plugins

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl/v2"

	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// Binaries built once by TestMain.
var (
	binDir    string // holds the plugins, as a plugin_dir
	localBin  string // the example local launcher
	oldBin    string // testdata/oldplugin: protocol version 1 only
	pongAgent string // an agent answering Ping with Pong over stdio
)

// waitTimeout bounds every wait on a condition. It is generous because the
// machine running the tests may be busy; passing tests never wait that long.
const waitTimeout = 30 * time.Second

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "conveyor-plugins-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	localBin = filepath.Join(dir, BinaryPrefix+"local")
	oldBin = filepath.Join(dir, BinaryPrefix+"old")
	// The agent lives elsewhere, so that binDir holds plugins only.
	if err := os.Mkdir(filepath.Join(dir, "agents"), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pongAgent = filepath.Join(dir, "agents", "pongagent")

	builds := map[string]string{
		localBin:  "../../sdk/examples/local-launcher",
		oldBin:    "./testdata/oldplugin",
		pongAgent: "../../sdk/launchertest/testdata/pongagent",
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(builds))
	for out, pkg := range builds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command("go", "build", "-o", out, pkg)
			if b, err := cmd.CombinedOutput(); err != nil {
				errs <- fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
			}
		}()
	}
	wg.Wait()
	close(errs)
	failed := false
	for err := range errs {
		fmt.Fprintln(os.Stderr, err)
		failed = true
	}
	if failed {
		return 1
	}
	return m.Run()
}

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

// newManager returns a manager stopped when the test ends. Its log (the
// plugins' included) is printed only when the test fails.
func newManager(t *testing.T) *Manager {
	t.Helper()
	var buf syncBuffer
	m := NewManager(hclog.New(&hclog.LoggerOptions{Name: "host", Level: hclog.Debug, Output: &buf}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("host log:\n%s", buf.String())
		}
	})
	t.Cleanup(m.Stop) // runs first: cleanups run last-registered first
	return m
}

// testContext is a context bounded by waitTimeout and the test's life.
func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

var placeholderRE = regexp.MustCompile(`@[A-Z0-9_]+@`)

// writeConfig copies testdata/hcl/NAME into a temporary directory with the
// placeholders @BINDIR@, @DATADIR@ and @PONGAGENT@, plus the extra
// old/new pairs, replaced. Replacing placeholders keeps every line and
// column of the fixture, so positions can be asserted against it.
func writeConfig(t *testing.T, name string, extra ...string) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("testdata", "hcl", name))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pairs := append([]string{
		"@BINDIR@", binDir,
		"@DATADIR@", filepath.Join(dir, "data"),
		"@PONGAGENT@", pongAgent,
	}, extra...)
	text := strings.NewReplacer(pairs...).Replace(string(src))
	if ph := placeholderRE.FindString(text); ph != "" {
		t.Fatalf("fixture %s: placeholder %s not replaced", name, ph)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// loadConfig writes the fixture (see writeConfig) and loads it; the
// configuration itself must be valid.
func loadConfig(t *testing.T, name string, extra ...string) *config.Config {
	t.Helper()
	cfg, diags := config.Load(writeConfig(t, name, extra...))
	if len(diags) > 0 {
		t.Fatalf("config.Load(%s):\n%s", name, diagText(cfg, diags))
	}
	return cfg
}

// diagText renders diagnostics the way the conveyor command prints them.
func diagText(cfg *config.Config, diags hcl.Diagnostics) string {
	var buf bytes.Buffer
	if err := config.WriteDiagnostics(&buf, cfg.Files, diags); err != nil {
		return err.Error()
	}
	return buf.String()
}

// mustLoad runs Load and fails the test on any diagnostic.
func mustLoad(t *testing.T, cfg *config.Config, m *Manager) {
	t.Helper()
	if diags := Load(testContext(t), cfg, m, LoadOptions{Version: "test"}); len(diags) > 0 {
		t.Fatalf("Load:\n%s", diagText(cfg, diags))
	}
}

// waitFor polls cond until it holds, failing the test after waitTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", waitTimeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processAlive reports whether pid is a running process. A zombie has
// already died (it only waits for its parent, or init, to reap it), so it
// counts as gone.
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// The state follows the parenthesised command name, which may itself
	// contain spaces and parentheses.
	rest := b[bytes.LastIndexByte(b, ')')+1:]
	fields := strings.Fields(string(rest))
	return len(fields) == 0 || (fields[0] != "Z" && fields[0] != "X")
}

// waitGone waits until pid has died.
func waitGone(t *testing.T, what string, pid int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s (pid %d) to die", what, pid), func() bool { return !processAlive(pid) })
}

// agentConn is a launched node's connection with a goroutine receiving its
// frames, so that tests can wait for a frame with a deadline.
type agentConn struct {
	launcher.Conn
	pid    int // the agent's pid, from the connection's description
	frames chan recvResult
}

type recvResult struct {
	frame []byte
	err   error
}

// launchNode launches node name of cfg through p's current process.
func launchNode(t *testing.T, p *Plugin, cfg *config.Config, name string) *agentConn {
	t.Helper()
	l := cfg.Launcher(cfg.Node(name).Launcher)
	var node *launcher.Node
	for _, n := range HostConfig(cfg, l, LoadOptions{}).Nodes {
		if n.Name == name {
			node = n
		}
	}
	if node == nil {
		t.Fatalf("HostConfig has no node %q", name)
	}
	conn, err := p.Launcher().Launch(testContext(t), node)
	if err != nil {
		t.Fatalf("launch %s: %v", name, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ac := &agentConn{Conn: conn, frames: make(chan recvResult, 1024)}
	if d, ok := conn.(launcher.Describer); ok {
		_, _ = fmt.Sscanf(d.Description(), "pid %d", &ac.pid)
	}
	go func() {
		for {
			f, err := conn.Recv()
			ac.frames <- recvResult{f, err}
			if err != nil {
				return
			}
		}
	}()
	return ac
}

// recv returns the next frame, or an error when the connection ended or no
// frame came within waitTimeout.
func (c *agentConn) recv() ([]byte, error) {
	select {
	case r := <-c.frames:
		return r.frame, r.err
	case <-time.After(waitTimeout):
		return nil, fmt.Errorf("no frame within %s", waitTimeout)
	}
}

// pingPong sends n pings with nonces base, base+1, ... and expects exactly
// the n matching pongs back, in order.
func pingPong(t *testing.T, c *agentConn, base uint64, n int) {
	t.Helper()
	for i := range n {
		if err := c.Send(wire.Marshal(&wire.Ping{Nonce: base + uint64(i), UnixNano: time.Now().UnixNano()})); err != nil {
			t.Fatalf("send ping %d: %v", i, err)
		}
	}
	for i := range n {
		raw, err := c.recv()
		if err != nil {
			t.Fatalf("waiting for pong %d of %d: %v", i+1, n, err)
		}
		_, msg, err := wire.Unmarshal(raw)
		if err != nil {
			t.Fatalf("frame %d from the agent does not decode: %v", i+1, err)
		}
		pong, ok := msg.(*wire.Pong)
		if !ok {
			t.Fatalf("frame %d from the agent is a %s, want a Pong", i+1, msg.Type())
		}
		if want := base + uint64(i); pong.Nonce != want {
			t.Fatalf("pong %d carries nonce %d, want %d", i+1, pong.Nonce, want)
		}
	}
}
