package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/conveyor-ci/conveyor/core/client"
	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/server"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/plugins/ssh-launcher/sshdtest"
)

// gatedJob is a job whose step waits for the file gate to exist.
func gatedJob(gate string) string {
	return fmt.Sprintf(`
job "gated" {
  labels = ["build"]
  step "wait" { run = %s }
}`, cluster.HCLString("while [ ! -e '"+gate+"' ]; do sleep 0.1; done; echo through"))
}

// control applies a node control through the API, failing the test on
// an error.
func control(t *testing.T, c *cluster.Cluster, node, action string, req server.NodeControlRequest) *nodes.Status {
	t.Helper()
	st, err := c.API.ControlNode(context.Background(), node, action, req)
	if err != nil {
		t.Fatalf("node %s %s: %v", action, node, err)
	}
	return st
}

// history returns the actions of the node's history, oldest first.
func history(t *testing.T, c *cluster.Cluster, node string) []string {
	t.Helper()
	d, err := c.API.Node(context.Background(), node)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ev := range d.History {
		out = append(out, ev.Action)
	}
	return out
}

// waitStatus waits for build n of job to reach status.
func waitStatus(c *cluster.Cluster, job string, n int, status string) {
	c.WaitFor(fmt.Sprintf("%s #%d to be %s", job, n, status), 2*time.Minute, func() bool {
		b, err := c.API.Build(context.Background(), job, n)
		return err == nil && b.Status == status
	})
}

// TestSSHNodeDrainOnlineDisconnect: a drained SSH node finishes its
// running build and takes no new one until it is back online; a
// disconnect fails the running build with the disconnection as its
// reason (SSH cannot resume) and the node comes back; each is in the
// node's history, and the drain outlives a restart of the master.
func TestSSHNodeDrainOnlineDisconnect(t *testing.T) {
	srv := sshdtest.Start(t, sshdtest.Options{})
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	c := cluster.Start(t, cluster.Options{Bin: bin, Launchers: sshLauncher(), Nodes: sshNode("ssh-1", srv, dir), Jobs: jobs + gatedJob(gate)})
	c.WaitOnline("ssh-1")
	ctx := context.Background()

	running, err := c.API.Trigger(ctx, "gated", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(c, "gated", running.Number, store.StatusRunning)
	st := control(t, c, "ssh-1", nodes.ActionDrain, server.NodeControlRequest{Reason: "disk swap"})
	if st.Drain == nil || st.Drain.Reason != "disk swap" || st.Drain.By != server.BootstrapToken {
		t.Fatalf("drain answered %+v", st.Drain)
	}
	waiting, err := c.API.Trigger(ctx, "hello", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if b := c.WaitBuild("gated", running.Number, 2*time.Minute); b.Status != store.StatusSuccess {
		t.Fatalf("the running build of the drained node: %s (%s), want success", b.Status, b.Reason)
	}
	// The executor is free and the node online, but drained: the build
	// stays queued (sampled over two seconds).
	for range 20 {
		if b := c.Build("hello", waiting.Number); b.Status != store.StatusQueued {
			t.Fatalf("a drained node took a new build: %s", b.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := c.Node("ssh-1"); n.State != nodes.StateOnline || n.Drain == nil {
		t.Fatalf("drained node %s, drain %+v; want online and drained", n.State, n.Drain)
	}

	// The drain survives a restart of the master (which fails the queued
	// build, as any restart does).
	c.StopServer()
	c.StartServer()
	c.WaitOnline("ssh-1")
	if n := c.Node("ssh-1"); n.Drain == nil || n.Drain.Reason != "disk swap" {
		t.Fatalf("after a restart the drain is %+v", n.Drain)
	}
	waiting, err = c.API.Trigger(ctx, "hello", nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if b := c.Build("hello", waiting.Number); b.Status != store.StatusQueued {
			t.Fatalf("the node drained before the restart took a new build: %s", b.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
	control(t, c, "ssh-1", nodes.ActionOnline, server.NodeControlRequest{})
	if b := c.WaitBuild("hello", waiting.Number, 2*time.Minute); b.Status != store.StatusSuccess {
		t.Fatalf("the queued build once the node is back: %s (%s)", b.Status, b.Reason)
	}

	// Launch is refused for a node that is up.
	var apiErr *client.APIError
	if _, err := c.API.ControlNode(ctx, "ssh-1", nodes.ActionLaunch, server.NodeControlRequest{}); !errors.As(err, &apiErr) || apiErr.Status != 409 {
		t.Fatalf("launch of an online node: %v, want 409", err)
	}

	// Disconnect with a build running: SSH cannot resume, the build fails
	// saying why, and the node is relaunched.
	if err := os.Remove(gate); err != nil {
		t.Fatal(err)
	}
	cut, err := c.API.Trigger(ctx, "gated", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(c, "gated", cut.Number, store.StatusRunning)
	control(t, c, "ssh-1", nodes.ActionDisconnect, server.NodeControlRequest{Reason: "testing"})
	b := c.WaitBuild("gated", cut.Number, 2*time.Minute)
	if b.Status != store.StatusFailure || !strings.Contains(b.Reason, "disconnected by bootstrap: testing") {
		t.Fatalf("the build of a disconnected node: %s (%s), want a failure naming the disconnection", b.Status, b.Reason)
	}
	c.WaitOnline("ssh-1")
	if got, want := history(t, c, "ssh-1"), []string{"drain", "online", "disconnect"}; !slices.Equal(got, want) {
		t.Errorf("history %v, want %v", got, want)
	}
}

// TestSSHNodeLaunchNow: a node refused for good (its host key is not in
// known_hosts) is asked again only every minute; once the file is fixed,
// launch brings it online at once.
func TestSSHNodeLaunchNow(t *testing.T) {
	srv := sshdtest.Start(t, sshdtest.Options{})
	dir := t.TempDir()
	known := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(known, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	node := srv.Node(filepath.Join(dir, "remote", "conveyor-agent"), filepath.Join(dir, "remote", "work"))
	node.KnownHosts = known
	c := cluster.Start(t, cluster.Options{Bin: bin, Launchers: sshLauncher(), Jobs: jobs,
		Nodes: fmt.Sprintf("\nnode \"ssh-1\" {\n  launcher = \"ssh\"\n  labels   = [\"build\"]\n%s}\n", node.Block())})
	c.WaitFor("the refusal", time.Minute, func() bool { return strings.Contains(c.Node("ssh-1").Reason, "is not in") })
	refused := time.Now()
	b, err := os.ReadFile(srv.KnownHostsFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(known, b, 0o600); err != nil {
		t.Fatal(err)
	}
	control(t, c, "ssh-1", nodes.ActionLaunch, server.NodeControlRequest{})
	c.WaitOnline("ssh-1")
	if d := time.Since(refused); d >= 55*time.Second {
		t.Fatalf("online %v after the refusal: the launch waited for the permanent retry", d)
	}
	if got := history(t, c, "ssh-1"); !slices.Equal(got, []string{"launch"}) {
		t.Errorf("history %v, want [launch]", got)
	}
}

// slotLine is a launch slot taken or released in the master's log.
var slotLine = regexp.MustCompile(`launch slot (taken|released): node=(\S+) launcher=ssh`)

// TestSSHLaunchLimit: five SSH nodes behind a launcher launching at most
// two at once: never more than two launch at the same time, the others
// wait for a slot, and all come online.
func TestSSHLaunchLimit(t *testing.T) {
	srv := sshdtest.Start(t, sshdtest.Options{})
	dir := t.TempDir()
	var blocks string
	var names []string
	for i := 1; i <= 5; i++ {
		name := fmt.Sprintf("ssh-%d", i)
		names = append(names, name)
		blocks += sshNode(name, srv, filepath.Join(dir, name))
	}
	launchers := fmt.Sprintf("launcher \"ssh\" {\n  agent_binary = %s\n  max_concurrent_launches = 2\n}\n", cluster.HCLString(filepath.Join(bin, "conveyor-agent")))
	c := cluster.Start(t, cluster.Options{Bin: bin, Launchers: launchers, Nodes: blocks, Jobs: jobs})
	c.WaitOnline(names...)
	log := c.ServerLog()
	inUse, peak, taken := 0, 0, 0
	for _, m := range slotLine.FindAllStringSubmatch(log, -1) {
		if m[1] == "taken" {
			inUse++
			taken++
		} else {
			inUse--
		}
		peak = max(peak, inUse)
	}
	if taken < 5 || peak > 2 {
		t.Fatalf("%d launches, at most %d at once; want 5 or more, at most 2 at once", taken, peak)
	}
	if !strings.Contains(log, "waiting for a launch slot (launcher ssh launches at most 2 nodes at once)") {
		t.Errorf("no node showed that it waited for a launch slot")
	}
	t.Logf("%d launches, at most %d at once", taken, peak)
}

// hostKeyBlock matches the host_key_verification block of a node.
var hostKeyBlock = regexp.MustCompile(`(?s)host_key_verification \{.*?\}`)

// TestSSHHostKeyApproval: with trust_on_first_use and require_approval a
// node's first host key waits, its fingerprint shown, until an admin
// approves it; then the node comes online at once, and after a restart of
// the master too (the key is stored, the approval kept).
func TestSSHHostKeyApproval(t *testing.T) {
	srv := sshdtest.Start(t, sshdtest.Options{})
	dir := t.TempDir()
	block := hostKeyBlock.ReplaceAllString(sshNode("ssh-1", srv, dir), "host_key_verification {\n      strategy         = \"trust_on_first_use\"\n      require_approval = true\n    }")
	c := cluster.Start(t, cluster.Options{Bin: bin, Launchers: sshLauncher(), Nodes: block, Jobs: jobs})
	fp := ssh.FingerprintSHA256(srv.HostKey())
	c.WaitFor("the key to wait for approval", time.Minute, func() bool { return c.Node("ssh-1").PendingHostKey == fp })
	if n := c.Node("ssh-1"); n.State != nodes.StateOffline || !strings.Contains(n.Reason, fp) {
		t.Fatalf("node %s (%s), want offline naming the fingerprint", n.State, n.Reason)
	}
	pending := time.Now()
	// The approval goes through the CLI, as an operator would.
	cmd := exec.Command(c.Bin("conveyor"), "node", "approve-key", "-address", c.HTTPAddr, "-token", c.Token, "ssh-1", fp)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("conveyor node approve-key: %v\n%s", err, out)
	}
	c.WaitOnline("ssh-1")
	if d := time.Since(pending); d >= 55*time.Second {
		t.Fatalf("online %v after the key was pending: the approval did not launch it", d)
	}
	if n := c.Node("ssh-1"); n.PendingHostKey != "" {
		t.Errorf("still pending after the approval: %s", n.PendingHostKey)
	}
	if b, log := c.Run("hello", nil); b.Status != store.StatusSuccess || string(log) != "hello from ssh-1\n" {
		t.Fatalf("build after the approval: %s (%s) %q", b.Status, b.Reason, log)
	}
	c.StopServer()
	c.StartServer()
	c.WaitOnline("ssh-1")
	if got, want := history(t, c, "ssh-1"), []string{"key-pending", "approve-key"}; !slices.Equal(got, want) {
		t.Errorf("history %v, want %v", got, want)
	}
}

// TestSSHOnDemandNode: an on-demand SSH node stays offline until a build
// waits for its labels, is launched for it, and is taken offline (its
// agent torn down) after its idle timeout.
func TestSSHOnDemandNode(t *testing.T) {
	srv := sshdtest.Start(t, sshdtest.Options{})
	dir := t.TempDir()
	block := strings.Replace(sshNode("ssh-1", srv, dir), "  labels   = [\"build\"]\n",
		"  labels   = [\"build\"]\n  availability {\n    mode         = \"on_demand\"\n    idle_timeout = \"3s\"\n  }\n", 1)
	c := cluster.Start(t, cluster.Options{Bin: bin, Launchers: sshLauncher(), Nodes: block, Jobs: jobs})
	c.WaitFor("the node to wait for demand", time.Minute, func() bool {
		n := c.Node("ssh-1")
		return n.State == nodes.StateOffline && strings.HasPrefix(n.Reason, "on demand")
	})
	if n := c.Node("ssh-1"); n.Availability != "on_demand" || n.IdleTimeout != "3s" {
		t.Fatalf("availability %q idle %q", n.Availability, n.IdleTimeout)
	}
	if procs := srv.Processes(); len(procs) != 0 {
		t.Fatalf("an on-demand node without demand runs %v", procs)
	}
	b, log := c.Run("hello", nil)
	if b.Status != store.StatusSuccess || string(log) != "hello from ssh-1\n" {
		t.Fatalf("build on demand: %s (%s) %q", b.Status, b.Reason, log)
	}
	c.WaitFor("the idle node to go offline", time.Minute, func() bool {
		n := c.Node("ssh-1")
		return n.State == nodes.StateOffline && strings.HasPrefix(n.Reason, "on demand")
	})
	c.WaitFor("its agent to end", time.Minute, func() bool { return len(srv.Processes()) == 0 })
	if got, want := history(t, c, "ssh-1"), []string{"demand-launch", "idle-offline"}; !slices.Equal(got, want) {
		t.Errorf("history %v, want %v", got, want)
	}
	// A second build launches it again.
	if b, _ := c.Run("hello", nil); b.Status != store.StatusSuccess {
		t.Fatalf("second build on demand: %s (%s)", b.Status, b.Reason)
	}
}
