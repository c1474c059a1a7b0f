package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	agentsession "github.com/conveyor-ci/conveyor/agent/session"
	"github.com/conveyor-ci/conveyor/bench/harness"
	"github.com/conveyor-ci/conveyor/bench/report"
	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// scaleResult is what the scale section measured.
type scaleResult struct {
	agents int
	// RSS of the master and of the Kafka launcher plugin (which hosts the
	// embedded broker): without nodes, with the nodes launched but no
	// agent, and with every agent connected and idle.
	masterEmpty, pluginEmpty     int64
	masterWaiting, pluginWaiting int64
	masterOnline, pluginOnline   int64
	// benchPerAgent is the bench process's RSS growth per agent: the
	// agents' side of the same Kafka transport.
	benchPerAgent int64
	online        time.Duration // until every agent was online
	// idleCPU is the CPU time the master and the plugin used over idle.
	idleCPU, idleAgentsCPU time.Duration
	idle                   time.Duration
	dispatch               time.Duration // N one-step builds, first trigger to last finished
	dispatchNodes          int           // distinct nodes they ran on
}

// scaleNodes declares n Kafka nodes labelled "scale".
func scaleNodes(n int) (string, []string) {
	var b strings.Builder
	names := make([]string, n)
	for i := range n {
		names[i] = fmt.Sprintf("a%04d", i+1)
		fmt.Fprintf(&b, "node %q {\n  launcher = \"kafka\"\n  labels   = [\"scale\"]\n  kafka {}\n}\n", names[i])
	}
	return b.String(), names
}

const scaleJob = "job \"one\" {\n  labels = [\"scale\"]\n  step \"true\" { run = \"true\" }\n}\n"

// serverPIDs are the running master's pid and its Kafka plugin's.
func serverPIDs(t *harness.T, c *cluster.Cluster) (int, int) {
	master := harness.Child(c.Bin("conveyor"))
	plugin := c.PluginPID("conveyor-launcher-kafka")
	if master == 0 || plugin == 0 {
		t.Fatalf("cannot find the master (%d) or its kafka plugin (%d)", master, plugin)
	}
	return master, plugin
}

func rss(t *harness.T, pid int) int64 {
	n, err := harness.RSS(pid)
	if err != nil {
		t.Fatalf("rss of %d: %v", pid, err)
	}
	return n
}

func cpu(t *harness.T, pids ...int) time.Duration {
	var sum time.Duration
	for _, pid := range pids {
		d, err := harness.CPUTime(pid)
		if err != nil {
			t.Fatalf("cpu time of %d: %v", pid, err)
		}
		sum += d
	}
	return sum
}

// settle lets the processes reach a steady state before a memory reading.
func settle(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// scaleSection runs one server with opts.agents Kafka nodes whose agents
// are goroutines of the bench process (the agent's session package over
// real Kafka connections), measures the server's memory per idle agent
// and the CPU of their heartbeats, then dispatches one one-step build per
// agent.
func (b *bench) scaleSection(ctx context.Context, t *harness.T) {
	n := b.opts.agents
	res := &scaleResult{agents: n, idle: b.opts.idle}
	b.res.scale = res
	c := cluster.Start(t, cluster.Options{Bin: b.opts.bin}) // no node, no job: the server itself
	settle(ctx, 5*time.Second)
	m, p := serverPIDs(t, c)
	res.masterEmpty, res.pluginEmpty = rss(t, m), rss(t, p)
	b.logf("no nodes: master %s, kafka plugin %s", report.Size(res.masterEmpty), report.Size(res.pluginEmpty))

	c.StopServer()
	blocks, names := scaleNodes(n)
	c.WriteConfig(blocks, scaleJob)
	c.StartServer()
	m, p = serverPIDs(t, c)
	waitFor(t, fmt.Sprintf("%d nodes to wait for their agents", n), 15*time.Minute, func() bool {
		list, err := c.API.Nodes(ctx)
		if err != nil {
			return false
		}
		waiting := 0
		for _, st := range list {
			if st.State == nodes.StateLaunching && strings.Contains(st.Reason, "waiting for the agent") {
				waiting++
			}
		}
		return waiting == n
	})
	settle(ctx, 10*time.Second)
	res.masterWaiting, res.pluginWaiting = rss(t, m), rss(t, p)
	b.logf("%d nodes launched, no agent: master %s, kafka plugin %s", n, report.Size(res.masterWaiting), report.Size(res.pluginWaiting))

	secrets := make([][]byte, n)
	for i, name := range names {
		s, err := hex.DecodeString(c.Secret(name))
		if err != nil {
			t.Fatalf("secret of %s: %v", name, err)
		}
		secrets[i] = s
	}
	runtime.GC()
	benchBefore, err := harness.RSS(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	actx, stopAgents := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() { stopAgents(); wg.Wait() })
	dial := make(chan struct{}, 32) // connections opened at once
	log := hclog.New(&hclog.LoggerOptions{Name: "agent", Level: hclog.Error, Output: b.log})
	work := t.TempDir()
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runAgent(actx, log.Named(name), kafkatransport.Config{Brokers: []string{c.KafkaAddr}, ClientID: "conveyor-agent-" + name},
				agentsession.Config{Node: name, Secret: secrets[i], Version: "bench", Workdir: filepath.Join(work, name),
					Logger: log.Named(name)}, dial)
		}()
	}
	waitFor(t, fmt.Sprintf("%d agents online", n), 20*time.Minute, func() bool {
		list, err := c.API.Nodes(ctx)
		if err != nil {
			return false
		}
		online := 0
		for _, st := range list {
			if st.State == nodes.StateOnline {
				online++
			}
		}
		return online == n
	})
	res.online = time.Since(start)
	b.logf("%d agents online after %s", n, res.online.Round(time.Millisecond))
	settle(ctx, 15*time.Second)
	res.masterOnline, res.pluginOnline = rss(t, m), rss(t, p)
	runtime.GC()
	benchAfter, err := harness.RSS(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	res.benchPerAgent = (benchAfter - benchBefore) / int64(n)
	b.logf("%d agents idle: master %s, kafka plugin %s; bench process +%s per agent", n,
		report.Size(res.masterOnline), report.Size(res.pluginOnline), report.Size(res.benchPerAgent))
	if b.opts.heapProfile != "" {
		if err := writeHeapProfile(b.opts.heapProfile); err != nil {
			t.Fatal(err)
		}
	}

	cpu0, self0 := cpu(t, m, p), cpu(t, os.Getpid())
	settle(ctx, b.opts.idle)
	res.idleCPU, res.idleAgentsCPU = cpu(t, m, p)-cpu0, cpu(t, os.Getpid())-self0
	b.logf("idle heartbeats over %s: master+plugin %s CPU, agents %s CPU", b.opts.idle, res.idleCPU, res.idleAgentsCPU)

	res.dispatch, res.dispatchNodes = b.dispatch(ctx, t, c, n)
	b.logf("dispatched %d one-step builds in %s over %d nodes", n, res.dispatch.Round(time.Millisecond), res.dispatchNodes)
}

// runAgent is one agent: it connects over Kafka (at most cap(dial) agents
// at once) and serves sessions until ctx ends, reconnecting like
// conveyor-agent.
func runAgent(ctx context.Context, log hclog.Logger, kcfg kafkatransport.Config, cfg agentsession.Config, dial chan struct{}) {
	if err := os.MkdirAll(cfg.Workdir, 0o700); err != nil {
		log.Error("workdir", "error", err)
		return
	}
	a := agentsession.New(cfg)
	defer a.End(fmt.Errorf("the bench is over"))
	for ctx.Err() == nil {
		dial <- struct{}{}
		conn, err := kafkatransport.DialAgent(ctx, kcfg, cfg.Node, log)
		<-dial
		if err == nil {
			err = a.Serve(ctx, conn)
			_ = conn.Close()
		}
		if ctx.Err() != nil {
			return
		}
		log.Warn("disconnected; reconnecting", "error", err)
		settle(ctx, 500*time.Millisecond)
	}
}

// dispatch triggers n builds of "one" and waits for all of them: the time
// from the first trigger to the last build's end, and the nodes they ran
// on.
func (b *bench) dispatch(ctx context.Context, t *harness.T, c *cluster.Cluster, n int) (time.Duration, int) {
	const workers = 32
	numbers := make([]int, n)
	errs := make(chan error, n)
	start := time.Now()
	parallel(n, workers, func(i int) {
		bld, err := c.API.Trigger(ctx, "one", nil)
		if err != nil {
			errs <- err
			return
		}
		numbers[i] = bld.Number
	})
	builds := make([]*store.Build, n)
	parallel(n, workers, func(i int) {
		if numbers[i] == 0 {
			return
		}
		if _, err := c.API.Log(ctx, "one", numbers[i], 0, true, io.Discard); err != nil {
			errs <- err
			return
		}
		got, err := c.API.Build(ctx, "one", numbers[i])
		if err != nil {
			errs <- err
			return
		}
		builds[i] = got
	})
	close(errs)
	for err := range errs {
		t.Fatalf("dispatch: %v", err)
	}
	var last time.Time
	used := map[string]bool{}
	for _, bld := range builds {
		if bld.Status != store.StatusSuccess || bld.FinishedAt == nil {
			t.Fatalf("one#%d: %s (%s)", bld.Number, bld.Status, bld.Reason)
		}
		if bld.FinishedAt.After(last) {
			last = *bld.FinishedAt
		}
		used[bld.Node] = true
	}
	return last.Sub(start), len(used)
}

// parallel calls fn(0..n-1) from workers goroutines.
func parallel(n, workers int, fn func(i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				fn(i)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
