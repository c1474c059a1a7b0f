package e2e

// Resumable sessions, proven with real processes: a build over Kafka
// survives a cut of the agent's link, a broker restart and a crash of the
// launcher plugin (its output arrives whole, byte-identical, exactly once);
// the death of its agent fails it with "agent lost" (at once when the agent
// comes back, after the session timeout when it does not); and a cancel
// reaches a step that floods its output.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/e2e/faultproxy"
)

// The agents' heartbeats: short, so that the tests see faults quickly.
// The master's own ping interval is its default; the node's
// heartbeat_timeout is set per test.
const (
	agentHeartbeat        = "500ms"
	agentHeartbeatTimeout = "3s"
)

// agents matches the agents' Kafka connections ("conveyor-agent-NODE"),
// not the plugin's.
var agents = faultproxy.Prefix("conveyor-agent-")

// Guards: how long a test waits for a condition before it fails. They are
// generous (a busy 2-core machine); none is a latency requirement.
const (
	stateGuard = 60 * time.Second
	buildGuard = 90 * time.Second
)

// kafkaNode is a Kafka node block labelled with its own name.
func kafkaNode(name, heartbeatTimeout, sessionTimeout string) string {
	return fmt.Sprintf(`
node %q {
  launcher          = "kafka"
  heartbeat_timeout = %q
  session_timeout   = %q
  kafka {}
}`, name, heartbeatTimeout, sessionTimeout)
}

// job is a one-step job on node.
func job(name, node, script string) string {
	return fmt.Sprintf(`
job %q {
  labels = [%q]
  step "run" { run = %s }
}`, name, node, cluster.HCLString(script))
}

// numbered is what seq prints: the numbers 1 to n, one a line.
func numbered(n int) []byte {
	var b bytes.Buffer
	for i := 1; i <= n; i++ {
		b.WriteString(strconv.Itoa(i))
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// gatedJob prints numbered lines steadily, in blocks of block lines (a seq
// each, with a short sleep between blocks): first blocks, then it waits for
// the file gate-NAME in the agent's work directory (so that the fault a
// test injects happens while the step runs and prints, however slow the
// machine), then total-first blocks more: numbered(total*block) in all. The
// wait is bounded, so that a failed test leaves no step behind.
func gatedJob(name, node string, block, first, total int) string {
	return job(name, node, fmt.Sprintf(`b=%d; i=0; `+
		`while [ $i -lt %d ]; do seq $((i*b+1)) $((i*b+b)); i=$((i+1)); sleep 0.02; done; `+
		`n=0; while [ ! -e ../../gate-%s ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done; `+
		`while [ $i -lt %d ]; do seq $((i*b+1)) $((i*b+b)); i=$((i+1)); sleep 0.01; done`, block, first, name, total))
}

// openGate lets the step of gatedJob name on node go on.
func openGate(t *testing.T, c *cluster.Cluster, node, name string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(c.Dir, "agents", node, "work", "gate-"+name), nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// startAgent starts node's agent with short heartbeats and the session
// timeout given.
func startAgent(c *cluster.Cluster, node, sessionTimeout string) *os.Process {
	return c.StartAgent(node, c.Secret(node), "-heartbeat", agentHeartbeat,
		"-heartbeat-timeout", agentHeartbeatTimeout, "-session-timeout", sessionTimeout).Process
}

// trigger queues a build of job and returns its number.
func trigger(t *testing.T, c *cluster.Cluster, job string) int {
	t.Helper()
	b, err := c.API.Trigger(context.Background(), job, nil)
	if err != nil {
		t.Fatalf("trigger %s: %v", job, err)
	}
	return b.Number
}

// waitLines waits until the stored log of job#n holds at least lines
// lines, and returns it.
func waitLines(t *testing.T, c *cluster.Cluster, job string, n, lines int) []byte {
	t.Helper()
	var log []byte
	c.WaitFor(fmt.Sprintf("%s#%d to log %d lines", job, n, lines), stateGuard, func() bool {
		log = c.Log(job, n)
		return bytes.Count(log, []byte("\n")) >= lines
	})
	return log
}

// waitState waits until node is in state, entered after since.
func waitState(c *cluster.Cluster, node, state string, since time.Time) nodes.Status {
	var st nodes.Status
	c.WaitFor(fmt.Sprintf("node %s to be %s", node, state), stateGuard, func() bool {
		st = c.Node(node)
		return st.State == state && !st.Since.Before(since)
	})
	return st
}

// mustRun fails the test unless job#n is still running.
func mustRun(t *testing.T, c *cluster.Cluster, job string, n int, when string) {
	t.Helper()
	if b := c.Build(job, n); b == nil || b.Status != store.StatusRunning {
		t.Fatalf("%s: %s#%d is %+v, want it running (held, not failed)", when, job, n, b)
	}
}

// checkLog compares the stored log of job#n (its sha256 and its size, as
// read back and as recorded) with want.
func checkLog(t *testing.T, c *cluster.Cluster, b *store.Build, want []byte) {
	t.Helper()
	got := c.Log(b.Job, b.Number)
	if sha256.Sum256(got) == sha256.Sum256(want) && b.LogSize == int64(len(want)) {
		return
	}
	first := -1
	for i := 0; i < min(len(got), len(want)); i++ {
		if got[i] != want[i] {
			first = i
			break
		}
	}
	if first < 0 {
		first = min(len(got), len(want))
	}
	from := max(0, first-40)
	t.Fatalf("%s#%d: stored log (%d bytes, log_size %d, sha256 %x) differs from what the step printed (%d bytes, sha256 %x); first difference at byte %d: got %q, want %q",
		b.Job, b.Number, len(got), b.LogSize, sha256.Sum256(got), len(want), sha256.Sum256(want), first,
		got[from:min(len(got), first+40)], want[from:min(len(want), first+40)])
}

// checkPrefix checks that the stored log of a build cut short (its agent
// died, or it was cancelled) is byte for byte the start of what its step
// printed (what the agent had not delivered is lost), at least atLeast
// bytes long (what was stored before the fault). It returns the log's
// size.
func checkPrefix(t *testing.T, c *cluster.Cluster, b *store.Build, printed []byte, atLeast int) int {
	t.Helper()
	got := c.Log(b.Job, b.Number)
	if len(got) < atLeast {
		t.Fatalf("%s#%d: the stored log shrank: %d bytes, %d were stored before the fault", b.Job, b.Number, len(got), atLeast)
	}
	if len(got) > len(printed) || sha256.Sum256(got) != sha256.Sum256(printed[:len(got)]) || b.LogSize != int64(len(got)) {
		t.Fatalf("%s#%d: stored log (%d bytes, log_size %d) is not the start of what the step printed: %q...",
			b.Job, b.Number, len(got), b.LogSize, got[:min(len(got), 200)])
	}
	return len(got)
}

// resumeCase is the common shape of the tests whose build must survive a
// fault: a gated build on node "k1" (heartbeat_timeout 3s, session_timeout
// 2m) is started, fault breaks things once the build logged some lines and
// waits until the master noticed, recover repairs them, and the build must
// then end in success with its whole log.
func resumeCase(t *testing.T, opts cluster.Options, fault func(c *cluster.Cluster), recover func(c *cluster.Cluster, since time.Time)) {
	t.Helper()
	// 150 blocks of 500 lines (over 3s at least) before the gate, as many
	// after: about 1 MiB in all, hundreds of frames.
	const block, first, total = 500, 150, 300
	opts.Bin = bin
	opts.Nodes = kafkaNode("k1", "3s", "2m")
	opts.Jobs = gatedJob("span", "k1", block, first, total)
	c := cluster.Start(t, opts)
	startAgent(c, "k1", "2m")
	c.WaitOnline("k1")

	began := time.Now()
	n := trigger(t, c, "span")
	before := waitLines(t, c, "span", n, 5)
	faultAt := time.Now()
	fault(c)
	noticed := time.Now()
	mustRun(t, c, "span", n, "during the fault")
	atFault := len(c.Log("span", n))
	recover(c, faultAt)
	resumed := time.Now()
	mustRun(t, c, "span", n, "after the resume")
	openGate(t, c, "k1", "span")
	b := c.WaitBuild("span", n, buildGuard)
	if b.Status != store.StatusSuccess {
		t.Fatalf("span#%d ended %s (%s), want success", n, b.Status, b.Reason)
	}
	checkLog(t, c, b, numbered(total*block))
	t.Logf("log at the fault %d bytes, when the master noticed %d, final %d; fault noticed in %s, back in %s, build took %s; resumes by handshake: %d",
		len(before), atFault, b.LogSize, noticed.Sub(faultAt).Round(time.Millisecond),
		resumed.Sub(noticed).Round(time.Millisecond), time.Since(began).Round(time.Millisecond),
		strings.Count(c.ServerLog(), "the agent resumed its session"))
}

// TestLinkCut: one side's Kafka connections are cut (the other side's are
// not) for longer than the heartbeat timeout: the agent's, or the plugin's
// on the master's side. The node shows unreachable, the build is held, and
// once the link heals the session resumes and the build ends in success
// with its whole log.
func TestLinkCut(t *testing.T) {
	master := faultproxy.Prefix("conveyor-master")
	for _, tc := range []struct {
		name string
		cut  faultproxy.Match
	}{{"agent", agents}, {"master", master}} {
		t.Run(tc.name, func(t *testing.T) {
			broker := faultproxy.StartBroker(t, t.TempDir())
			proxy := broker.Proxy()
			resumeCase(t, cluster.Options{KafkaBrokers: []string{broker.Addr()}},
				func(c *cluster.Cluster) {
					if proxy.Counts(agents).Forwarded == 0 || proxy.Counts(master).Forwarded == 0 {
						t.Fatalf("the agent and the plugin must talk through the proxy: %+v", proxy.Stats())
					}
					proxy.Cut(tc.cut)
					c.WaitFor("node k1 to show unreachable", stateGuard, func() bool { return c.Node("k1").State == nodes.StateUnreachable })
					if proxy.Counts(tc.cut).Cut == 0 {
						t.Fatalf("the cut closed no %s connection: %+v", tc.name, proxy.Stats())
					}
				},
				func(c *cluster.Cluster, since time.Time) {
					proxy.Heal()
					waitState(c, "k1", nodes.StateOnline, since)
				})
		})
	}
}

// TestBrokerRestart: the external broker stops mid-build, stays down until
// the master notices (the node shows unreachable) and starts again from its
// data directory; the build ends in success with its whole log.
func TestBrokerRestart(t *testing.T) {
	broker := faultproxy.StartBroker(t, t.TempDir())
	resumeCase(t, cluster.Options{KafkaBrokers: []string{broker.Addr()}},
		func(c *cluster.Cluster) {
			broker.Stop()
			c.WaitFor("node k1 to show unreachable", stateGuard, func() bool { return c.Node("k1").State == nodes.StateUnreachable })
		},
		func(c *cluster.Cluster, since time.Time) {
			broker.Start(t)
			waitState(c, "k1", nodes.StateOnline, since)
		})
}

// TestPluginCrash: the Kafka launcher plugin (with the embedded broker in
// it) is killed with SIGKILL mid-build; the host restarts it, its broker
// comes back from its data directory, the agent resumes its session and
// the build ends in success with its whole log.
func TestPluginCrash(t *testing.T) {
	const plugin = "conveyor-launcher-kafka"
	resumeCase(t, cluster.Options{},
		func(c *cluster.Cluster) {
			pid := c.PluginPID(plugin)
			if pid == 0 {
				t.Fatalf("no %s process under the master", plugin)
			}
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			c.WaitFor("the master to restart the plugin", stateGuard, func() bool {
				p := c.PluginPID(plugin)
				return p != 0 && p != pid
			})
		},
		func(c *cluster.Cluster, since time.Time) {
			waitState(c, "k1", nodes.StateOnline, since)
		})
}

// TestAgentDeath: an agent killed mid-build fails its build with "agent
// lost": at once when it comes back (a fresh session: the session timeout,
// 10m, is not waited for), after the session timeout when it does not.
func TestAgentDeath(t *testing.T) {
	// Lines printed steadily for a minute or more: the build can only
	// succeed if the agent's death goes unnoticed.
	const lines = 1200
	long := fmt.Sprintf(`i=1; while [ $i -le %d ]; do echo $i; i=$((i+1)); sleep 0.05; done`, lines)
	printed := numbered(lines)
	c := cluster.Start(t, cluster.Options{Bin: bin,
		Nodes: kafkaNode("k1", "3s", "10m") + kafkaNode("k2", "5s", "8s"),
		Jobs:  job("doomed-1", "k1", long) + job("doomed-2", "k2", long) + job("after", "k1", "echo after")})
	agent1 := startAgent(c, "k1", "10m")
	agent2 := startAgent(c, "k2", "8s")
	c.WaitOnline("k1", "k2")

	kill := func(p *os.Process) {
		t.Helper()
		if err := p.Kill(); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Wait(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Logf("wait for the killed agent: %v", err)
		}
	}

	t.Run("restarted", func(t *testing.T) {
		n := trigger(t, c, "doomed-1")
		before := len(waitLines(t, c, "doomed-1", n, 5))
		kill(agent1)
		killed := time.Now()
		// Like systemd would: a new agent process for the same node.
		startAgent(c, "k1", "10m")
		b := c.WaitBuild("doomed-1", n, stateGuard)
		if b.Status != store.StatusFailure || !strings.Contains(b.Reason, "agent lost") || !strings.Contains(b.Reason, "restarted") {
			t.Fatalf("doomed-1#%d ended %s (%s), want failure: agent lost, restarted", n, b.Status, b.Reason)
		}
		logged := checkPrefix(t, c, b, printed, before)
		t.Logf("failed %s after the kill (%s); %d bytes logged", b.FinishedAt.Sub(killed).Round(time.Millisecond), b.Reason, logged)
		// The new agent's session serves the next build.
		waitState(c, "k1", nodes.StateOnline, killed)
		next := c.WaitBuild("after", trigger(t, c, "after"), buildGuard)
		if next.Status != store.StatusSuccess {
			t.Fatalf("a build after the restart ended %s (%s)", next.Status, next.Reason)
		}
		checkLog(t, c, next, []byte("after\n"))
		// What the master told the dead agent's session reached the new
		// agent before its own session was established: stale, not forged.
		second, err := os.ReadFile(filepath.Join(c.Dir, "agents", "k1", "agent-2.log"))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(second), "a session this agent never had") {
			t.Errorf("the restarted agent counted a frame of its predecessor's session as forged:\n%s", second)
		}
	})

	t.Run("never-back", func(t *testing.T) {
		n := trigger(t, c, "doomed-2")
		before := len(waitLines(t, c, "doomed-2", n, 5))
		kill(agent2)
		killed := time.Now()
		b := c.WaitBuild("doomed-2", n, stateGuard)
		if b.Status != store.StatusFailure || !strings.Contains(b.Reason, "agent lost") {
			t.Fatalf("doomed-2#%d ended %s (%s), want failure: agent lost", n, b.Status, b.Reason)
		}
		logged := checkPrefix(t, c, b, printed, before)
		took := b.FinishedAt.Sub(killed)
		t.Logf("failed %s after the kill (%s); %d bytes logged", took.Round(time.Millisecond), b.Reason, logged)
		// session_timeout (8s) counts from the last contact, not from when
		// the silence was noticed (heartbeat_timeout, 5s, later: 13s), and
		// the reason says how long the agent was silent.
		if took >= 11500*time.Millisecond {
			t.Errorf("the build failed %s after the agent died, want about the session timeout (8s) after its last frame", took.Round(time.Millisecond))
		}
		stated := silence(t, b.Reason)
		if d := stated - took; d < -2*time.Second || d > time.Second {
			t.Errorf("the reason %q states %s of silence; the agent died %s before the build failed", b.Reason, stated, took.Round(time.Millisecond))
		}
		st := waitState(c, "k2", nodes.StateOffline, killed)
		if !strings.Contains(st.Reason, "agent lost") {
			t.Errorf("node k2 is offline because %q, want agent lost", st.Reason)
		}
		// Relaunched (its topics opened again), the node stays offline,
		// saying why, rather than launching.
		launches := func() int { return countLines(c.ServerLog(), "node connected to its topics", "node=k2") }
		was := launches()
		c.WaitFor("node k2 to be relaunched", stateGuard, func() bool { return launches() > was })
		if st := c.Node("k2"); st.State != nodes.StateOffline || !strings.Contains(st.Reason, "agent lost") {
			t.Errorf("node k2 after its relaunch: %s (%s), want offline: agent lost", st.State, st.Reason)
		}
	})
}

// TestCancelDuringFlood: a step printing hundreds of MiB as fast as it can
// is cancelled through the API once its log grows; the cancel reaches the
// agent while the output streams, the agent confirms it, the build ends
// cancelled with the start of the flood logged exactly, and the step never
// reaches its end.
func TestCancelDuringFlood(t *testing.T) {
	const floodBytes = 400 << 20
	c := cluster.Start(t, cluster.Options{Bin: bin, Nodes: kafkaNode("k1", "3s", "2m"),
		Jobs: job("flood", "k1", fmt.Sprintf("yes flood | head -c %d; touch ../../flood-finished; echo FLOOD-DONE", floodBytes)) +
			job("after", "k1", "echo after")})
	startAgent(c, "k1", "2m")
	c.WaitOnline("k1")
	work := filepath.Join(c.Dir, "agents", "k1", "work")

	triggered := time.Now()
	n := trigger(t, c, "flood")
	// The log has grown past 32 MiB: read one byte there.
	const grown = 32 << 20
	c.WaitFor("the flood's log to grow", stateGuard, func() bool {
		reached, _ := c.API.Log(context.Background(), "flood", n, grown, false, &firstByte{})
		return reached > grown
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	asked := time.Now()
	b, err := c.API.Cancel(ctx, "flood", n)
	if err != nil {
		t.Fatalf("cancel flood#%d: %v", n, err)
	}
	took := time.Since(asked)
	if b.Status != store.StatusCancelled || !strings.Contains(b.Reason, "cancelled") {
		t.Fatalf("flood#%d ended %s (%s), want cancelled", n, b.Status, b.Reason)
	}
	if strings.Contains(b.Reason, "did not confirm") {
		t.Errorf("the agent did not confirm the cancel: %s", b.Reason)
	}
	// Nothing of the step runs any more in its workspace...
	ws := filepath.Join(work, "flood", strconv.Itoa(n))
	if r, err := filepath.EvalSymlinks(ws); err == nil {
		ws = r
	}
	c.WaitFor("the step's processes to end", stateGuard, func() bool { return len(processesIn(ws)) == 0 })
	// ...and it never got past its flood.
	if _, err := os.Stat(filepath.Join(work, "flood-finished")); err == nil {
		t.Fatal("the step finished its flood: the cancel did not stop it")
	}
	fin := c.Build("flood", n)
	if fin == nil || fin.LogSize >= floodBytes {
		t.Fatalf("flood#%d: %+v, want a log shorter than the flood", n, fin)
	}
	// What was logged is exactly the start of what the step printed.
	checkPrefix(t, c, fin, bytes.Repeat([]byte("flood\n"), int(fin.LogSize)/6+1), grown)
	t.Logf("log grew past %d MiB in %s; cancel answered in %s (%s); %d MiB logged of %d MiB", grown>>20, asked.Sub(triggered).Round(time.Millisecond),
		took.Round(time.Millisecond), b.Reason, fin.LogSize>>20, floodBytes>>20)

	// The session survives: the next build runs.
	next := c.WaitBuild("after", trigger(t, c, "after"), buildGuard)
	if next.Status != store.StatusSuccess {
		t.Fatalf("a build after the cancelled flood ended %s (%s)", next.Status, next.Reason)
	}
	checkLog(t, c, next, []byte("after\n"))
}

// firstByte takes one byte, then fails the copy: reading a log from an
// offset only tells whether the log reaches past it.
type firstByte struct{ got bool }

func (f *firstByte) Write(p []byte) (int, error) {
	if f.got || len(p) == 0 {
		return 0, errors.New("enough")
	}
	f.got = true
	return 1, errors.New("enough")
}

// processesIn lists the processes whose working directory is dir or
// below it.
func processesIn(dir string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err == nil && (cwd == dir || strings.HasPrefix(cwd, dir+"/")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// silence is the silence an "agent lost: no contact for D" reason states.
func silence(t *testing.T, reason string) time.Duration {
	t.Helper()
	const mark = "no contact for "
	i := strings.Index(reason, mark)
	if i < 0 {
		t.Fatalf("reason %q does not say how long the agent was silent", reason)
	}
	f := strings.Fields(reason[i+len(mark):])
	if len(f) == 0 {
		t.Fatalf("reason %q: no duration", reason)
	}
	d, err := time.ParseDuration(f[0])
	if err != nil {
		t.Fatalf("reason %q: %v", reason, err)
	}
	return d
}

// countLines counts the lines of log holding every one of subs.
func countLines(log string, subs ...string) int {
	n := 0
	for line := range strings.Lines(log) {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			n++
		}
	}
	return n
}
