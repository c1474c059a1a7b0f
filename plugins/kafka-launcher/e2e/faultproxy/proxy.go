// Package faultproxy injects network faults between Kafka clients and a
// Kafka broker, for end-to-end tests.
//
// A Proxy is a TCP proxy on a loopback port. It reads the client id from
// the header of the first Kafka request of every connection it accepts and
// tags the connection with it, so a test can cut or silently partition the
// connections of some clients (say every agent, whose client ids start with
// "conveyor-agent-") while the others keep working. A Broker is an
// in-process kfake broker that advertises the proxy's address in its
// metadata, so that clients keep talking through the proxy after
// bootstrapping.
package faultproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

const (
	// peekTimeout bounds how long a new connection may take to send the
	// header of its first request; Kafka clients send it right away.
	peekTimeout = 10 * time.Second

	// dialTimeout bounds the dial to the target.
	dialTimeout = 5 * time.Second

	// maxRequestSize is the largest first request we take for Kafka
	// framing (the broker's default socket.request.max.bytes); a larger
	// size means the peer does not speak plain Kafka (TLS, say).
	maxRequestSize = 100 << 20

	// requestHeaderSize is the size of a request header up to the client
	// id's bytes: api key, api version, correlation id, client id length.
	requestHeaderSize = 2 + 2 + 4 + 2

	// bufSize is the size of the buffer of each direction of a connection.
	bufSize = 32 << 10
)

// Match reports whether a connection is subject to a fault, given the client
// id of its first Kafka request ("" when the client id is null or the peer
// does not speak Kafka).
type Match func(clientID string) bool

// All matches every connection.
func All(string) bool { return true }

// Prefix matches the connections whose client id starts with prefix.
func Prefix(prefix string) Match {
	return func(clientID string) bool { return strings.HasPrefix(clientID, prefix) }
}

// Exact matches the connections whose client id is id.
func Exact(id string) Match {
	return func(clientID string) bool { return clientID == id }
}

// Counts are connection counters, for one client id or summed over several.
type Counts struct {
	// Accepted counts the connections whose first request was read.
	Accepted int
	// Forwarded counts the connections the proxy connected to the target.
	Forwarded int
	// Cut counts the connections the proxy closed because of Cut or Drop,
	// the ones open at the time and the new ones.
	Cut int
	// Blackholed counts how many times a connection was blackholed: once
	// per connection open at a Blackhole call, once per new connection
	// accepted during one.
	Blackholed int
	// Live counts the connections open now, forwarding or blackholed.
	Live int
}

func (c *Counts) add(o Counts) {
	c.Accepted += o.Accepted
	c.Forwarded += o.Forwarded
	c.Cut += o.Cut
	c.Blackholed += o.Blackholed
	c.Live += o.Live
}

type faultKind int

const (
	noFault faultKind = iota
	cutFault
	blackholeFault
)

type rule struct {
	kind  faultKind
	match Match
}

type connState int

const (
	statePeeking connState = iota
	stateForwarding
	stateBlackholed
	stateClosed
)

// conn is one accepted connection. Every field but client is guarded by
// Proxy.mu.
type conn struct {
	client   net.Conn
	upstream net.Conn // nil until the target is dialed
	id       string
	tagged   bool // id is known and the connection is counted
	state    connState
	gate     chan struct{} // closed while bytes may flow
	done     chan struct{} // closed once the connection is closed
}

// Proxy is a fault-injecting TCP proxy from a loopback port to a target
// address. Its methods are safe for concurrent use.
//
// Faults are rules: every Cut and Blackhole adds one, applies it to the
// connections open now and to every connection accepted later, until Heal
// removes them all. A new connection is checked against the rules once its
// first request header is read: a cut wins over a blackhole.
type Proxy struct {
	ln     net.Listener
	ctx    context.Context // canceled by Close, aborts dials
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	target  string
	rules   []rule
	conns   map[*conn]struct{}
	counts  map[string]*Counts
	changed chan struct{} // closed and replaced on every change
	closed  bool
}

// New starts a proxy on a random loopback port that forwards to target.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen on loopback: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		ln:      ln,
		ctx:     ctx,
		cancel:  cancel,
		target:  target,
		conns:   make(map[*conn]struct{}),
		counts:  make(map[string]*Counts),
		changed: make(chan struct{}),
	}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Addr returns the host:port clients connect to.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target returns the address the proxy forwards to.
func (p *Proxy) Target() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.target
}

// SetTarget changes the address the proxy forwards new connections to;
// open connections keep theirs.
func (p *Proxy) SetTarget(addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target = addr
}

// Cut closes, with a TCP reset, every open connection whose client id
// matches, and from now on closes every new matching connection right after
// reading its first request header, before it reaches the target. Clients
// see their connection dropped and keep retrying.
func (p *Proxy) Cut(match Match) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = append(p.rules, rule{cutFault, match})
	for c := range p.conns {
		if c.tagged && match(c.id) {
			p.counts[c.id].Cut++
			p.closeLocked(c, true)
		}
	}
}

// Drop closes, with a TCP reset, every open connection whose client id
// matches, as Cut does, but leaves new connections alone. It returns how
// many connections it closed.
func (p *Proxy) Drop(match Match) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for c := range p.conns {
		if c.tagged && match(c.id) {
			p.counts[c.id].Cut++
			p.closeLocked(c, true)
			n++
		}
	}
	return n
}

// Blackhole silently partitions the connections whose client id matches,
// the open ones and the new ones: the proxy stops reading from either side,
// so bytes sent stay in flight (a peer's writes succeed until the socket
// buffers fill, then stall), and closes nothing. A chunk already being
// copied when Blackhole is called may still get through. The client only
// notices through its own request timeouts.
func (p *Proxy) Blackhole(match Match) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = append(p.rules, rule{blackholeFault, match})
	for c := range p.conns {
		if c.state == stateForwarding && match(c.id) {
			c.state = stateBlackholed
			c.gate = make(chan struct{})
			p.counts[c.id].Blackholed++
		}
	}
	p.broadcastLocked()
}

// Heal removes every fault. New connections forward normally; connections
// already cut stay closed. Blackholed connections resume as a healed network
// would: the bytes held during the partition are delivered, nothing is lost,
// and whatever the peers did meanwhile (a client that timed out and closed
// its connection, say) takes effect now. To make clients reconnect instead,
// call Drop before Heal.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = nil
	for c := range p.conns {
		if c.state == stateBlackholed {
			c.state = stateForwarding
			close(c.gate)
		}
	}
	p.broadcastLocked()
}

// Stats returns the counters of every client id seen so far.
func (p *Proxy) Stats() map[string]Counts {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]Counts, len(p.counts))
	for id, c := range p.counts {
		out[id] = *c
	}
	return out
}

// Counts returns the counters summed over the client ids that match.
func (p *Proxy) Counts(match Match) Counts {
	p.mu.Lock()
	defer p.mu.Unlock()
	var sum Counts
	for id, c := range p.counts {
		if match(id) {
			sum.add(*c)
		}
	}
	return sum
}

// WaitConn waits until at least one connection whose client id matches is
// open, connected to the target and not blackholed. It returns an error when
// ctx ends first or the proxy is closed.
func (p *Proxy) WaitConn(ctx context.Context, match Match) error {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return errors.New("faultproxy: wait for a connection: proxy closed")
		}
		for c := range p.conns {
			if c.state == stateForwarding && c.upstream != nil && match(c.id) {
				p.mu.Unlock()
				return nil
			}
		}
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return fmt.Errorf("faultproxy: wait for a forwarded connection: %w", ctx.Err())
		case <-changed:
		}
	}
}

// Close stops the proxy: it closes the listener and every connection and
// waits for its goroutines. Calling it again does nothing.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.cancel()
	err := p.ln.Close()
	for c := range p.conns {
		p.closeLocked(c, false)
	}
	p.broadcastLocked()
	p.mu.Unlock()
	p.wg.Wait()
	if err != nil {
		return fmt.Errorf("faultproxy: close listener: %w", err)
	}
	return nil
}

// serve accepts connections until the listener is closed.
func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		nc, err := p.ln.Accept()
		if err != nil {
			p.mu.Lock()
			closed := p.closed
			p.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient error (out of file descriptors, say):
			// back off a little, as net/http does.
			select {
			case <-p.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		c := &conn{client: nc, gate: make(chan struct{}), done: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = nc.Close()
			return
		}
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.handle(c)
	}
}

// handle tags c with its client id, applies the faults and forwards it.
func (p *Proxy) handle(c *conn) {
	defer p.wg.Done()
	_ = c.client.SetReadDeadline(time.Now().Add(peekTimeout))
	peeked, id, err := peekClientID(c.client)
	_ = c.client.SetReadDeadline(time.Time{})
	if err != nil {
		p.closeConn(c, false)
		return
	}

	p.mu.Lock()
	if c.state == stateClosed {
		p.mu.Unlock()
		return
	}
	c.id, c.tagged = id, true
	cnt := p.countsLocked(id)
	cnt.Accepted++
	cnt.Live++
	switch p.faultLocked(id) {
	case cutFault:
		cnt.Cut++
		p.closeLocked(c, true)
		p.mu.Unlock()
		return
	case blackholeFault:
		c.state = stateBlackholed
		cnt.Blackholed++
	default:
		c.state = stateForwarding
		close(c.gate)
	}
	p.broadcastLocked()
	p.mu.Unlock()

	// A blackholed connection reaches the target once healed.
	if !p.await(c) {
		return
	}
	target := p.Target()
	d := net.Dialer{Timeout: dialTimeout}
	up, err := d.DialContext(p.ctx, "tcp", target)
	if err != nil {
		p.closeConn(c, false)
		return
	}
	p.mu.Lock()
	if c.state == stateClosed {
		p.mu.Unlock()
		_ = up.Close()
		return
	}
	c.upstream = up
	cnt.Forwarded++
	p.wg.Add(1)
	p.broadcastLocked()
	p.mu.Unlock()

	go func() {
		defer p.wg.Done()
		p.pump(c, c.client, up)
	}()
	if !p.await(c) {
		return
	}
	if _, err := up.Write(peeked); err != nil {
		p.closeConn(c, false)
		return
	}
	p.pump(c, up, c.client)
}

// pump copies src to dst, holding the bytes while c is blackholed, and
// closes c when either side fails or ends. Kafka does not half-close.
func (p *Proxy) pump(c *conn, dst, src net.Conn) {
	buf := make([]byte, bufSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.await(c) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				p.closeConn(c, false)
				return
			}
		}
		if err != nil {
			// While blackholed, the end of a side is held like
			// its bytes.
			if p.await(c) {
				p.closeConn(c, false)
			}
			return
		}
	}
}

// await waits until bytes may flow on c and reports false if c was closed
// first.
func (p *Proxy) await(c *conn) bool {
	p.mu.Lock()
	gate := c.gate
	p.mu.Unlock()
	select {
	case <-c.done:
		return false
	case <-gate:
		select {
		case <-c.done:
			return false
		default:
			return true
		}
	}
}

// closeConn closes c.
func (p *Proxy) closeConn(c *conn, reset bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closeLocked(c, reset)
}

// closeLocked closes both sides of c, the client's with a TCP reset if
// reset is set. p.mu must be held.
func (p *Proxy) closeLocked(c *conn, reset bool) {
	if c.state == stateClosed {
		return
	}
	if c.tagged {
		p.counts[c.id].Live--
	}
	c.state = stateClosed
	if tc, ok := c.client.(*net.TCPConn); ok && reset {
		_ = tc.SetLinger(0)
	}
	_ = c.client.Close()
	if c.upstream != nil {
		_ = c.upstream.Close()
	}
	close(c.done)
	delete(p.conns, c)
	p.broadcastLocked()
}

// faultLocked is the fault a new connection with client id id gets.
func (p *Proxy) faultLocked(id string) faultKind {
	kind := noFault
	for _, r := range p.rules {
		if !r.match(id) {
			continue
		}
		if r.kind == cutFault {
			return cutFault
		}
		kind = r.kind
	}
	return kind
}

func (p *Proxy) countsLocked(id string) *Counts {
	c, ok := p.counts[id]
	if !ok {
		c = new(Counts)
		p.counts[id] = c
	}
	return c
}

func (p *Proxy) broadcastLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// peekClientID reads the start of the first Kafka request from r, up to the
// end of its client id, and returns the bytes read and the client id. The
// client id is "" when it is null or the bytes are not Kafka framing; then
// peeked holds whatever was read. An error means r failed or ended first.
func peekClientID(r io.Reader) (peeked []byte, clientID string, err error) {
	peeked = make([]byte, 4, 4+requestHeaderSize)
	if _, err := io.ReadFull(r, peeked); err != nil {
		return nil, "", fmt.Errorf("read request size: %w", err)
	}
	size := int64(int32(binary.BigEndian.Uint32(peeked)))
	if size < requestHeaderSize || size > maxRequestSize {
		return peeked, "", nil
	}
	peeked = peeked[:4+requestHeaderSize]
	if _, err := io.ReadFull(r, peeked[4:]); err != nil {
		return nil, "", fmt.Errorf("read request header: %w", err)
	}
	n := int64(int16(binary.BigEndian.Uint16(peeked[4+requestHeaderSize-2:])))
	if n <= 0 || n > size-requestHeaderSize {
		// Null (-1), empty, or not Kafka.
		return peeked, "", nil
	}
	peeked = append(peeked, make([]byte, n)...)
	if _, err := io.ReadFull(r, peeked[4+requestHeaderSize:]); err != nil {
		return nil, "", fmt.Errorf("read client id: %w", err)
	}
	return peeked, string(peeked[4+requestHeaderSize:]), nil
}
