// Package e2e runs the built binaries together: the master with its
// launcher plugins and real agents, over the embedded Kafka broker and
// over stdio, driven through the HTTP API like a user would.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/core/client"
	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/store"
)

var bin string

func TestMain(m *testing.M) { cluster.Main(m, &bin) }

const jobs = `
job "hello" {
  labels = ["linux"]
  env = { GREETING = "hello" }
  param "P" {
    description = "printed by the step"
    default     = ""
  }
  step "greet" { run = "echo \"$GREETING from $CONVEYOR_NODE build $CONVEYOR_BUILD_NUMBER param=$P\"" }
}
job "steps" {
  labels = ["linux"]
  step "one" { run = "echo one; echo err-one >&2" }
  step "two" { run = "pwd | grep -q 'steps/' && echo two" }
}
job "fails" {
  labels = ["linux"]
  step "bad" { run = "echo failing; exit 3" }
  step "skipped" { run = "touch should-not-exist" }
}
job "slow" {
  labels  = ["linux"]
  timeout = "3s"
  step "sleep" { run = "echo start; sleep 60; echo never" }
}
job "long" {
  labels = ["linux"]
  step "sleep" { run = "echo start; sleep 600" }
}
job "big" {
  labels = ["kafka-2"]
  step "seq" { run = "seq 1 700000" }
}
`

// start starts a cluster with the node and job blocks.
func start(t *testing.T, nodeBlocks, jobBlocks string) *cluster.Cluster {
	t.Helper()
	return cluster.Start(t, cluster.Options{Bin: bin, Nodes: nodeBlocks, Jobs: jobBlocks})
}

const kafkaNodes = `
node "kafka-1" {
  launcher  = "kafka"
  labels    = ["linux"]
  executors = 2
  kafka {}
}
node "kafka-2" {
  launcher = "kafka"
  labels   = ["linux"]
  kafka {}
}
node "kafka-3" {
  launcher = "kafka"
  labels   = ["other"]
  kafka {}
}
`

func TestKafkaBuildsEndToEnd(t *testing.T) {
	c := start(t, kafkaNodes, jobs)
	c.StartAgent("kafka-1", c.Secret("kafka-1"))
	c.StartAgent("kafka-2", c.Secret("kafka-2"))
	// kafka-3's agent holds kafka-1's secret: it must be refused.
	c.StartAgent("kafka-3", c.Secret("kafka-1"))
	c.WaitOnline("kafka-1", "kafka-2")

	t.Run("pass", func(t *testing.T) {
		b, log := c.Run("hello", map[string]string{"P": "42"})
		if b.Status != store.StatusSuccess {
			t.Fatalf("status %s (%s)", b.Status, b.Reason)
		}
		want := fmt.Sprintf("hello from %s build %d param=42\n", b.Node, b.Number)
		if string(log) != want {
			t.Fatalf("log %q, want %q", log, want)
		}
		if len(b.Steps) != 1 || b.Steps[0].ExitCode == nil || *b.Steps[0].ExitCode != 0 {
			t.Fatalf("steps %+v", b.Steps)
		}
	})
	// Issue 13: -p BASH_ENV='$(...)' on a job whose step runs bash ran
	// the command as the agent's user. Only declared parameters pass.
	t.Run("undeclared-param-refused", func(t *testing.T) {
		ctx := context.Background()
		marker := filepath.Join(t.TempDir(), "pwned")
		before, err := c.API.Builds(ctx, "hello")
		if err != nil {
			t.Fatal(err)
		}
		for _, params := range []map[string]string{
			{"BASH_ENV": "$(touch " + marker + ")"}, {"ENV": "$(touch " + marker + ")"}, {"LD_PRELOAD": marker}, {"P": "x", "A=B": "y"},
		} {
			_, err := c.API.Trigger(ctx, "hello", params)
			var apiErr *client.APIError
			if !errors.As(err, &apiErr) || apiErr.Status != http.StatusBadRequest || !strings.Contains(apiErr.Message, "it declares P") {
				t.Errorf("trigger with %v: %v, want 400 naming the declared parameters", params, err)
			}
		}
		after, err := c.API.Builds(ctx, "hello")
		if err != nil || len(after) != len(before) {
			t.Errorf("refused triggers queued builds: %d before, %d after (%v)", len(before), len(after), err)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Errorf("the injected command ran")
		}
	})
	t.Run("steps-in-order", func(t *testing.T) {
		b, log := c.Run("steps", nil)
		if b.Status != store.StatusSuccess || len(b.Steps) != 2 {
			t.Fatalf("status %s (%s), steps %+v", b.Status, b.Reason, b.Steps)
		}
		for _, line := range []string{"one\n", "err-one\n", "two\n"} {
			if !strings.Contains(string(log), line) {
				t.Errorf("log %q lacks %q", log, line)
			}
		}
		if !strings.HasSuffix(string(log), "two\n") || b.Steps[1].LogOffset <= 0 {
			t.Errorf("second step's output must come last at its offset: %q, offset %d", log, b.Steps[1].LogOffset)
		}
	})
	t.Run("fail", func(t *testing.T) {
		b, log := c.Run("fails", nil)
		if b.Status != store.StatusFailure || !strings.Contains(b.Reason, "code 3") {
			t.Fatalf("status %s (%s), want failure with code 3", b.Status, b.Reason)
		}
		if len(b.Steps) != 1 || *b.Steps[0].ExitCode != 3 {
			t.Fatalf("the failing step must be the last to run: %+v", b.Steps)
		}
		if string(log) != "failing\n" {
			t.Fatalf("log %q", log)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		b, log := c.Run("slow", nil)
		if b.Status != store.StatusTimeout || !strings.Contains(b.Reason, "timed out after 3s") {
			t.Fatalf("status %s (%s), want timeout", b.Status, b.Reason)
		}
		if string(log) != "start\n" {
			t.Fatalf("log %q", log)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		ctx := context.Background()
		b, err := c.API.Trigger(ctx, "long", nil)
		if err != nil {
			t.Fatal(err)
		}
		c.WaitFor("the long build to print", 60*time.Second, func() bool {
			var buf bytes.Buffer
			_, _ = c.API.Log(ctx, "long", b.Number, 0, false, &buf)
			return buf.String() == "start\n"
		})
		got, err := c.API.Cancel(ctx, "long", b.Number)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != store.StatusCancelled || !strings.Contains(got.Reason, "cancelled") {
			t.Fatalf("status %s (%s), want cancelled", got.Status, got.Reason)
		}
	})
	t.Run("big-output-byte-identical", func(t *testing.T) {
		var want bytes.Buffer
		for i := 1; i <= 700000; i++ {
			want.WriteString(strconv.Itoa(i))
			want.WriteByte('\n')
		}
		b, log := c.Run("big", nil)
		if b.Status != store.StatusSuccess {
			t.Fatalf("status %s (%s)", b.Status, b.Reason)
		}
		if sha256.Sum256(log) != sha256.Sum256(want.Bytes()) {
			t.Fatalf("followed log (%d bytes) differs from the step's output (%d bytes)", len(log), want.Len())
		}
		// From an offset, too.
		var tail bytes.Buffer
		if _, err := c.API.Log(context.Background(), "big", b.Number, 1000, false, &tail); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(tail.Bytes(), want.Bytes()[1000:]) {
			t.Fatal("log read from offset 1000 differs")
		}
		if b.LogSize != int64(want.Len()) {
			t.Fatalf("log_size %d, want %d", b.LogSize, want.Len())
		}
	})
	t.Run("wrong-secret-refused", func(t *testing.T) {
		c.WaitFor("kafka-3 to be refused", 120*time.Second, func() bool {
			return strings.Contains(c.Node("kafka-3").Reason, "authentication failed: wrong secret")
		})
		if st := c.Node("kafka-3").State; st == nodes.StateOnline {
			t.Fatalf("kafka-3 is %s with a wrong secret", st)
		}
	})
	t.Run("history-survives-restart", func(t *testing.T) {
		ctx := context.Background()
		before, err := c.API.Build(ctx, "fails", 1)
		if err != nil {
			t.Fatal(err)
		}
		// A crash, not a clean stop: finished builds are already on disk.
		c.KillServer()
		// kafka-3 leaves the configuration: its topics stay until purged.
		c.WriteConfig(strings.Split(kafkaNodes, `node "kafka-3"`)[0], jobs)
		c.StartServer()
		after, err := c.API.Build(ctx, "fails", 1)
		if err != nil {
			t.Fatal(err)
		}
		if after.Status != before.Status || after.Reason != before.Reason || len(after.Steps) != len(before.Steps) {
			t.Fatalf("after restart %+v, before %+v", after, before)
		}
		var log bytes.Buffer
		if _, err := c.API.Log(ctx, "fails", 1, 0, false, &log); err != nil || log.String() != "failing\n" {
			t.Fatalf("log after restart %q, %v", log.String(), err)
		}
		// The agents reconnect and the next build gets the next number.
		c.WaitOnline("kafka-1")
		b, _ := c.Run("fails", nil)
		if b.Number != 2 {
			t.Fatalf("next build numbered %d, want 2", b.Number)
		}
	})
	t.Run("purge-removed-node", func(t *testing.T) {
		ctx := context.Background()
		if _, err := c.API.DeleteNode(ctx, "kafka-1", true); err == nil || !strings.Contains(err.Error(), "is in the configuration") {
			t.Fatalf("deleting configured kafka-1: %v, want refusal", err)
		}
		r, err := c.API.DeleteNode(ctx, "kafka-3", true)
		if err != nil {
			t.Fatal(err)
		}
		if !r.Purged || r.Launcher != "kafka" {
			t.Fatalf("purge kafka-3: %+v", r)
		}
		if _, err := c.API.DeleteNode(ctx, "kafka-3", true); err == nil || !strings.Contains(err.Error(), "no such node") {
			t.Fatalf("second delete: %v, want no such node", err)
		}
	})
}

// TestSwapTransport moves a node from Kafka to a local stdio agent by
// changing only its launcher and launcher block; the job does not change.
func TestSwapTransport(t *testing.T) {
	const job = `
job "anywhere" {
  labels = ["swap"]
  step "where" { run = "echo on $CONVEYOR_NODE" }
}`
	c := start(t, `
node "builder" {
  launcher = "kafka"
  labels   = ["swap"]
  kafka {}
}`, job)
	agent := c.StartAgent("builder", c.Secret("builder"))
	c.WaitOnline("builder")
	b, log := c.Run("anywhere", nil)
	if b.Status != store.StatusSuccess || string(log) != "on builder\n" {
		t.Fatalf("over kafka: %s (%s), log %q", b.Status, b.Reason, log)
	}
	if got := c.Node("builder").Launcher; got != "kafka" {
		t.Fatalf("launcher %s", got)
	}
	_ = agent.Process.Kill()

	c.StopServer()
	c.WriteConfig(fmt.Sprintf(`
node "builder" {
  launcher = "local"
  labels   = ["swap"]
  local {
    command = [%q, "-transport", "stdio", "-name", "builder", "-workdir", %q]
  }
}`, c.Bin("conveyor-agent"), filepath.Join(c.Dir, "local-work")), job)
	c.StartServer()
	c.WaitOnline("builder")
	b, log = c.Run("anywhere", nil)
	if b.Status != store.StatusSuccess || string(log) != "on builder\n" {
		t.Fatalf("over stdio: %s (%s), log %q", b.Status, b.Reason, log)
	}
	if b.Number != 2 {
		t.Fatalf("build number %d after the swap, want 2: history is kept", b.Number)
	}
	if got := c.Node("builder").Launcher; got != "local" {
		t.Fatalf("launcher %s", got)
	}
}

// TestAPIToken: a stranger reaching the API can neither change anything,
// read a node's secret nor (by default) read at all; the token and the
// node secrets never reach the server's log.
func TestAPIToken(t *testing.T) {
	c := start(t, `
node "kafka-1" {
  launcher = "kafka"
  labels   = ["linux"]
  kafka {}
}`, `
job "hello" {
  labels = ["linux"]
  step "greet" { run = "echo hello" }
}`)
	secret := c.Secret("kafka-1")
	c.StartAgent("kafka-1", secret)
	c.WaitOnline("kafka-1")
	if b, _ := c.Run("hello", nil); b.Status != store.StatusSuccess {
		t.Fatalf("build with the token: %s (%s)", b.Status, b.Reason)
	}
	for _, r := range []struct{ method, path string }{
		{"POST", "/v1/jobs/hello/builds"},
		{"POST", "/v1/jobs/hello/builds/1/cancel"},
		{"GET", "/v1/nodes/kafka-1/secret"},
		{"DELETE", "/v1/nodes/kafka-1"},
		{"GET", "/v1/nodes"},
		{"GET", "/v1/jobs"},
		{"GET", "/v1/jobs/hello/builds/1/log"},
		{"GET", "/v1/plugins"},
		{"GET", "/metrics"},
	} {
		for _, tok := range []string{"", "wrong-" + c.Token} {
			req, err := http.NewRequest(r.method, "http://"+c.HTTPAddr+r.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tok != "" {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s %s (token sent: %v): %d %s, want 401 with a Bearer challenge", r.method, r.path, tok != "", resp.StatusCode, body)
			}
		}
	}
	if b, err := c.API.Build(context.Background(), "hello", 1); err != nil || b.Status != store.StatusSuccess {
		t.Fatalf("build 1 after the refused cancel: %+v, %v", b, err)
	}
	// With the token, /metrics shows the build and the node's traffic.
	body := c.Metrics()
	for _, re := range []string{
		`(?m)^conveyor_builds_finished_total\{job="hello",result="success"\} 1$`,
		`(?m)^conveyor_node_state\{launcher="kafka",node="kafka-1",state="online"\} 1$`,
		`(?m)^conveyor_transport_frames_total\{direction="in",launcher="kafka",node="kafka-1"\} [1-9]`,
		`(?m)^conveyor_transport_bytes_total\{direction="out",launcher="kafka",node="kafka-1"\} [1-9]`,
		`(?m)^conveyor_plugin_restarts_total\{plugin="kafka"\} 0$`,
		`(?m)^conveyor_transport_malformed_total\{node="kafka-1"\} 0$`,
		`(?m)^conveyor_queue_length 0$`,
	} {
		if !regexp.MustCompile(re).MatchString(body) {
			t.Errorf("/metrics lacks %s", re)
		}
	}
	log := c.ServerLog()
	for what, s := range map[string]string{"API token": c.Token, "node secret": secret} {
		if strings.Contains(log, s) {
			t.Errorf("the server log holds the %s", what)
		}
	}
}
