package kafkalauncher

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl"

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
