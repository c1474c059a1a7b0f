// Package e2e runs builds on SSH nodes end to end: the built conveyor
// master, its SSH launcher plugin and conveyor-agent uploaded to a real
// OpenSSH sshd on a loopback port.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/plugins/ssh-launcher/sshdtest"
)

var bin string

func TestMain(m *testing.M) { cluster.Main(m, &bin) }

const jobs = `
job "hello" {
  labels = ["build"]
  step "greet" { run = "echo hello from $CONVEYOR_NODE" }
}
job "big" {
  labels = ["build"]
  step "seq" { run = "seq 1 500000" }
}
job "ticks" {
  labels = ["build"]
  step "tick" { run = "for i in $(seq 1 600); do echo tick $i; sleep 0.1; done" }
}
`

// sshLauncher declares the SSH launcher uploading the built agent.
func sshLauncher() string {
	return fmt.Sprintf("launcher \"ssh\" {\n  agent_binary = %s\n}\n", cluster.HCLString(filepath.Join(bin, "conveyor-agent")))
}

// sshNode is a node block reaching srv, with the agent and its workspace
// under dir.
func sshNode(name string, srv *sshdtest.Server, dir string) string {
	ssh := srv.Node(filepath.Join(dir, "remote", "conveyor-agent"), filepath.Join(dir, "remote", "work"))
	return fmt.Sprintf("\nnode %q {\n  launcher = \"ssh\"\n  labels   = [\"build\"]\n%s}\n", name, ssh.Block())
}

func TestSSHBuildsEndToEnd(t *testing.T) {
	srv := sshdtest.Start(t, sshdtest.Options{})
	dir := t.TempDir()
	c := cluster.Start(t, cluster.Options{Bin: bin, Launchers: sshLauncher(), Nodes: sshNode("ssh-1", srv, dir), Jobs: jobs})
	c.WaitOnline("ssh-1")
	if d := c.Node("ssh-1").Description; !strings.Contains(d, fmt.Sprintf("%s:%d", srv.Host, srv.Port)) {
		t.Errorf("node description %q does not name the ssh host", d)
	}

	t.Run("hello", func(t *testing.T) {
		b, log := c.Run("hello", nil)
		if b.Status != store.StatusSuccess || string(log) != "hello from ssh-1\n" {
			t.Fatalf("status %s (%s), log %q", b.Status, b.Reason, log)
		}
	})
	t.Run("big-output-byte-identical", func(t *testing.T) {
		var want bytes.Buffer
		for i := 1; i <= 500000; i++ {
			want.WriteString(strconv.Itoa(i))
			want.WriteByte('\n')
		}
		b, log := c.Run("big", nil)
		if b.Status != store.StatusSuccess {
			t.Fatalf("status %s (%s)", b.Status, b.Reason)
		}
		if sha256.Sum256(log) != sha256.Sum256(want.Bytes()) {
			t.Fatalf("log (%d bytes) differs from the step's output (%d bytes)", len(log), want.Len())
		}
	})
	t.Run("dropped-connection-fails-the-build", func(t *testing.T) {
		ctx := context.Background()
		b, err := c.API.Trigger(ctx, "ticks", nil)
		if err != nil {
			t.Fatal(err)
		}
		c.WaitFor("the build to print", time.Minute, func() bool {
			var buf bytes.Buffer
			_, _ = c.API.Log(ctx, "ticks", b.Number, 0, false, &buf)
			return strings.Contains(buf.String(), "tick 2\n")
		})
		// sshd goes away with every session: this is what TCP does to a
		// build, and why the Kafka launcher exists.
		srv.Stop()
		var got *store.Build
		c.WaitFor("the build to fail", time.Minute, func() bool {
			got, err = c.API.Build(ctx, "ticks", b.Number)
			return err == nil && store.Finished(got.Status)
		})
		if got.Status != store.StatusFailure || !strings.Contains(got.Reason, "lost") {
			t.Fatalf("build %s (%s), want failure naming the lost connection", got.Status, got.Reason)
		}
		c.WaitFor("the node to go offline with the reason", time.Minute, func() bool {
			n := c.Node("ssh-1")
			return n.State != nodes.StateOnline && n.Reason != ""
		})
		t.Logf("build reason %q; node reason %q", got.Reason, c.Node("ssh-1").Reason)

		srv.Start()
		c.WaitOnline("ssh-1")
		b2, log := c.Run("hello", nil)
		if b2.Status != store.StatusSuccess || string(log) != "hello from ssh-1\n" {
			t.Fatalf("after sshd came back: %s (%s), log %q", b2.Status, b2.Reason, log)
		}
	})
}

// TestSwapKafkaToSSH moves a node from Kafka to SSH by changing only its
// launcher and launcher block: the job and its history stay.
func TestSwapKafkaToSSH(t *testing.T) {
	srv := sshdtest.Start(t, sshdtest.Options{})
	dir := t.TempDir()
	c := cluster.Start(t, cluster.Options{Bin: bin, Launchers: sshLauncher(), Jobs: jobs, Nodes: `
node "builder" {
  launcher = "kafka"
  labels   = ["build"]
  kafka {}
}`})
	agent := c.StartAgent("builder", c.Secret("builder"))
	c.WaitOnline("builder")
	b, log := c.Run("hello", nil)
	if b.Status != store.StatusSuccess || string(log) != "hello from builder\n" || c.Node("builder").Launcher != "kafka" {
		t.Fatalf("over kafka: %s (%s), log %q", b.Status, b.Reason, log)
	}
	_ = agent.Process.Kill()

	c.StopServer()
	c.WriteConfig(sshNode("builder", srv, dir), jobs)
	c.StartServer()
	c.WaitOnline("builder")
	b, log = c.Run("hello", nil)
	if b.Status != store.StatusSuccess || string(log) != "hello from builder\n" {
		t.Fatalf("over ssh: %s (%s), log %q", b.Status, b.Reason, log)
	}
	if b.Number != 2 || c.Node("builder").Launcher != "ssh" {
		t.Fatalf("build %d on launcher %s, want build 2 on ssh", b.Number, c.Node("builder").Launcher)
	}
}
