// Package cluster runs the built Conveyor binaries together for end-to-end
// tests: a master with its launcher plugins and real agents, driven through
// the HTTP API the way a user drives it. Tests of other modules (the SSH
// launcher's, say) use it too, so that every end-to-end test starts a
// cluster one way.
package cluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
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

	"github.com/conveyor-ci/conveyor/core/client"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/store"
)

// binaries maps each binary to its package, relative to the repository.
var binaries = map[string]string{
	"conveyor":                "core/cmd/conveyor",
	"conveyor-agent":          "agent/cmd/conveyor-agent",
	"conveyor-launcher-kafka": "plugins/kafka-launcher/cmd/conveyor-launcher-kafka",
	"conveyor-launcher-ssh":   "plugins/ssh-launcher/cmd/conveyor-launcher-ssh",
	"conveyor-launcher-local": "sdk/examples/local-launcher",
}

// Build compiles every binary into a new directory and returns it; call it
// from TestMain and remove the directory afterwards.
func Build() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("cannot locate the repository")
	}
	root := filepath.Join(filepath.Dir(file), "..", "..", "..")
	dir, err := os.MkdirTemp("", "conveyor-e2e-bin-")
	if err != nil {
		return "", err
	}
	for name, pkg := range binaries {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), "./"+pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("build %s: %v\n%s", name, err, out)
		}
	}
	return dir, nil
}

// Main is an end-to-end package's TestMain: it builds the binaries into a
// temporary directory, stores its path in *bin, runs the tests, removes the
// directory and exits with the tests' status.
func Main(m *testing.M, bin *string) {
	dir, err := Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*bin = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// FreeAddr returns a loopback address nobody listens on right now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Options describe a cluster's configuration.
type Options struct {
	// Bin is the directory Build returned.
	Bin string
	// Launchers are extra `launcher` blocks; kafka (embedded broker) and
	// local are always declared.
	Launchers string
	// Nodes and Jobs are the node and job blocks.
	Nodes, Jobs string
	// KafkaBrokers, when set, point the kafka launcher at these brokers
	// instead of its embedded broker; KafkaAddr is then the first of them
	// (the agents' bootstrap address).
	KafkaBrokers []string
	// Kafka is more of the kafka launcher block's body (tls, sasl,
	// embedded blocks).
	Kafka string
}

// Cluster is a running master with its data and agents.
type Cluster struct {
	// API talks to the master, with its API token.
	API *client.Client
	// Token is the master's API token, which it generated into
	// data/api-token at its first start.
	Token string
	// Dir holds the configuration, data and agents' directories.
	Dir string
	// HTTPAddr and KafkaAddr are the API's and the embedded broker's
	// loopback addresses (KafkaAddr is Options.KafkaBrokers[0] when set).
	HTTPAddr, KafkaAddr string

	t      testing.TB
	opts   Options
	config string

	mu        sync.Mutex
	server    *exec.Cmd
	serverLog *bytes.Buffer
	agents    []*exec.Cmd
	agentLogs map[string]int // agents started per node
}

// Start writes the configuration and starts the master; the test's cleanup
// stops it and its agents, logging what they printed when the test failed.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c := &Cluster{t: t, opts: opts, Dir: t.TempDir(), HTTPAddr: FreeAddr(t)}
	if len(opts.KafkaBrokers) > 0 {
		c.KafkaAddr = opts.KafkaBrokers[0]
	} else {
		c.KafkaAddr = FreeAddr(t)
	}
	c.WriteConfig(opts.Nodes, opts.Jobs)
	t.Cleanup(c.stop) // before StartServer: a server that fails to start is stopped and its log shown
	c.StartServer()
	return c
}

// Bin is the path of a built binary.
func (c *Cluster) Bin(name string) string { return filepath.Join(c.opts.Bin, name) }

// WriteConfig (re)writes the server's configuration with other node and
// job blocks; it takes effect at the next StartServer.
func (c *Cluster) WriteConfig(nodeBlocks, jobBlocks string) {
	c.t.Helper()
	kafka := fmt.Sprintf("embedded_addr = %q", c.KafkaAddr)
	if len(c.opts.KafkaBrokers) > 0 {
		quoted := make([]string, len(c.opts.KafkaBrokers))
		for i, b := range c.opts.KafkaBrokers {
			quoted[i] = strconv.Quote(b)
		}
		kafka = "brokers = [" + strings.Join(quoted, ", ") + "]"
	}
	cfg := fmt.Sprintf(`
server {
  http_addr  = %q
  data_dir   = "data"
  plugin_dir = %q
  log_level  = "debug"
}
launcher "kafka" {
  %s
  %s
}
launcher "local" {}
%s
%s
%s`, c.HTTPAddr, c.opts.Bin, kafka, c.opts.Kafka, c.opts.Launchers, nodeBlocks, jobBlocks)
	c.config = filepath.Join(c.Dir, "conveyor.hcl")
	if err := os.WriteFile(c.config, []byte(cfg), 0o600); err != nil {
		c.t.Fatal(err)
	}
}

// StartServer starts the master and waits for /healthz.
func (c *Cluster) StartServer() {
	c.t.Helper()
	c.mu.Lock()
	c.serverLog = &bytes.Buffer{}
	cmd := exec.Command(c.Bin("conveyor"), "server", "-config", c.config)
	cmd.Stdout, cmd.Stderr = &lockedWriter{mu: &c.mu, w: c.serverLog}, &lockedWriter{mu: &c.mu, w: c.serverLog}
	if err := cmd.Start(); err != nil {
		c.mu.Unlock()
		c.t.Fatal(err)
	}
	c.server = cmd
	c.mu.Unlock()
	c.WaitFor("the server to answer /healthz", time.Minute, func() bool {
		resp, err := http.Get("http://" + c.HTTPAddr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	// The server wrote its token before it started listening.
	tok, err := client.ReadTokenFile(filepath.Join(c.Dir, "data", "api-token"))
	if err != nil {
		c.t.Fatal(err)
	}
	c.Token = tok
	c.API = client.New(c.HTTPAddr, client.WithToken(tok))
}

// StopServer stops the master with SIGTERM (SIGKILL after 30s).
func (c *Cluster) StopServer() { c.stopServer(syscall.SIGTERM) }

// KillServer kills the master with SIGKILL.
func (c *Cluster) KillServer() { c.stopServer(syscall.SIGKILL) }

func (c *Cluster) stopServer(sig syscall.Signal) {
	c.mu.Lock()
	cmd := c.server
	c.server = nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// SetKafka replaces the extra body of the kafka launcher block
// (Options.Kafka) for the next WriteConfig: a reload test changes the
// launcher block with it.
func (c *Cluster) SetKafka(body string) { c.opts.Kafka = body }

// SetLaunchers replaces the extra launcher blocks (Options.Launchers)
// for the next WriteConfig.
func (c *Cluster) SetLaunchers(blocks string) { c.opts.Launchers = blocks }

// ConfigPath is the server's configuration file.
func (c *Cluster) ConfigPath() string { return c.config }

// Signal sends sig to the running master (SIGHUP: reload).
func (c *Cluster) Signal(sig syscall.Signal) {
	c.t.Helper()
	c.mu.Lock()
	cmd := c.server
	c.mu.Unlock()
	if cmd == nil {
		c.t.Fatal("no server runs")
	}
	if err := cmd.Process.Signal(sig); err != nil {
		c.t.Fatal(err)
	}
}

// ServerLog is what the master printed since it last started.
func (c *Cluster) ServerLog() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.serverLog == nil {
		return ""
	}
	return c.serverLog.String()
}

func (c *Cluster) stop() {
	c.mu.Lock()
	agents := c.agents
	c.mu.Unlock()
	for _, a := range agents {
		_ = a.Process.Kill()
		_, _ = a.Process.Wait()
	}
	c.StopServer()
	if c.t.Failed() {
		c.t.Logf("server log:\n%s", c.ServerLog())
	}
}

// StartAgent starts a Kafka agent for node with secret (hex), its work
// directory and log under Dir/agents/NODE (agent.log; agent-2.log and so
// on for the next agents of the node). args are extra flags, after the
// harness's own: a flag given again overrides it.
func (c *Cluster) StartAgent(node, secret string, args ...string) *exec.Cmd {
	c.t.Helper()
	dir := filepath.Join(c.Dir, "agents", node)
	if err := os.MkdirAll(filepath.Join(dir, "work"), 0o700); err != nil {
		c.t.Fatal(err)
	}
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(c.Bin("conveyor-agent"), append([]string{"-name", node, "-secret-file", secretFile,
		"-brokers", c.KafkaAddr, "-workdir", filepath.Join(dir, "work"), "-log-level", "debug"}, args...)...)
	c.mu.Lock()
	if c.agentLogs == nil {
		c.agentLogs = map[string]int{}
	}
	c.agentLogs[node]++
	logName := "agent.log"
	if k := c.agentLogs[node]; k > 1 {
		logName = fmt.Sprintf("agent-%d.log", k)
	}
	c.mu.Unlock()
	logf, err := os.Create(filepath.Join(dir, logName))
	if err != nil {
		c.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.agents = append(c.agents, cmd)
	c.mu.Unlock()
	c.t.Cleanup(func() {
		logf.Close()
		if c.t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			c.t.Logf("agent %s log (%s):\n%s", node, logName, b)
		}
	})
	return cmd
}

// Secret is a node's secret (hex) from the API.
func (c *Cluster) Secret(node string) string {
	c.t.Helper()
	s, err := c.API.Secret(context.Background(), node)
	if err != nil {
		c.t.Fatalf("secret of %s: %v", node, err)
	}
	return s.Secret
}

// WaitFor polls cond until it holds, failing the test after timeout.
func (c *Cluster) WaitFor(what string, timeout time.Duration, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Metrics is the server's /metrics page, read with the API token.
func (c *Cluster) Metrics() string {
	c.t.Helper()
	req, err := http.NewRequest("GET", "http://"+c.HTTPAddr+"/metrics", nil)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		c.t.Fatalf("/metrics: %s: %s", resp.Status, body)
	}
	return string(body)
}

// Node is a node's status from the API (zero when the API is down).
func (c *Cluster) Node(name string) nodes.Status {
	c.t.Helper()
	list, err := c.API.Nodes(context.Background())
	if err != nil {
		return nodes.Status{}
	}
	for _, n := range list {
		if n.Name == name {
			return n
		}
	}
	c.t.Fatalf("no node %s", name)
	return nodes.Status{}
}

// WaitOnline waits for the nodes to be online.
func (c *Cluster) WaitOnline(names ...string) {
	c.t.Helper()
	for _, n := range names {
		c.WaitFor("node "+n+" to come online", 90*time.Second, func() bool { return c.Node(n).State == nodes.StateOnline })
	}
}

// Run triggers job, follows its log to the end and returns the finished
// build and the log as followed.
func (c *Cluster) Run(job string, params map[string]string) (*store.Build, []byte) {
	c.t.Helper()
	ctx := context.Background()
	b, err := c.API.Trigger(ctx, job, params)
	if err != nil {
		c.t.Fatalf("trigger %s: %v", job, err)
	}
	var log bytes.Buffer
	if _, err := c.API.Log(ctx, job, b.Number, 0, true, &log); err != nil {
		c.t.Fatalf("follow %s#%d: %v", job, b.Number, err)
	}
	got, err := c.API.Build(ctx, job, b.Number)
	if err != nil {
		c.t.Fatal(err)
	}
	return got, log.Bytes()
}

// Build is build n of job from the API, nil when the API fails.
func (c *Cluster) Build(job string, n int) *store.Build {
	b, err := c.API.Build(context.Background(), job, n)
	if err != nil {
		return nil
	}
	return b
}

// Log is build n of job's log as stored so far (nil when the API fails).
func (c *Cluster) Log(job string, n int) []byte {
	var buf bytes.Buffer
	if _, err := c.API.Log(context.Background(), job, n, 0, false, &buf); err != nil {
		return nil
	}
	return buf.Bytes()
}

// WaitBuild waits up to timeout for build n of job to finish and returns
// it.
func (c *Cluster) WaitBuild(job string, n int, timeout time.Duration) *store.Build {
	c.t.Helper()
	var b *store.Build
	c.WaitFor(fmt.Sprintf("build %s#%d to finish", job, n), timeout, func() bool {
		b = c.Build(job, n)
		return b != nil && b.FinishedAt != nil
	})
	return b
}

// PluginPID is the pid of the master's running child process executing
// the built binary name (a launcher plugin, "conveyor-launcher-kafka"),
// 0 when there is none.
func (c *Cluster) PluginPID(name string) int {
	c.t.Helper()
	c.mu.Lock()
	server := c.server
	c.mu.Unlock()
	if server == nil {
		return 0
	}
	want := c.Bin(name)
	entries, err := os.ReadDir("/proc")
	if err != nil {
		c.t.Fatalf("list processes: %v", err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || exe != want {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		rest := string(stat[bytes.LastIndexByte(stat, ')')+1:])
		var state string
		var ppid int
		if _, err := fmt.Sscan(rest, &state, &ppid); err == nil && ppid == server.Process.Pid && state != "Z" {
			return pid
		}
	}
	return 0
}

// lockedWriter serialises writes of the server's stdout and stderr.
type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// HCLString quotes s for an HCL string literal.
func HCLString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "${", "$${", "%{", "%%{").Replace(s) + `"`
}

// Tail is the end of s (its last 600 bytes), for a failure message.
func Tail(s string) string {
	if len(s) > 600 {
		return "…" + s[len(s)-600:]
	}
	return s
}
