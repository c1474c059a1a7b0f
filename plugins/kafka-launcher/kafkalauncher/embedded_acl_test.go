package kafkalauncher

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/hashicorp/go-hclog"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// aclTest is an embedded broker with SASL SCRAM-SHA-512 and ACLs, a master
// (holding MasterACLs) and agent users "a" and "b".
type aclTest struct {
	t      *testing.T
	addr   string
	dir    string
	spec   embeddedSpec
	master kafkatransport.Config
	broker *embeddedBroker
}

const aclMech = kafkatransport.MechanismSCRAMSHA512

func newACLTest(t *testing.T) *aclTest {
	addr := freeAddr(t)
	master := kafkatransport.Config{Brokers: []string{addr}, SASL: &kafkatransport.SASL{Mechanism: aclMech, Username: "conveyor", Password: "master-pw"}}
	at := &aclTest{t: t, addr: addr, dir: t.TempDir(), master: master, spec: embeddedSpec{
		addr:      addr,
		mechanism: aclMech,
		users:     map[string]string{"a": "a-pw", "b": "b-pw"},
		acls:      true,
		prefix:    kafkatransport.DefaultTopicPrefix,
		client:    master,
	}}
	at.start()
	t.Cleanup(func() {
		if at.broker != nil {
			at.broker.close()
		}
	})
	return at
}

func (at *aclTest) start() {
	at.t.Helper()
	b, err := startEmbedded(ctxT(at.t), at.dir, at.spec, at.master.SASL, testLogger(at.t))
	if err != nil {
		at.t.Fatal(err)
	}
	at.broker = b
}

func (at *aclTest) restart() {
	at.t.Helper()
	at.broker.close()
	at.broker = nil
	at.start()
}

// agent returns the client configuration of agent user.
func (at *aclTest) agent(user, password string) kafkatransport.Config {
	return kafkatransport.Config{Brokers: []string{at.addr}, ClientID: "agent-" + user, SASL: &kafkatransport.SASL{Mechanism: aclMech, Username: user, Password: password}}
}

// client connects a plain sarama client as cfg says.
func (at *aclTest) client(cfg kafkatransport.Config) sarama.Client {
	at.t.Helper()
	c, err := dialSarama(cfg)
	if err != nil {
		at.t.Fatalf("connect as %s: %v", cfg.SASL.Username, err)
	}
	at.t.Cleanup(func() { c.Close() })
	return c
}

// produce writes value to topic partition 0.
func produce(c sarama.Client, topic, value string) error {
	p, err := sarama.NewSyncProducerFromClient(c)
	if err != nil {
		return err
	}
	defer p.Close()
	_, _, err = p.SendMessage(&sarama.ProducerMessage{Topic: topic, Partition: 0, Value: sarama.StringEncoder(value)})
	return err
}

// consumeFirst reads the first record of topic partition 0.
func consumeFirst(t *testing.T, c sarama.Client, topic string) (string, error) {
	t.Helper()
	cons, err := sarama.NewConsumerFromClient(c)
	if err != nil {
		return "", err
	}
	defer cons.Close()
	pc, err := cons.ConsumePartition(topic, 0, sarama.OffsetOldest)
	if err != nil {
		return "", err
	}
	defer pc.Close()
	select {
	case m := <-pc.Messages():
		return string(m.Value), nil
	case err := <-pc.Errors():
		return "", err
	case <-time.After(testTimeout):
		t.Fatalf("nothing to read in %s", topic)
		return "", nil
	}
}

// commit commits offset for topic partition 0 in group.
func commit(c sarama.Client, group, topic string, offset int64) error {
	coord, err := c.Coordinator(group)
	if err != nil {
		return err
	}
	req := &sarama.OffsetCommitRequest{Version: 8, ConsumerGroup: group, ConsumerGroupGeneration: -1}
	req.AddBlock(topic, 0, offset, 0, "")
	resp, err := coord.CommitOffset(req)
	if err != nil {
		return err
	}
	if kerr := resp.Errors[topic][0]; kerr != sarama.ErrNoError {
		return kerr
	}
	return nil
}

// wantDenied fails unless err is the authorization error want.
func wantDenied(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: got %v, want %v", what, err, want)
	}
}

// TestEmbeddedACLs: on the embedded broker with SASL and ACLs, each
// agent's user reads only its own commands topic (in its own consumer
// group) and writes only its own events topic; the master,
// does the rest.
func TestEmbeddedACLs(t *testing.T) {
	at := newACLTest(t)
	ta := kafkatransport.TopicsFor("", "a")
	tb := kafkatransport.TopicsFor("", "b")
	ga := kafkatransport.GroupsFor("", "a")
	gb := kafkatransport.GroupsFor("", "b")
	if err := kafkatransport.EnsureTopics(ctxT(t), at.master, []string{ta.Commands, ta.Events, tb.Commands, tb.Events}, 1, 1); err != nil {
		t.Fatalf("the master creates the topics: %v", err)
	}
	master := at.client(at.master)
	for _, topic := range []string{ta.Commands, tb.Commands} {
		if err := produce(master, topic, "command in "+topic); err != nil {
			t.Fatalf("the master writes %s: %v", topic, err)
		}
	}

	// Agent a does its job.
	a := at.client(at.agent("a", "a-pw"))
	if err := produce(a, ta.Events, "event of a"); err != nil {
		t.Fatalf("a writes its events topic: %v", err)
	}
	if got, err := consumeFirst(t, a, ta.Commands); err != nil || got != "command in "+ta.Commands {
		t.Fatalf("a reads its commands topic: %q, %v", got, err)
	}
	if err := commit(a, ga.Agent, ta.Commands, 1); err != nil {
		t.Fatalf("a commits in its group: %v", err)
	}
	if got, err := consumeFirst(t, master, ta.Events); err != nil || got != "event of a" {
		t.Fatalf("the master reads a's events: %q, %v", got, err)
	}

	// And nothing else.
	_, err := consumeFirst(t, a, tb.Commands)
	wantDenied(t, "a reads b's commands", err, sarama.ErrTopicAuthorizationFailed)
	wantDenied(t, "a writes b's events", produce(a, tb.Events, "forged event"), sarama.ErrTopicAuthorizationFailed)
	wantDenied(t, "a writes b's commands", produce(a, tb.Commands, "forged command"), sarama.ErrTopicAuthorizationFailed)
	wantDenied(t, "a writes its own commands", produce(a, ta.Commands, "forged command"), sarama.ErrTopicAuthorizationFailed)
	_, err = consumeFirst(t, a, tb.Events)
	wantDenied(t, "a reads b's events", err, sarama.ErrTopicAuthorizationFailed)
	_, err = consumeFirst(t, a, ta.Events)
	wantDenied(t, "a reads its own events", err, sarama.ErrTopicAuthorizationFailed)
	wantDenied(t, "a commits in b's group", commit(a, gb.Agent, tb.Commands, 1), sarama.ErrGroupAuthorizationFailed)
	wantDenied(t, "a commits in the master's group", commit(a, ga.Master, ta.Events, 1), sarama.ErrGroupAuthorizationFailed)
	wantDenied(t, "a deletes b's topic", kafkatransport.DeleteTopics(ctxT(t), at.agent("a", "a-pw"), []string{tb.Commands}), sarama.ErrTopicAuthorizationFailed)
	wantDenied(t, "a creates a topic", kafkatransport.EnsureTopics(ctxT(t), at.agent("a", "a-pw"), []string{"conveyor.x.commands"}, 1, 1), sarama.ErrTopicAuthorizationFailed)

	// Agent b has its own rights.
	b := at.client(at.agent("b", "b-pw"))
	if got, err := consumeFirst(t, b, tb.Commands); err != nil || got != "command in "+tb.Commands {
		t.Fatalf("b reads its commands topic: %q, %v", got, err)
	}
	_, err = consumeFirst(t, b, ta.Commands)
	wantDenied(t, "b reads a's commands", err, sarama.ErrTopicAuthorizationFailed)

	// The transport itself: a's agent connects with a's user, and a's
	// user does not get b's side.
	conn, err := kafkatransport.DialAgent(ctxT(t), at.agent("a", "a-pw"), "a", hclog.NewNullLogger())
	if err != nil {
		t.Fatalf("a's agent connects: %v", err)
	}
	if err := conn.Send([]byte("hello from a")); err != nil {
		t.Fatalf("a's agent sends: %v", err)
	}
	conn.Close()
	if c, err := kafkatransport.DialAgent(ctxT(t), at.agent("a", "a-pw"), "b", hclog.NewNullLogger()); err == nil {
		c.Close()
		t.Fatal("a's user opened b's side")
	}
	if _, err := dialSarama(at.agent("a", "b-pw")); err == nil {
		t.Fatal("a wrong password was accepted")
	}
}

// TestEmbeddedACLsSurviveRestart: the broker reloads its data directory
// but takes users and ACLs from its configuration alone: after a restart
// the ACLs hold, and a changed password replaces the old one.
func TestEmbeddedACLsSurviveRestart(t *testing.T) {
	at := newACLTest(t)
	ta := kafkatransport.TopicsFor("", "a")
	tb := kafkatransport.TopicsFor("", "b")
	if err := kafkatransport.EnsureTopics(ctxT(t), at.master, []string{ta.Commands, ta.Events, tb.Commands, tb.Events}, 1, 1); err != nil {
		t.Fatal(err)
	}
	if err := produce(at.client(at.master), ta.Commands, "before the restart"); err != nil {
		t.Fatal(err)
	}
	// kfake saved the users when it created its data directory; a crash
	// would leave them there.
	saslFile := filepath.Join(at.broker.dir, "sasl.json")
	saved, err := os.ReadFile(saslFile)
	if err != nil {
		t.Fatal(err)
	}
	at.broker.close()
	if err := os.WriteFile(saslFile, saved, 0o600); err != nil {
		t.Fatal(err)
	}
	at.spec.users = map[string]string{"a": "a-new-pw", "b": "b-pw"}
	at.start()
	if _, err := dialSarama(at.agent("a", "a-pw")); err == nil {
		t.Fatal("the old password still works after the restart")
	}
	a := at.client(at.agent("a", "a-new-pw"))
	if got, err := consumeFirst(t, a, ta.Commands); err != nil || got != "before the restart" {
		t.Fatalf("a reads its commands after the restart: %q, %v", got, err)
	}
	_, err = consumeFirst(t, a, tb.Commands)
	wantDenied(t, "a reads b's commands after the restart", err, sarama.ErrTopicAuthorizationFailed)
	wantDenied(t, "a writes b's events after the restart", produce(a, tb.Events, "forged"), sarama.ErrTopicAuthorizationFailed)

	// A user removed from the configuration is gone.
	at.spec.users = map[string]string{"a": "a-new-pw"}
	at.restart()
	if _, err := dialSarama(at.agent("b", "b-pw")); err == nil {
		t.Fatal("a removed user still connects")
	}
	at.broker.close()
	at.broker = nil
	for _, f := range authStateFiles {
		if _, err := os.Stat(filepath.Join(at.dir, "broker", f)); err == nil {
			t.Errorf("%s left in the data directory after the broker stopped", f)
		}
	}
}

// TestNodeACLs: the bindings of one node's agent, and their translations
// for kfake and sarama.
func TestNodeACLs(t *testing.T) {
	got := NodeACLs("ci.", "web_1", "web-agent")
	want := []ACL{
		{Principal: "User:web-agent", Host: "*", Resource: "Topic", Name: "ci.web_5f1.commands", Pattern: "Literal", Operation: "Read", Permission: "Allow"},
		{Principal: "User:web-agent", Host: "*", Resource: "Topic", Name: "ci.web_5f1.events", Pattern: "Literal", Operation: "Write", Permission: "Allow"},
		{Principal: "User:web-agent", Host: "*", Resource: "Group", Name: "ci.agent.web_5f1", Pattern: "Literal", Operation: "Read", Permission: "Allow"},
		{Principal: "User:web-agent", Host: "*", Resource: "Cluster", Name: "kafka-cluster", Pattern: "Literal", Operation: "IdempotentWrite", Permission: "Allow"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %v\nwant %v", got, want)
	}
	if s := got[0].String(); s != "User:web-agent Allow Read Topic ci.web_5f1.commands (Literal) from *" {
		t.Fatalf("String: %q", s)
	}
	if d := NodeACLs("", "a", "a")[0].Name; d != "conveyor.a.commands" {
		t.Fatalf("default prefix: %q", d)
	}

	all := append(NodeACLs("ci.", "web_1", "web-agent"), MasterACLs("ci.", "conveyor")...)
	rs, err := SaramaACLs(all)
	if err != nil {
		t.Fatal(err)
	}
	// Back from sarama's values to words: the same bindings (sarama names
	// the values as ACL spells them, so the numbers match).
	var back []string
	for _, r := range rs {
		for _, a := range r.Acls {
			back = append(back, ACL{Principal: a.Principal, Host: a.Host, Resource: r.ResourceType.String(), Name: r.ResourceName,
				Pattern: r.ResourcePatternType.String(), Operation: a.Operation.String(), Permission: a.PermissionType.String()}.String())
		}
	}
	var words []string
	for _, a := range all {
		words = append(words, a.String())
	}
	slices.Sort(back)
	slices.Sort(words)
	if !slices.Equal(back, words) {
		t.Fatalf("through sarama:\n%s\nwant\n%s", strings.Join(back, "\n"), strings.Join(words, "\n"))
	}
	// Grouped by resource: the two cluster bindings, and the master's five
	// on its topics, share one.
	if len(rs) != 6 {
		t.Fatalf("%d resources, want 6", len(rs))
	}
	norm := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, "_", "")) }
	for _, a := range all {
		k, err := a.Kfake()
		if err != nil {
			t.Fatal(err)
		}
		if k.Name != a.Name || k.Host != a.Host || k.Principal != a.Principal || !k.Allow || norm(k.Operation.String()) != norm(a.Operation) ||
			norm(k.Resource.String()) != norm(a.Resource) || norm(k.Pattern.String()) != norm(a.Pattern) {
			t.Errorf("kfake %+v from %v", k, a)
		}
	}
}

func TestACLValidate(t *testing.T) {
	ok := ACL{Principal: "User:a", Host: "*", Resource: "topic", Name: "t", Pattern: "PREFIXED", Operation: "describe-configs", Permission: "deny"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("case and dashes: %v", err)
	}
	for name, change := range map[string]func(*ACL){
		"principal":         func(a *ACL) { a.Principal = "a" },
		"empty user":        func(a *ACL) { a.Principal = "User:" },
		"host":              func(a *ACL) { a.Host = "" },
		"name":              func(a *ACL) { a.Name = "" },
		"resource":          func(a *ACL) { a.Resource = "Table" },
		"resource filter":   func(a *ACL) { a.Resource = "Any" },
		"pattern filter":    func(a *ACL) { a.Pattern = "Match" },
		"operation":         func(a *ACL) { a.Operation = "Fly" },
		"operation filter":  func(a *ACL) { a.Operation = "Any" },
		"permission":        func(a *ACL) { a.Permission = "Maybe" },
		"permission filter": func(a *ACL) { a.Permission = "Any" },
		"cluster name":      func(a *ACL) { a.Resource = "Cluster" },
	} {
		a := ok
		change(&a)
		if a.Validate() == nil {
			t.Errorf("%s: %v accepted", name, a)
		}
		if _, err := a.Kfake(); err == nil {
			t.Errorf("%s: kfake took %v", name, a)
		}
		if _, err := SaramaACLs([]ACL{ok, a}); err == nil {
			t.Errorf("%s: sarama took %v", name, a)
		}
	}
}

// TestMasterACLs: a master that is no superuser does its whole job (create
// topics, exchange frames, purge a node) with MasterACLs alone, and
// nothing outside its prefix; ApplyACLs installs bindings as a superuser
// and reports what the broker refuses.
func TestMasterACLs(t *testing.T) {
	const prefix = "ci."
	toKfake := func(acls []ACL) []kfake.ACL {
		var out []kfake.ACL
		for _, a := range acls {
			k, err := a.Kfake()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, k)
		}
		return out
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.EnableSASL(), kfake.EnableACLs(),
		kfake.Superuser(aclMech, "admin", "admin-pw"),
		kfake.User(aclMech, "conveyor", "master-pw", toKfake(MasterACLs(prefix, "conveyor"))...),
		kfake.User(aclMech, "n", "n-pw"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cfg := func(user, pw string) kafkatransport.Config {
		return kafkatransport.Config{Brokers: c.ListenAddrs(), TopicPrefix: prefix, SASL: &kafkatransport.SASL{Mechanism: aclMech, Username: user, Password: pw}}
	}
	admin, master, agent := cfg("admin", "admin-pw"), cfg("conveyor", "master-pw"), cfg("n", "n-pw")

	// The agent's bindings, installed the way `conveyor kafka acls -apply` would.
	if err := ApplyACLs(ctxT(t), admin, NodeACLs(prefix, "n", "n")); err != nil {
		t.Fatal(err)
	}
	if err := ApplyACLs(ctxT(t), admin, NodeACLs(prefix, "n", "n")); err != nil {
		t.Fatalf("applying again: %v", err)
	}
	if err := ApplyACLs(ctxT(t), master, NodeACLs(prefix, "x", "x")); !errors.Is(err, sarama.ErrClusterAuthorizationFailed) {
		t.Fatalf("the master granting ACLs: %v, want %v", err, sarama.ErrClusterAuthorizationFailed)
	}

	tn := kafkatransport.TopicsFor(prefix, "n")
	if err := kafkatransport.EnsureTopics(ctxT(t), master, []string{tn.Commands, tn.Events}, 1, 1); err != nil {
		t.Fatalf("the master creates topics: %v", err)
	}
	mconn, err := kafkatransport.OpenMaster(ctxT(t), master, "n", hclog.NewNullLogger())
	if err != nil {
		t.Fatalf("the master opens its side: %v", err)
	}
	aconn, err := kafkatransport.DialAgent(ctxT(t), agent, "n", hclog.NewNullLogger())
	if err != nil {
		t.Fatalf("the agent opens its side: %v", err)
	}
	if err := mconn.Send([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if b, err := aconn.Recv(); err != nil || string(b) != "ping" {
		t.Fatalf("agent got %q, %v", b, err)
	}
	if err := aconn.Send([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if b, err := mconn.Recv(); err != nil || string(b) != "pong" {
		t.Fatalf("master got %q, %v", b, err)
	}
	aconn.Close()
	mconn.Close()

	g := kafkatransport.GroupsFor(prefix, "n")
	if err := kafkatransport.DeleteGroups(ctxT(t), master, []string{g.Master, g.Agent}); err != nil {
		t.Fatalf("the master deletes the groups: %v", err)
	}
	if err := kafkatransport.DeleteTopics(ctxT(t), master, []string{tn.Commands, tn.Events}); err != nil {
		t.Fatalf("the master deletes the topics: %v", err)
	}
	wantDenied(t, "the master creates a topic outside its prefix",
		kafkatransport.EnsureTopics(ctxT(t), master, []string{"other.topic"}, 1, 1), sarama.ErrTopicAuthorizationFailed)
	// The prefix ends in ".": another installation's "ciX." is outside.
	wantDenied(t, "the master creates a topic of prefix ciX.",
		kafkatransport.EnsureTopics(ctxT(t), master, []string{kafkatransport.TopicsFor("ciX.", "n").Commands}, 1, 1), sarama.ErrTopicAuthorizationFailed)
}
