package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
	"github.com/conveyor-ci/conveyor/sdk/reliable"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// rejected is the master's count of frames of node dropped for reason,
// from /metrics (conveyor_rejected_frames_total).
func rejected(t *testing.T, c *cluster.Cluster, node, reason string) uint64 {
	t.Helper()
	re := regexp.MustCompile(fmt.Sprintf(`(?m)^conveyor_rejected_frames_total\{node=%q,reason=%q\} (\d+)$`, node, reason))
	m := re.FindStringSubmatch(c.Metrics())
	if m == nil {
		t.Fatalf("/metrics has no rejected frames of %s for %s", node, reason)
	}
	n, err := strconv.ParseUint(m[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// signedFrames are the signed frames of session id in topic, in order.
func signedFrames(t *testing.T, client sarama.Client, topic string, id uint64) []*wire.Frame {
	t.Helper()
	var out []*wire.Frame
	for _, v := range records(t, client, topic) {
		raw, ok := kafkatransport.RecordFrame(v)
		if !ok {
			continue
		}
		if f, err := wire.Decode(raw, wire.MaxFrameSize); err == nil && f.Session == id && len(f.MAC) > 0 {
			out = append(out, f)
		}
	}
	return out
}

// nextNumber is the number the next numbered frame written to topic in
// session id gets: one more than the highest so far.
func nextNumber(t *testing.T, client sarama.Client, topic string, id uint64) uint64 {
	t.Helper()
	var last uint64
	for _, f := range signedFrames(t, client, topic, id) {
		if reliable.Sequenced(f.Type) {
			last = max(last, f.Seq)
		}
	}
	return last + 1
}

// numberedFrame is the signed numbered frame of session id in topic numbered
// seq.
func numberedFrame(t *testing.T, client sarama.Client, topic string, id, seq uint64) *wire.Frame {
	t.Helper()
	for _, f := range signedFrames(t, client, topic, id) {
		if reliable.Sequenced(f.Type) && f.Seq == seq {
			return f
		}
	}
	t.Fatalf("no numbered frame %d of session %016x in %s", seq, id, topic)
	return nil
}

// agentLog is the text of a node's (first) agent's log.
func agentLog(c *cluster.Cluster, node string) string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "agents", node, "agent.log"))
	return string(b)
}

// runBounded runs job and waits for its end at most timeout: a build
// that never ends fails the test instead of hanging it.
func runBounded(t *testing.T, c *cluster.Cluster, job string, timeout time.Duration) (*store.Build, string) {
	t.Helper()
	b, err := c.API.Trigger(context.Background(), job, nil)
	if err != nil {
		t.Fatal(err)
	}
	b = c.WaitBuild(job, b.Number, timeout)
	return b, string(c.Log(job, b.Number))
}

// TestReflectedFramesDropped copies frames a side signed back into the
// topic that side reads, as anyone with write access to the topics can:
//
//   - the agent's Exit of a build from conveyor.k1.events into
//     conveyor.k1.commands, with the number the master's next frame gets:
//     the next build's RunStep must run (with one key for both
//     directions the Exit was taken, the RunStep dropped as a duplicate
//     and the build ran forever);
//   - the same before a Cancel: the cancel must reach the step (it was
//     swallowed: "cancelled (the agent did not confirm)" while the step
//     ran on);
//   - every signed frame of the master from the commands topic into the
//     events topic.
//
// The agent drops the reflected frames as forged (its log), the master
// counts its own as forged (/metrics).
func TestReflectedFramesDropped(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Bin: bin, Nodes: kafkaNode("k1", "30s", "5m"), Jobs: job("mark", "k1", "echo ran >> ../../marks; echo ok") +
		job("slow", "k1", "echo started; sleep 60; echo finished")})
	c.StartAgent("k1", c.Secret("k1"))
	c.WaitOnline("k1")
	client, producer := plainProducer(t, c.KafkaAddr)
	topics := kafkatransport.TopicsFor(kafkatransport.DefaultTopicPrefix, "k1")
	badMAC := func() int { return strings.Count(agentLog(c, "k1"), "dropped a frame with a bad MAC") }

	if b, log := runBounded(t, c, "mark", time.Minute); b.Status != store.StatusSuccess || log != "ok\n" {
		t.Fatalf("build 1: %s (%s), log %q", b.Status, b.Reason, log)
	}
	id := lastRunStep(t, client, topics.Commands).Session

	// 1. The agent's frame numbered as the master's next: its Exit.
	next := nextNumber(t, client, topics.Commands, id)
	reflected := numberedFrame(t, client, topics.Events, id, next)
	t.Logf("reflecting the agent's %v #%d into the commands topic", reflected.Type, reflected.Seq)
	forgedBefore := badMAC()
	writeFrame(t, producer, topics.Commands, reflected)
	if b, log := runBounded(t, c, "mark", time.Minute); b.Status != store.StatusSuccess || log != "ok\n" {
		t.Fatalf("build 2 after the reflection: %s (%s), log %q", b.Status, b.Reason, log)
	}
	c.WaitFor("the agent to drop the reflected frame as forged", time.Minute, func() bool { return badMAC() > forgedBefore })

	// 2. The same before a Cancel.
	b, err := c.API.Trigger(context.Background(), "slow", nil)
	if err != nil {
		t.Fatal(err)
	}
	c.WaitFor("the slow step to start", time.Minute, func() bool { return strings.Contains(string(c.Log("slow", b.Number)), "started") })
	next = nextNumber(t, client, topics.Commands, id)
	reflected = numberedFrame(t, client, topics.Events, id, next)
	t.Logf("reflecting the agent's %v #%d into the commands topic before a cancel", reflected.Type, reflected.Seq)
	forgedBefore = badMAC()
	writeFrame(t, producer, topics.Commands, reflected)
	c.WaitFor("the agent to drop the reflected frame as forged", time.Minute, func() bool { return badMAC() > forgedBefore })
	if _, err := c.API.Cancel(context.Background(), "slow", b.Number); err != nil {
		t.Fatal(err)
	}
	b = c.WaitBuild("slow", b.Number, time.Minute)
	if b.Status != store.StatusCancelled || strings.Contains(b.Reason, "did not confirm") {
		t.Fatalf("cancelled build: %s (%s), want cancelled with the agent's confirmation", b.Status, b.Reason)
	}
	if !strings.Contains(agentLog(c, "k1"), "cancelling step") {
		t.Error("the agent never cancelled the step")
	}

	// 3. The master's frames reflected into the events topic (the
	// commands topic holds the agent's Exits reflected above too).
	var masterFrames []*wire.Frame
	for _, f := range signedFrames(t, client, topics.Commands, id) {
		if f.Type != wire.TypeExit && f.Type != wire.TypeOutput {
			masterFrames = append(masterFrames, f)
		}
	}
	forged, dup := rejected(t, c, "k1", "forged"), rejected(t, c, "k1", "duplicate")
	for _, f := range masterFrames {
		writeFrame(t, producer, topics.Events, f)
	}
	c.WaitFor("the master to count its reflected frames as forged", time.Minute, func() bool {
		return rejected(t, c, "k1", "forged")-forged >= uint64(len(masterFrames))
	})
	if d := rejected(t, c, "k1", "duplicate"); d != dup {
		t.Errorf("reflected frames counted as duplicates (%d -> %d): they verified", dup, d)
	}
	if b, log := runBounded(t, c, "mark", time.Minute); b.Status != store.StatusSuccess || log != "ok\n" {
		t.Fatalf("build after the reflections: %s (%s), log %q", b.Status, b.Reason, log)
	}
	data, _ := os.ReadFile(filepath.Join(c.Dir, "agents", "k1", "work", "marks"))
	if n := strings.Count(string(data), "ran\n"); n != 3 {
		t.Errorf("the marks file holds %d runs, want 3", n)
	}
}

// TestCrossNodeFramesDropped writes the signed frames of node k2's
// session into node k1's topics: as they are (a session k1's agent never
// had, which the master knows as k2's) and with k1's session id in their
// header (signed in another node's session, under another key). k1's
// agent and the master drop every one and count it as forged (the first
// kind was counted as stale); nothing runs and k1's session goes on.
func TestCrossNodeFramesDropped(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Bin: bin, Nodes: kafkaNode("k1", "30s", "5m") + kafkaNode("k2", "30s", "5m"),
		Jobs: job("mark1", "k1", "echo ran >> ../../marks; echo ok") + job("mark2", "k2", "echo ran >> ../../marks; echo ok")})
	c.StartAgent("k1", c.Secret("k1"))
	c.StartAgent("k2", c.Secret("k2"))
	c.WaitOnline("k1", "k2")
	for _, j := range []string{"mark1", "mark2"} {
		if b, log := runBounded(t, c, j, time.Minute); b.Status != store.StatusSuccess || log != "ok\n" {
			t.Fatalf("%s: %s (%s), log %q", j, b.Status, b.Reason, log)
		}
	}
	client, producer := plainProducer(t, c.KafkaAddr)
	k1 := kafkatransport.TopicsFor(kafkatransport.DefaultTopicPrefix, "k1")
	k2 := kafkatransport.TopicsFor(kafkatransport.DefaultTopicPrefix, "k2")
	id1 := lastRunStep(t, client, k1.Commands).Session
	id2 := lastRunStep(t, client, k2.Commands).Session
	commands := signedFrames(t, client, k2.Commands, id2)
	events := signedFrames(t, client, k2.Events, id2)
	t.Logf("writing %d commands and %d events of k2's session into k1's topics", len(commands), len(events))

	stale, forged := rejected(t, c, "k1", "stale"), rejected(t, c, "k1", "forged")
	log := agentLog(c, "k1")
	agentStranger, agentForged := strings.Count(log, "dropped a frame of a session this agent never had"), strings.Count(log, "dropped a frame with a bad MAC")
	agentStale := strings.Count(log, "dropped a frame of another session")
	rewrite := func(f *wire.Frame) *wire.Frame {
		g := *f
		g.Session = id1
		return &g
	}
	for _, f := range commands {
		writeFrame(t, producer, k1.Commands, f)
		writeFrame(t, producer, k1.Commands, rewrite(f))
	}
	for _, f := range events {
		writeFrame(t, producer, k1.Events, f)
		writeFrame(t, producer, k1.Events, rewrite(f))
	}
	c.WaitFor("k1's agent to drop k2's commands", time.Minute, func() bool {
		l := agentLog(c, "k1")
		return strings.Count(l, "dropped a frame of a session this agent never had")-agentStranger >= len(commands) &&
			strings.Count(l, "dropped a frame with a bad MAC")-agentForged >= len(commands)
	})
	c.WaitFor("the master to drop k2's events on k1", time.Minute, func() bool {
		return rejected(t, c, "k1", "forged")-forged >= 2*uint64(len(events))
	})
	if n := strings.Count(agentLog(c, "k1"), "dropped a frame of another session") - agentStale; n != 0 {
		t.Errorf("k1's agent counted %d of k2's frames as stale, want all forged", n)
	}
	if n := rejected(t, c, "k1", "stale") - stale; n != 0 {
		t.Errorf("the master counted %d of k2's frames on k1 as stale, want all forged", n)
	}
	if b, log := runBounded(t, c, "mark1", time.Minute); b.Status != store.StatusSuccess || log != "ok\n" {
		t.Fatalf("k1 after the injection: %s (%s), log %q", b.Status, b.Reason, log)
	}
	data, _ := os.ReadFile(filepath.Join(c.Dir, "agents", "k1", "work", "marks"))
	if n := strings.Count(string(data), "ran\n"); n != 2 {
		t.Errorf("k1's marks file holds %d runs, want 2 (a frame of k2 ran on k1)", n)
	}
}

// TestInjectedHelloLeavesNodeOnline writes Hellos into a healthy node's
// events topic (a new session, a resume of the current one) and answers
// the master's challenges with proofs made without the secret. The node
// stays online the whole time (it went "launching" at the Hello, then
// "authentication failed: wrong secret" for about 35 s per injection);
// the master counts the answers as forged (/metrics), the agent drops
// the challenges meant for someone else, and builds run.
func TestInjectedHelloLeavesNodeOnline(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Bin: bin, Nodes: kafkaNode("k1", "30s", "5m"), Jobs: job("mark", "k1", "echo ok")})
	c.StartAgent("k1", c.Secret("k1"))
	c.WaitOnline("k1")
	if b, log := runBounded(t, c, "mark", time.Minute); b.Status != store.StatusSuccess || log != "ok\n" {
		t.Fatalf("build 1: %s (%s), log %q", b.Status, b.Reason, log)
	}
	client, producer := plainProducer(t, c.KafkaAddr)
	topics := kafkatransport.TopicsFor(kafkatransport.DefaultTopicPrefix, "k1")
	id := lastRunStep(t, client, topics.Commands).Session

	// Watch the node's state from now on.
	var mu sync.Mutex
	var changes []string
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			list, err := c.API.Nodes(context.Background())
			if err != nil {
				continue
			}
			for _, n := range list {
				if n.Name == "k1" && n.State != nodes.StateOnline {
					mu.Lock()
					changes = append(changes, fmt.Sprintf("%s: %s", n.State, n.Reason))
					mu.Unlock()
				}
			}
		}
	}()

	// challenge waits for the master's Challenge in session (0: any
	// session but the current one) written after offset records.
	challenge := func(session uint64, after int) *wire.Frame {
		t.Helper()
		var found *wire.Frame
		c.WaitFor("the master's challenge", time.Minute, func() bool {
			for _, v := range records(t, client, topics.Commands)[after:] {
				raw, ok := kafkatransport.RecordFrame(v)
				if !ok {
					continue
				}
				f, err := wire.Decode(raw, wire.MaxFrameSize)
				if err == nil && f.Type == wire.TypeChallenge && (f.Session == session || session == 0 && f.Session != id) {
					found = f
					return true
				}
			}
			return false
		})
		return found
	}
	nonce := func() []byte {
		b := make([]byte, wire.NonceSize)
		_, _ = rand.Read(b)
		return b
	}
	forged := rejected(t, c, "k1", "forged")
	staleAtAgent := strings.Count(agentLog(c, "k1"), "dropped a frame of another session")

	// A Hello for a new session, answered with an empty proof and a
	// guessed one.
	offset := len(records(t, client, topics.Commands))
	hello := wire.NewFrame(&wire.Hello{Node: "k1", AgentVersion: "evil", OS: "linux", Arch: "amd64", Nonce: nonce()})
	writeFrame(t, producer, topics.Events, hello)
	ch := challenge(0, offset)
	auth := wire.NewFrame(&wire.Auth{})
	auth.Session, auth.Seq = ch.Session, 1
	writeFrame(t, producer, topics.Events, auth)
	// A Hello resuming the live session, answered with a guessed proof.
	offset = len(records(t, client, topics.Commands))
	resume := wire.NewFrame(&wire.Hello{Node: "k1", AgentVersion: "evil", OS: "linux", Arch: "amd64", Nonce: nonce(), Resume: true})
	resume.Session = id
	writeFrame(t, producer, topics.Events, resume)
	ch = challenge(id, offset)
	auth = wire.NewFrame(&wire.Auth{Proof: nonce()})
	auth.Session, auth.Seq = ch.Session, 1
	writeFrame(t, producer, topics.Events, auth)

	c.WaitFor("the master to count the answers as forged", time.Minute, func() bool {
		return rejected(t, c, "k1", "forged")-forged >= 2
	})
	c.WaitFor("the agent to drop the challenge of another session", time.Minute, func() bool {
		return strings.Count(agentLog(c, "k1"), "dropped a frame of another session") > staleAtAgent
	})
	if b, log := runBounded(t, c, "mark", time.Minute); b.Status != store.StatusSuccess || log != "ok\n" {
		t.Fatalf("build after the injected hellos: %s (%s), log %q", b.Status, b.Reason, log)
	}
	close(stop)
	<-watched
	mu.Lock()
	defer mu.Unlock()
	if len(changes) > 0 {
		t.Fatalf("the node left online after unauthenticated hellos: %q", changes)
	}
	if got := c.Node("k1"); got.State != nodes.StateOnline {
		t.Fatalf("node %s (%s), want online", got.State, got.Reason)
	}
}

// TestInjectedHelloLeavesHeldSessionAlone: while the agent is silent
// (stopped with SIGSTOP) and its session held, Hellos resuming that
// session, injected for longer than the heartbeat timeout and answered
// with wrong proofs, are counted as forged and never make the node
// "wrong secret" (only authenticated evidence changes it: it is offline
// because its agent is silent); the agent, woken, resumes the session and
// a build runs.
func TestInjectedHelloLeavesHeldSessionAlone(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Bin: bin, Nodes: kafkaNode("k1", "5s", "5m"), Jobs: job("mark", "k1", "echo ok")})
	agent := c.StartAgent("k1", c.Secret("k1"), "-heartbeat", "1s", "-heartbeat-timeout", "5s", "-session-timeout", "5m")
	c.WaitOnline("k1")
	if b, log := runBounded(t, c, "mark", time.Minute); b.Status != store.StatusSuccess || log != "ok\n" {
		t.Fatalf("build 1: %s (%s), log %q", b.Status, b.Reason, log)
	}
	client, producer := plainProducer(t, c.KafkaAddr)
	topics := kafkatransport.TopicsFor(kafkatransport.DefaultTopicPrefix, "k1")
	id := lastRunStep(t, client, topics.Commands).Session

	if err := agent.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = agent.Process.Signal(syscall.SIGCONT) })
	c.WaitFor("the master to hold the silent agent's session", time.Minute, func() bool {
		return c.Node("k1").State != nodes.StateOnline
	})
	forged := rejected(t, c, "k1", "forged")
	start := time.Now()
	n := 0
	for n < 4 || time.Since(start) < 7*time.Second {
		nonce := make([]byte, wire.NonceSize)
		_, _ = rand.Read(nonce)
		hello := wire.NewFrame(&wire.Hello{Node: "k1", AgentVersion: "evil", OS: "linux", Arch: "amd64", Nonce: nonce, Resume: true})
		hello.Session = id
		writeFrame(t, producer, topics.Events, hello)
		auth := wire.NewFrame(&wire.Auth{Proof: nonce})
		auth.Session, auth.Seq = id, 1
		writeFrame(t, producer, topics.Events, auth)
		n++
		if r := c.Node("k1").Reason; strings.Contains(r, "wrong secret") {
			t.Fatalf("the held node shows %q after %d injected answers", r, n)
		}
		time.Sleep(500 * time.Millisecond) // pacing only
	}
	c.WaitFor("the master to count the answers as forged", time.Minute, func() bool {
		return rejected(t, c, "k1", "forged")-forged >= uint64(n)
	})
	if r := c.Node("k1").Reason; strings.Contains(r, "wrong secret") {
		t.Fatalf("the held node shows %q after %d injected answers", r, n)
	}
	if err := agent.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	c.WaitOnline("k1")
	if b, log := runBounded(t, c, "mark", time.Minute); b.Status != store.StatusSuccess || log != "ok\n" {
		t.Fatalf("build after the injected hellos: %s (%s), log %q", b.Status, b.Reason, log)
	}
	if got := c.Node("k1"); strings.Contains(got.Reason, "wrong secret") {
		t.Fatalf("node %s (%s) after the resume", got.State, got.Reason)
	}
}
