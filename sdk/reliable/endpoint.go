package reliable

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// Sender sends one encoded frame on the connection of the moment.
type Sender interface {
	Send(frame []byte) error
}

// AckEvery and AckBytes are how many delivered frames, or bytes of their
// payloads, an Endpoint lets pass before it acknowledges them with an
// explicit Ack frame (every frame it sends carries its Ack as well). The
// byte bound keeps a small outbox on the other end flowing.
const (
	AckEvery = 32
	AckBytes = 256 << 10
)

// Endpoint is one end of a session. It outlives connections: every
// handshake on a new connection starts an epoch (Begin), with its own
// session key and its own counter for unnumbered frames, while the
// numbered frames (Sequenced types) keep their numbering for the whole
// session, wait in the outbox until acknowledged and are sent again after
// a resume.
//
// Numbered frames carry their outbox number in Seq and are deduplicated by
// the receiver's Inbox. The other frames carry the epoch's counter, which
// rises strictly: a replayed or reordered handshake or control frame is
// dropped. Every frame carries Ack, the highest number its sender handled.
type Endpoint struct {
	out *Outbox
	in  *Inbox // the receiving goroutine's

	mu      sync.Mutex // guards what follows; held while a frame is sent, so numbering and sending order agree
	conn    Sender
	keys    wire.Keys // the epoch's frame keys; nil Send until Established
	session uint64
	ctl     uint64 // unnumbered frames sent in the epoch
	peerCtl uint64 // highest epoch counter received
	acked   uint64 // highest peer number handled: the Ack to send
	ackSent uint64 // the Ack last sent

	onAdd func(session, last uint64, kept []*wire.Frame) error // see OnAdd

	broken chan struct{} // closed when a send on the epoch's connection failed

	unacked atomic.Int64 // payload bytes delivered since the last Ack sent
}

// NewEndpoint returns the endpoint of a new session whose outbox holds at
// most maxBytes waiting for acknowledgement.
func NewEndpoint(maxBytes int) *Endpoint {
	return &Endpoint{out: NewOutbox(maxBytes), in: NewInbox(0)}
}

// RestoreEndpoint returns the endpoint of a persisted session: its id,
// the outbox as Outbox.Snapshot left it, and the highest peer number it
// had handled (frames after it come again on the resume).
func RestoreEndpoint(maxBytes int, session, last uint64, kept []*wire.Frame, handled uint64) *Endpoint {
	return &Endpoint{out: RestoreOutbox(maxBytes, last, kept), in: NewInbox(handled), session: session, acked: handled, ackSent: handled}
}

// OnAdd sets a function called with the endpoint's snapshot (see
// Snapshot) after a frame was numbered and kept, before it is sent:
// persisting the outbox there means a number is never given out twice,
// even across a crash. When it fails, Send fails and the frame is not sent
// now (it stays kept). It runs under the endpoint's lock: it must not call
// the endpoint.
func (e *Endpoint) OnAdd(fn func(session, last uint64, kept []*wire.Frame) error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.onAdd = fn
}

// Snapshot returns the session id, the highest number given out and the
// kept frames, to persist them (see RestoreEndpoint).
func (e *Endpoint) Snapshot() (session, last uint64, kept []*wire.Frame) {
	last, kept = e.out.Snapshot()
	return e.Session(), last, kept
}

// UnackedBytes is the payload delivered since the last Ack was sent.
func (e *Endpoint) UnackedBytes() int64 { return e.unacked.Load() }

// Delivered is the highest peer number delivered (handled or not yet).
// Only the receiving goroutine calls it.
func (e *Endpoint) Delivered() uint64 { return e.in.Last() }

// Begin starts an epoch on conn: the handshake that follows sends through
// it, unsigned until Established.
func (e *Endpoint) Begin(conn Sender) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.conn, e.keys, e.ctl, e.peerCtl = conn, wire.Keys{}, 0, 0
	e.broken = make(chan struct{})
}

// Broken is closed when sending a numbered frame on the epoch's
// connection failed: the frame is kept, but the peer will see a gap and
// drop what follows until a resume, so the caller should end the epoch
// (and resume the session on a new one). Nil before Begin.
func (e *Endpoint) Broken() <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.broken
}

// Detach forgets the connection: numbered frames wait in the outbox until
// the next epoch, unnumbered ones are dropped.
func (e *Endpoint) Detach() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.conn, e.keys = nil, wire.Keys{}
}

// Established makes keys.Send sign every frame of session this end sends
// from now on, and keys.Receive verify every frame of its peer (see
// wire.KeysFor: each direction has its own key, so a frame of this end
// reflected back to it is forged); peerCounter is the epoch counter of
// the peer's last handshake frame (its frames must count on from there).
func (e *Endpoint) Established(session uint64, keys wire.Keys, peerCounter uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.session, e.keys, e.peerCtl = session, keys, peerCounter
}

// Session is the session id, zero before the first Established.
func (e *Endpoint) Session() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.session
}

// Resend sends again, in order, every numbered frame the peer does not
// hold: those after peerAck, the highest number it reported handling.
func (e *Endpoint) Resend(peerAck uint64) error {
	e.out.Ack(peerAck)
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, f := range e.out.Since(peerAck) {
		if err := e.transmit(f); err != nil {
			return err
		}
	}
	return nil
}

// SendControl sends an unnumbered frame (handshake, Ping, Pong, Ack) in
// session on the current connection; without one it is dropped.
func (e *Endpoint) SendControl(m wire.Message, session uint64) error {
	f := wire.NewFrame(m)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.conn == nil {
		return ErrDetached
	}
	e.ctl++
	f.Session, f.Seq = session, e.ctl
	return e.transmitEpoch(f)
}

// ErrDetached: there is no connection to send an unnumbered frame on.
var ErrDetached = fmt.Errorf("no connection")

// Send numbers m (a Sequenced type), keeps it until acknowledged and sends
// it if connected. It blocks while the outbox is full, until ctx ends. A
// failed send is not an error: the frame goes again after the next resume.
func (e *Endpoint) Send(ctx context.Context, m wire.Message) error {
	f := wire.NewFrame(m)
	if !Sequenced(f.Type) {
		return fmt.Errorf("send %v: not a numbered frame type", f.Type)
	}
	if err := e.out.wait(ctx, len(f.Payload)); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.out.add(f); err != nil {
		return err
	}
	if e.onAdd != nil {
		last, kept := e.out.Snapshot()
		if err := e.onAdd(e.session, last, kept); err != nil {
			return fmt.Errorf("keep %v: %w", f.Type, err)
		}
	}
	if e.conn != nil && e.keys.Send != nil {
		if err := e.transmit(f); err != nil && e.broken != nil {
			select {
			case <-e.broken:
			default:
				close(e.broken)
			}
		}
	}
	return nil
}

// transmit sends a numbered frame under the epoch's key; e.mu is held.
func (e *Endpoint) transmit(kept *wire.Frame) error {
	f := *kept // the kept frame stays unsigned: each epoch signs its own copy
	f.Session = e.session
	return e.transmitEpoch(&f)
}

// transmitEpoch fills Ack, signs and sends f; e.mu is held.
func (e *Endpoint) transmitEpoch(f *wire.Frame) error {
	if e.conn == nil {
		return ErrDetached
	}
	f.Ack = e.acked
	if e.keys.Send != nil && f.Session == e.session {
		wire.Sign(e.keys.Send, f)
	}
	b, err := f.Encode()
	if err != nil {
		return fmt.Errorf("encode %v: %w", f.Type, err)
	}
	if err := e.conn.Send(b); err != nil {
		return fmt.Errorf("send %v: %w", f.Type, err)
	}
	if f.Ack > e.ackSent {
		e.ackSent = f.Ack
		e.unacked.Store(0)
	}
	return nil
}

// Receive checks a frame of the established session: its MAC under the
// epoch's key for the peer's frames (a frame this end signed is forged
// here), then its number (numbered frames, in order, once) or its
// counter (unnumbered ones, strictly rising). An authentic frame's Ack
// releases the outbox. Only the receiving goroutine calls it.
func (e *Endpoint) Receive(f *wire.Frame) Verdict {
	e.mu.Lock()
	key := e.keys.Receive
	e.mu.Unlock()
	if key == nil || !wire.Verify(key, f) {
		return Forged
	}
	if Sequenced(f.Type) {
		if v := e.in.Accept(f.Seq); v != Deliver {
			return v
		}
		e.unacked.Add(int64(len(f.Payload)))
	} else {
		e.mu.Lock()
		fresh := f.Seq > e.peerCtl
		if fresh {
			e.peerCtl = f.Seq
		}
		e.mu.Unlock()
		if !fresh {
			return Replayed
		}
	}
	e.out.Ack(f.Ack)
	return Deliver
}

// Handled records that every numbered frame delivered so far was handled:
// the next frames carry it as Ack. It sends an explicit Ack once AckEvery
// frames went unacknowledged.
func (e *Endpoint) Handled() error { return e.HandledThrough(e.in.Last()) }

// HandledThrough is Handled for the frames numbered up to seq only: those
// after it were delivered but are not handled yet (the receiver could not
// store them), so they are not acknowledged and stay in the peer's outbox
// until a later call covers them. A seq beyond the frames delivered counts
// as all of them; the Ack never goes back.
func (e *Endpoint) HandledThrough(seq uint64) error {
	seq = min(seq, e.in.Last())
	e.mu.Lock()
	e.acked = max(e.acked, seq)
	due := e.acked >= e.ackSent+AckEvery || e.unacked.Load() >= AckBytes
	e.mu.Unlock()
	if due {
		return e.FlushAck()
	}
	return nil
}

// FlushAck sends an Ack frame if frames were handled since the last Ack
// sent.
func (e *Endpoint) FlushAck() error {
	e.mu.Lock()
	due, acked, session := e.acked > e.ackSent, e.acked, e.session
	e.mu.Unlock()
	if !due {
		return nil
	}
	return e.SendControl(&wire.Ack{Seq: acked}, session)
}

// Acked is the highest peer number handled: what a resuming Hello reports.
func (e *Endpoint) Acked() uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.acked
}

// Pending reports what waits in the outbox.
func (e *Endpoint) Pending() Pending { return e.out.Pending() }

// Close ends the session: blocked and later Sends fail with err.
func (e *Endpoint) Close(err error) { e.out.Close(err) }

// Dropped counts the duplicate and early (after a gap) frames dropped so far.
func (e *Endpoint) Dropped() (duplicates, early uint64) { return e.in.Dropped() }
