package kafkatransport

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/IBM/sarama"
)

// Topics names a node's two topics.
type Topics struct {
	// Commands carries frames from the master to the agent.
	Commands string
	// Events carries frames from the agent to the master.
	Events string
}

// Groups names a node's two consumer groups, which hold the committed
// offsets of each side.
type Groups struct {
	// Master consumes the events topic.
	Master string
	// Agent consumes the commands topic.
	Agent string
}

// maxTopicLen is Kafka's limit on topic names.
const maxTopicLen = 249

// maxNodePart bounds the escaped node name so prefix + node + ".commands"
// stays a legal topic for any reasonable prefix.
const maxNodePart = 160

// TopicsFor returns the topics of node under prefix (DefaultTopicPrefix if
// empty): "PREFIXNODE.commands" and "PREFIXNODE.events". The node name is
// escaped to Kafka's topic alphabet (see EscapeNode).
func TopicsFor(prefix, node string) Topics {
	if prefix == "" {
		prefix = DefaultTopicPrefix
	}
	n := EscapeNode(node)
	return Topics{Commands: prefix + n + ".commands", Events: prefix + n + ".events"}
}

// GroupsFor returns the consumer groups of node under prefix:
// "PREFIXmaster.NODE" and "PREFIXagent.NODE".
func GroupsFor(prefix, node string) Groups {
	if prefix == "" {
		prefix = DefaultTopicPrefix
	}
	n := EscapeNode(node)
	return Groups{Master: prefix + "master." + n, Agent: prefix + "agent." + n}
}

// EscapeNode maps a node name to Kafka's topic alphabet [a-zA-Z0-9._-]
// injectively: ASCII letters, digits, '-' and '.' stay, every other byte
// (including '_') becomes "_XX" in lower-case hex. An empty name becomes
// "_". A result longer than 160 characters is cut and suffixed with a
// hash of the full name.
func EscapeNode(node string) string {
	if node == "" {
		return "_"
	}
	var b strings.Builder
	for i := 0; i < len(node); i++ {
		c := node[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '.':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "_%02x", c)
		}
	}
	s := b.String()
	if s == "." || s == ".." {
		// Kafka refuses these as whole topic names; they are only ever a
		// part of one, but keep them unambiguous anyway.
		s = strings.ReplaceAll(s, ".", "_2e")
	}
	if len(s) > maxNodePart {
		sum := sha256.Sum256([]byte(node))
		s = s[:maxNodePart-17] + "-" + hex.EncodeToString(sum[:8])
	}
	return s
}

// validTopicChars reports whether s only uses Kafka's topic alphabet.
func validTopicChars(s string) error {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return fmt.Errorf("character %q is not allowed in a Kafka topic name (only a-z, A-Z, 0-9, '.', '_', '-')", c)
		}
	}
	return nil
}

// ValidTopicPrefix checks a topic prefix: Kafka's topic alphabet, and
// short enough that every topic built on it is a legal name.
func ValidTopicPrefix(prefix string) error {
	if err := validPrefix(prefix); err != nil {
		return fmt.Errorf("topic prefix %q: %w", prefix, err)
	}
	return nil
}

// maxPrefixLen bounds the topic prefix so every topic name stays legal.
const maxPrefixLen = maxTopicLen - maxNodePart - len(".commands")

// validPrefix checks a topic prefix.
func validPrefix(s string) error {
	if err := validTopicChars(s); err != nil {
		return err
	}
	if len(s) > maxPrefixLen {
		return fmt.Errorf("longer than %d characters", maxPrefixLen)
	}
	return nil
}

// WithAdmin runs fn with a cluster admin client connected as cfg says, giving up when ctx ends
// (the admin call then finishes in the background and its client is closed).
func WithAdmin(ctx context.Context, cfg Config, fn func(sarama.ClusterAdmin) error) error {
	sc, err := cfg.Sarama()
	if err != nil {
		return err
	}
	// The admin client finds the controller through a metadata request
	// naming no topic, which sarama only sends with full metadata.
	sc.Metadata.Full = true
	if err := ctx.Err(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		admin, err := sarama.NewClusterAdmin(cfg.Brokers, sc)
		if err != nil {
			done <- fmt.Errorf("connect to kafka %s: %w", strings.Join(cfg.Brokers, ","), explainAuth(cfg, sc, err))
			return
		}
		err = fn(admin)
		_ = admin.Close()
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// EnsureTopics creates the topics that do not exist yet, with the given
// partition count and replication factor. Topics that already exist are
// left as they are. It first asks one broker about these topics alone, so
// that ensuring a node's two existing topics (every launch does) costs one
// small metadata request, not an admin client reading every topic of the
// cluster.
func EnsureTopics(ctx context.Context, cfg Config, topics []string, partitions int32, replication int16) error {
	if partitions < 1 {
		return fmt.Errorf("ensure topics: partitions %d < 1", partitions)
	}
	if replication < 1 {
		return fmt.Errorf("ensure topics: replication factor %d < 1", replication)
	}
	sc, err := cfg.Sarama()
	if err != nil {
		return err
	}
	found := make(chan []string, 1)
	go func() {
		missing, err := missingTopics(cfg.Brokers, sc, topics)
		if err != nil {
			missing = topics // the admin client says what is wrong
		}
		found <- missing
	}()
	select {
	case topics = <-found:
	case <-ctx.Done():
		return ctx.Err()
	}
	if len(topics) == 0 {
		return nil
	}
	return WithAdmin(ctx, cfg, func(admin sarama.ClusterAdmin) error {
		for _, t := range topics {
			err := admin.CreateTopic(t, &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: replication}, false)
			if err != nil && !errors.Is(err, sarama.ErrTopicAlreadyExists) {
				return fmt.Errorf("create topic %s: %w", t, err)
			}
		}
		return nil
	})
}

// missingTopics asks the first broker that answers which of topics do not
// exist (or have no partition yet).
func missingTopics(brokers []string, sc *sarama.Config, topics []string) ([]string, error) {
	var lastErr error
	for _, addr := range brokers {
		b := sarama.NewBroker(addr)
		if err := b.Open(sc); err != nil {
			lastErr = err
			continue
		}
		missing, err := askMissing(b, sc.Version, topics)
		_ = b.Close()
		if err != nil {
			lastErr = err
			continue
		}
		return missing, nil
	}
	return nil, lastErr
}

// askMissing asks broker b which of topics do not exist (or have no
// partition yet): one metadata request naming these topics alone.
func askMissing(b *sarama.Broker, version sarama.KafkaVersion, topics []string) ([]string, error) {
	req := sarama.NewMetadataRequest(version, topics)
	req.AllowAutoTopicCreation = false
	resp, err := b.GetMetadata(req)
	if err != nil {
		return nil, err
	}
	exists := map[string]bool{}
	for _, t := range resp.Topics {
		if t.Err == sarama.ErrNoError && len(t.Partitions) > 0 {
			exists[t.Name] = true
		}
	}
	var missing []string
	for _, t := range topics {
		if !exists[t] {
			missing = append(missing, t)
		}
	}
	return missing, nil
}

// EnsureTopics creates the topics that do not exist yet, as the package's
// EnsureTopics does, but asks which exist over the client's own
// connection: ensuring a node's two existing topics (every launch does)
// opens no connection and reads no other topic.
func (cl *Client) EnsureTopics(ctx context.Context, topics []string, partitions int32, replication int16) error {
	found := make(chan []string, 1)
	go func() {
		var missing []string
		b := cl.client.LeastLoadedBroker()
		if b == nil {
			missing = topics
		} else if m, err := askMissing(b, cl.client.Config().Version, topics); err != nil {
			missing = topics // the package's EnsureTopics says what is wrong
		} else {
			missing = m
		}
		found <- missing
	}()
	select {
	case topics = <-found:
	case <-ctx.Done():
		return ctx.Err()
	}
	if len(topics) == 0 {
		return nil
	}
	return EnsureTopics(ctx, cl.cfg, topics, partitions, replication)
}

// DeleteTopics deletes the topics; topics that do not exist are no error.
func DeleteTopics(ctx context.Context, cfg Config, topics []string) error {
	return WithAdmin(ctx, cfg, func(admin sarama.ClusterAdmin) error {
		for _, t := range topics {
			err := admin.DeleteTopic(t)
			if err != nil && !errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
				return fmt.Errorf("delete topic %s: %w", t, err)
			}
		}
		return nil
	})
}

// DeleteGroups deletes the consumer groups (and so their committed
// offsets); groups that do not exist are no error.
func DeleteGroups(ctx context.Context, cfg Config, groups []string) error {
	return WithAdmin(ctx, cfg, func(admin sarama.ClusterAdmin) error {
		for _, g := range groups {
			err := admin.DeleteConsumerGroup(g)
			if err != nil && !errors.Is(err, sarama.ErrGroupIDNotFound) {
				return fmt.Errorf("delete consumer group %s: %w", g, err)
			}
		}
		return nil
	})
}

// TopicExists reports whether topic exists in the cluster.
func TopicExists(ctx context.Context, cfg Config, topic string) (bool, error) {
	var exists bool
	err := WithAdmin(ctx, cfg, func(admin sarama.ClusterAdmin) error {
		ts, err := admin.ListTopics()
		if err != nil {
			return fmt.Errorf("list topics: %w", err)
		}
		_, exists = ts[topic]
		return nil
	})
	return exists, err
}

// recordLimit asks the cluster for the largest record batch topic takes:
// its max.message.bytes (the broker's message.max.bytes unless the topic
// overrides it).
func recordLimit(client sarama.Client, topic string) (int, error) {
	b := client.LeastLoadedBroker()
	if b == nil {
		return 0, errors.New("no broker reachable")
	}
	resp, err := b.DescribeConfigs(&sarama.DescribeConfigsRequest{Version: 1, Resources: []*sarama.ConfigResource{
		{Type: sarama.TopicResource, Name: topic, ConfigNames: []string{"max.message.bytes"}},
	}})
	if err != nil {
		return 0, fmt.Errorf("describe configs of %s: %w", topic, err)
	}
	for _, r := range resp.Resources {
		if r.ErrorCode != 0 {
			return 0, fmt.Errorf("describe configs of %s: %w", topic, sarama.KError(r.ErrorCode))
		}
		for _, e := range r.Configs {
			if e.Name == "max.message.bytes" {
				n, err := strconv.Atoi(e.Value)
				if err != nil || n <= 0 {
					return 0, fmt.Errorf("max.message.bytes of %s: %q is no size", topic, e.Value)
				}
				return n, nil
			}
		}
	}
	return 0, fmt.Errorf("max.message.bytes of %s: not reported", topic)
}
