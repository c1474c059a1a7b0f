package main

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/conveyor-ci/conveyor/bench/harness"
	"github.com/conveyor-ci/conveyor/bench/report"
	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
	"github.com/conveyor-ci/conveyor/plugins/ssh-launcher/sshdtest"
	"github.com/conveyor-ci/conveyor/sdk/testenv"
)

// serverJobs are, per node N, "true-N" (one step running true), "cat-N"
// (one step printing the test data) and "art-N" (one step copying the test
// data into the workspace, archived as the artifact out.bin).
func serverJobs(data string) string {
	var b strings.Builder
	for _, tr := range transports {
		n := nodeOf[tr]
		fmt.Fprintf(&b, "job \"true-%s\" {\n  labels = [%q]\n  step \"true\" { run = \"true\" }\n}\n", n, n)
		fmt.Fprintf(&b, "job \"cat-%s\" {\n  labels = [%q]\n  step \"cat\" { run = %s }\n}\n", n, n, cluster.HCLString("cat "+shellQuote(data)))
		fmt.Fprintf(&b, "job \"art-%s\" {\n  labels = [%q]\n  artifacts = [\"out.bin\"]\n  step \"copy\" { run = %s }\n}\n", n, n, cluster.HCLString("cp "+shellQuote(data)+" out.bin"))
	}
	return b.String()
}

// serverSection drives `conveyor server` (the built binary, with its
// plugins, the embedded broker, a Kafka agent, sshd and the local
// launcher's agent) through its HTTP API: build round trips, output
// streaming to the stored log beside kcat and ssh cat on the same broker
// and sshd, artifacts, and cancels while streaming.
func (b *bench) serverSection(ctx context.Context, t *harness.T) {
	srv := sshdtest.Start(t, sshdtest.Options{})
	dir := t.TempDir()
	c := cluster.Start(t, cluster.Options{Bin: b.opts.bin, Launchers: sshLauncher(b.opts.bin),
		Nodes: nodeBlocks(b.opts.bin, srv, dir), Jobs: serverJobs(b.data)})
	c.StartAgent("k1", c.Secret("k1"))
	c.WaitOnline("k1", "s1", "l1")

	b.buildRTT(ctx, t, c)
	b.streaming(ctx, t, c, srv)
	b.artifacts(ctx, t, c)
	b.cancels(ctx, t, c)
}

// artifacts runs "art-N" on each transport: from the end of its step to
// the end of the build, the master collects the file from the agent
// (FileChunk frames) and stores it.
func (b *bench) artifacts(ctx context.Context, t *harness.T, c *cluster.Cluster) {
	b.res.artifact = map[string][]float64{}
	for range b.opts.rounds {
		for _, tr := range transports {
			job := "art-" + nodeOf[tr]
			bld, err := c.API.Trigger(ctx, job, nil)
			if err != nil {
				t.Fatalf("trigger %s: %v", job, err)
			}
			got := awaitBuild(ctx, t, c, job, bld.Number, 20*time.Millisecond, 10*time.Minute)
			if got.Status != store.StatusSuccess || len(got.Artifacts) != 1 || got.Artifacts[0].Size != b.opts.size || len(got.Steps) != 1 {
				t.Fatalf("%s#%d: %s (%s), artifacts %+v", job, got.Number, got.Status, got.Reason, got.Artifacts)
			}
			d := got.FinishedAt.Sub(*got.Steps[0].FinishedAt)
			b.res.artifact[tr] = append(b.res.artifact[tr], report.MiBps(b.opts.size, d))
			b.logf("artifact %s over %s: %s", report.Size(b.opts.size), tr, report.Rate(report.MiBps(b.opts.size, d)))
		}
	}
}

// buildRTT triggers "true-N" and waits until the API says the build
// finished (with its step's exit status), over each transport in turn.
func (b *bench) buildRTT(ctx context.Context, t *harness.T, c *cluster.Cluster) {
	b.res.buildRTT = map[string][]time.Duration{}
	b.res.stepRecorded = map[string][]time.Duration{}
	const warmup = 10
	for i := -warmup; i < b.opts.runs; i++ {
		for _, tr := range transports {
			job := "true-" + nodeOf[tr]
			start := time.Now()
			bld, err := c.API.Trigger(ctx, job, nil)
			if err != nil {
				t.Fatalf("trigger %s: %v", job, err)
			}
			// The log ends with the step; the build's record says it
			// finished a moment later.
			if _, err := c.API.Log(ctx, job, bld.Number, 0, true, io.Discard); err != nil {
				t.Fatalf("follow %s#%d: %v", job, bld.Number, err)
			}
			got := awaitBuild(ctx, t, c, job, bld.Number, 200*time.Microsecond, time.Minute)
			d := time.Since(start)
			if got.Status != store.StatusSuccess || len(got.Steps) != 1 || got.Steps[0].FinishedAt == nil {
				t.Fatalf("%s#%d: %s (%s)", job, got.Number, got.Status, got.Reason)
			}
			if i >= 0 {
				b.res.buildRTT[tr] = append(b.res.buildRTT[tr], d)
				b.res.stepRecorded[tr] = append(b.res.stepRecorded[tr], got.Steps[0].FinishedAt.Sub(got.Steps[0].StartedAt))
			}
		}
	}
	for _, tr := range transports {
		b.logf("build round trip over %s: p50/p99 %s (step as recorded %s)", tr,
			report.P50P99(b.res.buildRTT[tr]), report.P50P99(b.res.stepRecorded[tr]))
	}
}

// awaitBuild polls build n of job every interval until it finished.
func awaitBuild(ctx context.Context, t *harness.T, c *cluster.Cluster, job string, n int, interval, timeout time.Duration) *store.Build {
	deadline := time.Now().Add(timeout)
	for {
		got, err := c.API.Build(ctx, job, n)
		if err == nil && got.FinishedAt != nil {
			return got
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s#%d did not finish within %s", job, n, timeout)
		}
		time.Sleep(interval)
	}
}

// streaming runs "cat-N" on each transport, kcat producing and consuming
// the same data on the embedded broker, and ssh cat of it from sshd, in
// rounds.
func (b *bench) streaming(ctx context.Context, t *harness.T, c *cluster.Cluster, srv *sshdtest.Server) {
	b.res.stream = map[string][]float64{}
	b.res.streamTime = map[string]time.Duration{}
	kcfg := kafkatransport.Config{Brokers: []string{c.KafkaAddr}}
	for r := range b.opts.rounds {
		topic := fmt.Sprintf("bench.kcat.%d", r)
		if err := kafkatransport.EnsureTopics(ctx, kcfg, []string{topic}, 1, 1); err != nil {
			t.Fatalf("create %s: %v", topic, err)
		}
		rate, produced := b.kcat(ctx, t, c.KafkaAddr, topic)
		b.res.kcat = append(b.res.kcat, rate)
		b.res.kcatProduce = append(b.res.kcatProduce, produced)
		b.logf("kcat produce+consume %s: %s (produce alone %s)", report.Size(b.opts.size), report.Rate(rate), report.Rate(produced))
		rate = b.sshCat(ctx, t, srv)
		b.res.sshCat = append(b.res.sshCat, rate)
		b.logf("ssh cat %s: %s", report.Size(b.opts.size), report.Rate(rate))
		for _, tr := range transports {
			job := "cat-" + nodeOf[tr]
			bld, err := c.API.Trigger(ctx, job, nil)
			if err != nil {
				t.Fatalf("trigger %s: %v", job, err)
			}
			got := awaitBuild(ctx, t, c, job, bld.Number, 20*time.Millisecond, 10*time.Minute)
			if got.Status != store.StatusSuccess || got.LogSize != b.opts.size {
				t.Fatalf("%s#%d: %s (%s), log %d bytes, want %d", job, got.Number, got.Status, got.Reason, got.LogSize, b.opts.size)
			}
			d := got.FinishedAt.Sub(*got.StartedAt)
			b.res.stream[tr] = append(b.res.stream[tr], report.MiBps(got.LogSize, d))
			b.res.streamTime[tr] = max(b.res.streamTime[tr], d)
			b.logf("stream %s over %s to the stored log: %s", report.Size(got.LogSize), tr, report.Rate(report.MiBps(got.LogSize, d)))
		}
	}
}

// kcat produces the test data to topic (one message per line) while a
// second kcat consumes it, and returns the end-to-end throughput (first
// byte produced to last byte consumed) and the producer's alone.
func (b *bench) kcat(ctx context.Context, t *harness.T, addr, topic string) (endToEnd, produce float64) {
	kcat := testenv.Command(t, "kcat", "kcat")
	cons := exec.CommandContext(ctx, kcat, "-C", "-b", addr, "-t", topic, "-p", "0", "-o", "beginning", "-q", "-u")
	cons.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cons.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cons.Start(); err != nil {
		t.Fatalf("kcat: %v", err)
	}
	defer func() { _ = cons.Process.Kill(); _ = cons.Wait() }()
	got := make(chan int64, 1)
	go func() {
		n, _ := io.CopyN(io.Discard, out, b.opts.size)
		got <- n
	}()
	start := time.Now()
	prod := exec.CommandContext(ctx, kcat, "-P", "-b", addr, "-t", topic, "-p", "0", "-l", b.data)
	if msg, err := prod.CombinedOutput(); err != nil {
		t.Fatalf("kcat -P: %v\n%s", err, msg)
	}
	produced := time.Since(start)
	select {
	case n := <-got:
		if n != b.opts.size {
			t.Fatalf("kcat -C read %d bytes, want %d", n, b.opts.size)
		}
	case <-time.After(5 * time.Minute):
		t.Fatalf("kcat -C did not read everything kcat -P produced")
	}
	return report.MiBps(b.opts.size, time.Since(start)), report.MiBps(b.opts.size, produced)
}

// sshCat runs `ssh host cat DATA` with OpenSSH against sshd and returns
// its throughput.
func (b *bench) sshCat(ctx context.Context, t *harness.T, srv *sshdtest.Server) float64 {
	cmd := exec.CommandContext(ctx, testenv.Command(t, "ssh", "openssh-client"), "-T", "-i", srv.ClientKeyFile, "-p", fmt.Sprint(srv.Port),
		"-o", "BatchMode=yes", "-o", "UserKnownHostsFile="+srv.KnownHostsFile, "-o", "StrictHostKeyChecking=yes",
		srv.User+"@"+srv.Host, "cat "+shellQuote(b.data))
	out := &counter{}
	cmd.Stdout = out
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("ssh cat: %v\n%s", err, stderr.String())
	}
	d := time.Since(start)
	if out.n != b.opts.size {
		t.Fatalf("ssh cat: %d bytes, want %d", out.n, b.opts.size)
	}
	return report.MiBps(out.n, d)
}

// cancels starts "cat-N", cancels it once it streamed for a quarter of
// the time the whole data took, and measures until the master recorded
// the build as finished.
func (b *bench) cancels(ctx context.Context, t *harness.T, c *cluster.Cluster) {
	b.res.cancel = map[string][]time.Duration{}
	for range b.opts.cancels {
		for _, tr := range transports {
			job := "cat-" + nodeOf[tr]
			bld, err := c.API.Trigger(ctx, job, nil)
			if err != nil {
				t.Fatalf("trigger %s: %v", job, err)
			}
			wait := b.res.streamTime[tr] / 4
			if wait == 0 {
				wait = 500 * time.Millisecond
			}
			var started time.Time
			waitFor(t, job+" to start", time.Minute, func() bool {
				got, err := c.API.Build(ctx, job, bld.Number)
				if err == nil && got.StartedAt != nil {
					started = *got.StartedAt
					return true
				}
				return false
			})
			time.Sleep(time.Until(started.Add(wait)))
			at := time.Now()
			if _, err := c.API.Cancel(ctx, job, bld.Number); err != nil {
				t.Fatalf("cancel %s#%d: %v", job, bld.Number, err)
			}
			got := awaitBuild(ctx, t, c, job, bld.Number, time.Millisecond, 2*time.Minute)
			if got.Status != store.StatusCancelled {
				t.Fatalf("%s#%d after cancel: %s (%s)", job, got.Number, got.Status, got.Reason)
			}
			if got.LogSize >= b.opts.size {
				t.Fatalf("%s#%d printed all %d bytes before the cancel: no cancel while streaming", job, got.Number, got.LogSize)
			}
			d := got.FinishedAt.Sub(at)
			b.res.cancel[tr] = append(b.res.cancel[tr], d)
			b.logf("cancel %s#%d over %s after %s streamed: %s", job, got.Number, tr, report.Size(got.LogSize), report.Latency(d))
		}
	}
}
