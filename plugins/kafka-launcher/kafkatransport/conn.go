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

// MaxFrameSize is the largest frame Send accepts and Recv reassembles.
const MaxFrameSize = wire.MaxFrameSize

// Conn is one side's connection to a node: it produces frames to one of
// the node's topics and consumes the other, through a Client shared with
// the process's other nodes. Send and Recv may be called concurrently with
// each other, each from one goroutine at a time; Close may be called from
// any goroutine, any number of times.
type Conn struct {
	cl      *Client
	owned   bool // the Client is the Conn's own (OpenMaster, DialAgent): Close closes it
	log     hclog.Logger
	desc    string
	opened  time.Time
	produce string // topic written
	chunk   int    // most frame bytes per record written (ChunkSize, or less for the topic)
	consume string // topic read
	group   string

	pc      sarama.PartitionConsumer
	offsets *offsetStore

	idBase uint64
	ids    uint64 // frames sent; guarded by sendMu (write half)

	// window holds a token per record handed to the shared producer and
	// not yet written or refused: Send waits when it is full, so a node
	// sending faster than the broker takes its records waits alone.
	window   chan struct{}
	inflight sync.WaitGroup

	// sendMu is held by Send while producing and by Close while it waits
	// for the records in flight, so a Send never races the shutdown.
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

	// The pump moves fetched records from the partition consumer to queue
	// at once, so the fetch loop every node shares never waits for this
	// node's reader; past recvHighWater bytes queued the partition is
	// paused (left out of the next fetches) until Recv has taken it below
	// recvLowWater.
	qmu      sync.Mutex
	queue    []*sarama.ConsumerMessage
	qhead    int
	qbytes   int
	paused   bool
	ended    bool          // the partition consumer stopped
	arrived  chan struct{} // signalled when the queue grows or ends
	pumpDone chan struct{}

	// markMu guards handled, the offset after the last frame Recv
	// returned (-1: none), which becomes marked when the caller comes back
	// for the next frame, or on Close; and marked and committed, the
	// offsets marked for and last committed to the group (-1: none).
	// commitMu serializes commits (the Client's committer, Close).
	markMu    sync.Mutex
	handled   int64
	marked    int64
	commitMu  sync.Mutex
	committed int64

	re reassembler // used by Recv only

	closeOnce sync.Once
	closeErr  error
}

// side describes one end of a node's pair of topics.
type side struct {
	role                    string
	produce, consume, group string
}

// OpenMaster opens the master's side of node on a client of its own,
// which Close closes: it produces to the node's commands topic and
// consumes its events topic in the group "PREFIXmaster.NODE". The topics
// must exist (EnsureTopics). A process serving many nodes opens them on
// one Client (Client.OpenMaster).
func OpenMaster(ctx context.Context, cfg Config, node string, logger hclog.Logger) (*Conn, error) {
	return openOwned(ctx, cfg, logger, func(cl *Client) (*Conn, error) { return cl.OpenMaster(ctx, node) })
}

// DialAgent opens the agent's side of node on a client of its own, which
// Close closes: it produces to the node's events topic and consumes its
// commands topic in the group "PREFIXagent.NODE". The topics must exist:
// the master creates them.
func DialAgent(ctx context.Context, cfg Config, node string, logger hclog.Logger) (*Conn, error) {
	return openOwned(ctx, cfg, logger, func(cl *Client) (*Conn, error) { return cl.DialAgent(ctx, node) })
}

// openOwned opens a Client and one Conn on it that owns it.
func openOwned(ctx context.Context, cfg Config, logger hclog.Logger, open func(*Client) (*Conn, error)) (*Conn, error) {
	cl, err := NewClient(ctx, cfg, logger)
	if err != nil {
		return nil, err
	}
	c, err := open(cl)
	if err != nil {
		_ = cl.Close()
		return nil, err
	}
	c.owned = true
	return c, nil
}

func (cl *Client) open(ctx context.Context, node string, s side) (*Conn, error) {
	if node == "" {
		return nil, errors.New("kafka transport: empty node name")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c := &Conn{
		cl:        cl,
		log:       cl.log.Named("kafka-transport").With("node", node, "role", s.role),
		desc:      fmt.Sprintf("kafka %s (%s -> %s)", strings.Join(cl.cfg.Brokers, ","), s.produce, s.consume),
		opened:    time.Now(),
		produce:   s.produce,
		consume:   s.consume,
		group:     s.group,
		window:    make(chan struct{}, sendWindow),
		closing:   make(chan struct{}),
		failed:    make(chan struct{}),
		arrived:   make(chan struct{}, 1),
		pumpDone:  make(chan struct{}),
		handled:   -1,
		marked:    -1,
		committed: -1,
	}
	c.re = reassembler{max: MaxFrameSize, log: c.log}
	var idb [8]byte
	_, _ = rand.Read(idb[:])
	c.idBase = binary.BigEndian.Uint64(idb[:])

	// sarama's calls block on requests with their own retries; run them
	// aside so ctx can abandon them.
	done := make(chan error, 1)
	go func() { done <- c.connect() }()
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
	go c.pump()
	c.log.Debug("kafka connection open", "produce", s.produce, "consume", s.consume, "group", s.group)
	return c, nil
}

// connect checks the node's topics and starts consuming where the group
// left off.
func (c *Conn) connect() error {
	for _, t := range []string{c.produce, c.consume} {
		if err := c.cl.topicReady(t); err != nil {
			return err
		}
	}
	c.chunk = ChunkSize
	switch limit, err := recordLimit(c.cl.client, c.produce); {
	case err != nil:
		c.log.Debug("topic's record limit unknown: chunks of the default size", "topic", c.produce, "error", err)
	case limit-recordSlack-chunkHeaderSize < minChunkSize:
		return fmt.Errorf("topic %s takes records of %d bytes at most (max.message.bytes): too small to carry frames, raise it to at least %d", c.produce, limit, minChunkSize+recordSlack+chunkHeaderSize)
	case limit-recordSlack-chunkHeaderSize < ChunkSize:
		c.chunk = limit - recordSlack - chunkHeaderSize
		// A produce request's batch for the topic must fit its limit too:
		// the producer, shared with other topics, batches up to its own
		// MaxMessageBytes, so this node keeps one record in flight at a
		// time and its batches hold one record.
		c.window = make(chan struct{}, 1)
		c.log.Debug("topic takes smaller records: frames go in smaller chunks, one at a time", "topic", c.produce, "max.message.bytes", limit, "chunk", c.chunk)
	}
	c.offsets = &offsetStore{client: c.cl.client, group: c.group, topic: c.consume, partition: Partition, retries: 5, backoff: 200 * time.Millisecond}
	start, err := c.offsets.fetch()
	if err != nil {
		return err
	}
	c.committed = start
	if start < 0 {
		start = sarama.OffsetOldest
	}
	c.pc, err = c.cl.consumer.ConsumePartition(c.consume, Partition, start)
	if errors.Is(err, sarama.ErrOffsetOutOfRange) && start >= 0 {
		// The committed offset is gone (retention, or the topic was
		// recreated): start over from what is there.
		c.log.Warn("committed offset out of range, starting from the oldest", "offset", start)
		c.pc, err = c.cl.consumer.ConsumePartition(c.consume, Partition, sarama.OffsetOldest)
	}
	if err != nil {
		return fmt.Errorf("consume %s: %w", c.consume, err)
	}
	c.log.Debug("consuming", "topic", c.consume, "from", start)
	return nil
}

// release undoes connect.
func (c *Conn) release() {
	if c.pc != nil {
		_ = c.pc.Close()
	}
}

// pump moves what the partition consumer fetched to the queue, and logs
// its errors, until it stops.
func (c *Conn) pump() {
	defer close(c.pumpDone)
	msgs, errs := c.pc.Messages(), c.pc.Errors()
	for msgs != nil || errs != nil {
		select {
		case m, ok := <-msgs:
			if !ok {
				msgs = nil
				c.qmu.Lock()
				c.ended = true
				c.qmu.Unlock()
				c.signal()
				continue
			}
			c.qmu.Lock()
			c.queue = append(c.queue, m)
			c.qbytes += len(m.Value)
			if c.qbytes >= recvHighWater && !c.paused {
				c.paused = true
				c.pc.Pause()
			}
			c.qmu.Unlock()
			c.signal()
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			c.log.Warn("kafka consumer error", "topic", err.Topic, "partition", err.Partition, "error", err.Err)
		}
	}
}

// signal wakes Recv.
func (c *Conn) signal() {
	select {
	case c.arrived <- struct{}{}:
	default:
	}
}

// next takes the first queued record; ok is false when the queue is
// empty, ended when the partition consumer stopped.
func (c *Conn) next() (m *sarama.ConsumerMessage, ok, ended bool) {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if c.qhead == len(c.queue) {
		c.queue, c.qhead = c.queue[:0], 0
		return nil, false, c.ended
	}
	m = c.queue[c.qhead]
	c.queue[c.qhead] = nil
	c.qhead++
	c.qbytes -= len(m.Value)
	if c.qhead == len(c.queue) {
		c.queue, c.qhead = c.queue[:0], 0
		if cap(c.queue) > 256 {
			c.queue = nil // a burst's backing array goes
		}
	}
	if c.paused && c.qbytes <= recvLowWater {
		c.paused = false
		c.pc.Resume()
	}
	return m, true, false
}

// sent frees one record's place in the send window.
func (c *Conn) sent() {
	<-c.window
	c.inflight.Done()
}

// fail breaks the connection at the first record the broker refused.
func (c *Conn) fail(err error) {
	c.failOnce.Do(func() {
		c.failure = fmt.Errorf("kafka send to %s: %w", c.produce, err)
		c.log.Warn("kafka producer failed: the connection is broken", "topic", c.produce, "error", err)
		close(c.failed)
	})
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

// commit commits the marked offset if it is newer than the committed one.
// A failed commit is logged; the next one covers it.
func (c *Conn) commit() {
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
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

// Lag reports how many records of topic group has not committed yet (see
// Client.Lag).
func (c *Conn) Lag(topic, group string) (int64, error) { return c.cl.Lag(topic, group) }

// Send hands one frame's records to the shared producer and returns; it
// blocks only while the connection's send window is full. The producer
// writes them in order (idempotent, one request in flight per broker,
// acks from all in-sync replicas): a lone frame goes at once, frames sent
// while a request is in flight go together in the next one, with the
// other nodes' records. A record the broker refuses for good breaks the
// connection: this Send or a later one, and Recv, return the error (see
// failed). Close waits until every record handed over was written or
// refused.
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
		select {
		case c.window <- struct{}{}:
		case <-c.failed:
			return c.failure
		case <-c.closing:
			return ErrClosed
		}
		c.inflight.Add(1)
		msg := &sarama.ProducerMessage{Topic: c.produce, Partition: Partition, Value: sarama.ByteEncoder(v), Metadata: c}
		select {
		case c.cl.producer.Input() <- msg:
		case <-c.cl.closing:
			c.sent()
			return ErrClosed
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
		c.cl.markDirty(c)
	}
	for {
		select {
		case <-c.closing:
			return nil, fmt.Errorf("%w: %w", ErrClosed, io.EOF)
		default:
		}
		if err := c.broken(); err != nil {
			return nil, err
		}
		m, ok, ended := c.next()
		if !ok {
			if ended {
				return nil, fmt.Errorf("%w: %w", ErrClosed, io.EOF)
			}
			select {
			case <-c.closing:
				return nil, fmt.Errorf("%w: %w", ErrClosed, io.EOF)
			case <-c.failed:
				return nil, c.failure
			case <-c.arrived:
			}
			continue
		}
		if frame, done := c.re.add(m.Value, m.Offset); done {
			c.markMu.Lock()
			c.handled = m.Offset + 1
			c.markMu.Unlock()
			return frame, nil
		}
	}
}

// Malformed returns how many records or partial frames Recv has dropped.
// It may be called from any goroutine: the agent reports it to the master
// with its heartbeats, the launcher in its link stats.
func (c *Conn) Malformed() uint64 { return c.re.malformed.Load() }

// Close commits the offset of the last frame Recv returned, stops
// consuming the node's partition and releases the connection's
// goroutines; the shared Client stays (unless the connection owns it).
// Recv then returns io.EOF and Send ErrClosed. Close is idempotent.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closing)
		// Wait for a Send in flight, then for the records handed over:
		// the producer writes them or refuses them.
		c.sendMu.Lock()
		c.inflight.Wait()
		perr := c.broken()
		c.sendMu.Unlock()

		c.cl.forget(c)
		c.markHandled()
		c.commit()
		cerr := c.pc.Close()
		<-c.pumpDone
		if c.owned {
			if err := c.cl.Close(); err != nil {
				c.log.Debug("kafka client closed with errors", "error", err)
			}
		}
		if perr != nil {
			c.closeErr = fmt.Errorf("close kafka producer: %w", perr)
		} else if cerr != nil {
			c.log.Debug("consumer closed with errors", "error", cerr)
		}
		c.log.Debug("kafka connection closed")
	})
	return c.closeErr
}
