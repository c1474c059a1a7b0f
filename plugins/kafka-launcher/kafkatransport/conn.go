package kafkatransport

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// Partition is the one partition of each topic that carries frames. Frames
// must stay in order, and Kafka orders records only within a partition, so
// a node's topics are single-partition logically: a topic created with
// more partitions (EnsureTopics' partitions) only ever uses partition 0.
const Partition int32 = 0

// ErrClosed is returned by Send after Close, and wrapped (together with
// io.EOF) by Recv after Close.
var ErrClosed = errors.New("kafka transport: connection closed")

// producerQueue bounds the records handed to the producer and not yet
// written: with output frames of 31 KiB about 2 MiB, enough to fill a
// produce request while another is in flight.
const producerQueue = 64

// MaxFrameSize is the largest frame Send accepts and Recv reassembles.
const MaxFrameSize = wire.MaxFrameSize

// Conn is one side's connection to a node: it produces frames to one of
// the node's topics and consumes the other. Send and Recv may be called
// concurrently with each other, each from one goroutine at a time; Close
// may be called from any goroutine, any number of times.
type Conn struct {
	log     hclog.Logger
	desc    string
	opened  time.Time
	produce string // topic written
	chunk   int    // most frame bytes per record written (ChunkSize, or less for the topic)
	consume string // topic read
	group   string

	// Two clients, so a consumer's long-polling fetch never holds up a
	// produce or an offset commit on the broker connection (sarama keeps
	// one connection per broker and client, MaxOpenRequests is 1).
	client   sarama.Client // producer and offsets
	cclient  sarama.Client // consumer
	producer sarama.AsyncProducer
	consumer sarama.Consumer
	pc       sarama.PartitionConsumer
	offsets  *offsetStore

	idBase uint64
	ids    uint64 // frames sent; guarded by sendMu (write half)

	// sendMu is held by Send while producing and by Close while it closes
	// the producer, so a Send never races the producer's shutdown.
	sendMu  sync.Mutex
	closing chan struct{}

	// failed is closed when the broker refused a record for good (after
	// the producer's retries); failure says why. The connection is then
	// broken: records after the refused one may have been written, so the
	// peer would see a gap. Send and Recv fail, and the session resumes on
	// a new connection, which resends what the peer lacks.
	failed   chan struct{}
	failOnce sync.Once
	failure  error
	produced chan struct{} // closed once the producer's errors are drained

	// markMu guards handled, the offset after the last frame Recv
	// returned (-1: none), which becomes marked when the caller comes back
	// for the next frame, or on Close; and marked and committed, the
	// offsets marked for and last committed to the group (-1: none).
	markMu    sync.Mutex
	handled   int64
	marked    int64
	committed int64

	re reassembler // used by Recv only

	commitCh      chan struct{}
	stopCommit    chan struct{}
	committerDone chan struct{}
	wg            sync.WaitGroup // error loggers

	closeOnce sync.Once
	closeErr  error
}

// side describes one end of a node's pair of topics.
type side struct {
	role                    string
	produce, consume, group string
}

// OpenMaster opens the master's side of node: it produces to the node's
// commands topic and consumes its events topic in the group
// "PREFIXmaster.NODE". The topics must exist (EnsureTopics).
func OpenMaster(ctx context.Context, cfg Config, node string, logger hclog.Logger) (*Conn, error) {
	t := TopicsFor(cfg.prefix(), node)
	return open(ctx, cfg, node, side{role: "master", produce: t.Commands, consume: t.Events, group: GroupsFor(cfg.prefix(), node).Master}, logger)
}

// DialAgent opens the agent's side of node: it produces to the node's
// events topic and consumes its commands topic in the group
// "PREFIXagent.NODE". The topics must exist: the master creates them.
func DialAgent(ctx context.Context, cfg Config, node string, logger hclog.Logger) (*Conn, error) {
	t := TopicsFor(cfg.prefix(), node)
	return open(ctx, cfg, node, side{role: "agent", produce: t.Events, consume: t.Commands, group: GroupsFor(cfg.prefix(), node).Agent}, logger)
}

func open(ctx context.Context, cfg Config, node string, s side, logger hclog.Logger) (*Conn, error) {
	if node == "" {
		return nil, errors.New("kafka transport: empty node name")
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	sc, err := cfg.Sarama()
	if err != nil {
		return nil, err
	}
	// Send hands records over without waiting for each (the producer
	// reports only failures), and at most producerQueue of them wait.
	sc.Producer.Return.Successes = false
	sc.ChannelBufferSize = producerQueue
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c := &Conn{
		log:           logger.Named("kafka-transport").With("node", node, "role", s.role),
		desc:          fmt.Sprintf("kafka %s (%s -> %s)", strings.Join(cfg.Brokers, ","), s.produce, s.consume),
		opened:        time.Now(),
		produce:       s.produce,
		consume:       s.consume,
		group:         s.group,
		closing:       make(chan struct{}),
		failed:        make(chan struct{}),
		produced:      make(chan struct{}),
		handled:       -1,
		commitCh:      make(chan struct{}, 1),
		stopCommit:    make(chan struct{}),
		committerDone: make(chan struct{}),
	}
	c.re = reassembler{max: MaxFrameSize, log: c.log}
	var idb [8]byte
	_, _ = rand.Read(idb[:])
	c.idBase = binary.BigEndian.Uint64(idb[:])

	// sarama's constructors block on metadata requests with their own
	// retries; run them aside so ctx can abandon them.
	done := make(chan error, 1)
	go func() { done <- explainAuth(cfg, sc, c.connect(cfg, sc)) }()
	select {
	case err := <-done:
		if err != nil {
			c.release()
			return nil, err
		}
	case <-ctx.Done():
		go func() {
			<-done
			c.release()
		}()
		return nil, ctx.Err()
	}

	c.wg.Add(1)
	go c.committer()
	go c.producerErrors()
	go c.logErrors("consumer", c.pc.Errors())
	c.log.Debug("kafka connection open", "produce", s.produce, "consume", s.consume, "group", s.group)
	return c, nil
}

// connect creates the client, producer, offset manager and consumer.
func (c *Conn) connect(cfg Config, sc *sarama.Config) error {
	var err error
	if c.client, err = sarama.NewClient(cfg.Brokers, sc); err != nil {
		return fmt.Errorf("connect to kafka %s: %w", strings.Join(cfg.Brokers, ","), err)
	}
	if c.cclient, err = sarama.NewClient(cfg.Brokers, sc); err != nil {
		return fmt.Errorf("connect to kafka %s: %w", strings.Join(cfg.Brokers, ","), err)
	}
	for _, t := range []string{c.produce, c.consume} {
		ps, err := c.client.Partitions(t)
		if err != nil {
			return fmt.Errorf("topic %s: %w", t, err)
		}
		if len(ps) == 0 {
			return fmt.Errorf("topic %s has no partitions", t)
		}
	}
	c.chunk = ChunkSize
	switch limit, err := recordLimit(c.client, c.produce); {
	case err != nil:
		c.log.Debug("topic's record limit unknown: chunks of the default size", "topic", c.produce, "error", err)
	case limit-recordSlack-chunkHeaderSize < minChunkSize:
		return fmt.Errorf("topic %s takes records of %d bytes at most (max.message.bytes): too small to carry frames, raise it to at least %d", c.produce, limit, minChunkSize+recordSlack+chunkHeaderSize)
	case limit-recordSlack-chunkHeaderSize < ChunkSize:
		c.chunk = limit - recordSlack - chunkHeaderSize
		// A produce request's batch must fit the topic's limit too (the
		// batch header is 61 bytes).
		c.client.Config().Producer.MaxMessageBytes = limit - 512
		c.log.Debug("topic takes smaller records: frames go in smaller chunks", "topic", c.produce, "max.message.bytes", limit, "chunk", c.chunk)
	}
	if c.producer, err = sarama.NewAsyncProducerFromClient(c.client); err != nil {
		return fmt.Errorf("kafka producer: %w", err)
	}
	c.offsets = &offsetStore{client: c.client, group: c.group, topic: c.consume, partition: Partition, retries: 5, backoff: 200 * time.Millisecond}
	start, err := c.offsets.fetch()
	if err != nil {
		return err
	}
	if start < 0 {
		start = sarama.OffsetOldest
	}
	if c.consumer, err = sarama.NewConsumerFromClient(c.cclient); err != nil {
		return fmt.Errorf("kafka consumer: %w", err)
	}
	c.pc, err = c.consumer.ConsumePartition(c.consume, Partition, start)
	if errors.Is(err, sarama.ErrOffsetOutOfRange) && start >= 0 {
		// The committed offset is gone (retention, or the topic was
		// recreated): start over from what is there.
		c.log.Warn("committed offset out of range, starting from the oldest", "offset", start)
		c.pc, err = c.consumer.ConsumePartition(c.consume, Partition, sarama.OffsetOldest)
	}
	if err != nil {
		return fmt.Errorf("consume %s: %w", c.consume, err)
	}
	c.log.Debug("consuming", "topic", c.consume, "from", start)
	return nil
}

// release closes whatever connect created, in reverse order.
func (c *Conn) release() {
	if c.pc != nil {
		_ = c.pc.Close()
	}
	if c.consumer != nil {
		_ = c.consumer.Close()
	}
	if c.producer != nil {
		c.producer.AsyncClose()
		for range c.producer.Errors() {
		}
	}
	for _, cl := range []sarama.Client{c.cclient, c.client} {
		if cl != nil && !cl.Closed() {
			_ = cl.Close()
		}
	}
}

// producerErrors fails the connection at the first record the broker
// refused for good, and drains the producer's errors until it closes.
func (c *Conn) producerErrors() {
	defer close(c.produced)
	for perr := range c.producer.Errors() {
		c.failOnce.Do(func() {
			c.failure = fmt.Errorf("kafka send to %s: %w", c.produce, perr.Err)
			c.log.Warn("kafka producer failed: the connection is broken", "topic", c.produce, "error", perr.Err)
			close(c.failed)
		})
	}
}

// broken returns why the connection failed, or nil.
func (c *Conn) broken() error {
	select {
	case <-c.failed:
		return c.failure
	default:
		return nil
	}
}

// logErrors logs the errors of a sarama component until it closes the channel.
func (c *Conn) logErrors(what string, errs <-chan *sarama.ConsumerError) {
	defer c.wg.Done()
	for err := range errs {
		c.log.Warn("kafka "+what+" error", "topic", err.Topic, "partition", err.Partition, "error", err.Err)
	}
}

// committer commits marked offsets in the background, so Recv does not
// wait for the broker.
func (c *Conn) committer() {
	defer close(c.committerDone)
	for {
		select {
		case <-c.commitCh:
			c.commit()
		case <-c.stopCommit:
			return
		}
	}
}

// commit commits the marked offset if it is newer than the committed one.
// A failed commit is logged; the next one covers it.
func (c *Conn) commit() {
	c.markMu.Lock()
	marked := c.marked
	c.markMu.Unlock()
	if marked < 0 || marked == c.committed {
		return
	}
	if err := c.offsets.commit(marked); err != nil {
		c.log.Warn("offset commit failed", "offset", marked, "error", err)
		return
	}
	c.committed = marked
}

// markHandled marks the last frame returned by Recv as handled. It reports
// whether there was one.
func (c *Conn) markHandled() bool {
	c.markMu.Lock()
	defer c.markMu.Unlock()
	if c.handled < 0 {
		return false
	}
	c.marked = c.handled
	c.handled = -1
	return true
}

// Description says where the connection goes.
func (c *Conn) Description() string { return c.desc }

// Opened is when the connection was opened.
func (c *Conn) Opened() time.Time { return c.opened }

// Lag reports how many records of topic group has not committed yet: the
// topic's end offset minus the group's committed offset (before the
// group's first commit, minus the topic's start). It asks the broker.
func (c *Conn) Lag(topic, group string) (int64, error) {
	end, err := c.client.GetOffset(topic, Partition, sarama.OffsetNewest)
	if err != nil {
		return 0, fmt.Errorf("end offset of %s: %w", topic, err)
	}
	o := &offsetStore{client: c.client, group: group, topic: topic, partition: Partition, retries: 1, backoff: 100 * time.Millisecond}
	committed, err := o.fetch()
	if err != nil {
		return 0, err
	}
	if committed < 0 {
		if committed, err = c.client.GetOffset(topic, Partition, sarama.OffsetOldest); err != nil {
			return 0, fmt.Errorf("start offset of %s: %w", topic, err)
		}
	}
	return max(end-committed, 0), nil
}

// Send hands one frame's records to the producer and returns; it blocks
// only while the producer's queue is full. The producer writes them in
// order (idempotent, one request in flight, acks from all in-sync
// replicas): a lone frame goes at once, frames sent while a request is in
// flight go together in the next one. A record the broker refuses for
// good breaks the connection: this Send or a later one, and Recv, return
// the error (see failed). Close waits until every record handed over was
// written or refused.
func (c *Conn) Send(frame []byte) error {
	if len(frame) > MaxFrameSize {
		return fmt.Errorf("kafka send: frame of %d bytes exceeds the limit of %d", len(frame), MaxFrameSize)
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	select {
	case <-c.closing:
		return ErrClosed
	default:
	}
	if err := c.broken(); err != nil {
		return err
	}
	c.ids++
	for _, v := range split(frame, c.idBase+c.ids, c.chunk) {
		msg := &sarama.ProducerMessage{Topic: c.produce, Partition: Partition, Value: sarama.ByteEncoder(v)}
		select {
		case c.producer.Input() <- msg:
		case <-c.failed:
			return c.failure
		}
	}
	return nil
}

// Recv returns the next frame. Calling it again marks the previous frame
// as handled: its offset is committed (in the background, and at the
// latest on Close), so a connection reopened later resumes after it. Recv
// blocks until a frame arrives or the connection is closed; it then
// returns an error matching both io.EOF and ErrClosed.
func (c *Conn) Recv() ([]byte, error) {
	if c.markHandled() {
		select {
		case c.commitCh <- struct{}{}:
		default: // a commit is already pending; it takes this mark too
		}
	}
	for {
		select {
		case <-c.closing:
			return nil, fmt.Errorf("%w: %w", ErrClosed, io.EOF)
		default:
		}
		select {
		case <-c.closing:
			return nil, fmt.Errorf("%w: %w", ErrClosed, io.EOF)
		case <-c.failed:
			return nil, c.failure
		case m, ok := <-c.pc.Messages():
			if !ok {
				return nil, fmt.Errorf("%w: %w", ErrClosed, io.EOF)
			}
			if frame, done := c.re.add(m.Value, m.Offset); done {
				c.markMu.Lock()
				c.handled = m.Offset + 1
				c.markMu.Unlock()
				return frame, nil
			}
		}
	}
}

// Malformed returns how many records or partial frames Recv has dropped.
// Call it from the goroutine that calls Recv.
func (c *Conn) Malformed() uint64 { return c.re.malformed }

// Close commits the offset of the last frame Recv returned, ends the
// connection and releases its goroutines. Recv then returns io.EOF and
// Send ErrClosed. Close is idempotent.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closing)
		// Wait for a Send in flight, then stop producing: the producer
		// writes what it was handed first.
		c.sendMu.Lock()
		c.producer.AsyncClose()
		<-c.produced
		perr := c.broken()
		c.sendMu.Unlock()

		close(c.stopCommit)
		<-c.committerDone
		c.markHandled()
		c.commit()
		cerr := c.pc.Close()
		_ = c.consumer.Close()
		for _, cl := range []sarama.Client{c.cclient, c.client} {
			if !cl.Closed() {
				_ = cl.Close()
			}
		}
		c.wg.Wait()
		if perr != nil {
			c.closeErr = fmt.Errorf("close kafka producer: %w", perr)
		} else if cerr != nil {
			c.log.Debug("consumer closed with errors", "error", cerr)
		}
		c.log.Debug("kafka connection closed")
	})
	return c.closeErr
}
