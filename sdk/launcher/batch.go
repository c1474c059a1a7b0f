package launcher

import (
	"errors"
	"sync"

	pb "github.com/conveyor-ci/conveyor/sdk/launcher/proto"
)

// Limits of the frames a Launch stream carries per gRPC message.
const (
	// maxBatchBytes caps the frames of one message (a single larger frame
	// still goes alone). The receiver gets no frame of a message before
	// the whole message, so a batch of 8 output chunks of 31 KiB takes
	// most of the per-message cost away without holding the first frame
	// back for long; with the message's own framing a full batch stays
	// within the 256 KiB tier of bufferPool.
	maxBatchBytes = 256<<10 - 4<<10
	// maxQueuedBytes is how much a frameSender holds, the message being
	// sent included, before Send waits: a full batch in flight and the
	// next one ready the moment it is out.
	maxQueuedBytes = 2 * maxBatchBytes
)

// errConnClosed is what Send returns once the connection was closed.
var errConnClosed = errors.New("connection closed")

// frameSender sends one side of a Launch stream from a goroutine of its
// own (run), so that frames queue while a message is being sent. Each
// message carries every frame queued by then, up to maxBatchBytes, in
// order; a frame that finds the sender idle goes out at once, alone: a
// batch never waits for frames to fill it. Send waits while
// maxQueuedBytes are queued, so a slow peer slows the sender down.
type frameSender struct {
	send func(frames [][]byte) error // sends one message's frames, in order

	mu      sync.Mutex
	wake    sync.Cond // queue, closed or the queued bytes changed
	queue   [][]byte
	bytes   int   // of the queue and of the batch being sent
	sent    int   // of the batch being sent
	sending bool  // a batch is being sent
	closed  bool  // no more frames are taken
	flush   bool  // the frames queued at close are still sent
	err     error // why sending failed; final once done is closed
	done    chan struct{}
}

// newFrameSender returns a sender whose run calls send with each batch.
func newFrameSender(send func(frames [][]byte) error) *frameSender {
	s := &frameSender{send: send, done: make(chan struct{})}
	s.wake.L = &s.mu
	return s
}

// Send queues a frame, which the sender owns from then on. It fails once
// the sender was closed or sending failed, with the reason.
func (s *frameSender) Send(frame []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for !s.closed && s.bytes > 0 && s.bytes+len(frame) > maxQueuedBytes {
		s.wake.Wait()
	}
	if s.closed {
		if s.err != nil {
			return s.err
		}
		return errConnClosed
	}
	s.queue = append(s.queue, frame)
	s.bytes += len(frame)
	s.wake.Broadcast()
	return nil
}

// close stops taking frames. With flush the frames already queued are
// still sent; without, they are dropped. run then returns. idle reports
// that, without flush, no message is being sent nor will be: the stream's
// send side is free from then on.
func (s *frameSender) close(flush bool) (idle bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed, s.flush = true, flush
		if !flush {
			s.queue, s.bytes = nil, s.sent
		}
	}
	s.wake.Broadcast()
	return !flush && !s.sending
}

// run sends batches until the sender is closed (and flushed) or sending
// fails; it returns the failure, nil after a close.
func (s *frameSender) run() error {
	defer close(s.done)
	for {
		batch, size, ok := s.next()
		if !ok {
			return nil
		}
		err := s.send(batch)
		s.mu.Lock()
		s.bytes -= size
		s.sent, s.sending = 0, false
		if err != nil {
			s.err, s.closed = err, true
			s.queue, s.bytes = nil, 0
		}
		s.wake.Broadcast()
		s.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// next waits for queued frames and takes the next batch; ok is false once
// nothing more is to be sent.
func (s *frameSender) next() (batch [][]byte, size int, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.queue) == 0 && !s.closed {
		s.wake.Wait()
	}
	if len(s.queue) == 0 || (s.closed && !s.flush) {
		return nil, 0, false
	}
	n := 0
	for n < len(s.queue) && (n == 0 || size+len(s.queue[n]) <= maxBatchBytes) {
		size += len(s.queue[n])
		n++
	}
	s.sent, s.sending = size, true
	batch = s.queue[:n:n]
	if s.queue = s.queue[n:]; len(s.queue) == 0 {
		s.queue = nil
	}
	return batch, size, true
}

// sendFrames sends frames in order: several in one Frames message through
// many when the peer reads them, else one message each through one.
func sendFrames(frames [][]byte, batched bool, one func(frame []byte) error, many func(frames *pb.Frames) error) error {
	if batched && len(frames) > 1 {
		return many(&pb.Frames{Frames: frames})
	}
	for _, f := range frames {
		if err := one(f); err != nil {
			return err
		}
	}
	return nil
}

// framed is a Launch stream message after the first: LaunchClientMessage
// or LaunchServerMessage.
type framed interface {
	GetFrame() []byte
	GetFrames() *pb.Frames
}

// messageFrames returns the frames a message carries, in order: those of
// its Frames, or its single frame.
func messageFrames(m framed) [][]byte {
	if fs := m.GetFrames(); fs != nil {
		return fs.Frames
	}
	return [][]byte{m.GetFrame()}
}
