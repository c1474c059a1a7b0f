package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/e2e/faultproxy"
	"github.com/conveyor-ci/conveyor/plugins/ssh-launcher/sshdtest"
)

// The side-by-side jobs print sideBySideFirst numbered lines, wait at a
// gate (so that the links are cut while both steps run, however slow the
// machine), then print the rest, up to sideBySideTotal: the Kafka step
// prints those through the cut and after it.
const (
	sideBySideFirst = 20
	sideBySideTotal = 300
)

// sideBySideGuard bounds every wait of TestSideBySide; it is generous (a
// busy 2-core machine), not a latency requirement.
const sideBySideGuard = 90 * time.Second

// gatedCount is a job on the nodes labelled label that prints "line 1" to
// "line first" steadily, waits (at most a minute) for the file gate-NAME in
// its agent's work directory, then prints up to "line total".
func gatedCount(name, label string, first, total int) string {
	script := fmt.Sprintf(`i=1; `+
		`while [ $i -le %[1]d ]; do echo "line $i"; i=$((i+1)); sleep 0.05; done; `+
		`n=0; while [ ! -e ../../gate-%[2]s ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done; `+
		`while [ $i -le %[3]d ]; do echo "line $i"; i=$((i+1)); sleep 0.05; done`, first, name, total)
	return fmt.Sprintf(`
job %q {
  labels = [%q]
  step "count" { run = %s }
}
`, name, label, cluster.HCLString(script))
}

// TestSideBySide runs the same job over Kafka and over SSH at once in one
// cluster, cuts both links the same way at the same moment, for longer
// than the heartbeat timeout, and heals them: the SSH build fails, as a
// TCP link makes it; the Kafka build is held, resumes and succeeds with
// every line exactly once.
func TestSideBySide(t *testing.T) {
	start := time.Now()
	ctx := context.Background()

	// Kafka: an external broker, reached by the master and the agent
	// through a proxy that can cut the agent's connections alone.
	broker := faultproxy.StartBroker(t, "")
	kafkaProxy := broker.Proxy()
	agentConns := faultproxy.Prefix("conveyor-agent-")

	// SSH: a real sshd reached through a proxy of its own. SSH carries no
	// Kafka client id: every connection is tagged "", faultproxy.All
	// matches them.
	srv := sshdtest.Start(t, sshdtest.Options{})
	sshProxy, err := faultproxy.New(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sshProxy.Close() })
	proxyHost, proxyPortStr, err := net.SplitHostPort(sshProxy.Addr())
	if err != nil {
		t.Fatal(err)
	}
	proxyPort, err := strconv.Atoi(proxyPortStr)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// The launcher checks the host key against the address it dials: the
	// proxy's.
	knownHostsFile := filepath.Join(dir, "known_hosts")
	khLine := knownhosts.Line([]string{knownhosts.Normalize(sshProxy.Addr())}, srv.HostKey()) + "\n"
	if err := os.WriteFile(knownHostsFile, []byte(khLine), 0o600); err != nil {
		t.Fatal(err)
	}
	sshWork := filepath.Join(dir, "remote", "work")

	// Through the proxy, checked against the proxy's address.
	ssh := srv.Node(filepath.Join(dir, "remote", "conveyor-agent"), sshWork)
	ssh.Host, ssh.Port, ssh.KnownHosts = proxyHost, proxyPort, knownHostsFile
	nodeBlocks := fmt.Sprintf(`
node "k1" {
  launcher          = "kafka"
  labels            = ["kafka-side"]
  heartbeat_timeout = "3s"
  session_timeout   = "2m"
  kafka {}
}
node "s1" {
  launcher = "ssh"
  labels   = ["ssh-side"]
%s}
`, ssh.Block())
	jobBlocks := gatedCount("over-kafka", "kafka-side", sideBySideFirst, sideBySideTotal) +
		gatedCount("over-ssh", "ssh-side", sideBySideFirst, sideBySideTotal)

	c := cluster.Start(t, cluster.Options{
		Bin:          bin,
		Launchers:    sshLauncher(),
		KafkaBrokers: []string{broker.Addr()},
		Nodes:        nodeBlocks,
		Jobs:         jobBlocks,
	})
	c.StartAgent("k1", c.Secret("k1"), "-heartbeat", "500ms", "-heartbeat-timeout", "3s")
	kafkaWork := filepath.Join(c.Dir, "agents", "k1", "work")
	agentLog := filepath.Join(c.Dir, "agents", "k1", "agent.log")
	c.WaitOnline("k1", "s1")
	setup := time.Since(start)

	// Both builds run and print, up to their gates.
	trigger := func(job string) int {
		t.Helper()
		b, err := c.API.Trigger(ctx, job, nil)
		if err != nil {
			t.Fatalf("trigger %s: %v", job, err)
		}
		return b.Number
	}
	kn, sn := trigger("over-kafka"), trigger("over-ssh")
	atGate := numbered(1, sideBySideFirst)
	c.WaitFor("both builds to log their first lines", sideBySideGuard, func() bool {
		return bytes.Equal(c.Log("over-kafka", kn), atGate) && bytes.Equal(c.Log("over-ssh", sn), atGate)
	})
	for _, p := range []*faultproxy.Proxy{kafkaProxy, sshProxy} {
		wctx, cancel := context.WithTimeout(ctx, sideBySideGuard)
		m := faultproxy.All
		if p == kafkaProxy {
			m = agentConns
		}
		err := p.WaitConn(wctx, m)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	if kafkaProxy.Counts(faultproxy.Prefix("conveyor-master")).Forwarded == 0 {
		t.Fatalf("the Kafka launcher must talk through the proxy too: %+v", kafkaProxy.Stats())
	}

	// The same fault on both links at once: every connection reset, and
	// every new one refused, until Heal. Then the steps go on printing.
	cutAt := time.Now()
	sshProxy.Cut(faultproxy.All)
	kafkaProxy.Cut(agentConns)
	for _, gate := range []string{filepath.Join(kafkaWork, "gate-over-kafka"), filepath.Join(sshWork, "gate-over-ssh")} {
		if err := os.WriteFile(gate, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// Hold the fault until both transports showed what they make of it:
	// the SSH build ended; the master's heartbeat timeout expired (the
	// Kafka node is unreachable) and the agent lost the master too.
	var sshBuild *store.Build
	c.WaitFor("the SSH build to end", sideBySideGuard, func() bool {
		sshBuild = c.Build("over-ssh", sn)
		return sshBuild != nil && store.Finished(sshBuild.Status)
	})
	sshEnded := time.Since(cutAt)
	c.WaitFor("the Kafka node to be unreachable", sideBySideGuard, func() bool {
		return c.Node("k1").State == nodes.StateUnreachable
	})
	unreachable := time.Since(cutAt)
	c.WaitFor("the Kafka agent to hold its session", sideBySideGuard, func() bool {
		b, _ := os.ReadFile(agentLog)
		return bytes.Contains(b, []byte("master out of reach: steps keep running"))
	})
	agentHeld := time.Since(cutAt)
	if b := c.Build("over-kafka", kn); b == nil || b.Status != store.StatusRunning {
		t.Fatalf("over-kafka#%d is %+v while its node is unreachable, want it running (held, not failed)", kn, b)
	}
	kafkaAtHeal := c.Log("over-kafka", kn)
	kafkaCut, sshCut := kafkaProxy.Counts(agentConns).Cut, sshProxy.Counts(faultproxy.All).Cut
	held := time.Since(cutAt)
	sshProxy.Heal()
	kafkaProxy.Heal()

	var kafkaNode nodes.Status
	c.WaitFor("the Kafka node to be online again", sideBySideGuard, func() bool {
		kafkaNode = c.Node("k1")
		return kafkaNode.State == nodes.StateOnline && kafkaNode.Since.After(cutAt)
	})
	resumed := time.Since(cutAt)
	kafkaBuild := c.WaitBuild("over-kafka", kn, sideBySideGuard)
	kafkaLog, sshLog := c.Log("over-kafka", kn), c.Log("over-ssh", sn)
	c.WaitOnline("s1")

	want := numbered(1, sideBySideTotal)
	wantSum := sha256.Sum256(want)
	kafkaSum := sha256.Sum256(kafkaLog)
	ms := func(d time.Duration) string { return d.Round(10 * time.Millisecond).String() }
	row := func(what, kafka, ssh string) {
		t.Helper()
		t.Logf("%-24s | %-40s | %s", what, kafka, ssh)
	}
	t.Logf("both links cut for %s (heartbeat_timeout 3s); setup %s, test %s", ms(held), ms(setup), ms(time.Since(start)))
	row("", "Kafka node k1", "SSH node s1")
	row("build", kafkaBuild.Status, sshBuild.Status)
	row("reason", orDash(kafkaBuild.Reason), orDash(sshBuild.Reason))
	row("after the cut", "unreachable in "+ms(unreachable)+", agent held in "+ms(agentHeld), "build failed in "+ms(sshEnded))
	row("after the heal", "online, session resumed, at "+ms(resumed), "online again (new session)")
	row("connections cut", strconv.Itoa(kafkaCut), strconv.Itoa(sshCut))
	row("log bytes: cut/heal/end", fmt.Sprintf("%d / %d / %d", len(atGate), len(kafkaAtHeal), len(kafkaLog)), fmt.Sprintf("%d / - / %d", len(atGate), len(sshLog)))
	row("log sha256 = printed", strconv.FormatBool(kafkaSum == wantSum), strconv.FormatBool(sha256.Sum256(sshLog) == wantSum))

	if sshBuild.Status != store.StatusFailure || !strings.Contains(sshBuild.Reason, "connection") || !strings.Contains(sshBuild.Reason, "lost") {
		t.Errorf("over-ssh#%d ended %s (%q), want a failure naming the lost connection", sn, sshBuild.Status, sshBuild.Reason)
	}
	if kafkaBuild.Status != store.StatusSuccess {
		t.Errorf("over-kafka#%d ended %s (%q), want success", kn, kafkaBuild.Status, kafkaBuild.Reason)
	}
	if kafkaSum != wantSum || kafkaBuild.LogSize != int64(len(want)) {
		t.Errorf("over-kafka#%d: stored log (%d bytes, log_size %d, sha256 %x) differs from what the step printed (%d bytes, sha256 %x):\n%s",
			kn, len(kafkaLog), kafkaBuild.LogSize, kafkaSum, len(want), wantSum, kafkaLog)
	}
	// The cut was real: nothing the agent printed after it reached the
	// master before the heal, and both proxies closed connections.
	if !bytes.Equal(kafkaAtHeal, atGate) {
		t.Errorf("over-kafka#%d logged %d bytes during the cut, want none (the link was cut)", kn, len(kafkaAtHeal)-len(atGate))
	}
	if kafkaCut == 0 || sshCut == 0 {
		t.Errorf("connections cut: Kafka agent %d, SSH %d; want both > 0", kafkaCut, sshCut)
	}
	if !strings.Contains(c.ServerLog(), "the agent resumed its session") {
		t.Errorf("the server log does not say the Kafka agent resumed its session")
	}
}

// numbered is "line FROM\n" to "line TO\n".
func numbered(from, to int) []byte {
	var b bytes.Buffer
	for i := from; i <= to; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	return b.Bytes()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
