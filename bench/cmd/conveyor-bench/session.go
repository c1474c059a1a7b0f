package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/bench/harness"
	"github.com/conveyor-ci/conveyor/bench/report"
	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/plugins"
	"github.com/conveyor-ci/conveyor/core/session"
	"github.com/conveyor-ci/conveyor/plugins/ssh-launcher/sshdtest"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// The transports, in table order, and the node of each.
var transports = []string{"kafka", "ssh", "local"}

var nodeOf = map[string]string{"kafka": "k1", "ssh": "s1", "local": "l1"}

// nodeBlocks declares k1 (Kafka, its agent started by the bench), s1 (SSH
// to srv, the agent uploaded under dir) and l1 (the local launcher running
// the agent as its subprocess).
func nodeBlocks(bin string, srv *sshdtest.Server, dir string) string {
	return fmt.Sprintf(`
node "k1" {
  launcher = "kafka"
  kafka {}
}
node "s1" {
  launcher = "ssh"
  ssh {
    host             = %q
    port             = %d
    user             = %q
    private_key_file = %s
    agent_path       = %s
    workdir          = %s
    host_key_verification {
      strategy         = "known_hosts"
      known_hosts_file = %s
    }
  }
}
node "l1" {
  launcher = "local"
  local {
    command = [%s, "-transport", "stdio", "-name", "l1", "-workdir", %s]
  }
}
`, srv.Host, srv.Port, srv.User, cluster.HCLString(srv.ClientKeyFile),
		cluster.HCLString(filepath.Join(dir, "ssh", "conveyor-agent")),
		cluster.HCLString(filepath.Join(dir, "ssh", "work")),
		cluster.HCLString(srv.KnownHostsFile),
		cluster.HCLString(filepath.Join(bin, "conveyor-agent")),
		cluster.HCLString(filepath.Join(dir, "local", "work")))
}

// sshLauncher declares the SSH launcher uploading the built agent.
func sshLauncher(bin string) string {
	return fmt.Sprintf("launcher \"ssh\" {\n  agent_binary = %s\n}\n", cluster.HCLString(filepath.Join(bin, "conveyor-agent")))
}

// master is the master's core run inside the bench process: the same
// config, plugins and nodes packages as `conveyor server`, without the
// HTTP API, the store and the build service, so that a step's round trip
// is the session's RunStep through the launcher plugin and the agent, and
// nothing else.
type master struct {
	plugins *plugins.Manager
	nodes   *nodes.Manager
}

// startMaster loads a configuration with the three nodes and connects
// them; the Kafka node's agent is started from the built binary.
func (b *bench) startMaster(ctx context.Context, t *harness.T) *master {
	srv := sshdtest.Start(t, sshdtest.Options{})
	dir := t.TempDir()
	kafkaAddr := cluster.FreeAddr(t)
	cfgText := fmt.Sprintf(`
server {
  data_dir   = "data"
  plugin_dir = %s
}
launcher "kafka" {
  embedded_addr = %q
}
launcher "local" {}
%s
%s`, cluster.HCLString(b.opts.bin), kafkaAddr, sshLauncher(b.opts.bin), nodeBlocks(b.opts.bin, srv, dir))
	cfgPath := filepath.Join(dir, "conveyor.hcl")
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, diags := config.Load(cfgPath)
	if diags.HasErrors() {
		t.Fatalf("config: %s", diags.Error())
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "conveyor", Level: hclog.Warn, Output: b.log})
	pm := plugins.NewManager(log.Named("plugins"))
	t.Cleanup(pm.Stop)
	if diags := plugins.Load(ctx, cfg, pm, plugins.LoadOptions{Version: "bench"}); diags.HasErrors() {
		t.Fatalf("plugins: %s", diags.Error())
	}
	nm := nodes.NewManager(cfg, pm, nodes.Options{}, log.Named("nodes"))
	nctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { nm.Run(nctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	secret, err := pm.Get("kafka").Process().Secrets.NodeSecret(ctx, "k1")
	if err != nil {
		t.Fatalf("secret of k1: %v", err)
	}
	b.startKafkaAgent(t, "k1", hex.EncodeToString(secret.Secret), kafkaAddr, filepath.Join(dir, "kafka"))
	m := &master{plugins: pm, nodes: nm}
	for _, tr := range transports {
		n := nm.Get(nodeOf[tr])
		waitFor(t, "node "+n.Name()+" online", 2*time.Minute, func() bool { return n.Status().State == nodes.StateOnline })
	}
	return m
}

// startKafkaAgent starts the built agent for node over Kafka, stopped with
// the section.
func (b *bench) startKafkaAgent(t *harness.T, node, secret, brokers, dir string) {
	if err := os.MkdirAll(filepath.Join(dir, "work"), 0o700); err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(b.opts.bin, "conveyor-agent"), "-name", node, "-secret-file", secretFile,
		"-brokers", brokers, "-workdir", filepath.Join(dir, "work"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
	})
}

// waitFor polls cond every 20ms until it holds, ending the section after
// timeout.
func waitFor(t *harness.T, what string, timeout time.Duration, cond func() bool) {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runStep runs one step on sess and returns how long RunStep took.
func runStep(ctx context.Context, sess *session.Session, build, command string, out *counter) (time.Duration, error) {
	req := &wire.RunStep{BuildID: build, StepName: "bench", Command: command, Workdir: "bench"}
	start := time.Now()
	res, err := sess.RunStep(ctx, req, out)
	d := time.Since(start)
	if err != nil {
		return 0, err
	}
	sess.Recorded(build, 0)
	if res.Code != 0 {
		return 0, fmt.Errorf("step %q exited %d: %s", command, res.Code, res.Error)
	}
	return d, nil
}

// sessionSection measures the step round trip at the master's session:
// RunStep{true} out, Exit back, over each transport in turn, interleaved
// so that the machine's noise falls on all of them alike; then the plugin
// hop.
func (b *bench) sessionSection(ctx context.Context, t *harness.T) {
	m := b.startMaster(ctx, t)
	b.res.stepRTT = map[string][]time.Duration{}
	const warmup = 20
	for i := -warmup; i < b.opts.runs; i++ {
		for _, tr := range transports {
			d, err := runStep(ctx, m.nodes.Get(nodeOf[tr]).Session(), fmt.Sprintf("rtt-%s-%d", tr, i+warmup), "true", &counter{})
			if err != nil {
				t.Fatalf("%s step round trip: %v", tr, err)
			}
			if i >= 0 {
				b.res.stepRTT[tr] = append(b.res.stepRTT[tr], d)
			}
		}
	}
	for _, tr := range transports {
		b.logf("step round trip over %s: p50/p99 %s", tr, report.P50P99(b.res.stepRTT[tr]))
	}
	b.sessionStreaming(ctx, t, m)
	b.hop(ctx, t, m)
}

// sessionStreaming streams the test data over each transport to the
// master's session, no store behind it: the transports' own limit.
func (b *bench) sessionStreaming(ctx context.Context, t *harness.T, m *master) {
	b.res.sessionStream = map[string][]float64{}
	cmd := "cat " + shellQuote(b.data)
	for r := range b.opts.rounds {
		for _, tr := range transports {
			out := &counter{}
			d, err := runStep(ctx, m.nodes.Get(nodeOf[tr]).Session(), fmt.Sprintf("stream-%s-%d", tr, r), cmd, out)
			if err != nil {
				t.Fatalf("stream over %s: %v", tr, err)
			}
			if out.n != b.opts.size {
				t.Fatalf("stream over %s: %d bytes, want %d", tr, out.n, b.opts.size)
			}
			b.res.sessionStream[tr] = append(b.res.sessionStream[tr], report.MiBps(out.n, d))
			b.logf("stream %s over %s to the session: %s", report.Size(out.n), tr, report.Rate(report.MiBps(out.n, d)))
		}
	}
}

// hop streams the same output through the same session code twice: from
// the local launcher's agent through the go-plugin hop (plugin process,
// gRPC stream), and from an agent the bench process starts itself and
// reads over its pipes (launcher.NewStreamConn, as the plugin does).
func (b *bench) hop(ctx context.Context, t *harness.T, m *master) {
	viaPlugin := m.nodes.Get("l1").Session()
	direct := b.directSession(ctx, t)
	cmd := "cat " + shellQuote(b.data)
	for r := range b.opts.rounds {
		for _, way := range []struct {
			sess *session.Session
			to   *[]float64
			name string
		}{{viaPlugin, &b.res.hopWith, "with the plugin hop"}, {direct, &b.res.hopWithout, "without"}} {
			out := &counter{}
			d, err := runStep(ctx, way.sess, fmt.Sprintf("hop-%d", r), cmd, out)
			if err != nil {
				t.Fatalf("stream %s: %v", way.name, err)
			}
			if out.n != b.opts.size {
				t.Fatalf("stream %s: %d bytes, want %d", way.name, out.n, b.opts.size)
			}
			*way.to = append(*way.to, report.MiBps(out.n, d))
			b.logf("stream %s %s: %s", report.Size(out.n), way.name, report.Rate(report.MiBps(out.n, d)))
		}
	}
}

// directSession is a session with an agent the bench process runs over
// its pipes, no plugin in between.
func (b *bench) directSession(ctx context.Context, t *harness.T) *session.Session {
	work := t.TempDir()
	cmd := exec.Command(filepath.Join(b.opts.bin, "conveyor-agent"), "-transport", "stdio", "-name", "direct", "-workdir", work)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	conn := launcher.NewStreamConn(stdout, stdin, func() error {
		_ = stdin.Close()
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = cmd.Wait()
		return nil
	}, fmt.Sprintf("pid %d", pid))
	t.Cleanup(func() { _ = conn.Close() })
	sess := session.New(session.Options{Node: "direct"})
	link := sess.Attach(conn, nil, false)
	if _, _, err := link.Handshake(ctx); err != nil {
		t.Fatalf("handshake with the direct agent: %v", err)
	}
	sctx, cancel := context.WithCancel(ctx)
	served := make(chan struct{})
	go func() { _ = link.Serve(sctx); close(served) }()
	t.Cleanup(func() { cancel(); _ = conn.Close(); <-served; link.Close() })
	return sess
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	out := []byte{'\''}
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			out = append(out, `'\''`...)
		} else {
			out = append(out, s[i])
		}
	}
	return string(append(out, '\''))
}

// median of xs (zero for none).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}
