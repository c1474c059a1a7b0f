package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/plugins/ssh-launcher/sshdtest"
)

// gatedJobs: "gated" prints, then waits for the file its parameter G
// names; "hello" says where it ran.
const gatedJobs = `
job "gated" {
  labels = ["build"]
  param "G" { default = "/nonexistent" }
  step "wait" { run = "echo start; while [ ! -e \"$G\" ]; do sleep 0.1; done; echo end" }
}
job "hello" {
  labels = ["build"]
  step "greet" { run = "echo hello from $CONVEYOR_NODE" }
}
`

// TestReloadSSH reloads the configuration while an SSH build runs: SSH
// sessions do not survive their connection, so a node whose ssh block
// changed (its host key now set manually) relaunches only once the build
// finished, and a change of the ssh launcher block restarts the plugin
// only then too (the launcher lacks the resume capability); with -force
// the plugin restarts at once and the build fails.
func TestReloadSSH(t *testing.T) {
	srv := sshdtest.Start(t, sshdtest.Options{})
	dir, gates := t.TempDir(), t.TempDir()
	node := srv.Node(filepath.Join(dir, "remote", "conveyor-agent"), filepath.Join(dir, "remote", "work"))
	block := func(n sshdtest.NodeSSH) string {
		return fmt.Sprintf("\nnode \"ssh-1\" {\n  launcher = \"ssh\"\n  labels   = [\"build\"]\n%s}\n", n.Block())
	}
	c := cluster.Start(t, cluster.Options{Bin: bin, Launchers: sshLauncher(), Nodes: block(node), Jobs: gatedJobs})
	c.WaitOnline("ssh-1")
	ctx := context.Background()
	start := func(gate string) *store.Build {
		t.Helper()
		b, err := c.API.Trigger(ctx, "gated", map[string]string{"G": gate})
		if err != nil {
			t.Fatal(err)
		}
		c.WaitFor("the gated build to run", time.Minute, func() bool {
			return strings.Contains(string(c.Log("gated", b.Number)), "start")
		})
		return b
	}
	open := func(gate string) {
		if err := os.WriteFile(gate, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("manual-host-key-set-while-a-build-runs", func(t *testing.T) {
		gate := filepath.Join(gates, "1")
		b := start(gate)
		manual := node
		// The known_hosts strategy's block stays, the key is now given
		// in the configuration: the block's settings change.
		manual.KnownHosts = os.DevNull
		manual.Extra = ""
		cfgNode := strings.Replace(block(manual), `strategy         = "known_hosts"`, `strategy         = "manual"`, 1)
		cfgNode = strings.Replace(cfgNode, fmt.Sprintf("known_hosts_file = %s", cluster.HCLString(os.DevNull)),
			fmt.Sprintf("host_key         = %q", srv.HostKeyLine()), 1)
		c.WriteConfig(cfgNode, gatedJobs)
		res, err := c.API.Reload(ctx, false)
		if err != nil || !res.OK {
			t.Fatalf("reload: %+v, %v", res, err)
		}
		if want := "node ssh-1 relaunches once its 1 running build(s) finish"; !strings.Contains(strings.Join(res.Pending, "\n"), want) {
			t.Fatalf("pending %q, want %q", res.Pending, want)
		}
		if st := c.Node("ssh-1"); st.Retiring == "" || st.State != "online" {
			t.Fatalf("ssh-1 while its build runs: %+v", st)
		}
		open(gate)
		if got := c.WaitBuild("gated", b.Number, time.Minute); got.Status != store.StatusSuccess {
			t.Fatalf("the SSH build across the reload: %s (%s)", got.Status, got.Reason)
		}
		c.WaitFor("ssh-1 to relaunch", time.Minute, func() bool {
			return strings.Contains(c.ServerLog(), "node relaunched with its new configuration: node=ssh-1")
		})
		c.WaitOnline("ssh-1")
		if got, log := c.Run("hello", nil); got.Status != store.StatusSuccess || string(log) != "hello from ssh-1\n" {
			t.Fatalf("after the relaunch with the manual key: %s (%s) %q", got.Status, got.Reason, log)
		}
	})

	t.Run("launcher-block-changed-while-a-build-runs", func(t *testing.T) {
		gate := filepath.Join(gates, "2")
		b := start(gate)
		pid := c.PluginPID("conveyor-launcher-ssh")
		// The launcher block gets one more setting.
		c.SetLaunchers(strings.Replace(sshLauncher(), "{\n", "{\n  launch_timeout = \"3m\"\n", 1))
		c.WriteConfig(block(node), gatedJobs)
		res, err := c.API.Reload(ctx, false)
		if err != nil || !res.OK {
			t.Fatalf("reload: %+v, %v", res, err)
		}
		pending := strings.Join(res.Pending, "\n")
		if !strings.Contains(pending, "launcher ssh restarts with its new settings once its nodes' 1 running build(s) finish") {
			t.Fatalf("pending %q", res.Pending)
		}
		// The node went back to the known_hosts block it started with: it
		// relaunches too, after the build.
		if !strings.Contains(pending, "node ssh-1 relaunches") {
			t.Fatalf("pending %q, want ssh-1's relaunch", res.Pending)
		}
		// Nothing restarted while the build runs (a restart at once would
		// have been done before the reload answered).
		if got := c.PluginPID("conveyor-launcher-ssh"); got != pid {
			t.Fatalf("the ssh plugin restarted (pid %d → %d) while its build ran", pid, got)
		}
		open(gate)
		if got := c.WaitBuild("gated", b.Number, time.Minute); got.Status != store.StatusSuccess {
			t.Fatalf("the SSH build across the reload: %s (%s)", got.Status, got.Reason)
		}
		c.WaitFor("the ssh plugin to restart", time.Minute, func() bool {
			p := c.PluginPID("conveyor-launcher-ssh")
			return p != 0 && p != pid
		})
		c.WaitOnline("ssh-1")
		if got, log := c.Run("hello", nil); got.Status != store.StatusSuccess || string(log) != "hello from ssh-1\n" {
			t.Fatalf("after the launcher restart: %s (%s) %q", got.Status, got.Reason, log)
		}
	})

	t.Run("forced-relaunch-fails-the-running-build", func(t *testing.T) {
		b := start(filepath.Join(gates, "never"))
		c.SetLaunchers(sshLauncher()) // the launcher block as it started: a change
		c.WriteConfig(block(node), gatedJobs)
		res, err := c.API.Reload(ctx, true)
		if err != nil || !res.OK {
			t.Fatalf("reload -force: %+v, %v", res, err)
		}
		if !strings.Contains(strings.Join(res.Changes, "\n"), "launcher restarted: ssh (forced: 1 running build(s) lost their agent)") {
			t.Fatalf("changes %q", res.Changes)
		}
		if got := c.WaitBuild("gated", b.Number, time.Minute); got.Status != store.StatusFailure {
			t.Fatalf("the forced-over build: %s (%s), want failure", got.Status, got.Reason)
		}
		c.WaitOnline("ssh-1")
		if got, log := c.Run("hello", nil); got.Status != store.StatusSuccess || string(log) != "hello from ssh-1\n" {
			t.Fatalf("after the forced restart: %s (%s) %q", got.Status, got.Reason, log)
		}
	})
}
