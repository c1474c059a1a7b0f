package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"sync"

	"github.com/conveyor-ci/conveyor/agent/runner"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// MaxStdinBuffer bounds the standard input a step has not read yet; a
// master sending more fails the step.
const MaxStdinBuffer = 64 << 20

// errStdinOverflow cancels a step whose unread standard input exceeds
// MaxStdinBuffer.
var errStdinOverflow = fmt.Errorf("standard input: more than %d bytes unread", MaxStdinBuffer)

// stdinFeed is a step's standard input: the data of its Stdin frames, in
// order, until the one with EOF. The session's reading goroutine pushes
// without waiting (a Cancel or a Ping must not queue behind a step that
// reads slowly); the step reads.
type stdinFeed struct {
	mu     sync.Mutex
	wake   chan struct{} // closed and replaced on every change
	bufs   [][]byte
	size   int
	eof    bool // the last frame came
	closed bool // the step ended: reads end, pushes are dropped
}

func newStdinFeed() *stdinFeed { return &stdinFeed{wake: make(chan struct{})} }

// push appends data; it fails when the unread data would exceed
// MaxStdinBuffer.
func (f *stdinFeed) push(data []byte, eof bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || f.eof {
		f.eof = f.eof || eof
		return nil
	}
	if f.size+len(data) > MaxStdinBuffer {
		return errStdinOverflow
	}
	if len(data) > 0 {
		f.bufs = append(f.bufs, append([]byte(nil), data...)) // the frame's buffer is not ours
		f.size += len(data)
	}
	f.eof = eof
	close(f.wake)
	f.wake = make(chan struct{})
	return nil
}

// Read reads what came, waiting for more until EOF or close.
func (f *stdinFeed) Read(p []byte) (int, error) {
	for {
		f.mu.Lock()
		switch {
		case len(f.bufs) > 0:
			n := copy(p, f.bufs[0])
			if n == len(f.bufs[0]) {
				f.bufs = f.bufs[1:]
			} else {
				f.bufs[0] = f.bufs[0][n:]
			}
			f.size -= n
			f.mu.Unlock()
			return n, nil
		case f.eof || f.closed:
			f.mu.Unlock()
			return 0, io.EOF
		}
		wait := f.wake
		f.mu.Unlock()
		<-wait
	}
}

// close ends reads and drops what was not read; it reports whether the
// last frame came.
func (f *stdinFeed) close() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.closed {
		f.closed, f.bufs, f.size = true, nil, 0
		close(f.wake)
		f.wake = make(chan struct{})
	}
	return f.eof
}

func (f *stdinFeed) isClosed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// stdin handles a Stdin frame: the first one of a step comes before its
// RunStep and announces its standard input; the others feed the running
// step's.
func (a *Agent) stdin(m *wire.Stdin) {
	a.mu.Lock()
	st, running := a.steps[m.BuildID]
	in := a.stdins[m.BuildID]
	switch {
	case running && st.stdin == nil:
		a.mu.Unlock()
		a.unexpected.Add(1)
		a.log.Warn("dropped standard input for a step that reads /dev/null", "build", m.BuildID)
		return
	case in == nil:
		in = newStdinFeed()
		a.stdins[m.BuildID] = in
	case in.isClosed():
		// The rest of the input of a step that ended without reading it
		// all: dropped, and forgotten with its last frame.
		if m.EOF {
			delete(a.stdins, m.BuildID)
		}
		a.mu.Unlock()
		return
	}
	a.mu.Unlock()
	if err := in.push(m.Data, m.EOF); err != nil {
		a.log.Warn("standard input overflow", "build", m.BuildID, "error", err)
		in.close()
		a.cancel(m.BuildID, err)
	}
}

// collect sends the files a Collect asks for in the background, then
// reports the end with an Exit (see wire.Collect).
func (a *Agent) collect(s *sess, m *wire.Collect) {
	log := a.log.With("build", m.BuildID, "collect", m.StepIndex)
	exit := func(code int32, msg string) {
		if err := s.ep.Send(s.ctx, &wire.Exit{BuildID: m.BuildID, StepIndex: m.StepIndex, Code: code, Error: msg}); err != nil {
			log.Warn("could not report the end of the collection", "error", err)
		}
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	if !a.track(s, m.BuildID, &step{cancel: cancel}, false) {
		cancel(nil)
		go exit(-1, "build "+m.BuildID+" already runs a step on this agent")
		return
	}
	log.Info("sending files", "patterns", m.Patterns)
	go func() {
		defer func() {
			a.mu.Lock()
			delete(a.steps, m.BuildID)
			a.mu.Unlock()
			s.wg.Done()
		}()
		code, msg := a.sendFiles(ctx, s, m)
		log.Info("files sent", "code", code, "error", msg)
		exit(code, msg)
	}()
}

// sendFiles runs a collection and returns its Exit's code and error.
func (a *Agent) sendFiles(ctx context.Context, s *sess, m *wire.Collect) (int32, string) {
	send := func(path string, mode fs.FileMode, off int64, data []byte, final bool) error {
		return s.ep.Send(s.ctx, &wire.FileChunk{BuildID: m.BuildID, Path: path, Mode: uint32(mode), Offset: uint64(off), Data: data, Final: final})
	}
	res, err := runner.Collect(ctx, a.cfg.Workdir, m.Workdir, m.Patterns, send)
	if err != nil {
		if ctx.Err() != nil {
			return -1, "cancelled: " + context.Cause(ctx).Error()
		}
		if errors.Is(err, s.ctx.Err()) || s.ctx.Err() != nil {
			return -1, "files cannot reach the master: " + err.Error()
		}
		return -1, err.Error()
	}
	var notes []string
	code := int32(0)
	for _, p := range res.Missing {
		notes = append(notes, fmt.Sprintf("no file matches %q", p))
		code = 1
	}
	if len(res.Refused) > 0 {
		notes = append(notes, res.Refused...)
		code = 2
	}
	var b strings.Builder
	for _, n := range notes {
		fmt.Fprintf(&b, "conveyor-agent: artifacts: %s\n", n)
	}
	for out := []byte(b.String()); len(out) > 0; {
		chunk := out[:min(len(out), runner.ChunkSize)]
		out = out[len(chunk):]
		if err := s.ep.Send(s.ctx, &wire.Output{BuildID: m.BuildID, StepIndex: m.StepIndex, Stream: wire.StreamStderr, Data: chunk}); err != nil {
			return -1, "files cannot reach the master: " + err.Error()
		}
	}
	return code, strings.Join(notes, "; ")
}
