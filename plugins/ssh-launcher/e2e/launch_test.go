package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/plugins/ssh-launcher/sshdtest"
)

// TestSSHLaunchesThatEnd runs five SSH nodes under one master: "good"
// runs a build; "hung" has a prefix_command that never starts the agent;
// "refused" presents a host key its known_hosts file does not list;
// "closed" points at a port nothing listens on; "silent" at one that
// accepts connections and never speaks, so that its three attempts take
// longer than the 2 minutes the master used to cut launches at. Each
// launch ends, with a reason that says why, and what the launcher started
// remotely does not outlive the master.
func TestSSHLaunchesThatEnd(t *testing.T) {
	srv := sshdtest.Start(t, sshdtest.Options{})
	other := sshdtest.Start(t, sshdtest.Options{}) // only "refused" connects to it
	dir := t.TempDir()

	wrongKnownHosts := filepath.Join(dir, "wrong_known_hosts")
	if err := os.WriteFile(wrongKnownHosts, []byte(fmt.Sprintf("[%s]:%d %s\n", srv.Host, other.Port, srv.HostKeyLine())), 0o600); err != nil {
		t.Fatal(err)
	}
	remote := func(name string) (string, string) {
		return filepath.Join(dir, "remote", "conveyor-agent"), filepath.Join(dir, "remote", name)
	}
	node := func(name string, n sshdtest.NodeSSH) string {
		return fmt.Sprintf("\nnode %q {\n  launcher = \"ssh\"\n  labels   = [%q]\n%s}\n", name, name, n.Block())
	}
	good := srv.Node(remote("good"))
	hung := srv.Node(remote("hung"))
	hung.Extra = "    prefix_command = \"sleep 3602 &&\"\n    launch_timeout = \"30s\"\n"
	refused := other.Node(remote("refused"))
	refused.KnownHosts = wrongKnownHosts
	closedPort := cluster.FreeAddr(t)
	_, port, _ := strings.Cut(closedPort, ":")
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		var held []net.Conn // accepted, never answered
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	_, silentPort, _ := strings.Cut(silent.Addr().String(), ":")
	unreachable := func(name, port, launchTimeout string) string {
		return fmt.Sprintf(`
node %q {
  launcher = "ssh"
  labels   = [%q]
  ssh {
    host             = "127.0.0.1"
    port             = %s
    private_key_file = %s
    max_retries      = 2
    retry_wait       = "100ms"
    launch_timeout   = %q
    host_key_verification {
      known_hosts_file = %s
    }
  }
}
`, name, name, port, cluster.HCLString(srv.ClientKeyFile), launchTimeout, cluster.HCLString(srv.KnownHostsFile))
	}
	closed := unreachable("closed", port, "60s") + unreachable("silent", silentPort, "41s")
	jobs := `
job "ticks" {
  labels = ["good"]
  step "tick" { run = "for i in $(seq 1 600); do echo tick $i; sleep 0.1; done" }
}
`
	c := cluster.Start(t, cluster.Options{Bin: bin, Launchers: sshLauncher(), Jobs: jobs,
		Nodes: node("good", good) + node("hung", hung) + node("refused", refused) + closed})
	c.WaitOnline("good")

	// The real last error, the node named once.
	c.WaitFor("node closed to give up with its last error", 2*time.Minute, func() bool {
		return strings.Contains(c.Node("closed").Reason, "failed after 3 attempt(s)")
	})
	if r := c.Node("closed").Reason; !strings.Contains(r, "connection refused") || strings.Count(r, `launch node "closed"`) != 1 {
		t.Errorf("node closed's reason %q: want the last error (connection refused), the node named once", r)
	}

	// A refused host key: both fingerprints in the reason.
	c.WaitFor("node refused to show the refusal", 2*time.Minute, func() bool {
		return strings.Contains(c.Node("refused").Reason, "host key verification")
	})
	if r := c.Node("refused").Reason; !strings.Contains(r, ssh.FingerprintSHA256(other.HostKey())) || !strings.Contains(r, ssh.FingerprintSHA256(srv.HostKey())) {
		t.Errorf("node refused's reason %q lacks the fingerprints of the presented and the expected key", r)
	}

	// The agent that never speaks: the launch ends after launch_timeout.
	c.WaitFor("node hung to fail its launch", 3*time.Minute, func() bool {
		return strings.Contains(c.Node("hung").Reason, "sent nothing within launch_timeout 30s")
	})

	// Three attempts of 41 s: longer than the master's old 2-minute cut.
	c.WaitFor("node silent to give up with its last error", 4*time.Minute, func() bool {
		return strings.Contains(c.Node("silent").Reason, "failed after 3 attempt(s)")
	})
	if r := c.Node("silent").Reason; !strings.Contains(r, "not done within launch_timeout 41s") {
		t.Errorf("node silent's reason %q: want the last attempt's error", r)
	}

	// By now (over 30 s later), the refused host was contacted once and the
	// refusal logged at ERROR once: it is not retried while nothing changed.
	if n := strings.Count(other.Log(), "Connection from"); n != 1 {
		t.Errorf("the host with the refused key saw %d connections, want 1:\n%s", n, other.Log())
	}
	if n := strings.Count(c.ServerLog(), "launch refused: not retried"); n != 1 {
		t.Errorf("the refusal was logged %d times, want once at ERROR", n)
	}

	b, err := c.API.Trigger(context.Background(), "ticks", nil)
	if err != nil {
		t.Fatal(err)
	}
	c.WaitFor("the build to print", time.Minute, func() bool {
		return strings.Contains(string(c.Log("ticks", b.Number)), "tick 2\n")
	})
	c.WaitFor("hung's prefix command to run again", 3*time.Minute, func() bool { return len(sleeping("3602")) > 0 })

	// The master stops: the build fails saying so, and nothing the
	// launcher started stays on the build host.
	c.StopServer()
	c.WaitFor("the remote commands to end", time.Minute, func() bool { return len(sleeping("3602")) == 0 })
	c.StartServer()
	got := c.WaitBuild("ticks", b.Number, time.Minute)
	if got.Status == store.StatusSuccess || !strings.Contains(got.Reason, "master stopped") {
		t.Errorf("build after the master stopped: %s (%s), want a failure saying the master stopped", got.Status, got.Reason)
	}
}

// sleeping returns the pids of `sleep SECONDS` processes on this machine
// (the tests' build host).
func sleeping(seconds string) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline"); err == nil && string(b) == "sleep\x00"+seconds+"\x00" {
			out = append(out, pid)
		}
	}
	return out
}
