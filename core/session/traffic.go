package session

import (
	"sync/atomic"
	"time"

	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// Traffic is what crossed a node's links, over every connection of the
// node since the server started.
type Traffic struct {
	// FramesIn and BytesIn came from the agent; FramesOut and BytesOut
	// went to it. Bytes are whole encoded frames.
	FramesIn  uint64 `json:"frames_in"`
	BytesIn   uint64 `json:"bytes_in"`
	FramesOut uint64 `json:"frames_out"`
	BytesOut  uint64 `json:"bytes_out"`
	// Connections counts the links attached; Resumes the sessions resumed
	// on a new link or after a silence (each a reconnect of the agent).
	Connections uint64 `json:"connections"`
	Resumes     uint64 `json:"resumes"`
	// LastHeard is when the last authentic frame of the agent arrived
	// (zero: never).
	LastHeard time.Time `json:"last_heard,omitzero"`
	// RTT is the round-trip time of the last answered heartbeat (zero:
	// none answered yet).
	RTT time.Duration `json:"rtt_ns"`
}

// traffic holds a session's Traffic counters.
type traffic struct {
	framesIn, bytesIn, framesOut, bytesOut atomic.Uint64
	connections, resumes                   atomic.Uint64
	lastHeard, rtt                         atomic.Int64 // Unix nanoseconds; nanoseconds
}

// Traffic reports what crossed the node's links so far.
func (s *Session) Traffic() Traffic {
	t := &s.traffic
	out := Traffic{FramesIn: t.framesIn.Load(), BytesIn: t.bytesIn.Load(), FramesOut: t.framesOut.Load(),
		BytesOut: t.bytesOut.Load(), Connections: t.connections.Load(), Resumes: t.resumes.Load(),
		RTT: time.Duration(t.rtt.Load())}
	if ns := t.lastHeard.Load(); ns != 0 {
		out.LastHeard = time.Unix(0, ns)
	}
	return out
}

// heard records an authentic frame of the agent received at now.
func (t *traffic) heard(now time.Time) { t.lastHeard.Store(now.UnixNano()) }

// pong records the answer to a heartbeat sent at sentUnixNano.
func (t *traffic) pong(sentUnixNano int64, now time.Time) {
	if rtt := now.UnixNano() - sentUnixNano; rtt >= 0 && sentUnixNano != 0 {
		t.rtt.Store(rtt)
	}
}

// countingConn counts the frames and bytes crossing a connection.
type countingConn struct {
	launcher.Conn
	t *traffic
}

// Send implements launcher.Conn.
func (c countingConn) Send(frame []byte) error {
	if err := c.Conn.Send(frame); err != nil {
		return err
	}
	c.t.framesOut.Add(1)
	c.t.bytesOut.Add(uint64(len(frame)))
	return nil
}

// Recv implements launcher.Conn.
func (c countingConn) Recv() ([]byte, error) {
	b, err := c.Conn.Recv()
	if err == nil {
		c.t.framesIn.Add(1)
		c.t.bytesIn.Add(uint64(len(b)))
	}
	return b, err
}
