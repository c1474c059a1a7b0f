package launcher_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/sdk/launcher"
	"github.com/conveyor-ci/conveyor/sdk/reliable"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// streamWait bounds waiting for the reader, on a busy machine.
const streamWait = 30 * time.Second

// prefixed is a length prefix declaring n bytes, followed by body.
func prefixed(n uint32, body []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, n), body...)
}

// withHeader is a whole frame of ping carrying a changed header byte.
func withHeader(t *testing.T, at int, v byte) []byte {
	t.Helper()
	b := wire.Marshal(&wire.Ping{Nonce: 1})
	if at >= wire.HeaderSize {
		t.Fatalf("offset %d is not in the header", at)
	}
	b[at] = v
	return b
}

// TestStreamConnBadInput writes bad bytes into a real pipe, as an agent's
// stdout or stdin is one, and reads them through StreamConn and
// reliable.Read the way the agent and the launchers do. A frame whose
// length prefix delimits it but which does not decode is counted and
// dropped, and the stream goes on: the genuine frame after it arrives. A
// length prefix over the limit (garbage text reads as one) or too short
// for a header cannot be skipped: it is counted and ends the reading with
// an error saying so, the connection then closes cleanly and the writer's
// next write fails. A stream ending within a frame ends like a closed one.
// Nothing panics, nothing after the bad bytes is executed.
func TestStreamConnBadInput(t *testing.T) {
	genuine := wire.Marshal(&wire.Ping{Nonce: 42, UnixNano: 7})
	tests := []struct {
		name      string
		bad       []byte
		truncated bool  // the writer stops within the frame
		malformed int   // frames reported as malformed
		survives  bool  // the genuine frame after bad still arrives
		err       error // why the reading ended (after the writer closed, if it survives)
	}{
		{name: "garbage with a frame's length", bad: prefixed(40, bytes.Repeat([]byte{0xa5}, 40)), malformed: 1, survives: true, err: io.EOF},
		{name: "unknown version", bad: withHeader(t, 4, wire.Version+1), malformed: 1, survives: true, err: io.EOF},
		{name: "reserved byte set", bad: withHeader(t, 7, 1), malformed: 1, survives: true, err: io.EOF},
		{name: "two bad frames", bad: append(withHeader(t, 7, 1), withHeader(t, 4, 0)...), malformed: 2, survives: true, err: io.EOF},
		{name: "garbage text", bad: []byte("GET / HTTP/1.1\r\nHost: conveyor\r\n\r\n"), malformed: 1, err: wire.ErrTooLarge},
		{name: "oversized length prefix", bad: prefixed(0xffffffff, []byte("not read")), malformed: 1, err: wire.ErrTooLarge},
		{name: "length just over the limit", bad: prefixed(wire.MaxFrameSize-4+1, nil), malformed: 1, err: wire.ErrTooLarge},
		{name: "length shorter than a header", bad: prefixed(3, []byte{1, 2, 3}), malformed: 1, err: wire.ErrMalformed},
		{name: "truncated frame", bad: genuine[:len(genuine)/2], truncated: true, err: io.EOF},
		{name: "truncated length prefix", bad: genuine[:2], truncated: true, err: io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer pw.Close()
			conn := launcher.NewStreamConn(pr, io.Discard, pr.Close, "pipe")
			defer conn.Close()
			var mu sync.Mutex
			var reported []error
			in := reliable.Read(context.Background(), conn, func(err error) {
				mu.Lock()
				defer mu.Unlock()
				reported = append(reported, err)
			})

			// Written from another goroutine: a stream the reader stops
			// reading must not hold the test up.
			go func() {
				if _, err := pw.Write(tt.bad); err != nil {
					return
				}
				if tt.truncated {
					pw.Close()
					return
				}
				if _, err := pw.Write(genuine); err != nil {
					return
				}
				if tt.survives {
					pw.Close()
				}
			}()

			var got []*wire.Frame
			deadline := time.After(streamWait)
		read:
			for {
				select {
				case f, ok := <-in.C:
					if !ok {
						break read
					}
					got = append(got, f)
				case <-deadline:
					t.Fatalf("the reading neither ended nor went on within %v; frames %d", streamWait, len(got))
				}
			}
			if !errors.Is(in.Err(), tt.err) {
				t.Fatalf("reading ended with %v, want %v", in.Err(), tt.err)
			}
			mu.Lock()
			n := len(reported)
			mu.Unlock()
			if n != tt.malformed {
				t.Fatalf("%d frames reported malformed (%v), want %d", n, reported, tt.malformed)
			}
			switch {
			case tt.survives && len(got) != 1:
				t.Fatalf("after the bad bytes %d frames arrived, want the genuine one", len(got))
			case tt.survives:
				if m, err := got[0].Message(); err != nil || m.(*wire.Ping).Nonce != 42 {
					t.Fatalf("the frame after the bad bytes: %+v, %v", m, err)
				}
			case len(got) != 0:
				t.Fatalf("%d frames delivered after the bad bytes, want none", len(got))
			}

			// A clean close: Close releases the pipe, and a writer still
			// writing learns at its next write.
			if err := conn.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			if tt.err != io.EOF {
				if _, err := pw.Write(genuine); err == nil {
					t.Fatal("the writer can still write into a closed stream")
				}
			}
		})
	}
}

// TestStreamConnOversizedAllocatesNothing: a length prefix of 4 GiB is
// refused before the body is allocated or read.
func TestStreamConnOversizedAllocatesNothing(t *testing.T) {
	r := io.MultiReader(bytes.NewReader(prefixed(0xffffffff, nil)), neverEnding{})
	conn := launcher.NewStreamConn(r, io.Discard, nil, "oversized")
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	raw, err := conn.Recv()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, wire.ErrTooLarge) || raw != nil {
		t.Fatalf("Recv = %d bytes, %v; want ErrTooLarge", len(raw), err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Fatalf("refusing the frame allocated %d bytes", grew)
	}
}

// neverEnding reads as an endless stream of zeros.
type neverEnding struct{}

func (neverEnding) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
