package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// saslClient is a Kafka client of the embedded broker at addr, logged in
// as user (SCRAM-SHA-512), as conveyor-agent configures its own.
func saslClient(t *testing.T, addr, user, password string) sarama.Client {
	t.Helper()
	sc, err := kafkatransport.Config{Brokers: []string{addr},
		SASL: &kafkatransport.SASL{Mechanism: kafkatransport.MechanismSCRAMSHA512, Username: user, Password: password}}.Sarama()
	if err != nil {
		t.Fatal(err)
	}
	client, err := sarama.NewClient([]string{addr}, sc)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

// TestACLIsolation: with the embedded broker's ACLs on and the master
// serving both nodes through its one shared Kafka client, node k1's Kafka
// user reads nothing of k2 (commands nor events), writes nothing into
// k2's topics, and what it can write, its own events topic, carries no
// frame the master takes for k2's: k2's frames copied there under k1's
// session are dropped and counted as forged on k1. Both nodes keep
// building.
func TestACLIsolation(t *testing.T) {
	kafka := `
  sasl {
    mechanism = "SCRAM-SHA-512"
    username  = "conveyor"
    password  = "the master's password"
  }
  embedded {
    sasl {
      mechanism = "SCRAM-SHA-512"
      users     = { "k1" = "k1's password", "k2" = "k2's password" }
    }
    acls = true
  }`
	c := cluster.Start(t, cluster.Options{Bin: bin, Kafka: kafka,
		Nodes: kafkaNode("k1", "30s", "5m") + kafkaNode("k2", "30s", "5m"),
		Jobs:  job("mark1", "k1", "echo ok") + job("mark2", "k2", "echo ok")})
	dir := t.TempDir()
	login := func(user, pw string) []string {
		path := filepath.Join(dir, user+".password")
		if err := os.WriteFile(path, []byte(pw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return []string{"-sasl-mechanism", "SCRAM-SHA-512", "-sasl-user", user, "-sasl-password-file", path}
	}
	c.StartAgent("k1", c.Secret("k1"), login("k1", "k1's password")...)
	c.StartAgent("k2", c.Secret("k2"), login("k2", "k2's password")...)
	c.WaitOnline("k1", "k2")
	for _, j := range []string{"mark1", "mark2"} {
		if b, log := runBounded(t, c, j, time.Minute); b.Status != store.StatusSuccess || log != "ok\n" {
			t.Fatalf("%s: %s (%s), log %q", j, b.Status, b.Reason, log)
		}
	}
	k1 := kafkatransport.TopicsFor(kafkatransport.DefaultTopicPrefix, "k1")
	k2 := kafkatransport.TopicsFor(kafkatransport.DefaultTopicPrefix, "k2")
	g2 := kafkatransport.GroupsFor(kafkatransport.DefaultTopicPrefix, "k2")

	// k1's user, as k1's agent logs in.
	agent := saslClient(t, c.KafkaAddr, "k1", "k1's password")
	refused := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("k1's user may %s", what)
			return
		}
		if !strings.Contains(strings.ToLower(err.Error()), "authoriz") {
			t.Errorf("k1's user %s: %v, want an authorization failure", what, err)
		}
		t.Logf("k1's user %s: %v", what, err)
	}
	for _, topic := range []string{k2.Commands, k2.Events, k1.Events} {
		refused("read "+topic, fetchErr(agent, topic))
	}
	if err := fetchErr(agent, k1.Commands); err != nil {
		t.Fatalf("k1's user cannot read its own commands: %v", err)
	}
	producer, err := sarama.NewSyncProducerFromClient(agent)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	for _, topic := range []string{k2.Events, k2.Commands, k1.Commands} {
		_, _, err := producer.SendMessage(&sarama.ProducerMessage{Topic: topic, Partition: kafkatransport.Partition,
			Value: sarama.ByteEncoder(kafkatransport.Records([]byte("not yours"), 1)[0])})
		refused("write "+topic, err)
	}
	coord, err := agent.Coordinator(g2.Agent)
	if err == nil {
		req := sarama.NewOffsetFetchRequest(sarama.V2_8_0_0, g2.Agent, map[string][]int32{k2.Commands: {kafkatransport.Partition}})
		resp, ferr := coord.FetchOffset(req)
		switch {
		case ferr != nil:
			err = ferr
		case resp.Err != sarama.ErrNoError:
			err = resp.Err
		default:
			if b := resp.GetBlock(k2.Commands, kafkatransport.Partition); b != nil && b.Err != sarama.ErrNoError {
				err = b.Err
			}
		}
	}
	refused("read k2's agent group "+g2.Agent, err)

	// What k1's user may write, its own events topic: k2's signed frames
	// (read with the master's credentials) copied there, as they are and
	// under k1's session. The master drops them all as forged on k1.
	master := saslClient(t, c.KafkaAddr, "conveyor", "the master's password")
	id1 := lastRunStep(t, master, k1.Commands).Session
	id2 := lastRunStep(t, master, k2.Commands).Session
	events := signedFrames(t, master, k2.Events, id2)
	if len(events) == 0 {
		t.Fatal("k2 wrote no signed events")
	}
	forged := rejected(t, c, "k1", "forged")
	for _, f := range events {
		writeFrame(t, producer, k1.Events, f)
		g := *f
		g.Session = id1
		writeFrame(t, producer, k1.Events, &g)
	}
	c.WaitFor("the master to drop k2's frames written by k1's user", time.Minute, func() bool {
		return rejected(t, c, "k1", "forged")-forged >= 2*uint64(len(events))
	})
	t.Logf("the master dropped %d frames of k2 written into %s by k1's user", 2*len(events), k1.Events)
	for _, j := range []string{"mark1", "mark2"} {
		if b, log := runBounded(t, c, j, time.Minute); b.Status != store.StatusSuccess || log != "ok\n" {
			t.Fatalf("%s after the attempts: %s (%s), log %q", j, b.Status, b.Reason, log)
		}
	}
}

// fetchErr fetches from the start of topic's partition as client's user
// and returns the broker's refusal, or nil if it served the records.
func fetchErr(client sarama.Client, topic string) error {
	b, err := client.Leader(topic, kafkatransport.Partition)
	if err != nil {
		return err
	}
	req := &sarama.FetchRequest{Version: 11, MaxWaitTime: 10, MinBytes: 1, MaxBytes: 1 << 20}
	req.AddBlock(topic, kafkatransport.Partition, 0, 1<<20, -1)
	resp, err := b.Fetch(req)
	if err != nil {
		return err
	}
	block := resp.GetBlock(topic, kafkatransport.Partition)
	if block == nil {
		return sarama.ErrIncompleteResponse
	}
	if block.Err != sarama.ErrNoError {
		return block.Err
	}
	return nil
}
