package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/server"
	"github.com/conveyor-ci/conveyor/core/store"
)

// localNode is a node of the local launcher: the plugin runs its agent
// over stdio.
func localNode(c *cluster.Cluster, name, labels, extra string) string {
	return fmt.Sprintf(`
node %q {
  launcher = "local"
  labels   = %s
  local {
    command = [%q, "-transport", "stdio", "-name", %q, "-workdir", %q]
    %s
  }
}`, name, labels, c.Bin("conveyor-agent"), name, filepath.Join(c.Dir, "work-"+name), extra)
}

// gatedJob is a job whose step prints version, then waits for the file
// its parameter G names.
func gatedJob(name, labels, version string) string {
	return fmt.Sprintf(`
job %q {
  labels = %s
  param "G" { default = "/nonexistent" }
  step "wait" {
    run = "echo start %s; while [ ! -e \"$G\" ]; do sleep 0.1; done; echo end %s"
  }
}`, name, labels, version, version)
}

// startGated triggers a gated job and waits until its step runs.
func startGated(t *testing.T, c *cluster.Cluster, job, gate string) *store.Build {
	t.Helper()
	b, err := c.API.Trigger(context.Background(), job, map[string]string{"G": gate})
	if err != nil {
		t.Fatalf("trigger %s: %v", job, err)
	}
	c.WaitFor(fmt.Sprintf("%s#%d to run its step", job, b.Number), 90*time.Second, func() bool {
		return strings.Contains(string(c.Log(job, b.Number)), "start")
	})
	return c.Build(job, b.Number)
}

func openGate(t *testing.T, gate string) {
	t.Helper()
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// reloadMetric is the value of conveyor_config_reloads_total{result}.
func reloadMetric(c *cluster.Cluster, result string) string {
	m := regexp.MustCompile(`(?m)^conveyor_config_reloads_total\{result="` + result + `"\} (\S+)$`).FindStringSubmatch(c.Metrics())
	if m == nil {
		return ""
	}
	return m[1]
}

// TestReload changes the configuration of a running master, with builds
// running, three ways: a bad file (nothing changes), conveyor reload
// (jobs added, changed and removed, a node added, a local node's launcher
// block changed while its build runs: it relaunches once the build
// finished; the kafka launcher block changed while a kafka build runs:
// the plugin restarts at once and the build resumes), and SIGHUP (a node
// with a running build removed: it drains first).
func TestReload(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Bin: bin})
	nodesV1 := localNode(c, "local-1", `["l"]`, "") + `
node "kafka-1" {
  launcher = "kafka"
  labels   = ["k"]
  kafka {}
}`
	jobsV1 := gatedJob("gated", `["l"]`, "v1") + gatedJob("kgated", `["k"]`, "k1") + `
job "gone" {
  labels = ["l"]
  step "s" { run = "echo gone" }
}`
	c.WriteConfig(nodesV1, jobsV1)
	c.StopServer()
	c.StartServer()
	c.StartAgent("kafka-1", c.Secret("kafka-1"))
	c.WaitOnline("local-1", "kafka-1")
	ctx := context.Background()
	gates := t.TempDir()

	t.Run("bad-file-changes-nothing", func(t *testing.T) {
		c.WriteConfig(nodesV1, jobsV1+`
job "broken" {
  labels = ["l"]
  step "s" { run = "echo ${HOME}" }
}`)
		res, err := c.API.Reload(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		if res.OK || !regexp.MustCompile(`conveyor\.hcl:\d+:\d+: Error: Variables not allowed`).MatchString(res.Error) ||
			!strings.Contains(res.Error, "write $${...}") {
			t.Fatalf("reload of a bad file: %+v", res)
		}
		jobs, err := c.API.Jobs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range jobs {
			if j.Name == "broken" {
				t.Fatalf("the refused configuration's job is there: %+v", jobs)
			}
		}
		if got := reloadMetric(c, "failure"); got != "1" {
			t.Fatalf("failures counted %q, want 1", got)
		}
		if !strings.Contains(c.ServerLog(), "configuration reload refused") {
			t.Fatalf("the refusal is not logged")
		}
	})

	gate1, gate2 := filepath.Join(gates, "1"), filepath.Join(gates, "2")
	t.Run("cli-jobs-nodes-launchers", func(t *testing.T) {
		b1 := startGated(t, c, "gated", gate1)
		k1 := startGated(t, c, "kgated", gate2)
		kafkaPID := c.PluginPID("conveyor-launcher-kafka")
		if b1.Node != "local-1" || k1.Node != "kafka-1" || kafkaPID == 0 {
			t.Fatalf("builds on %s, %s; kafka plugin pid %d", b1.Node, k1.Node, kafkaPID)
		}

		c.SetKafka("partitions = 2")                                                    // the kafka launcher block changes (topics that exist keep theirs)
		c.WriteConfig(localNode(c, "local-1", `["l"]`, `env = { RELAUNCHED = "yes" }`)+ // its local block changes
			localNode(c, "local-2", `["l2"]`, "")+`
node "kafka-1" {
  launcher = "kafka"
  labels   = ["k"]
  kafka {}
}`, gatedJob("gated", `["l"]`, "v2")+gatedJob("kgated", `["k"]`, "k1")+`
job "new" {
  labels = ["l2"]
  step "s" { run = "echo new on $CONVEYOR_NODE" }
}`)
		cmd := exec.Command(c.Bin("conveyor"), "reload", "-address", "http://"+c.HTTPAddr)
		cmd.Env = append(os.Environ(), "CONVEYOR_TOKEN="+c.Token)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("conveyor reload: %v\n%s", err, out)
		}
		for _, want := range []string{"job added: new", "job changed: gated", "job removed: gone", "node added: local-2",
			"pending: node local-1 relaunches once its 1 running build(s) finish", "launcher restarted: kafka (its sessions resume)"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("conveyor reload printed no %q:\n%s", want, out)
			}
		}

		// Jobs: the new one runs on the new node; the removed one is gone.
		c.WaitOnline("local-2")
		b, log := c.Run("new", nil)
		if b.Status != store.StatusSuccess || string(log) != "new on local-2\n" {
			t.Fatalf("new job: %s (%s) %q", b.Status, b.Reason, log)
		}
		if _, err := c.API.Trigger(ctx, "gone", nil); err == nil {
			t.Fatalf("the removed job can still be triggered")
		}

		// local-1 takes no new build while its build runs; the build
		// goes on with the definition it started with.
		if st := c.Node("local-1"); st.Retiring == "" || st.State != "online" {
			t.Fatalf("local-1 while its build runs: %+v", st)
		}
		b2, err := c.API.Trigger(ctx, "gated", map[string]string{"G": gate1})
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Build("gated", b2.Number); got.Status != store.StatusQueued {
			t.Fatalf("gated#%d is %s while local-1 drains, want queued", b2.Number, got.Status)
		}

		// The kafka plugin restarted at once; the kafka build resumes.
		c.WaitFor("the kafka plugin to restart", time.Minute, func() bool {
			pid := c.PluginPID("conveyor-launcher-kafka")
			return pid != 0 && pid != kafkaPID
		})
		openGate(t, gate2)
		if k := c.WaitBuild("kgated", k1.Number, 3*time.Minute); k.Status != store.StatusSuccess {
			t.Fatalf("the kafka build across the plugin restart: %s (%s)", k.Status, k.Reason)
		}

		openGate(t, gate1)
		if got := c.WaitBuild("gated", b1.Number, time.Minute); got.Status != store.StatusSuccess ||
			!strings.Contains(string(c.Log("gated", b1.Number)), "end v1") {
			t.Fatalf("the running build after the reload: %s (%s) %q", got.Status, got.Reason, c.Log("gated", b1.Number))
		}
		// Then local-1 relaunches and runs the queued build, new definition.
		if got := c.WaitBuild("gated", b2.Number, 2*time.Minute); got.Status != store.StatusSuccess ||
			got.Node != "local-1" || !strings.Contains(string(c.Log("gated", b2.Number)), "end v2") {
			t.Fatalf("the build queued during the relaunch: %s on %s (%s) %q", got.Status, got.Node, got.Reason, c.Log("gated", b2.Number))
		}
		if st := c.Node("local-1"); st.Retiring != "" {
			t.Fatalf("local-1 still retiring after its relaunch: %+v", st)
		}
		if !strings.Contains(c.ServerLog(), `node relaunched with its new configuration: node=local-1`) {
			t.Errorf("the relaunch is not logged")
		}
		if got := reloadMetric(c, "success"); got != "1" {
			t.Fatalf("successes counted %q, want 1", got)
		}
	})

	t.Run("sighup-removes-a-node-once-drained", func(t *testing.T) {
		gate3 := filepath.Join(gates, "3")
		b := startGated(t, c, "gated", gate3)
		if b.Node != "local-1" {
			t.Fatalf("built on %s", b.Node)
		}
		before := c.API
		last, err := before.LastReload(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c.WriteConfig(localNode(c, "local-2", `["l", "l2"]`, "")+`
node "kafka-1" {
  launcher = "kafka"
  labels   = ["k"]
  kafka {}
}`, gatedJob("gated", `["l"]`, "v2")+gatedJob("kgated", `["k"]`, "k1"))
		c.Signal(syscall.SIGHUP)
		var res *server.ReloadResult
		c.WaitFor("the SIGHUP reload", time.Minute, func() bool {
			res, err = c.API.LastReload(ctx)
			return err == nil && res.Time.After(last.Time)
		})
		if !res.OK || res.Trigger != server.ReloadSIGHUP || !strings.Contains(strings.Join(res.Pending, "\n"), "node local-1 is removed once its 1 running build(s) finish") {
			t.Fatalf("SIGHUP reload: %+v", res)
		}
		if st := c.Node("local-1"); st.Retiring == "" {
			t.Fatalf("local-1 is not draining: %+v", st)
		}
		openGate(t, gate3)
		if got := c.WaitBuild("gated", b.Number, time.Minute); got.Status != store.StatusSuccess {
			t.Fatalf("the removed node's build: %s (%s)", got.Status, got.Reason)
		}
		c.WaitFor("local-1 to go", time.Minute, func() bool {
			list, err := c.API.Nodes(ctx)
			if err != nil {
				return false
			}
			for _, n := range list {
				if n.Name == "local-1" {
					return false
				}
			}
			return true
		})
		// The job runs on the node that took the label.
		if got, _ := c.Run("gated", map[string]string{"G": gate3}); got.Status != store.StatusSuccess || got.Node != "local-2" {
			t.Fatalf("after the removal: %s on %s (%s)", got.Status, got.Node, got.Reason)
		}
		if got := reloadMetric(c, "success"); got != "2" {
			t.Fatalf("successes counted %q, want 2", got)
		}
	})
}

// TestStepShell: a job's shell runs its steps under a login bash over the
// local launcher; another job's steps run under /bin/sh -c, not a login
// shell.
func TestStepShell(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Bin: bin})
	c.WriteConfig(localNode(c, "local-1", `["l"]`, ""), `
job "login" {
  labels = ["l"]
  shell  = ["bash", "-l", "-c"]
  step "s" {
    run = <<-EOT
      shopt -q login_shell && echo login
      words=(a b c)
      echo "$${words[2]}"
    EOT
  }
}
job "plain" {
  labels = ["l"]
  step "s" { run = "echo \"$0\"" }
}`)
	c.StopServer()
	c.StartServer()
	c.WaitOnline("local-1")
	b, log := c.Run("login", nil)
	if b.Status != store.StatusSuccess || string(log) != "login\nc\n" {
		t.Fatalf("login shell: %s (%s) %q", b.Status, b.Reason, log)
	}
	b, log = c.Run("plain", nil)
	if b.Status != store.StatusSuccess || string(log) != "/bin/sh\n" {
		t.Fatalf("default shell: %s (%s) %q", b.Status, b.Reason, log)
	}
}
