package kafkalauncher

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

// mustBrokerTLS loads the embedded broker's TLS files or fails the test.
func mustBrokerTLS(t *testing.T, c embeddedTLSConfig) *brokerTLS {
	t.Helper()
	bt := loadBrokerTLS(&c, func(msg string, path ...string) { t.Fatalf("%s: %s", strings.Join(path, "."), msg) })
	if bt == nil {
		t.Fatal("no TLS material")
	}
	return bt
}

// startTestBroker starts an embedded broker for a test and stops it at
// the test's end.
func startTestBroker(t *testing.T, spec embeddedSpec, sasl *kafkatransport.SASL) *embeddedBroker {
	t.Helper()
	b, err := startEmbedded(ctxT(t), t.TempDir(), spec, sasl, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.close)
	return b
}

// dialSarama connects a plain sarama client as cfg says, failing fast.
func dialSarama(cfg kafkatransport.Config) (sarama.Client, error) {
	sc, err := cfg.Sarama()
	if err != nil {
		return nil, err
	}
	// NewClient connects (and so authenticates) only to fetch full
	// metadata, which cfg.Sarama turns off.
	sc.Metadata.Full = true
	sc.Metadata.Retry.Max = 0
	sc.Producer.Retry.Max = 1
	sc.Producer.Retry.Backoff = 10 * time.Millisecond
	sc.Net.DialTimeout = 5 * time.Second
	sc.Net.ReadTimeout = 5 * time.Second
	sc.Net.WriteTimeout = 5 * time.Second
	return sarama.NewClient(cfg.Brokers, sc)
}

// mustReach checks that a client configured as cfg reaches the broker and
// sees topic (a second connection, to the address the broker advertises).
func mustReach(t *testing.T, cfg kafkatransport.Config, topic string) {
	t.Helper()
	c, err := dialSarama(cfg)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer c.Close()
	if _, err := c.Partitions(topic); err != nil {
		t.Fatalf("partitions of %s: %v", topic, err)
	}
	b, err := c.Leader(topic, 0)
	if err != nil {
		t.Fatalf("leader of %s: %v", topic, err)
	}
	if _, err := b.GetMetadata(&sarama.MetadataRequest{Topics: []string{topic}}); err != nil {
		t.Fatalf("request to the advertised broker %s: %v", b.Addr(), err)
	}
}

// mustNotReach checks that a client configured as cfg cannot talk to the
// broker, and that the error mentions want.
func mustNotReach(t *testing.T, cfg kafkatransport.Config, want string) {
	t.Helper()
	c, err := dialSarama(cfg)
	if err == nil {
		c.Close()
		t.Fatal("connected")
	}
	t.Logf("refused: %v", err)
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not mention %q", err, want)
	}
}

// TestEmbeddedTLS: with a tls block, the embedded broker speaks TLS only:
// a client trusting its CA connects, a plaintext client and a client that
// does not trust the CA do not.
func TestEmbeddedTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newTestPKI(t, dir, "servers")
	cert, key := ca.issue("broker", certOpts{ips: loopback})
	addr := freeAddr(t)
	startTestBroker(t, embeddedSpec{addr: addr, tls: mustBrokerTLS(t, embeddedTLSConfig{CertFile: cert, KeyFile: key})}, nil)

	good := kafkatransport.Config{Brokers: []string{addr}, TLS: &kafkatransport.TLS{CAFile: ca.caFile}}
	topic := kafkatransport.TopicsFor("", "t").Commands
	if err := kafkatransport.EnsureTopics(ctxT(t), good, []string{topic}, 1, 1); err != nil {
		t.Fatal(err)
	}
	mustReach(t, good, topic)
	mustNotReach(t, kafkatransport.Config{Brokers: []string{addr}}, "") // plaintext: the handshake fails, whatever the error
	other := newTestPKI(t, dir, "other")
	mustNotReach(t, kafkatransport.Config{Brokers: []string{addr}, TLS: &kafkatransport.TLS{CAFile: other.caFile}}, "x509: certificate signed by unknown authority")
}

// TestEmbeddedMutualTLS: with client_ca_file, the broker also wants a
// client certificate signed by that CA.
func TestEmbeddedMutualTLS(t *testing.T) {
	dir := t.TempDir()
	servers := newTestPKI(t, dir, "servers")
	clients := newTestPKI(t, dir, "clients")
	cert, key := servers.issue("broker", certOpts{ips: loopback})
	addr := freeAddr(t)
	startTestBroker(t, embeddedSpec{addr: addr, tls: mustBrokerTLS(t, embeddedTLSConfig{CertFile: cert, KeyFile: key, ClientCAFile: clients.caFile})}, nil)

	ccert, ckey := clients.issue("conveyor", certOpts{client: true})
	good := kafkatransport.Config{Brokers: []string{addr}, TLS: &kafkatransport.TLS{CAFile: servers.caFile, CertFile: ccert, KeyFile: ckey}}
	topic := kafkatransport.TopicsFor("", "t").Events
	if err := kafkatransport.EnsureTopics(ctxT(t), good, []string{topic}, 1, 1); err != nil {
		t.Fatal(err)
	}
	mustReach(t, good, topic)
	mustNotReach(t, kafkatransport.Config{Brokers: []string{addr}, TLS: &kafkatransport.TLS{CAFile: servers.caFile}}, "certificate required")
	// A certificate from another CA is refused too.
	scert, skey := servers.issue("stranger", certOpts{client: true})
	mustNotReach(t, kafkatransport.Config{Brokers: []string{addr}, TLS: &kafkatransport.TLS{CAFile: servers.caFile, CertFile: scert, KeyFile: skey}}, "certificate")
}

// TestEmbeddedAdvertisesConfiguredName: the broker tells clients to
// connect to embedded_addr as written, so a certificate naming only the
// host name verifies on every connection, not just the first.
func TestEmbeddedAdvertisesConfiguredName(t *testing.T) {
	if ips, err := net.LookupIP("localhost"); err != nil || len(ips) == 0 {
		t.Skip("localhost does not resolve")
	}
	dir := t.TempDir()
	ca := newTestPKI(t, dir, "servers")
	cert, key := ca.issue("broker", certOpts{dns: []string{"localhost"}})
	_, port, _ := net.SplitHostPort(freeAddr(t))
	addr := net.JoinHostPort("localhost", port)
	startTestBroker(t, embeddedSpec{addr: addr, tls: mustBrokerTLS(t, embeddedTLSConfig{CertFile: cert, KeyFile: key})}, nil)
	cfg := kafkatransport.Config{Brokers: []string{addr}, TLS: &kafkatransport.TLS{CAFile: ca.caFile}}
	topic := kafkatransport.TopicsFor("", "t").Commands
	if err := kafkatransport.EnsureTopics(ctxT(t), cfg, []string{topic}, 1, 1); err != nil {
		t.Fatal(err)
	}
	mustReach(t, cfg, topic)
}
