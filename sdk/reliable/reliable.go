// Package reliable delivers wire frames exactly once and in order over
// connections that come and go: the sender numbers every frame that must
// arrive (Sequenced types) and keeps it in an Outbox until the peer
// acknowledges it, so that it can be sent again on the next connection; the
// receiver's Inbox accepts each number once, in order. Handshake and
// liveness frames are not numbered (Seq 0): they belong to one connection.
//
// Both ends of a session use it: the master per node, the agent for its
// session, so that a session outlives a broken transport (a broker restart,
// a restarted launcher plugin) and resumes where it stopped.
package reliable

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// Sequenced reports whether frames of type t are numbered and delivered
// exactly once. The others (handshake, Ping, Pong, Ack) are best effort on
// the current connection.
func Sequenced(t wire.Type) bool {
	switch t {
	case wire.TypeRunStep, wire.TypeStdin, wire.TypeOutput, wire.TypeExit,
		wire.TypeCancel, wire.TypeFileChunk, wire.TypeClose, wire.TypeCollect:
		return true
	}
	return false
}

// ErrClosed is returned by Add once the outbox was closed.
var ErrClosed = errors.New("outbox closed")

// Outbox numbers outgoing frames and keeps them until the peer
// acknowledges them. Its size is bounded: Add blocks while the frames
// waiting for an acknowledgement exceed the bound, which slows the producer
// (a step's output) down instead of growing without limit.
type Outbox struct {
	mu     sync.Mutex
	space  chan struct{} // closed and replaced when space frees up
	max    int
	last   uint64 // highest number given out
	acked  uint64 // highest number the peer confirmed
	frames []*wire.Frame
	bytes  int
	closed error
}

// NewOutbox returns an outbox holding at most maxBytes of payload waiting
// for acknowledgement (a single larger frame is still accepted when the
// outbox is empty).
func NewOutbox(maxBytes int) *Outbox {
	return &Outbox{max: maxBytes, space: make(chan struct{})}
}

// Add gives f the next number and keeps it until acknowledged. It blocks
// while the outbox is full, until ctx ends; the error then wraps the
// context's cause.
func (o *Outbox) Add(ctx context.Context, f *wire.Frame) error {
	if err := o.wait(ctx, len(f.Payload)); err != nil {
		return err
	}
	return o.add(f)
}

// wait blocks until size more bytes fit (or the outbox is empty), the
// outbox closed or ctx ended.
func (o *Outbox) wait(ctx context.Context, size int) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	for o.closed == nil && len(o.frames) > 0 && o.bytes+size > o.max {
		wait := o.space
		o.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			o.mu.Lock()
			return fmt.Errorf("output buffer full: %d bytes wait for the peer's acknowledgement (limit %d): %w", o.bytes, o.max, context.Cause(ctx))
		}
		o.mu.Lock()
	}
	return o.closed
}

// add numbers and keeps f without waiting for space.
func (o *Outbox) add(f *wire.Frame) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed != nil {
		return o.closed
	}
	o.last++
	f.Seq = o.last
	o.frames = append(o.frames, f)
	o.bytes += len(f.Payload)
	return nil
}

// Ack records that the peer holds every frame up to seq and drops them.
// It ignores a seq beyond the highest number given out (a forged or
// confused peer) and reports whether it did.
func (o *Outbox) Ack(seq uint64) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if seq > o.last {
		return false
	}
	if seq <= o.acked {
		return true
	}
	o.acked = seq
	i := 0
	for i < len(o.frames) && o.frames[i].Seq <= seq {
		o.bytes -= len(o.frames[i].Payload)
		i++
	}
	o.frames = append(o.frames[:0:0], o.frames[i:]...)
	close(o.space)
	o.space = make(chan struct{})
	return true
}

// Since returns the kept frames numbered after seq, in order: what to send
// again once a new connection told that the peer holds everything up to
// seq.
func (o *Outbox) Since(seq uint64) []*wire.Frame {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []*wire.Frame
	for _, f := range o.frames {
		if f.Seq > seq {
			out = append(out, f)
		}
	}
	return out
}

// Snapshot returns the highest number given out and copies of the kept
// frames, to persist them.
func (o *Outbox) Snapshot() (last uint64, frames []*wire.Frame) {
	o.mu.Lock()
	defer o.mu.Unlock()
	frames = make([]*wire.Frame, len(o.frames))
	for i, f := range o.frames {
		c := *f
		frames[i] = &c
	}
	return o.last, frames
}

// RestoreOutbox returns an outbox that gave out numbers up to last and
// keeps frames (numbered, in order) for acknowledgement: the outbox of a
// persisted session.
func RestoreOutbox(maxBytes int, last uint64, frames []*wire.Frame) *Outbox {
	o := NewOutbox(maxBytes)
	o.last = last
	if len(frames) > 0 {
		o.acked = frames[0].Seq - 1
	} else {
		o.acked = last
	}
	for _, f := range frames {
		o.frames = append(o.frames, f)
		o.bytes += len(f.Payload)
	}
	return o
}

// Pending describes what waits for acknowledgement.
type Pending struct {
	Frames, Bytes int
	// Last is the highest number given out, Acked the highest confirmed.
	Last, Acked uint64
}

// Pending reports what waits for acknowledgement.
func (o *Outbox) Pending() Pending {
	o.mu.Lock()
	defer o.mu.Unlock()
	return Pending{Frames: len(o.frames), Bytes: o.bytes, Last: o.last, Acked: o.acked}
}

// Close releases blocked and later Adds with err.
func (o *Outbox) Close(err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed == nil {
		o.closed = err
		close(o.space)
		o.space = make(chan struct{})
	}
}

// Verdict is what an Inbox decided about a frame.
type Verdict int

// Verdicts.
const (
	// Deliver: the next frame in order, or an unnumbered one.
	Deliver Verdict = iota
	// Duplicate: already delivered (sent again after a reconnect); drop it.
	Duplicate
	// Gap: a frame is missing before it; drop it, the peer sends both
	// again after the next resume.
	Gap
	// Forged: no valid MAC under the epoch's key (Endpoint); never
	// execute it.
	Forged
	// Replayed: an unnumbered frame whose epoch counter did not rise
	// (Endpoint).
	Replayed
)

// String names the verdict.
func (v Verdict) String() string {
	return [...]string{"deliver", "duplicate", "gap", "forged", "replayed"}[v]
}

// Inbox accepts each numbered frame once and in order. It is not safe for
// concurrent use (but for Dropped): one goroutine reads a connection.
type Inbox struct {
	last             uint64
	duplicates, gaps atomic.Uint64 // read by any goroutine
}

// NewInbox returns an inbox that has delivered every frame up to last
// (0 for a new session).
func NewInbox(last uint64) *Inbox { return &Inbox{last: last} }

// Accept decides about a frame numbered seq (0: unnumbered).
func (in *Inbox) Accept(seq uint64) Verdict {
	switch {
	case seq == 0:
		return Deliver
	case seq <= in.last:
		in.duplicates.Add(1)
		return Duplicate
	case seq > in.last+1:
		in.gaps.Add(1)
		return Gap
	}
	in.last = seq
	return Deliver
}

// Last is the highest number delivered: the Ack to send.
func (in *Inbox) Last() uint64 { return in.last }

// Dropped counts the duplicates and gaps dropped so far.
func (in *Inbox) Dropped() (duplicates, gaps uint64) { return in.duplicates.Load(), in.gaps.Load() }
