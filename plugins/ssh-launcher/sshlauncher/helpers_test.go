package sshlauncher

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/zclconf/go-cty/cty"

	"github.com/conveyor-ci/conveyor/plugins/ssh-launcher/sshdtest"
	"github.com/conveyor-ci/conveyor/sdk/hclspec"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// pongAgent is the sdk's stdio test agent, built once.
var pongAgent string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sshlauncher-test-")
	if err != nil {
		panic(err)
	}
	pongAgent = filepath.Join(dir, "pongagent")
	cmd := exec.Command("go", "build", "-o", pongAgent, "github.com/conveyor-ci/conveyor/sdk/launchertest/testdata/pongagent")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	code := 1
	if err := cmd.Run(); err == nil {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// logSink collects log output and lets tests wait for a line.
type logSink struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newLogSink() *logSink { return &logSink{changed: make(chan struct{})} }

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	close(s.changed)
	s.changed = make(chan struct{})
	return len(p), nil
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// count returns how many times substr was logged.
func (s *logSink) count(substr string) int {
	return strings.Count(s.String(), substr)
}

// waitFor blocks until substr has been logged n times.
func (s *logSink) waitFor(t *testing.T, substr string, n int) {
	t.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		got := strings.Count(s.buf.String(), substr)
		ch := s.changed
		s.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("%q not logged %d times in 30s; log:\n%s", substr, n, s.String())
		}
	}
}

// fixture is an sshd and a configured launcher.
type fixture struct {
	t      *testing.T
	srv    *sshdtest.Server
	l      *Launcher
	log    *logSink
	remote string // the "remote" directory agents go to
}

func newFixture(t *testing.T, opts sshdtest.Options) *fixture {
	t.Helper()
	srv := sshdtest.Start(t, opts)
	sink := newLogSink()
	logger := hclog.New(&hclog.LoggerOptions{Output: sink, Level: hclog.Debug})
	f := &fixture{t: t, srv: srv, l: New(logger), log: sink, remote: t.TempDir()}
	t.Cleanup(func() {
		f.l.mu.Lock()
		var names []string
		for n := range f.l.running {
			names = append(names, n)
		}
		f.l.mu.Unlock()
		for _, n := range names {
			_ = f.l.Teardown(context.Background(), n)
		}
		if t.Failed() {
			t.Logf("launcher log:\n%s\nsshd log:\n%s", sink.String(), srv.Log())
		}
	})
	return f
}

// baseNode is a node block that works against the fixture's sshd.
func (f *fixture) baseNode() string { return f.node() }

// node is baseNode with attributes replaced: pairs of name and HCL
// expression; an empty expression drops the attribute. The name
// "host_key_verification" takes the block's body.
func (f *fixture) node(kv ...string) string {
	attrs := map[string]string{
		"host":                  `"127.0.0.1"`,
		"port":                  strconv.Itoa(f.srv.Port),
		"user":                  strconv.Quote(f.srv.User),
		"private_key_file":      strconv.Quote(f.srv.ClientKeyFile),
		"agent_path":            strconv.Quote(f.agentPath()),
		"workdir":               strconv.Quote(filepath.Join(f.remote, "work")),
		"retry_wait":            `"50ms"`,
		"host_key_verification": "known_hosts_file = " + strconv.Quote(f.srv.KnownHostsFile),
	}
	for i := 0; i+1 < len(kv); i += 2 {
		attrs[kv[i]] = kv[i+1]
	}
	names := make([]string, 0, len(attrs))
	for k := range attrs {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		switch v := attrs[k]; {
		case v == "":
		case k == "host_key_verification":
			fmt.Fprintf(&b, "host_key_verification {\n%s\n}\n", v)
		default:
			fmt.Fprintf(&b, "%s = %s\n", k, v)
		}
	}
	return b.String()
}

func (f *fixture) agentPath() string { return filepath.Join(f.remote, "bin", "conveyor-agent") }

// decode decodes HCL against one of the launcher's schemas, as the host does.
func decode(t *testing.T, spec *hclspec.Spec, src string) cty.Value {
	t.Helper()
	hs, err := hclspec.Convert(spec)
	if err != nil {
		t.Fatal(err)
	}
	file, diags := hclparse.NewParser().ParseHCL([]byte(src), "test.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	v, diags := hcldec.Decode(file.Body, hs, nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return v
}

// configure configures the launcher with one node.
func (f *fixture) configure(global, node string) (*launcher.Node, error) {
	f.t.Helper()
	if global == "" {
		global = fmt.Sprintf("agent_binary = %q", pongAgent)
	}
	s := schema()
	n := &launcher.Node{Name: "n1", Config: decode(f.t, s.Node, node)}
	err := f.l.Configure(context.Background(), &launcher.Config{
		Host:   launcher.Host{ServerName: "test", DataDir: filepath.Join(f.remote, "data")},
		Global: decode(f.t, s.Global, global),
		Nodes:  []*launcher.Node{n},
	})
	return n, err
}

func (f *fixture) mustConfigure(global, node string) *launcher.Node {
	f.t.Helper()
	n, err := f.configure(global, node)
	if err != nil {
		f.t.Fatalf("Configure: %v", err)
	}
	return n
}

func (f *fixture) launch(n *launcher.Node) launcher.Conn {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := f.l.Launch(ctx, n)
	if err != nil {
		f.t.Fatalf("Launch: %v", err)
	}
	return c
}

// pingPong checks a frame round trip.
func pingPong(t *testing.T, c launcher.Conn, n int) {
	t.Helper()
	var seed [8]byte
	_, _ = rand.Read(seed[:])
	base := binary.BigEndian.Uint64(seed[:]) >> 1
	for i := range n {
		if err := c.Send(wire.Marshal(&wire.Ping{Nonce: base + uint64(i)})); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	for i := 0; i < n; {
		raw, err := recvTimeout(c, 30*time.Second)
		if err != nil {
			t.Fatalf("recv pong %d: %v", i, err)
		}
		_, msg, err := wire.Unmarshal(raw)
		if err != nil {
			t.Fatal(err)
		}
		if p, ok := msg.(*wire.Pong); ok {
			if p.Nonce != base+uint64(i) {
				t.Fatalf("pong nonce %d, want %d", p.Nonce, base+uint64(i))
			}
			i++
		}
	}
}

// recvTimeout is Recv with a bound.
func recvTimeout(c launcher.Conn, d time.Duration) ([]byte, error) {
	type res struct {
		b   []byte
		err error
	}
	ch := make(chan res, 1)
	go func() {
		b, err := c.Recv()
		ch <- res{b, err}
	}()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case r := <-ch:
		return r.b, r.err
	case <-timer.C:
		return nil, fmt.Errorf("no frame and no error within %s", d)
	}
}

// recvErr drains frames until Recv fails and returns the error.
func recvErr(t *testing.T, c launcher.Conn) error {
	t.Helper()
	for {
		_, err := recvTimeout(c, 30*time.Second)
		if err != nil {
			if strings.Contains(err.Error(), "no frame and no error within") {
				t.Fatal(err)
			}
			return err
		}
	}
}

// eventually polls cond until it holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// agentsRunning counts remote agent processes under the fixture's sshd.
func (f *fixture) agentsRunning() int {
	n := 0
	for _, p := range f.srv.Processes() {
		if strings.Contains(p, "-transport stdio") {
			n++
		}
	}
	return n
}

func inode(t *testing.T, file string) uint64 {
	t.Helper()
	st, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}
