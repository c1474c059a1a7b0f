package reliable

import (
	"context"

	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// Receiver receives encoded frames, one at a time.
type Receiver interface {
	Recv() ([]byte, error)
}

// Frames is the decoded frames of one connection, read in the background.
type Frames struct {
	// C delivers the frames in order; it is closed when the connection
	// failed (Err) or the reading stopped.
	C   <-chan *wire.Frame
	err error // set before C is closed
}

// Err is why C was closed: the connection's error.
func (f *Frames) Err() error { return f.err }

// Read decodes the frames r receives, until Recv fails or ctx ends.
// Frames that do not decode are dropped and reported to malformed; nothing
// in them is executed.
func Read(ctx context.Context, r Receiver, malformed func(error)) *Frames {
	c := make(chan *wire.Frame, 64)
	fr := &Frames{C: c}
	go func() {
		defer close(c)
		for {
			raw, err := r.Recv()
			if err != nil {
				fr.err = err
				return
			}
			f, err := wire.Decode(raw, wire.MaxFrameSize)
			if err != nil {
				malformed(err)
				continue
			}
			select {
			case c <- f:
			case <-ctx.Done():
				fr.err = ctx.Err()
				return
			}
		}
	}()
	return fr
}
