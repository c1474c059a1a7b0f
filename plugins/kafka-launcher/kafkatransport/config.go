// Package kafkatransport carries Conveyor wire frames between the master
// and an agent over two Kafka topics per node: the master produces to the
// node's commands topic and consumes its events topic; the agent does the
// opposite. It is used by the Kafka launcher plugin on the master side and
// by conveyor-agent on the agent side.
//
// Frames are opaque to this package. Each frame travels as one or more
// Kafka records (see ChunkSize); records are produced by an idempotent,
// ordered producer and consumed from partition 0 with offsets committed in
// a consumer group only once the frame was handled, so a restarted side
// resumes where it stopped. Frames left over from an earlier session are
// filtered by the session layer above, by session id.
package kafkatransport

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/rcrowley/go-metrics"
	"github.com/xdg-go/scram"
)

// sarama records go-metrics histograms per client and per broker
// connection, each a reservoir of 1028 samples that nothing here reads:
// they were three quarters of an idle node connection's heap (two clients
// per side), which a server with a thousand nodes pays twice over.
func init() { metrics.UseNilMetrics = true }

// DefaultTopicPrefix is the topic prefix used when Config.TopicPrefix is empty.
const DefaultTopicPrefix = "conveyor."

// DefaultClientID is the Kafka client id used when Config.ClientID is empty.
const DefaultClientID = "conveyor"

// SASL mechanisms understood by Config.Sarama.
const (
	MechanismPlain       = "PLAIN"
	MechanismSCRAMSHA256 = "SCRAM-SHA-256"
	MechanismSCRAMSHA512 = "SCRAM-SHA-512"
)

// Mechanisms lists the supported SASL mechanisms.
var Mechanisms = []string{MechanismPlain, MechanismSCRAMSHA256, MechanismSCRAMSHA512}

// TLS configures TLS towards the brokers. Empty file names mean: system
// roots (CAFile) and no client certificate (CertFile and KeyFile, which go
// together).
type TLS struct {
	CAFile, CertFile, KeyFile string
	InsecureSkipVerify        bool
}

// SASL configures SASL authentication towards the brokers.
type SASL struct {
	// Mechanism is one of Mechanisms.
	Mechanism string
	Username  string
	Password  string
}

// Config says how to reach the Kafka cluster.
type Config struct {
	// Brokers lists the bootstrap brokers, "host:port".
	Brokers []string
	// TopicPrefix prefixes every topic and consumer group name; default
	// DefaultTopicPrefix.
	TopicPrefix string
	// TLS enables TLS; nil means plaintext.
	TLS *TLS
	// SASL enables SASL authentication; nil means none.
	SASL *SASL
	// ClientID is the Kafka client id; default DefaultClientID.
	ClientID string
}

// prefix returns the topic prefix, defaulted.
func (c Config) prefix() string {
	if c.TopicPrefix == "" {
		return DefaultTopicPrefix
	}
	return c.TopicPrefix
}

// Sarama returns a validated sarama configuration for the cluster: an
// idempotent producer that waits for all in-sync replicas, keeps at most one
// request in flight and sends every record at once (no linger); a consumer
// that starts from the oldest offset when its group has no committed offset
// and never commits on its own.
func (c Config) Sarama() (*sarama.Config, error) {
	if len(c.Brokers) == 0 {
		return nil, errors.New("kafka: no brokers configured")
	}
	for _, b := range c.Brokers {
		if strings.TrimSpace(b) == "" || !strings.Contains(b, ":") {
			return nil, fmt.Errorf("kafka: broker address %q is not host:port", b)
		}
	}
	if err := validPrefix(c.prefix()); err != nil {
		return nil, fmt.Errorf("kafka: topic prefix %q: %w", c.TopicPrefix, err)
	}

	sc := sarama.NewConfig()
	sc.Version = sarama.V2_8_0_0
	sc.ClientID = c.ClientID
	if sc.ClientID == "" {
		sc.ClientID = DefaultClientID
	}
	// Topics are created explicitly (EnsureTopics), never by a metadata
	// request with the broker's defaults.
	sc.Metadata.AllowAutoTopicCreation = false
	// Only the topics a client uses: full metadata (sarama's default) makes
	// every client of every node fetch all the nodes' topics at start and
	// at each refresh, quadratic in the number of nodes.
	sc.Metadata.Full = false
	sc.Metadata.Retry.Max = 5
	sc.Metadata.Retry.Backoff = 200 * time.Millisecond

	sc.Producer.Idempotent = true
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Return.Successes = true
	sc.Producer.Return.Errors = true
	sc.Producer.Partitioner = sarama.NewManualPartitioner
	sc.Producer.Retry.Max = 10
	sc.Producer.Retry.Backoff = 100 * time.Millisecond
	sc.Producer.Compression = sarama.CompressionNone
	sc.Producer.Flush.Frequency = 0
	sc.Producer.Flush.Messages = 0
	sc.Producer.Flush.Bytes = 0
	sc.Producer.MaxMessageBytes = maxRecordBytes
	sc.Net.MaxOpenRequests = 1

	sc.Consumer.Offsets.Initial = sarama.OffsetOldest
	sc.Consumer.Offsets.AutoCommit.Enable = false
	sc.Consumer.Return.Errors = true
	sc.Consumer.Fetch.Default = 2 * maxRecordBytes
	sc.Consumer.MaxWaitTime = 250 * time.Millisecond

	if c.TLS != nil {
		tc, err := c.TLS.config()
		if err != nil {
			return nil, err
		}
		sc.Net.TLS.Enable = true
		sc.Net.TLS.Config = tc
	}
	if c.SASL != nil {
		if err := c.SASL.apply(sc); err != nil {
			return nil, err
		}
	}
	if err := sc.Validate(); err != nil {
		return nil, fmt.Errorf("kafka: invalid client configuration: %w", err)
	}
	return sc, nil
}

// config builds the crypto/tls configuration, reading the files.
func (t *TLS) config() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: t.InsecureSkipVerify} //nolint:gosec // opt-in by the user
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("kafka tls: read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("kafka tls: CA file %s holds no PEM certificate", t.CAFile)
		}
		tc.RootCAs = pool
	}
	switch {
	case t.CertFile != "" && t.KeyFile != "":
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("kafka tls: load client certificate %s and key %s: %w", t.CertFile, t.KeyFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	case t.CertFile != "":
		return nil, errors.New("kafka tls: cert_file is set but key_file is not")
	case t.KeyFile != "":
		return nil, errors.New("kafka tls: key_file is set but cert_file is not")
	}
	return tc, nil
}

// apply configures SASL on sc.
func (s *SASL) apply(sc *sarama.Config) error {
	if s.Username == "" {
		return errors.New("kafka sasl: username is empty")
	}
	sc.Net.SASL.Enable = true
	sc.Net.SASL.Handshake = true
	sc.Net.SASL.User = s.Username
	sc.Net.SASL.Password = s.Password
	switch strings.ToUpper(s.Mechanism) {
	case MechanismPlain:
		sc.Net.SASL.Mechanism = sarama.SASLTypePlaintext
	case MechanismSCRAMSHA256:
		sc.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA256
		sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: scram.HashGeneratorFcn(sha256.New)} }
	case MechanismSCRAMSHA512:
		sc.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA512
		sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: scram.HashGeneratorFcn(sha512.New)} }
	default:
		return fmt.Errorf("kafka sasl: unknown mechanism %q (want one of %s)", s.Mechanism, strings.Join(Mechanisms, ", "))
	}
	return nil
}

// scramClient adapts xdg-go/scram to sarama.SCRAMClient.
type scramClient struct {
	hash scram.HashGeneratorFcn
	conv *scram.ClientConversation
}

// Begin implements sarama.SCRAMClient.
func (c *scramClient) Begin(user, password, authzID string) error {
	cl, err := c.hash.NewClient(user, password, authzID)
	if err != nil {
		return fmt.Errorf("scram client: %w", err)
	}
	c.conv = cl.NewConversation()
	return nil
}

// Step implements sarama.SCRAMClient.
func (c *scramClient) Step(challenge string) (string, error) {
	return c.conv.Step(challenge)
}

// Done implements sarama.SCRAMClient.
func (c *scramClient) Done() bool {
	return c.conv.Done()
}
