package kafkalauncher

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl"

	"github.com/conveyor-ci/conveyor/sdk/launcher"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// TestEmbeddedPLAINRefusesEmptyPassword is the attack of issue 13 §4:
// kfake compares a PLAIN password with its table's entry for the user,
// "" for a user it does not know, so with one PLAIN user anyone logged in
// with an empty password under any name, the master's (then a superuser)
// included. With the guard, a real client trying the empty password is
// refused under every name (unknown, the master's, a node's, the broker's
// administrator's), a wrong password too, and the right ones still work.
func TestEmbeddedPLAINRefusesEmptyPassword(t *testing.T) {
	const (
		plain = kafkatransport.MechanismPlain
		scram = kafkatransport.MechanismSCRAMSHA512
	)
	for _, tc := range []struct {
		name              string
		master, agentMech string
	}{
		{name: "agents PLAIN, master SCRAM", master: scram, agentMech: plain},
		{name: "master PLAIN, agents SCRAM", master: plain, agentMech: scram},
		{name: "all PLAIN", master: plain, agentMech: plain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := freeAddr(t)
			masterSASL := &kafkatransport.SASL{Mechanism: tc.master, Username: "conveyor", Password: "master-pw"}
			client := func(mech, user, pw string) kafkatransport.Config {
				return kafkatransport.Config{Brokers: []string{addr}, SASL: &kafkatransport.SASL{Mechanism: mech, Username: user, Password: pw}}
			}
			spec := embeddedSpec{addr: addr, mechanism: tc.agentMech, users: map[string]string{"a": "a-pw"}, acls: true,
				prefix: kafkatransport.DefaultTopicPrefix, client: client(tc.master, "conveyor", "master-pw")}
			startTestBroker(t, spec, masterSASL)

			// sarama and franz-go's PLAIN refuse to send an empty password;
			// a hostile client sends it all the same.
			for _, user := range []string{"mallory", "conveyor", "a", embeddedAdminUser, ""} {
				if err := rawPlainLogin(t, addr, user, ""); !errors.Is(err, kerr.SaslAuthenticationFailed) {
					t.Errorf("PLAIN login as %q with an empty password: %v, want %v", user, err, kerr.SaslAuthenticationFailed)
				}
			}
			for _, user := range []string{"conveyor", "a"} {
				if err := rawPlainLogin(t, addr, user, "wrong-pw"); !errors.Is(err, kerr.SaslAuthenticationFailed) {
					t.Errorf("PLAIN login as %q with a wrong password: %v, want %v", user, err, kerr.SaslAuthenticationFailed)
				}
			}
			// An authorization id other than the user is refused too.
			if err := rawPlainLoginBytes(t, addr, "a\x00a\x00a-pw"); tc.agentMech == plain && !errors.Is(err, kerr.TopicAuthorizationFailed) {
				t.Errorf("PLAIN login as a with authzid a: %v, want to log in and be refused the topic (%v)", err, kerr.TopicAuthorizationFailed)
			}
			if err := rawPlainLoginBytes(t, addr, "conveyor\x00a\x00a-pw"); !errors.Is(err, kerr.SaslAuthenticationFailed) {
				t.Errorf("PLAIN login as a for conveyor: %v, want %v", err, kerr.SaslAuthenticationFailed)
			}
			// The configured users still log in.
			if c, err := dialSarama(client(tc.master, "conveyor", "master-pw")); err != nil {
				t.Errorf("the master logs in: %v", err)
			} else {
				c.Close()
			}
			if c, err := dialSarama(client(tc.agentMech, "a", "a-pw")); err != nil {
				t.Errorf("agent a logs in: %v", err)
			} else {
				c.Close()
			}
		})
	}
}

// TestEmbeddedGuardBeforeAccept: kfake listens as soon as NewCluster
// returns, and the PLAIN guard is installed after; the broker must accept
// no connection in between, else an empty-password PLAIN login made then
// gets in at every (re)start. A login tried in that window gets no answer
// until the broker is ready, then is refused.
func TestEmbeddedGuardBeforeAccept(t *testing.T) {
	addr := freeAddr(t)
	masterSASL := &kafkatransport.SASL{Mechanism: kafkatransport.MechanismPlain, Username: "conveyor", Password: "master-pw"}
	spec := embeddedSpec{addr: addr, mechanism: kafkatransport.MechanismPlain, users: map[string]string{"a": "a-pw"}, acls: true,
		prefix: kafkatransport.DefaultTopicPrefix,
		client: kafkatransport.Config{Brokers: []string{addr}, SASL: masterSASL}}
	result := make(chan error, 1)
	testHookBeforeAccept = func(hookAddr string) {
		if hookAddr != addr {
			return
		}
		go func() { result <- rawPlainLogin(t, addr, "mallory", "") }()
		// The login's connection is made (the kernel completes it) but no
		// request may be answered before the broker accepts: wait a
		// little for an answer that must not come.
		select {
		case err := <-result:
			t.Errorf("a PLAIN login was answered before the broker was ready: %v", err)
			result <- err
		case <-time.After(time.Second):
		}
	}
	t.Cleanup(func() { testHookBeforeAccept = nil })
	startTestBroker(t, spec, masterSASL)
	select {
	case err := <-result:
		if !errors.Is(err, kerr.SaslAuthenticationFailed) {
			t.Errorf("PLAIN login with an empty password made while the broker started: %v, want %v", err, kerr.SaslAuthenticationFailed)
		}
	case <-ctxT(t).Done():
		t.Fatal("the login made while the broker started got no answer")
	}
}

// TestGatedListener: Accept waits for the gate; Close ends a waiting
// Accept.
func TestGatedListener(t *testing.T) {
	ln := mustListen(t)
	gate := make(chan struct{})
	gl := newGatedListener(ln, gate)
	accepted := make(chan error, 1)
	go func() {
		c, err := gl.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case err := <-accepted:
		t.Fatalf("Accept returned before the gate opened: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(gate)
	select {
	case err := <-accepted:
		if err != nil {
			t.Fatalf("Accept after the gate opened: %v", err)
		}
	case <-ctxT(t).Done():
		t.Fatal("Accept did not return after the gate opened")
	}

	closedGate := newGatedListener(mustListen(t), make(chan struct{}))
	done := make(chan error, 1)
	go func() { _, err := closedGate.Accept(); done <- err }()
	closedGate.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept on a closed gated listener: %v, want %v", err, net.ErrClosed)
		}
	case <-ctxT(t).Done():
		t.Fatal("Close did not end a waiting Accept")
	}
}

// mustListen listens on a loopback port chosen by the kernel.
func mustListen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// TestEmbeddedMasterNotSuperuser: on the embedded broker with SASL and
// ACLs, the master's user does its own job (TestEmbeddedACLs) but no more:
// no topic outside its prefix, no reading another prefix's topics, no ACL
// and no SCRAM administration (with either it could grant itself
// everything).
func TestEmbeddedMasterNotSuperuser(t *testing.T) {
	at := newACLTest(t)
	// Someone else's topic on the same broker, created by the broker's
	// administrator.
	if err := kafkatransport.EnsureTopics(ctxT(t), at.broker.admin, []string{"other.secrets"}, 1, 1); err != nil {
		t.Fatal(err)
	}
	if err := produce(at.client(at.broker.admin), "other.secrets", "not the master's"); err != nil {
		t.Fatal(err)
	}
	master := at.client(at.master)

	wantDenied(t, "the master creates a topic outside its prefix",
		kafkatransport.EnsureTopics(ctxT(t), at.master, []string{"other.topic"}, 1, 1), sarama.ErrTopicAuthorizationFailed)
	_, err := consumeFirst(t, master, "other.secrets")
	wantDenied(t, "the master reads another prefix's topic", err, sarama.ErrTopicAuthorizationFailed)
	wantDenied(t, "the master writes another prefix's topic", produce(master, "other.secrets", "forged"), sarama.ErrTopicAuthorizationFailed)
	wantDenied(t, "the master deletes another prefix's topic",
		kafkatransport.DeleteTopics(ctxT(t), at.master, []string{"other.secrets"}), sarama.ErrTopicAuthorizationFailed)
	wantDenied(t, "the master grants itself every topic",
		ApplyACLs(ctxT(t), at.master, []ACL{{Principal: Principal("conveyor"), Host: AnyHost, Resource: ResourceTopic, Name: "other.", Pattern: PatternPrefixed, Operation: OperationAll, Permission: PermissionAllow}}),
		sarama.ErrClusterAuthorizationFailed)
	wantDenied(t, "the master changes a user's SCRAM password", alterSCRAM(at.master, embeddedAdminUser, "mine-now"), sarama.ErrClusterAuthorizationFailed)

	// Its own job: its prefix's topics (create, write, read, delete), its
	// groups.
	ta := kafkatransport.TopicsFor("", "a")
	if err := kafkatransport.EnsureTopics(ctxT(t), at.master, []string{ta.Commands, ta.Events}, 1, 1); err != nil {
		t.Fatalf("the master creates a node's topics: %v", err)
	}
	if err := produce(master, ta.Commands, "command"); err != nil {
		t.Fatalf("the master writes a command: %v", err)
	}
	if err := commit(master, kafkatransport.GroupsFor("", "a").Master, ta.Events, 0); err != nil {
		t.Fatalf("the master commits in its group: %v", err)
	}
	if err := kafkatransport.DeleteTopics(ctxT(t), at.master, []string{ta.Commands, ta.Events}); err != nil {
		t.Fatalf("the master deletes a node's topics: %v", err)
	}
}

// alterSCRAM sets user's SCRAM-SHA-512 password, connecting as cfg says.
func alterSCRAM(cfg kafkatransport.Config, user, password string) error {
	sc, err := cfg.Sarama()
	if err != nil {
		return err
	}
	sc.Metadata.Full = true
	admin, err := sarama.NewClusterAdmin(cfg.Brokers, sc)
	if err != nil {
		return err
	}
	defer admin.Close()
	res, err := admin.UpsertUserScramCredentials([]sarama.AlterUserScramCredentialsUpsert{{
		Name: user, Mechanism: sarama.SCRAM_MECHANISM_SHA_512, Iterations: 4096, Salt: []byte("0123456789abcdef"), Password: []byte(password)}})
	if err != nil {
		return err
	}
	for _, r := range res {
		if r.ErrorCode != sarama.ErrNoError {
			return r.ErrorCode
		}
	}
	return nil
}

// rawPlain is SASL/PLAIN as a hostile client speaks it: any message,
// empty passwords included, which sarama and franz-go's own PLAIN refuse
// to send.
type rawPlain struct{ msg string }

// Name implements sasl.Mechanism.
func (rawPlain) Name() string { return "PLAIN" }

// Authenticate implements sasl.Mechanism.
func (m rawPlain) Authenticate(context.Context, string) (sasl.Session, []byte, error) {
	return rawPlainSession{}, []byte(m.msg), nil
}

type rawPlainSession struct{}

// Challenge implements sasl.Session: PLAIN is one message.
func (rawPlainSession) Challenge([]byte) (bool, []byte, error) { return true, nil, nil }

// rawPlainLogin logs in to addr as user with PLAIN password pass through
// a franz-go client. Logged in, it does what the attacker of issue 13 did,
// creating a topic outside the prefix, and reports that as an error.
func rawPlainLogin(t *testing.T, addr, user, pass string) error {
	return rawPlainLoginBytes(t, addr, "\x00"+user+"\x00"+pass)
}

// rawPlainLoginBytes is rawPlainLogin with the PLAIN message as given.
func rawPlainLoginBytes(t *testing.T, addr, msg string) error {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.SASL(rawPlain{msg}), kgo.RequestRetries(0))
	if err != nil {
		return err
	}
	defer cl.Close()
	req := kmsg.NewPtrCreateTopicsRequest()
	topic := kmsg.NewCreateTopicsRequestTopic()
	topic.Topic, topic.NumPartitions, topic.ReplicationFactor = "attacker.topic", 1, 1
	req.Topics = append(req.Topics, topic)
	resp, err := req.RequestWith(ctxT(t), cl)
	if err != nil {
		return err
	}
	if len(resp.Topics) == 1 {
		if err := kerr.ErrorForCode(resp.Topics[0].ErrorCode); err != nil {
			return fmt.Errorf("logged in, then: %w", err)
		}
	}
	return errors.New("logged in, and created topic attacker.topic")
}

// TestPurgeForgetsNodeUser (issue 13 §4): a node removed from the
// configuration while embedded.sasl.users still names it draws a warning,
// and its user is not created: its agent no longer logs in. `node delete
// -purge` removes from the running broker the node's ACLs and SCRAM
// credentials (PLAIN: the guard's entry) besides its topics and groups.
func TestPurgeForgetsNodeUser(t *testing.T) {
	for _, mech := range []string{kafkatransport.MechanismSCRAMSHA512, kafkatransport.MechanismPlain} {
		t.Run(mech, func(t *testing.T) {
			dir, addr := t.TempDir(), freeAddr(t)
			global := fmt.Sprintf("embedded_addr = %q\nsasl {\n mechanism = \"SCRAM-SHA-512\"\n username = \"conveyor\"\n password = \"master-pw\"\n}\n"+
				"embedded {\n sasl {\n mechanism = %q\n users = { a = \"a-pw\", b = \"b-pw\", c = \"c-pw\" }\n }\n}\n", addr, mech)
			l := New(testLogger(t))
			defer l.Close()
			agent := func(user, pw string) kafkatransport.Config {
				return kafkatransport.Config{Brokers: []string{addr}, SASL: &kafkatransport.SASL{Mechanism: mech, Username: user, Password: pw}}
			}
			admin := func() kafkatransport.Config {
				l.mu.Lock()
				defer l.mu.Unlock()
				return l.broker.admin
			}
			aclsOf := func(user string) int {
				t.Helper()
				p := Principal(user)
				n := 0
				err := kafkatransport.WithAdmin(ctxT(t), admin(), func(a sarama.ClusterAdmin) error {
					rs, err := a.ListAcls(sarama.AclFilter{ResourceType: sarama.AclResourceAny, ResourcePatternTypeFilter: sarama.AclPatternAny,
						Principal: &p, Operation: sarama.AclOperationAny, PermissionType: sarama.AclPermissionAny})
					for _, r := range rs {
						n += len(r.Acls)
					}
					return err
				})
				if err != nil {
					t.Fatalf("list the ACLs of %s: %v", p, err)
				}
				return n
			}
			loginWorks := func(user, pw string) bool {
				t.Helper()
				c, err := dialSarama(agent(user, pw))
				if err != nil {
					return false
				}
				c.Close()
				return true
			}

			// Nodes a, b and c: each user logs in and holds its ACLs.
			if err := l.Configure(ctxT(t), config(t, dir, global, "a", "b", "c")); err != nil {
				t.Fatal(err)
			}
			for _, u := range []string{"a", "b", "c"} {
				if !loginWorks(u, u+"-pw") || aclsOf(u) != len(NodeACLs("", u, u)) {
					t.Fatalf("user %s before: login refused or %d ACLs", u, aclsOf(u))
				}
			}

			// Node b leaves the configuration, its user stays: a warning,
			// and no user b on the broker.
			err := l.Configure(ctxT(t), config(t, dir, global, "a", "c"))
			var ces launcher.ConfigErrors
			if !errors.As(err, &ces) || ces.HasErrors() || len(ces) != 1 || !ces[0].Warning ||
				!slices.Equal(ces[0].Path, []string{"embedded", "sasl", "users"}) || !strings.Contains(ces[0].Message, `user "b" is named after no kafka node`) {
				t.Fatalf("configure without node b: %v, want one warning about user b", err)
			}
			if loginWorks("b", "b-pw") {
				t.Error("node b removed from the configuration: its user still logs in")
			}
			if n := aclsOf("b"); n != 0 {
				t.Errorf("node b removed from the configuration: %d ACLs left", n)
			}
			if err := l.Purge(ctxT(t), "b"); err != nil {
				t.Fatalf("purge b: %v", err)
			}

			// Purging a node whose user the running broker has: gone too.
			if err := l.Purge(ctxT(t), "c"); err != nil {
				t.Fatalf("purge c: %v", err)
			}
			if loginWorks("c", "c-pw") {
				t.Error("node c purged: its user still logs in")
			}
			if n := aclsOf("c"); n != 0 {
				t.Errorf("node c purged: %d ACLs left", n)
			}
			// Others keep theirs, the master included.
			if !loginWorks("a", "a-pw") || aclsOf("a") != len(NodeACLs("", "a", "a")) {
				t.Errorf("node a after purging c: login refused or %d ACLs", aclsOf("a"))
			}
			if l.Purge(ctxT(t), "conveyor") != nil || aclsOf("conveyor") != len(MasterACLs("", "conveyor")) {
				t.Errorf("purging a node named after the master touched the master's ACLs: %d left", aclsOf("conveyor"))
			}
			if c, err := dialSarama(kafkatransport.Config{Brokers: []string{addr}, SASL: &kafkatransport.SASL{Mechanism: kafkatransport.MechanismSCRAMSHA512, Username: "conveyor", Password: "master-pw"}}); err != nil {
				t.Errorf("the master after the purges: %v", err)
			} else {
				c.Close()
			}
		})
	}
}
