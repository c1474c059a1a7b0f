package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/store"
)

// TestMasterKilledMidBuild: the master is killed with SIGKILL while a Kafka
// node's build prints; started again, it restores the node's session from
// its store, re-attaches to the running step, and once the agent resumed
// the session the build finishes — both steps — with its real exit status
// and a log byte-identical to what the steps printed.
func TestMasterKilledMidBuild(t *testing.T) {
	const lines = 600
	c := start(t, `
node "k1" {
  launcher = "kafka"
  labels   = ["k1"]
  kafka {}
}`, fmt.Sprintf(`
job "count" {
  labels = ["k1"]
  step "count" { run = "for i in $(seq 1 %d); do echo \"line $i of the first step\"; sleep 0.01; done" }
  step "after" { run = "echo second step; exit 0" }
}`, lines))
	c.StartAgent("k1", c.Secret("k1"))
	c.WaitOnline("k1")
	ctx := context.Background()
	b, err := c.API.Trigger(ctx, "count", nil)
	if err != nil {
		t.Fatal(err)
	}
	logSize := func() int {
		var buf bytes.Buffer
		if _, err := c.API.Log(ctx, "count", b.Number, 0, false, &buf); err != nil {
			return 0
		}
		return buf.Len()
	}
	c.WaitFor("the build to print", time.Minute, func() bool { return logSize() > 1000 })

	c.KillServer()
	c.StartServer()

	var got *store.Build
	c.WaitFor("the re-attached build to finish", 3*time.Minute, func() bool {
		got, err = c.API.Build(ctx, "count", b.Number)
		return err == nil && store.Finished(got.Status)
	})
	if got.Status != store.StatusSuccess || len(got.Steps) != 2 {
		t.Fatalf("build after the master's restart: %s (%s), %d steps; want success with 2 steps\n%s", got.Status, got.Reason, len(got.Steps), c.ServerLog())
	}
	var want strings.Builder
	for i := 1; i <= lines; i++ {
		fmt.Fprintf(&want, "line %d of the first step\n", i)
	}
	want.WriteString("second step\n")
	var log bytes.Buffer
	if _, err := c.API.Log(ctx, "count", b.Number, 0, false, &log); err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(log.Bytes()) != sha256.Sum256([]byte(want.String())) {
		t.Fatalf("log after the restart differs from what the steps printed: %d bytes, want %d\n%s", log.Len(), want.Len(), cluster.Tail(log.String()))
	}
	if !strings.Contains(c.ServerLog(), "re-attached to the running build") {
		t.Errorf("the server log does not say it re-attached")
	}
}
