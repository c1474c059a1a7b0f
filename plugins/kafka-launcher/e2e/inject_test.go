// Package e2e attacks a running Conveyor cluster through Kafka: frames
// written into a node's topics with a plain Kafka client (IBM/sarama), as
// anyone with write access to the topics could, must never be executed.
package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

var bin string

func TestMain(m *testing.M) { cluster.Main(m, &bin) }

// records reads every record value of topic from the start.
func records(t *testing.T, client sarama.Client, topic string) [][]byte {
	t.Helper()
	newest, err := client.GetOffset(topic, 0, sarama.OffsetNewest)
	if err != nil {
		t.Fatal(err)
	}
	c, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pc, err := c.ConsumePartition(topic, 0, sarama.OffsetOldest)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var out [][]byte
	for int64(len(out)) < newest {
		select {
		case m := <-pc.Messages():
			out = append(out, m.Value)
			if m.Offset+1 >= newest {
				return out
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("read %d of %d records of %s", len(out), newest, topic)
		}
	}
	return out
}

// lastRunStep is the newest RunStep the master wrote to the commands topic.
func lastRunStep(t *testing.T, client sarama.Client, topic string) *wire.Frame {
	t.Helper()
	var last *wire.Frame
	for _, v := range records(t, client, topic) {
		raw, ok := kafkatransport.RecordFrame(v)
		if !ok {
			continue
		}
		if f, err := wire.Decode(raw, wire.MaxFrameSize); err == nil && f.Type == wire.TypeRunStep {
			last = f
		}
	}
	if last == nil {
		t.Fatal("no RunStep in the commands topic")
	}
	return last
}

func TestInjectedFramesNeverRun(t *testing.T) {
	c := cluster.Start(t, cluster.Options{Bin: bin, Nodes: `
node "k1" {
  launcher = "kafka"
  labels   = ["linux"]
  kafka {}
}`, Jobs: `
job "mark" {
  labels = ["linux"]
  step "mark" { run = "echo ran >> ../../marks; echo ok" }
}`})
	c.StartAgent("k1", c.Secret("k1"))
	c.WaitOnline("k1")
	b, log := c.Run("mark", nil)
	if b.Status != store.StatusSuccess || string(log) != "ok\n" {
		t.Fatalf("build %s (%s), log %q", b.Status, b.Reason, log)
	}
	marks := filepath.Join(c.Dir, "agents", "k1", "work", "marks")
	count := func() int {
		data, _ := os.ReadFile(marks)
		return strings.Count(string(data), "ran\n")
	}
	if count() != 1 {
		t.Fatalf("marks %d, want 1", count())
	}

	client, producer := plainProducer(t, c.KafkaAddr)
	topics := kafkatransport.TopicsFor(kafkatransport.DefaultTopicPrefix, "k1")
	write := func(topic string, f *wire.Frame) { t.Helper(); writeFrame(t, producer, topic, f) }

	genuine := lastRunStep(t, client, topics.Commands)
	m, err := genuine.Message()
	if err != nil {
		t.Fatal(err)
	}
	step := m.(*wire.RunStep)

	// 1. Replayed: the genuine frame, byte for byte.
	write(topics.Commands, genuine)
	// 2. Forged: a new step in the live session, without the session key.
	forged := wire.NewFrame(&wire.RunStep{BuildID: "evil#1", Command: "echo ran >> ../../marks", Workdir: "evil/1"})
	forged.Session, forged.Seq = genuine.Session, genuine.Seq+100
	write(topics.Commands, forged)
	// 3. Altered: the genuine frame with another command and a later Seq,
	// its MAC kept.
	alteredStep := *step
	alteredStep.BuildID, alteredStep.Command = "evil#2", "echo ran >> ../../marks"
	altered := wire.NewFrame(&alteredStep)
	altered.Session, altered.Seq, altered.MAC = genuine.Session, genuine.Seq+200, genuine.MAC
	write(topics.Commands, altered)
	// 4. A forged Exit into the events topic, towards the master.
	fakeExit := wire.NewFrame(&wire.Exit{BuildID: "mark#1", Code: 0})
	fakeExit.Session, fakeExit.Seq = genuine.Session, 1<<40
	write(topics.Events, fakeExit)

	// The master counts what it dropped; the agent runs nothing.
	c.WaitFor("the master to count the forged frame", time.Minute, func() bool {
		d := c.Node("k1").Dropped
		return d != nil && d.Forged >= 1
	})
	// The connection survives: a genuine build still runs, and only it
	// adds a mark.
	b, log = c.Run("mark", nil)
	if b.Status != store.StatusSuccess || string(log) != "ok\n" {
		t.Fatalf("after the attack: build %s (%s), log %q", b.Status, b.Reason, log)
	}
	if got := count(); got != 2 {
		data, _ := os.ReadFile(marks)
		t.Fatalf("marks file holds %d runs, want 2 (an injected frame was executed): %q", got, data)
	}
	agentLog, _ := os.ReadFile(filepath.Join(c.Dir, "agents", "k1", "agent.log"))
	for _, want := range []string{"bad MAC", "duplicate"} {
		if !bytes.Contains(agentLog, []byte(want)) {
			t.Errorf("agent log does not report a %s frame", want)
		}
	}
	// What the agent dropped reaches the master with its heartbeats: the
	// node's API view and /metrics show the tampering on the agent's side.
	c.WaitFor("the agent's counters to reach the master", time.Minute, func() bool {
		d := c.Node("k1").AgentDropped
		return d["forged"] >= 2 && d["duplicate"] >= 1
	})
	body := c.Metrics()
	for _, re := range []string{
		`(?m)^conveyor_agent_rejected_frames_total\{node="k1",reason="forged"\} [2-9]`,
		`(?m)^conveyor_agent_rejected_frames_total\{node="k1",reason="hint"\} 0$`,
		`(?m)^conveyor_transport_malformed_total\{node="k1"\} 0$`,
	} {
		if !regexp.MustCompile(re).MatchString(body) {
			t.Errorf("/metrics lacks %s", re)
		}
	}
}

// plainProducer is a plain Kafka client of the broker at addr, as anyone
// with write access to the topics has, and a producer on it; both close
// with the test.
func plainProducer(t *testing.T, addr string) (sarama.Client, sarama.SyncProducer) {
	t.Helper()
	cfg := sarama.NewConfig()
	cfg.Producer.Return.Successes = true
	client, err := sarama.NewClient([]string{addr}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	producer, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { producer.Close() })
	return client, producer
}

// writeFrame writes f into topic as a Conn would (its records), with
// producer: what anyone with write access to the topic can do.
func writeFrame(t *testing.T, producer sarama.SyncProducer, topic string, f *wire.Frame) {
	t.Helper()
	raw, err := f.Encode()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range kafkatransport.Records(raw, uint64(time.Now().UnixNano())) {
		if _, _, err := producer.SendMessage(&sarama.ProducerMessage{Topic: topic, Partition: 0, Value: sarama.ByteEncoder(v)}); err != nil {
			t.Fatal(err)
		}
	}
}
