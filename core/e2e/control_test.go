package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/server"
	"github.com/conveyor-ci/conveyor/core/store"
)

// TestKafkaDisconnectResumes: disconnecting a Kafka node closes its
// connection only: the session is held, the node is relaunched, the agent
// resumes and the running build finishes with all its output.
func TestKafkaDisconnectResumes(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "gate")
	c := start(t, `
node "kafka-1" {
  launcher = "kafka"
  labels   = ["linux"]
  kafka {}
}`, `
job "gated" {
  labels = ["linux"]
  step "wait" { run = `+cluster.HCLString("echo before; while [ ! -e '"+gate+"' ]; do sleep 0.1; done; echo after")+` }
}`)
	c.StartAgent("kafka-1", c.Secret("kafka-1"))
	c.WaitOnline("kafka-1")
	ctx := context.Background()
	b, err := c.API.Trigger(ctx, "gated", nil)
	if err != nil {
		t.Fatal(err)
	}
	c.WaitFor("the build to run", 2*time.Minute, func() bool {
		return strings.Contains(string(c.Log("gated", b.Number)), "before\n")
	})
	if _, err := c.API.ControlNode(ctx, "kafka-1", nodes.ActionDisconnect, server.NodeControlRequest{Reason: "move it"}); err != nil {
		t.Fatal(err)
	}
	c.WaitFor("the node to leave online", time.Minute, func() bool { return c.Node("kafka-1").State != nodes.StateOnline })
	if r := c.Node("kafka-1").Reason; !strings.Contains(r, "disconnected by bootstrap: move it") {
		t.Errorf("node reason %q does not name the disconnection", r)
	}
	c.WaitOnline("kafka-1")
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got := c.WaitBuild("gated", b.Number, 2*time.Minute)
	if got.Status != store.StatusSuccess || string(c.Log("gated", b.Number)) != "before\nafter\n" {
		t.Fatalf("build across the disconnect: %s (%s), log %q", got.Status, got.Reason, c.Log("gated", b.Number))
	}
}
