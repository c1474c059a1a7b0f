package reliable

import (
	"context"
	"errors"

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
// in them is executed. A Recv failing on a frame it could not delimit (an
// error wrapping wire.ErrTooLarge or wire.ErrMalformed, which ends a byte
// stream) is reported to malformed too, then ends the reading.
func Read(ctx context.Context, r Receiver, malformed func(error)) *Frames {
	c := make(chan *wire.Frame, 64)
	fr := &Frames{C: c}
	go func() {
		defer close(c)
		for {
			raw, err := r.Recv()
			if err != nil {
				if errors.Is(err, wire.ErrTooLarge) || errors.Is(err, wire.ErrMalformed) {
					malformed(err)
				}
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
