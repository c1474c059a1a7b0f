package kafkalauncher

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/conveyor-ci/conveyor/sdk/launcher"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// aclsCommand runs `acls ARGS` on a launcher configured in validate-only
// mode, as `conveyor kafka acls` does.
func aclsCommand(t *testing.T, c launcher.Commander, args []string, nodes ...string) (string, error) {
	t.Helper()
	req := &launcher.CommandRequest{Name: "acls", Args: args}
	for _, n := range nodes {
		req.Nodes = append(req.Nodes, &launcher.Node{Name: n, Config: decode(t, "", nodeSpec())})
	}
	return c.RunCommand(ctxT(t), req)
}

// validateOnly configures l with global and nodes, checking only.
func validateOnly(t *testing.T, l launcher.Launcher, global string, nodes ...string) {
	t.Helper()
	cfg := config(t, t.TempDir(), global, nodes...)
	cfg.Host.ValidateOnly = true
	if err := l.Configure(ctxT(t), cfg); err != nil {
		t.Fatal(err)
	}
}

// TestACLsPrint: without -apply the command prints each node's ACLs and
// connects to nothing (the brokers below do not exist).
func TestACLsPrint(t *testing.T) {
	l := New(testLogger(t))
	defer l.Close()
	if _, err := aclsCommand(t, l, nil, "a"); err == nil || !strings.Contains(err.Error(), "not configured") {
		t.Fatalf("before Configure: %v", err)
	}
	validateOnly(t, l, `brokers = ["127.0.0.1:1"]`+"\ntopic_prefix = \"ci.\"", "a", "web_1")

	out, err := aclsCommand(t, l, nil, "a", "web_1")
	if err != nil {
		t.Fatal(err)
	}
	want := `Node a:
  PRINCIPAL              PERMISSION  OPERATION        RESOURCE  NAME           PATTERN  HOST
  User:conveyor-agent-a  Allow       Read             Topic     ci.a.commands  Literal  *
  User:conveyor-agent-a  Allow       Write            Topic     ci.a.events    Literal  *
  User:conveyor-agent-a  Allow       Read             Group     ci.agent.a     Literal  *
  User:conveyor-agent-a  Allow       IdempotentWrite  Cluster   kafka-cluster  Literal  *

Node web_1:
  PRINCIPAL                  PERMISSION  OPERATION        RESOURCE  NAME                 PATTERN  HOST
  User:conveyor-agent-web_1  Allow       Read             Topic     ci.web_5f1.commands  Literal  *
  User:conveyor-agent-web_1  Allow       Write            Topic     ci.web_5f1.events    Literal  *
  User:conveyor-agent-web_1  Allow       Read             Group     ci.agent.web_5f1     Literal  *
  User:conveyor-agent-web_1  Allow       IdempotentWrite  Cluster   kafka-cluster        Literal  *

8 ACLs for 2 nodes; nothing changed: -apply creates them.
`
	if out != want {
		t.Errorf("output:\n%s\nwant:\n%s", out, want)
	}

	// The master's principal named: its ACLs come first.
	out, err = aclsCommand(t, l, []string{"-master-principal", "User:conveyor", "a"}, "a", "web_1")
	if err != nil {
		t.Fatal(err)
	}
	wantMaster := `Master User:conveyor:
  PRINCIPAL      PERMISSION  OPERATION        RESOURCE  NAME           PATTERN   HOST
  User:conveyor  Allow       Create           Topic     ci.            Prefixed  *
  User:conveyor  Allow       Write            Topic     ci.            Prefixed  *
  User:conveyor  Allow       Read             Topic     ci.            Prefixed  *
  User:conveyor  Allow       Delete           Topic     ci.            Prefixed  *
  User:conveyor  Allow       Read             Group     ci.            Prefixed  *
  User:conveyor  Allow       Delete           Group     ci.            Prefixed  *
  User:conveyor  Allow       IdempotentWrite  Cluster   kafka-cluster  Literal   *

Node a:
`
	if !strings.HasPrefix(out, wantMaster) || !strings.HasSuffix(out, "11 ACLs for the master and 1 nodes; nothing changed: -apply creates them.\n") {
		t.Errorf("output:\n%s\nwant it to start with:\n%s", out, wantMaster)
	}
	if _, err := aclsCommand(t, l, []string{"-master-principal", "User:conveyor-agent-a"}, "a", "web_1"); err == nil || !strings.Contains(err.Error(), "master's own principal") {
		t.Errorf("an agent with the master's principal: %v", err)
	}

	// A principal template, a subset of the nodes.
	out, err = aclsCommand(t, l, []string{"-principal", "User:{node}@ci", "web_1"}, "a", "web_1")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "Node a:") || !strings.Contains(out, "  User:web_1@ci  Allow       Read             Topic     ci.web_5f1.commands  Literal  *\n") ||
		!strings.Contains(out, "4 ACLs for 1 nodes") {
		t.Errorf("output:\n%s", out)
	}

	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"-principal", "User:agent"}, "gives nodes a and web_1 the same principal User:agent"},
		{[]string{"-principal", "conveyor-agent-{node}"}, "want User:NAME"},
		{[]string{"-principal", "User:"}, "want User:NAME"},
		{[]string{"nosuch"}, `no kafka node "nosuch"`},
		{[]string{"-master-principal", "conveyor"}, "want User:NAME"},
		{[]string{"-frobnicate"}, "flag provided but not defined: -frobnicate\n\nUsage: conveyor kafka acls"},
	} {
		if out, err := aclsCommand(t, l, tc.args, "a", "web_1"); err == nil || !strings.Contains(err.Error(), tc.err) || out != "" {
			t.Errorf("acls %q: output %q, error %v; want no output and an error with %q", tc.args, out, err, tc.err)
		}
	}
	if out, err := aclsCommand(t, l, []string{"-h"}, "a"); err != nil || !strings.HasPrefix(out, "Usage: conveyor kafka acls") || !strings.Contains(out, "-principal TEMPLATE") {
		t.Errorf("-h: output %q, error %v", out, err)
	}
	if out, err := aclsCommand(t, l, nil); err != nil || !strings.Contains(out, "No node uses the kafka launcher") {
		t.Errorf("no nodes: output %q, error %v", out, err)
	}
	if _, err := l.RunCommand(ctxT(t), &launcher.CommandRequest{Name: "topics"}); err == nil || !strings.Contains(err.Error(), `unknown command "topics"`) {
		t.Errorf("unknown command: %v", err)
	}
}

// TestACLsEmbedded: the embedded broker is not administered through -apply,
// but the list is printed all the same.
func TestACLsEmbedded(t *testing.T) {
	l := New(testLogger(t))
	defer l.Close()
	validateOnly(t, l, fmt.Sprintf("embedded_addr = %q", freeAddr(t)), "a")
	out, err := aclsCommand(t, l, []string{"-apply"}, "a")
	if err == nil || !strings.Contains(err.Error(), "embedded {} block") {
		t.Errorf("-apply on the embedded broker: %v", err)
	}
	// The agent users of the embedded broker are named after their nodes.
	if !strings.Contains(out, "  User:a     Allow       Read             Topic     conveyor.a.commands  Literal  *\n") ||
		!strings.Contains(out, "These are the ACLs the embedded broker (no brokers configured) sets up itself") {
		t.Errorf("output:\n%s", out)
	}
	out, err = aclsCommand(t, l, []string{"-principal", "User:agent-{node}"}, "a")
	if err != nil || !strings.Contains(out, "  User:agent-a  Allow       Read             Topic     conveyor.a.commands  Literal  *\n") {
		t.Errorf("-principal on the embedded broker: output:\n%s\nerror %v", out, err)
	}
	if l.broker != nil {
		t.Error("the command started the embedded broker")
	}
}

// TestACLsApply runs `acls -apply` in the plugin process against a broker
// with SASL SCRAM-SHA-512 and ACLs on, as its administrator (granting the
// master's user, no superuser, MasterACLs); afterwards node
// a's agent user can work as an agent on a's topics and can neither read
// node b's commands nor write commands.
func TestACLsApply(t *testing.T) {
	const mech = kafkatransport.MechanismSCRAMSHA512
	var topics []string
	for _, n := range []string{"a", "b"} {
		tp := kafkatransport.TopicsFor("", n)
		topics = append(topics, tp.Commands, tp.Events)
	}
	cluster, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.EnableSASL(),
		kfake.Superuser(mech, "admin", "admin-pw"),
		kfake.User(mech, "conveyor", "master-pw"),
		kfake.User(mech, "conveyor-agent-a", "pw-a"),
		kfake.User(mech, "conveyor-agent-b", "pw-b"),
		kfake.EnableACLs(),
		kfake.SeedTopics(1, topics...),
	)
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	master := kafkatransport.Config{Brokers: brokers, SASL: &kafkatransport.SASL{Mechanism: mech, Username: "conveyor", Password: "master-pw"}}
	agentA := kafkatransport.Config{Brokers: brokers, SASL: &kafkatransport.SASL{Mechanism: mech, Username: "conveyor-agent-a", Password: "pw-a"}}
	topicsA, topicsB := kafkatransport.TopicsFor("", "a"), kafkatransport.TopicsFor("", "b")

	// Without ACLs, the agent's user may do nothing, nor the master's.
	if err := consumeOne(agentA, topicsA.Commands); !errors.Is(err, sarama.ErrTopicAuthorizationFailed) {
		t.Fatalf("before -apply, agent a reading its commands: %v, want %v", err, sarama.ErrTopicAuthorizationFailed)
	}
	if err := produceOne(master, topicsA.Commands); !errors.Is(err, sarama.ErrClusterAuthorizationFailed) {
		t.Fatalf("before -apply, the master writing a command (an idempotent producer): %v, want %v", err, sarama.ErrClusterAuthorizationFailed)
	}

	p := startPlugin(t)
	if !p.Info.Has(launcher.CapCommands) {
		t.Fatalf("capabilities %q lack %q", p.Info.Capabilities, launcher.CapCommands)
	}
	c, ok := p.Launcher.(launcher.Commander)
	if !ok {
		t.Fatal("the plugin client is no launcher.Commander")
	}
	global := func(user, password string) string {
		return fmt.Sprintf("brokers = [%q]\nsasl {\n mechanism = %q\n username = %q\n password = %q\n}", brokers[0], mech, user, password)
	}

	// A user without Alter on the cluster creates nothing, and says so.
	validateOnly(t, p.Launcher, global("conveyor-agent-a", "pw-a"), "a", "b")
	if _, err := aclsCommand(t, c, []string{"-apply"}, "a", "b"); err == nil || !strings.Contains(err.Error(), "master's own principal User:conveyor-agent-a") {
		t.Errorf("-apply with the master as a's agent: %v", err)
	}
	out, err := aclsCommand(t, c, []string{"-apply", "-master-principal", "User:conveyor"}, "a", "b")
	if err == nil || !strings.HasPrefix(err.Error(), "the master's ACLs: ") || !strings.Contains(err.Error(), "not authorized") {
		t.Errorf("-apply as an agent's user: %v", err)
	}
	if !strings.HasSuffix(out, "Creating them on "+brokers[0]+" as User:conveyor-agent-a:\nCreated no ACL: failed on the master's.\n") {
		t.Errorf("-apply as an agent's user, output:\n%s", out)
	}

	// An administrator grants the master's user (no superuser) and the
	// agents' what they need.
	validateOnly(t, p.Launcher, global("admin", "admin-pw"), "a", "b")
	out, err = aclsCommand(t, c, []string{"-apply", "-master-principal", "User:conveyor"}, "a", "b")
	t.Logf("acls -apply:\n%s", out)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"Creating them on " + brokers[0] + " as User:admin:\n",
		"  created User:conveyor Allow Create Topic conveyor. (Prefixed) from *\n",
		"  created User:conveyor-agent-a Allow Read Topic conveyor.a.commands (Literal) from *\n",
		"  created User:conveyor-agent-b Allow Write Topic conveyor.b.events (Literal) from *\n",
		"Created 15 ACLs for the master and 2 nodes (creating an ACL that exists changes nothing).\n",
	} {
		if !strings.Contains(out, line) {
			t.Errorf("output lacks %q", line)
		}
	}
	// Applying again changes nothing and is no error.
	if _, err := aclsCommand(t, c, []string{"-apply", "-master-principal", "User:conveyor"}, "a", "b"); err != nil {
		t.Errorf("second -apply: %v", err)
	}

	// The master's user stays out of other topics and cannot grant itself
	// more.
	if err := kafkatransport.EnsureTopics(ctxT(t), master, []string{"other.topic"}, 1, 1); !errors.Is(err, sarama.ErrTopicAuthorizationFailed) {
		t.Errorf("the master creating a topic outside its prefix: %v, want %v", err, sarama.ErrTopicAuthorizationFailed)
	}
	if err := ApplyACLs(ctxT(t), master, MasterACLs("other.", "conveyor")); !errors.Is(err, sarama.ErrClusterAuthorizationFailed) {
		t.Errorf("the master granting itself another prefix: %v, want %v", err, sarama.ErrClusterAuthorizationFailed)
	}

	// Agent a works on its own topics and group, as the real agent does,
	// with a master that is no superuser.
	mconn, err := kafkatransport.OpenMaster(ctxT(t), master, "a", testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer mconn.Close()
	aconn, err := kafkatransport.DialAgent(ctxT(t), agentA, "a", testLogger(t))
	if err != nil {
		t.Fatalf("agent a on its own topics: %v", err)
	}
	defer aconn.Close()
	if err := mconn.Send([]byte("command")); err != nil {
		t.Fatal(err)
	}
	if b, err := aconn.Recv(); err != nil || string(b) != "command" {
		t.Fatalf("agent a received %q, %v", b, err)
	}
	if err := aconn.Send([]byte("event")); err != nil {
		t.Fatalf("agent a writing its events: %v", err)
	}
	if b, err := mconn.Recv(); err != nil || string(b) != "event" {
		t.Fatalf("master received %q, %v", b, err)
	}

	// A plain client as a's user reads a's commands, not b's.
	if err := consumeOne(agentA, topicsA.Commands); err != nil {
		t.Errorf("agent a reading its commands: %v", err)
	}
	if err := consumeOne(agentA, topicsB.Commands); !errors.Is(err, sarama.ErrTopicAuthorizationFailed) {
		t.Errorf("agent a reading b's commands: %v, want %v", err, sarama.ErrTopicAuthorizationFailed)
	}
	if c, err := kafkatransport.DialAgent(ctxT(t), agentA, "b", testLogger(t)); err == nil {
		c.Close()
		t.Error("agent a opened node b's side")
	}
	// Nor can it write commands, its own or b's, or b's events.
	for _, topic := range []string{topicsA.Commands, topicsB.Commands, topicsB.Events} {
		if err := produceOne(agentA, topic); !errors.Is(err, sarama.ErrTopicAuthorizationFailed) {
			t.Errorf("agent a writing %s: %v, want %v", topic, err, sarama.ErrTopicAuthorizationFailed)
		}
	}
}

// consumeOne reads the first record of partition 0 of topic as cfg's user.
func consumeOne(cfg kafkatransport.Config, topic string) error {
	sc, err := cfg.Sarama()
	if err != nil {
		return err
	}
	sc.Metadata.Retry.Max = 0
	consumer, err := sarama.NewConsumer(cfg.Brokers, sc)
	if err != nil {
		return err
	}
	defer consumer.Close()
	pc, err := consumer.ConsumePartition(topic, 0, sarama.OffsetOldest)
	if err != nil {
		return err
	}
	defer pc.Close()
	select {
	case <-pc.Messages():
		return nil
	case cerr := <-pc.Errors():
		return cerr.Err
	case <-time.After(testTimeout):
		return fmt.Errorf("no record in %s", topic)
	}
}

// produceOne writes a record to partition 0 of topic as cfg's user.
func produceOne(cfg kafkatransport.Config, topic string) error {
	sc, err := cfg.Sarama()
	if err != nil {
		return err
	}
	sc.Metadata.Retry.Max = 0
	sc.Producer.Retry.Max = 1 // the least an idempotent producer takes
	producer, err := sarama.NewSyncProducer(cfg.Brokers, sc)
	if err != nil {
		return err
	}
	defer producer.Close()
	_, _, err = producer.SendMessage(&sarama.ProducerMessage{Topic: topic, Partition: 0, Value: sarama.StringEncoder("forged")})
	return err
}
