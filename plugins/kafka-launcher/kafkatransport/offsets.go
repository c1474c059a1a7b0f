package kafkatransport

import (
	"errors"
	"fmt"
	"time"

	"github.com/IBM/sarama"
)

// offsetStore reads and commits one partition's offset in a consumer
// group, as a group without members (no join, no generation): each side
// of a node is its group's only consumer. It does not use sarama's
// OffsetManager, which treats GROUP_ID_NOT_FOUND (what some brokers answer
// for a group that never committed) as fatal.
type offsetStore struct {
	client    sarama.Client
	group     string
	topic     string
	partition int32
	retries   int
	backoff   time.Duration
}

// Request versions matching Config.Sarama's protocol version (2.8).
const (
	offsetFetchVersion  = 7
	offsetCommitVersion = 8
)

// retriable reports whether a coordinator error goes away after finding
// the coordinator again.
func retriable(err error) bool {
	return errors.Is(err, sarama.ErrNotCoordinatorForConsumer) ||
		errors.Is(err, sarama.ErrConsumerCoordinatorNotAvailable) ||
		errors.Is(err, sarama.ErrOffsetsLoadInProgress) ||
		errors.Is(err, sarama.ErrRequestTimedOut)
}

// retry runs fn until it succeeds, fails for good or runs out of retries.
func (o *offsetStore) retry(fn func(*sarama.Broker) error) error {
	var err error
	for attempt := 0; attempt <= o.retries; attempt++ {
		if attempt > 0 {
			time.Sleep(o.backoff)
			_ = o.client.RefreshCoordinator(o.group)
		}
		var b *sarama.Broker
		if b, err = o.client.Coordinator(o.group); err != nil {
			continue
		}
		err = fn(b)
		var kerr sarama.KError
		if err == nil || (errors.As(err, &kerr) && !retriable(kerr)) {
			return err
		}
	}
	return err
}

// fetch returns the committed offset, or -1 if there is none.
func (o *offsetStore) fetch() (int64, error) {
	offset := int64(-1)
	err := o.retry(func(b *sarama.Broker) error {
		req := sarama.NewOffsetFetchRequest(sarama.V2_8_0_0, o.group, map[string][]int32{o.topic: {o.partition}})
		req.Version = offsetFetchVersion
		resp, err := b.FetchOffset(req)
		if err != nil {
			_ = b.Close()
			return fmt.Errorf("fetch offset: %w", err)
		}
		if errors.Is(resp.Err, sarama.ErrGroupIDNotFound) {
			return nil // never committed
		}
		block := resp.GetBlock(o.topic, o.partition)
		if block == nil {
			if resp.Err != sarama.ErrNoError {
				return resp.Err
			}
			return sarama.ErrIncompleteResponse
		}
		switch {
		case block.Err == sarama.ErrNoError:
			offset = block.Offset
			return nil
		case errors.Is(block.Err, sarama.ErrGroupIDNotFound), errors.Is(block.Err, sarama.ErrUnknownTopicOrPartition):
			return nil
		default:
			return block.Err
		}
	})
	if err != nil {
		return 0, fmt.Errorf("committed offset of %s in group %s: %w", o.topic, o.group, err)
	}
	return offset, nil
}

// commit commits offset (the next offset to read).
func (o *offsetStore) commit(offset int64) error {
	err := o.retry(func(b *sarama.Broker) error {
		req := &sarama.OffsetCommitRequest{
			Version:                 offsetCommitVersion,
			ConsumerGroup:           o.group,
			ConsumerGroupGeneration: -1,
		}
		req.AddBlock(o.topic, o.partition, offset, 0, "")
		resp, err := b.CommitOffset(req)
		if err != nil {
			_ = b.Close()
			return fmt.Errorf("commit offset: %w", err)
		}
		perr, ok := resp.Errors[o.topic][o.partition]
		if !ok {
			return sarama.ErrIncompleteResponse
		}
		if perr != sarama.ErrNoError {
			return perr
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("commit offset %d of %s in group %s: %w", offset, o.topic, o.group, err)
	}
	return nil
}
