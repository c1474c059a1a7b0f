package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/internal/tmpfstest"
	"github.com/conveyor-ci/conveyor/core/store"
)

// fill writes a file of size bytes at path (on a tmpfs: it takes that
// much of its space).
func fill(t *testing.T, path string, size int) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Repeat([]byte{'x'}, size), 0o600); err != nil {
		t.Fatalf("filler %s: %v", path, err)
	}
}

// metric is the value of the series of /metrics that re matches (its
// first group is the value), -1 when absent.
func metric(t *testing.T, c *cluster.Cluster, re string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + re + ` (\S+)$`).FindStringSubmatch(c.Metrics())
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatalf("metric %s: %v", re, err)
	}
	return v
}

func writeErrors(kind string) string {
	return `conveyor_storage_write_errors_total\{kind="` + kind + `"\}`
}

// TestDiskFull: a full disk never yields a "successful" build with a cut
// log or artifact (issue 12). While a write is refused, what the agent
// sent stays unacknowledged in its outbox and the master writes it again
// every second: space back within the node's write_timeout, the build
// succeeds with its whole log (and artifact), byte-identical; space never
// back, the build fails with the file and the system's error in its
// reason (API, CLI, /metrics), the step is cancelled on the agent, and
// the master goes on serving other builds meanwhile.
func TestDiskFull(t *testing.T) {
	const lines = 700000 // seq 1 700000: 4,600,000 bytes
	var want strings.Builder
	for i := 1; i <= lines; i++ {
		want.WriteString(strconv.Itoa(i))
		want.WriteByte('\n')
	}
	wantSum := sha256.Sum256([]byte(want.String()))
	c := start(t, `
node "k1" {
  launcher        = "kafka"
  labels          = ["k1"]
  executors       = 2
  session_timeout = "3m"
  write_timeout   = "3m"
  kafka {}
}
node "k2" {
  launcher        = "kafka"
  labels          = ["k2"]
  session_timeout = "5s"
  write_timeout   = "5s"
  kafka {}
}`, fmt.Sprintf(`
job "recover" {
  labels = ["k1"]
  step "print" { run = "seq 1 %d" }
}
job "full" {
  labels = ["k2"]
  step "print" { run = "seq 1 %d; sleep 600" }
}
job "fine" {
  labels = ["k1"]
  step "print" { run = "echo fine" }
}
job "art-recover" {
  labels    = ["k1"]
  artifacts = ["big.bin"]
  step "make" { run = "head -c 3145728 /dev/urandom > big.bin && sha256sum big.bin" }
}
job "art-full" {
  labels    = ["k2"]
  artifacts = ["big.bin"]
  step "make" { run = "head -c 3145728 /dev/urandom > big.bin" }
}`, lines, lines))
	c.StartAgent("k1", c.Secret("k1"))
	c.StartAgent("k2", c.Secret("k2"))
	c.WaitOnline("k1", "k2")
	ctx := context.Background()
	logs := filepath.Join(c.Dir, "data", "logs")
	trigger := func(job string) int {
		b, err := c.API.Trigger(ctx, job, nil)
		if err != nil {
			t.Fatalf("trigger %s: %v", job, err)
		}
		return b.Number
	}
	// The server logs a refused write (at least once): the test waits for
	// that; at the end /metrics must have counted it.
	refusals := func() int { return strings.Count(c.ServerLog(), "no space left on device") }
	stalled := func(t *testing.T, kind string, before float64, logged int) {
		c.WaitFor("a write of kind "+kind+" to fail", 2*time.Minute, func() bool { return refusals() > logged })
		t.Cleanup(func() {
			if v := metric(t, c, writeErrors(kind)); v <= before {
				t.Errorf("/metrics: %s = %v, want more than %v", writeErrors(kind), v, before)
			}
		})
	}

	t.Run("log space back", func(t *testing.T) {
		dir := filepath.Join(logs, "recover")
		tmpfstest.Mount(t, dir, "8m")
		filler := filepath.Join(dir, "filler")
		fill(t, filler, 7<<20+512<<10) // half a MiB free: the log stops at it
		before := metric(t, c, writeErrors("log"))
		logged := refusals()
		n := trigger("recover")
		stalled(t, "log", before, logged)
		if b := c.Build("recover", n); b == nil || b.FinishedAt != nil {
			t.Fatalf("the build did not wait for space: %+v", b)
		}
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		b := c.WaitBuild("recover", n, 3*time.Minute)
		if b.Status != store.StatusSuccess {
			t.Fatalf("build after space came back: %s (%s), want success", b.Status, b.Reason)
		}
		log := c.Log("recover", n)
		if sha256.Sum256(log) != wantSum || b.LogSize != int64(want.Len()) {
			t.Fatalf("the log differs from what the step printed: %d bytes (recorded %d), want %d\n%s", len(log), b.LogSize, want.Len(), cluster.Tail(string(log)))
		}
		if !strings.Contains(c.ServerLog(), "storing works again") {
			t.Errorf("the server log does not say storing works again")
		}
	})

	t.Run("log space never back", func(t *testing.T) {
		dir := filepath.Join(logs, "full")
		tmpfstest.Mount(t, dir, "1m")
		before := metric(t, c, writeErrors("log"))
		logged := refusals()
		// The CLI triggers the build and reports its end.
		cli := exec.Command(c.Bin("conveyor"), "build", "-follow", "full")
		cli.Env = append(os.Environ(), "CONVEYOR_ADDR="+c.HTTPAddr, "CONVEYOR_TOKEN="+c.Token)
		var cliOut bytes.Buffer
		cli.Stdout, cli.Stderr = io.Discard, &cliOut
		if err := cli.Start(); err != nil {
			t.Fatal(err)
		}
		stalled(t, "log", before, logged)
		// Meanwhile another node's build, whose writes succeed, runs.
		if b, log := c.Run("fine", nil); b.Status != store.StatusSuccess || string(log) != "fine\n" {
			t.Fatalf("another node's build while k2's log is full: %s (%s), log %q", b.Status, b.Reason, log)
		}
		b := c.WaitBuild("full", 1, 2*time.Minute)
		wantReason := "writing the log " + filepath.Join(dir, "1.log") + ": no space left on device"
		if b.Status != store.StatusFailure || b.Reason != wantReason {
			t.Fatalf("build on a full disk: %s (%s), want failure (%s)", b.Status, b.Reason, wantReason)
		}
		if err := cli.Wait(); err == nil || !strings.Contains(cliOut.String(), wantReason) {
			t.Errorf("conveyor build: %v, printed %q; want a failure naming %q", err, cliOut.String(), wantReason)
		}
		if v := metric(t, c, `conveyor_builds_finished_total\{job="full",result="failure"\}`); v != 1 {
			t.Errorf("/metrics counts %v failed builds of full, want 1", v)
		}
		// The step (it sleeps after printing) was cancelled on the agent.
		agentLog := filepath.Join(c.Dir, "agents", "k2", "agent.log")
		c.WaitFor("the agent to cancel the step", time.Minute, func() bool {
			b, _ := os.ReadFile(agentLog)
			return bytes.Contains(b, []byte("cancelling step")) && bytes.Contains(b, []byte("no space left on device"))
		})
	})

	t.Run("artifact space back", func(t *testing.T) {
		dir := filepath.Join(logs, "art-recover")
		tmpfstest.Mount(t, dir, "8m")
		filler := filepath.Join(dir, "filler")
		fill(t, filler, 6<<20) // 2 MiB free, the artifact takes 3
		before := metric(t, c, writeErrors("artifact"))
		logged := refusals()
		n := trigger("art-recover")
		stalled(t, "artifact", before, logged)
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		b := c.WaitBuild("art-recover", n, 3*time.Minute)
		if b.Status != store.StatusSuccess || len(b.Artifacts) != 1 || b.Artifacts[0].Size != 3<<20 {
			t.Fatalf("build after space came back: %s (%s), artifacts %+v; want success with big.bin", b.Status, b.Reason, b.Artifacts)
		}
		var buf bytes.Buffer
		if _, err := c.API.DownloadArtifact(ctx, "art-recover", n, "big.bin", &buf); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(buf.Bytes())
		got := hex.EncodeToString(sum[:])
		if log := c.Log("art-recover", n); got != b.Artifacts[0].SHA256 || !bytes.Contains(log, []byte(got+"  big.bin")) {
			t.Fatalf("artifact: sha256 %s (%d bytes), record %+v; the step printed:\n%s", got, buf.Len(), b.Artifacts[0], log)
		}
	})

	t.Run("artifact space never back", func(t *testing.T) {
		dir := filepath.Join(logs, "art-full")
		tmpfstest.Mount(t, dir, "1m")
		before := metric(t, c, writeErrors("artifact"))
		logged := refusals()
		n := trigger("art-full")
		stalled(t, "artifact", before, logged)
		b := c.WaitBuild("art-full", n, 2*time.Minute)
		wantReason := "artifacts: storing them: writing the artifact " + filepath.Join(dir, strconv.Itoa(n)+".artifacts", "big.bin") + ": no space left on device"
		if b.Status != store.StatusFailure || !strings.Contains(b.Reason, wantReason) || len(b.Artifacts) != 0 {
			t.Fatalf("build on a full disk: %s (%s), artifacts %+v; want failure (%s)", b.Status, b.Reason, b.Artifacts, wantReason)
		}
		// The server goes on serving builds whose writes succeed.
		if b, log := c.Run("fine", nil); b.Status != store.StatusSuccess || string(log) != "fine\n" {
			t.Fatalf("a build after the failure: %s (%s), log %q", b.Status, b.Reason, log)
		}
	})
}
