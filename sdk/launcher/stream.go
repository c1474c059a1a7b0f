package launcher

import (
	"errors"
	"io"
	"sync"

	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// StreamConn carries frames over a byte stream, such as an agent's stdin
// and stdout when it runs with `-transport stdio`, locally or over SSH.
// Frames are self-delimiting (wire.ReadFrame), so they are written as is.
type StreamConn struct {
	r     io.Reader
	w     io.Writer
	close func() error
	desc  string

	sendMu sync.Mutex
	once   sync.Once
	err    error
}

// NewStreamConn returns a Conn reading frames from r and writing them to w.
// closeFn, called once by Close, must release both (for a process: close
// its stdin, stop it and wait for it). desc describes where the agent runs.
func NewStreamConn(r io.Reader, w io.Writer, closeFn func() error, desc string) *StreamConn {
	return &StreamConn{r: r, w: w, close: closeFn, desc: desc}
}

// Send writes one frame.
func (c *StreamConn) Send(frame []byte) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	_, err := c.w.Write(frame)
	return err
}

// Recv reads the next whole frame. A frame read whole whose header does
// not decode is returned as it is: its length prefix delimited it, the
// stream stays in step, and the reader drops and counts it (reliable.Read).
// A length prefix over wire.MaxFrameSize, or too short for a header, is an
// error wrapping wire.ErrTooLarge or wire.ErrMalformed, read no further: a
// byte stream cannot resynchronise after one. A stream ending within a
// frame ends like one ending between frames, with io.EOF.
func (c *StreamConn) Recv() ([]byte, error) {
	_, raw, err := wire.ReadFrame(c.r, wire.MaxFrameSize)
	switch {
	case err == nil, raw != nil:
		return raw, nil
	case errors.Is(err, io.ErrUnexpectedEOF):
		return nil, io.EOF
	}
	return nil, err
}

// Close releases the stream; later calls return the first call's result.
func (c *StreamConn) Close() error {
	c.once.Do(func() {
		if c.close != nil {
			c.err = c.close()
		}
	})
	return c.err
}

// Description says where the agent runs.
func (c *StreamConn) Description() string { return c.desc }
