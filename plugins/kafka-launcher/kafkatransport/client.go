package kafkatransport

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/hashicorp/go-hclog"
)

// Sizes of a Client's buffers: small and bounded per node, so the cost of
// a node does not grow with what it sends or receives.
const (
	// sendWindow bounds the records a Conn has handed to the shared
	// producer and that are not written yet: a node sending faster than
	// the broker takes its records waits on its own window, never on the
	// others' (the producer's input is shared).
	sendWindow = 64
	// channelBuffer is sarama's per-partition channel capacity (messages
	// fetched and not yet taken by the Conn's pump; records queued in the
	// producer per topic and partition).
	channelBuffer = 16
	// recvHighWater is how many bytes of fetched records a Conn holds for
	// Recv before its partition is paused (left out of the next fetches);
	// recvLowWater is where it resumes. A node whose reader is slow thus
	// never holds up the fetch loop every node shares.
	recvHighWater = 1 << 20
	recvLowWater  = recvHighWater / 2
	// consumerOpenRequests is how many requests the consumer's client has
	// in flight per broker connection.
	consumerOpenRequests = 16
	// fetchMaxBytes bounds one fetch response over all partitions.
	fetchMaxBytes = 16 << 20
)

// Client is a process's link to a Kafka cluster, shared by the
// connections (Conn) of every node it serves: one client for producing,
// committing offsets and metadata, and one for consuming, so a fetch
// long-polling on a broker never holds up a produce on the other (sarama
// keeps one connection per broker and client). Whatever the number of
// nodes, a Client holds two TCP connections per broker it talks to, one
// producer and one fetch loop per broker that fetches every node's
// partition in the same request.
//
// A Conn opened by a Client uses the client's metadata for its own topics
// only (Metadata.Full is off): opening a node's connection never reads
// every topic of the cluster.
type Client struct {
	cfg Config
	log hclog.Logger

	client   sarama.Client // producer, offsets, metadata
	cclient  sarama.Client // consumer
	producer sarama.AsyncProducer
	consumer sarama.Consumer

	// dirty holds the connections with a mark to commit; the committer
	// commits them all each time it wakes, one request per node.
	mu       sync.Mutex
	dirty    map[*Conn]struct{}
	commitCh chan struct{}

	closing   chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// NewClient connects to the cluster cfg describes. It gives up when ctx
// ends (the connection attempt then finishes in the background and is
// closed).
func NewClient(ctx context.Context, cfg Config, logger hclog.Logger) (*Client, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	sc, err := cfg.Sarama()
	if err != nil {
		return nil, err
	}
	// Successes come back so that each record frees its node's send window.
	sc.Producer.Return.Successes = true
	sc.ChannelBufferSize = channelBuffer
	sc.Consumer.Fetch.MaxBytes = fetchMaxBytes
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cl := &Client{
		cfg:      cfg,
		log:      logger.Named("kafka-client"),
		dirty:    map[*Conn]struct{}{},
		commitCh: make(chan struct{}, 1),
		closing:  make(chan struct{}),
	}
	// sarama's constructors block on metadata requests with their own
	// retries; run them aside so ctx can abandon them.
	done := make(chan error, 1)
	go func() { done <- explainAuth(cfg, sc, cl.connect(sc)) }()
	select {
	case err := <-done:
		if err != nil {
			cl.release()
			return nil, err
		}
	case <-ctx.Done():
		go func() {
			<-done
			cl.release()
		}()
		return nil, ctx.Err()
	}
	cl.wg.Add(3)
	go cl.committer()
	go cl.successes()
	go cl.errors()
	return cl, nil
}

// connect creates the two clients, the producer and the consumer.
func (cl *Client) connect(sc *sarama.Config) error {
	var err error
	brokers := strings.Join(cl.cfg.Brokers, ",")
	if cl.client, err = sarama.NewClient(cl.cfg.Brokers, sc); err != nil {
		return fmt.Errorf("connect to kafka %s: %w", brokers, err)
	}
	// The consumer's client pipelines requests: what opening a node's
	// partition asks (its leader, its first and last offsets) then waits
	// for the fetch long-polling on the same connection once per batch of
	// launches, not once per request. (The producer's client keeps one
	// request in flight: its idempotent producer requires it.)
	csc := *sc
	csc.Net.MaxOpenRequests = consumerOpenRequests
	csc.Producer.Idempotent = false
	if cl.cclient, err = sarama.NewClient(cl.cfg.Brokers, &csc); err != nil {
		return fmt.Errorf("connect to kafka %s: %w", brokers, err)
	}
	if cl.producer, err = sarama.NewAsyncProducerFromClient(cl.client); err != nil {
		return fmt.Errorf("kafka producer: %w", err)
	}
	if cl.consumer, err = sarama.NewConsumerFromClient(cl.cclient); err != nil {
		return fmt.Errorf("kafka consumer: %w", err)
	}
	return nil
}

// release closes whatever connect created, in reverse order.
func (cl *Client) release() {
	if cl.consumer != nil {
		_ = cl.consumer.Close()
	}
	if cl.producer != nil {
		cl.producer.AsyncClose()
		go func() {
			for range cl.producer.Successes() {
			}
		}()
		for range cl.producer.Errors() {
		}
	}
	for _, c := range []sarama.Client{cl.cclient, cl.client} {
		if c != nil && !c.Closed() {
			_ = c.Close()
		}
	}
}

// successes frees a record's place in its node's send window once the
// broker has it.
func (cl *Client) successes() {
	defer cl.wg.Done()
	for m := range cl.producer.Successes() {
		if c, ok := m.Metadata.(*Conn); ok {
			c.sent()
		}
	}
}

// errors fails the node whose record the broker refused for good (after
// the producer's retries), and frees the record's place in its window.
func (cl *Client) errors() {
	defer cl.wg.Done()
	for perr := range cl.producer.Errors() {
		if c, ok := perr.Msg.Metadata.(*Conn); ok {
			c.fail(perr.Err)
			c.sent()
		} else {
			cl.log.Warn("kafka producer failed", "topic", perr.Msg.Topic, "error", perr.Err)
		}
	}
}

// markDirty asks the committer to commit c's marked offset.
func (cl *Client) markDirty(c *Conn) {
	cl.mu.Lock()
	cl.dirty[c] = struct{}{}
	cl.mu.Unlock()
	select {
	case cl.commitCh <- struct{}{}:
	default: // a round is pending; it takes c too
	}
}

// forget drops c from the committer's work (c commits on its own when it
// closes).
func (cl *Client) forget(c *Conn) {
	cl.mu.Lock()
	delete(cl.dirty, c)
	cl.mu.Unlock()
}

// committer commits the marked offsets of every node with something new,
// in the background, so Recv never waits for the broker. One goroutine
// serves every node: marks that arrive while a round runs go in the next.
func (cl *Client) committer() {
	defer cl.wg.Done()
	for {
		select {
		case <-cl.commitCh:
		case <-cl.closing:
			return
		}
		cl.mu.Lock()
		batch := make([]*Conn, 0, len(cl.dirty))
		for c := range cl.dirty {
			batch = append(batch, c)
		}
		clear(cl.dirty)
		cl.mu.Unlock()
		for _, c := range batch {
			c.commit()
		}
	}
}

// topicReady checks that topic exists with at least one partition, asking
// the cluster about that topic alone when the client does not know it.
func (cl *Client) topicReady(topic string) error {
	ps, err := cl.client.Partitions(topic)
	if err != nil {
		return fmt.Errorf("topic %s: %w", topic, err)
	}
	if len(ps) == 0 {
		return fmt.Errorf("topic %s has no partitions", topic)
	}
	return nil
}

// OpenMaster opens the master's side of node on the shared client: it
// produces to the node's commands topic and consumes its events topic in
// the group "PREFIXmaster.NODE". The topics must exist (EnsureTopics).
func (cl *Client) OpenMaster(ctx context.Context, node string) (*Conn, error) {
	t := TopicsFor(cl.cfg.prefix(), node)
	return cl.open(ctx, node, side{role: "master", produce: t.Commands, consume: t.Events, group: GroupsFor(cl.cfg.prefix(), node).Master})
}

// DialAgent opens the agent's side of node on the shared client: it
// produces to the node's events topic and consumes its commands topic in
// the group "PREFIXagent.NODE". The topics must exist: the master creates
// them.
func (cl *Client) DialAgent(ctx context.Context, node string) (*Conn, error) {
	t := TopicsFor(cl.cfg.prefix(), node)
	return cl.open(ctx, node, side{role: "agent", produce: t.Events, consume: t.Commands, group: GroupsFor(cl.cfg.prefix(), node).Agent})
}

// Lag reports how many records of topic group has not committed yet: the
// topic's end offset minus the group's committed offset (before the
// group's first commit, minus the topic's start). It asks the broker.
func (cl *Client) Lag(topic, group string) (int64, error) {
	end, err := cl.client.GetOffset(topic, Partition, sarama.OffsetNewest)
	if err != nil {
		return 0, fmt.Errorf("end offset of %s: %w", topic, err)
	}
	o := &offsetStore{client: cl.client, group: group, topic: topic, partition: Partition, retries: 1, backoff: 100 * time.Millisecond}
	committed, err := o.fetch()
	if err != nil {
		return 0, err
	}
	if committed < 0 {
		if committed, err = cl.client.GetOffset(topic, Partition, sarama.OffsetOldest); err != nil {
			return 0, fmt.Errorf("start offset of %s: %w", topic, err)
		}
	}
	return max(end-committed, 0), nil
}

// Close closes the client. Close the connections first: a connection
// still open fails its next Send and Recv. Close is idempotent.
func (cl *Client) Close() error {
	var err error
	cl.closeOnce.Do(func() {
		close(cl.closing)
		if cerr := cl.consumer.Close(); cerr != nil {
			err = fmt.Errorf("close kafka consumer: %w", cerr)
		}
		cl.producer.AsyncClose()
		cl.wg.Wait()
		for _, c := range []sarama.Client{cl.cclient, cl.client} {
			if !c.Closed() {
				err = errors.Join(err, c.Close())
			}
		}
	})
	return err
}
