package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/session"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
	"github.com/conveyor-ci/conveyor/sdk/reliable"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// sessionFrames are the authentic frames of session id in topic, in the
// order they were written, from its first frame of type from on: signed
// numbered frames and control frames (Ping, Pong, Ack). Handshake frames
// and Close are left out: injected, they would only start a handshake or a
// resume, which TestInjectedFramesNeverRun and SECURITY.md cover.
func sessionFrames(t *testing.T, client sarama.Client, topic string, id uint64, from wire.Type) []*wire.Frame {
	t.Helper()
	var out []*wire.Frame
	for _, v := range records(t, client, topic) {
		raw, ok := kafkatransport.RecordFrame(v)
		if !ok {
			continue
		}
		f, err := wire.Decode(raw, wire.MaxFrameSize)
		if err != nil || f.Session != id || len(f.MAC) == 0 || f.Type == wire.TypeClose {
			continue
		}
		if !reliable.Sequenced(f.Type) && f.Type != wire.TypePing && f.Type != wire.TypePong && f.Type != wire.TypeAck {
			continue
		}
		if len(out) == 0 && f.Type != from {
			continue
		}
		out = append(out, f)
	}
	return out
}

// kinds counts the sequenced and the control frames of fs.
func kinds(fs []*wire.Frame) (seq, ctl int) {
	for _, f := range fs {
		if reliable.Sequenced(f.Type) {
			seq++
		} else {
			ctl++
		}
	}
	return seq, ctl
}

// TestReorderedFramesNeverRun writes the authentic frames of a live
// session back into both of a node's topics in reverse order, as anyone
// with write access to them could: two builds' RunSteps (the later one
// first), their Output and Exit frames, pings and acks. Every one is
// dropped and counted — numbered frames as duplicates (their number is
// not the next one), control frames as replayed (their counter does not
// rise) — by the agent and by the master (the node's dropped_frames); none
// runs again, and the session goes on. A reordered frame that is ahead of
// the receiver (a gap) needs the receiver to miss the original, which an
// append-only partition read in order never does; sdk/reliable tests that
// verdict.
func TestReorderedFramesNeverRun(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Bin: bin, Nodes: kafkaNode("k1", "30s", "5m"),
		Jobs: job("mark", "k1", "echo ran >> ../../marks; echo ok")})
	c.StartAgent("k1", c.Secret("k1"))
	c.WaitOnline("k1")
	marks := filepath.Join(c.Dir, "agents", "k1", "work", "marks")
	count := func() int {
		data, _ := os.ReadFile(marks)
		return strings.Count(string(data), "ran\n")
	}
	run := func(want int) {
		t.Helper()
		b, log := c.Run("mark", nil)
		if b.Status != store.StatusSuccess || string(log) != "ok\n" {
			t.Fatalf("build %d: %s (%s), log %q", b.Number, b.Status, b.Reason, log)
		}
		if got := count(); got != want {
			t.Fatalf("after build %d the marks file holds %d runs, want %d", b.Number, got, want)
		}
	}
	run(1)
	run(2)

	client, producer := plainProducer(t, c.KafkaAddr)
	topics := kafkatransport.TopicsFor(kafkatransport.DefaultTopicPrefix, "k1")
	id := lastRunStep(t, client, topics.Commands).Session
	commands := sessionFrames(t, client, topics.Commands, id, wire.TypeRunStep)
	events := sessionFrames(t, client, topics.Events, id, wire.TypeOutput)
	cmdSeq, cmdCtl := kinds(commands)
	evSeq, evCtl := kinds(events)
	steps := 0
	for _, f := range commands {
		if f.Type == wire.TypeRunStep {
			steps++
		}
	}
	if steps < 2 || evSeq < 4 {
		t.Fatalf("the topics hold %d RunSteps and %d numbered events of the session, want both builds'", steps, evSeq)
	}
	t.Logf("injecting in reverse: %d commands (%d numbered, %d control), %d events (%d numbered, %d control)",
		len(commands), cmdSeq, cmdCtl, len(events), evSeq, evCtl)

	before := c.Node("k1").Dropped
	if before == nil {
		before = &session.Counters{}
	}
	// What the agent drops reaches the master with its heartbeats.
	agentBefore := c.Node("k1").AgentDropped

	write := func(topic string, fs []*wire.Frame) {
		t.Helper()
		for _, f := range slices.Backward(fs) {
			writeFrame(t, producer, topic, f)
		}
	}
	write(topics.Commands, commands)
	write(topics.Events, events)

	c.WaitFor("the agent to drop every reordered command", time.Minute, func() bool {
		d := c.Node("k1").AgentDropped
		return d["duplicate"]-agentBefore["duplicate"] >= uint64(cmdSeq) && d["replayed"]-agentBefore["replayed"] >= uint64(cmdCtl)
	})
	var after *session.Counters
	c.WaitFor("the master to count every reordered event", time.Minute, func() bool {
		after = c.Node("k1").Dropped
		return after != nil && after.Duplicate-before.Duplicate >= uint64(evSeq) && after.Replayed-before.Replayed >= uint64(evCtl)
	})
	if after.Forged != before.Forged || after.Malformed != before.Malformed {
		t.Errorf("authentic frames counted as forged or malformed: before %+v, after %+v", before, after)
	}
	if got := count(); got != 2 {
		t.Fatalf("the marks file holds %d runs after the injection, want 2 (a reordered RunStep ran)", got)
	}
	// The session goes on: a genuine build runs, and only it adds a mark.
	run(3)
}
