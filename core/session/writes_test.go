package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/sdk/reliable"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// fullDisk is a step's log on a disk that may be full: while full it
// refuses every write whole, as the file system does (buildlog cuts what
// a refused write took).
type fullDisk struct {
	mu      sync.Mutex
	err     error // nil: there is space
	data    []byte
	refused int
}

func (d *fullDisk) Write(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		d.refused++
		return 0, d.err
	}
	d.data = append(d.data, p...)
	return len(p), nil
}

func (d *fullDisk) set(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.err = err
}

func (d *fullDisk) state() (string, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return string(d.data), d.refused
}

var errNoSpace = fmt.Errorf("writing the log data/logs/x/9.log: %w", syscall.ENOSPC)

// TestWriteRefusedIsNeverAcknowledged: output the file system refuses is
// never acknowledged to the agent: it stays in the agent's outbox, the
// step's end waits behind it, and the master writes it again. Space back
// within the write timeout, the log gets every byte once and in order;
// never back, the step fails with the file and the system's error and is
// cancelled on the agent; an error the system did not raise (the master
// refuses the data) fails it at once. A persisted session's checkpoint
// never claims a frame not stored.
func TestWriteRefusedIsNeverAcknowledged(t *testing.T) {
	defer func(d time.Duration) { writeRetry = d }(writeRetry)
	writeRetry = 5 * time.Millisecond
	const lines = 2*reliable.AckEvery + 5
	tests := []struct {
		name      string
		persist   bool
		refusal   error
		spaceBack bool
		timeout   time.Duration
	}{
		{name: "space back", refusal: errNoSpace, spaceBack: true},
		{name: "space back, persisted session", persist: true, refusal: errNoSpace, spaceBack: true},
		{name: "space never back", refusal: errNoSpace, timeout: 2 * time.Second},
		{name: "space never back, persisted session", persist: true, refusal: errNoSpace, timeout: 2 * time.Second},
		{name: "refused by the master", refusal: errors.New("the data is refused"), timeout: never},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var persisted []uint64 // Acked of every checkpoint
			kinds := map[string]int{}
			// The write timeout bounds the retries, not the session timeout.
			opts := Options{SessionTimeout: never, WriteTimeout: tt.timeout, OnWriteError: func(kind string) {
				mu.Lock()
				kinds[kind]++
				mu.Unlock()
			}}
			if tt.persist {
				opts.Persist = func(rec *Record) error {
					if rec != nil {
						mu.Lock()
						persisted = append(persisted, rec.Acked)
						mu.Unlock()
					}
					return nil
				}
			}
			h, _ := established(t, opts, tt.persist)
			a := h.agent
			disk := &fullDisk{err: tt.refusal}
			step := h.running(context.Background(), &wire.RunStep{BuildID: "job#1"}, disk)
			var want strings.Builder
			for i := range lines {
				line := fmt.Sprintf("line %d\n", i)
				want.WriteString(line)
				a.send(stdout("job#1", 0, line))
			}
			a.send(&wire.Exit{BuildID: "job#1"})

			if tt.timeout == never {
				// Refused for good: the step fails at once and is cancelled.
				r := wait(t, step, "RunStep")
				var we *WriteError
				if !errors.As(r.err, &we) || we.Kind != KindLog || !strings.Contains(r.err.Error(), "the data is refused") {
					t.Fatalf("RunStep = %+v, %v; want a WriteError of kind log", r.res, r.err)
				}
				if _, c := expectInSession[*wire.Cancel](a); c.BuildID != "job#1" || !strings.Contains(c.Reason, "the data is refused") {
					t.Errorf("cancel %+v", c)
				}
				return
			}
			a.sync(1) // the master handled every frame
			notYet(t, step, "RunStep while its output cannot be stored")
			if p := a.ep.Pending(); p.Acked != 0 || p.Frames != lines+1 {
				t.Fatalf("the agent's outbox while the disk is full: %+v; want all %d frames kept, none acknowledged", p, lines+1)
			}
			mu.Lock()
			for _, acked := range persisted {
				if acked != 0 {
					t.Errorf("a checkpoint claims frames up to %d stored while none was", acked)
				}
			}
			mu.Unlock()
			eventually(t, "the write is tried again", func() bool { _, n := disk.state(); return n >= 3 })

			if tt.spaceBack {
				disk.set(nil)
				r := wait(t, step, "RunStep")
				if r.err != nil || r.res.Code != 0 {
					t.Fatalf("RunStep = %+v, %v; want success", r.res, r.err)
				}
				if got, _ := disk.state(); got != want.String() {
					t.Fatalf("log after space came back: %d bytes, want %d:\n%q", len(got), want.Len(), got)
				}
				eventually(t, "the master acknowledges everything", func() bool {
					a.sync(2)
					return a.ep.Pending().Frames == 0
				})
			} else {
				r := wait(t, step, "RunStep")
				var we *WriteError
				if !errors.As(r.err, &we) || we.Kind != KindLog || r.err.Error() != errNoSpace.Error() || !errors.Is(r.err, syscall.ENOSPC) {
					t.Fatalf("RunStep = %+v, %v; want the WriteError %q", r.res, r.err, errNoSpace)
				}
				if _, c := expectInSession[*wire.Cancel](a); c.BuildID != "job#1" || c.Reason != errNoSpace.Error() {
					t.Errorf("cancel %+v, want the step cancelled with the error", c)
				}
				if got, _ := disk.state(); got != "" {
					t.Errorf("the log got %q", got)
				}
				// Given up, its frames are dropped: the agent's outbox empties.
				eventually(t, "the master acknowledges the dropped frames", func() bool {
					a.sync(2)
					return a.ep.Pending().Frames == 0
				})
				if c := h.s.Counters(); c.Unexpect != 0 {
					t.Errorf("the failed step's frames counted as unexpected: %+v", c)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if kinds[KindLog] < 3 {
				t.Errorf("OnWriteError counted %v, want every failed attempt of kind log", kinds)
			}
			if tt.persist && tt.spaceBack && persisted[len(persisted)-1] != lines+1 {
				t.Errorf("last checkpoint acknowledged %d, want %d", persisted[len(persisted)-1], lines+1)
			}
		})
	}
}

// TestCheckpointRefusedIsNeverAcknowledged: while a persisted session's
// checkpoint cannot be written (the store's disk is full), nothing more is
// acknowledged; once it can, everything stored is; never, the session's
// running steps fail with the checkpoint's error and are cancelled.
func TestCheckpointRefusedIsNeverAcknowledged(t *testing.T) {
	defer func(d time.Duration) { writeRetry = d }(writeRetry)
	writeRetry = 5 * time.Millisecond
	for _, back := range []bool{true, false} {
		t.Run(fmt.Sprintf("space back %v", back), func(t *testing.T) {
			var mu sync.Mutex
			var full bool
			kinds := map[string]int{}
			opts := Options{SessionTimeout: never,
				OnWriteError: func(kind string) {
					mu.Lock()
					kinds[kind]++
					mu.Unlock()
				},
				Persist: func(rec *Record) error {
					mu.Lock()
					defer mu.Unlock()
					if full {
						return fmt.Errorf("save session: %w", syscall.ENOSPC)
					}
					return nil
				}}
			if !back {
				opts.WriteTimeout = 2 * time.Second
			}
			h, _ := established(t, opts, true)
			a := h.agent
			var out chunkWriter
			step := h.running(context.Background(), &wire.RunStep{BuildID: "job#1"}, &out)
			setFull := func(v bool) {
				mu.Lock()
				full = v
				mu.Unlock()
			}
			setFull(true)
			const lines = reliable.AckEvery + 5
			for i := range lines {
				a.send(stdout("job#1", 0, fmt.Sprintf("line %d\n", i)))
			}
			a.sync(1)
			if p := a.ep.Pending(); p.Acked != 0 || p.Frames != lines {
				t.Fatalf("the agent's outbox while checkpoints fail: %+v; want all %d frames kept", p, lines)
			}
			eventually(t, "the checkpoint is tried again", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return kinds[KindCheckpoint] >= 3
			})
			if !back {
				r := wait(t, step, "RunStep")
				var we *WriteError
				if !errors.As(r.err, &we) || we.Kind != KindCheckpoint || !errors.Is(r.err, syscall.ENOSPC) || !strings.HasPrefix(r.err.Error(), "writing the session checkpoint: ") {
					t.Fatalf("RunStep = %+v, %v; want the checkpoint's WriteError", r.res, r.err)
				}
				// The cancel is kept, not sent, while the store cannot record
				// it (a master frame is persisted before it goes).
				if p := h.s.Pending(); p.Frames != 1 {
					t.Errorf("master's outbox %+v, want the cancel kept", p)
				}
				return
			}
			notYet(t, step, "RunStep")
			setFull(false)
			eventually(t, "the master acknowledges everything", func() bool {
				a.sync(2)
				return a.ep.Pending().Frames == 0
			})
			a.send(&wire.Exit{BuildID: "job#1"})
			if r := wait(t, step, "RunStep"); r.err != nil || r.res.Code != 0 {
				t.Fatalf("RunStep = %+v, %v", r.res, r.err)
			}
			if got := len(out.nonEmpty()); got != lines {
				t.Errorf("%d writes, want %d", got, lines)
			}
		})
	}
}

// gatedSync is a step's log whose Sync, once armed, waits for release:
// the session can end while the master syncs a step's log for its Exit.
type gatedSync struct {
	armed   atomic.Bool
	entered chan struct{} // a value once an armed Sync started
	release chan struct{} // closed: the armed Sync returns
}

func (g *gatedSync) Write(p []byte) (int, error) { return len(p), nil }

func (g *gatedSync) Sync() (int64, error) {
	if g.armed.CompareAndSwap(true, false) {
		g.entered <- struct{}{}
		<-g.release
	}
	return -1, nil
}

// TestExitWhileSessionEnds: the session ends (the agent restarted) while
// the master syncs the log of a step whose Exit came in: the step fails
// with the session's end, once, and the Exit that comes late is dropped
// (it used to be sent on the closed exit channel: a panic).
func TestExitWhileSessionEnds(t *testing.T) {
	opts := Options{Persist: func(*Record) error { return nil }}
	h, _ := established(t, opts, true)
	a := h.agent
	out := &gatedSync{entered: make(chan struct{}, 1), release: make(chan struct{})}
	step := h.running(context.Background(), &wire.RunStep{BuildID: "job#1"}, out)
	out.armed.Store(true)
	a.send(&wire.Exit{BuildID: "job#1", Code: 3})
	wait(t, out.entered, "the sync of the step's log for its Exit")

	// The agent restarts and starts a new session on a new connection.
	h.connect(true)
	hs := h.startHandshake()
	a.hello(2)
	a.authenticate(a.challenge(true))
	r := wait(t, step, "RunStep")
	if !errors.Is(r.err, ErrAgentLost) || r.res != nil {
		t.Fatalf("RunStep = %+v, %v; want ErrAgentLost", r.res, r.err)
	}
	close(out.release)
	handshakeOK(t, hs, false)

	// The new session works.
	h.startServe()
	step = h.running(context.Background(), &wire.RunStep{BuildID: "job#2"}, io.Discard)
	a.send(&wire.Exit{BuildID: "job#2", Code: 0})
	if r := wait(t, step, "RunStep in the new session"); r.err != nil || r.res.Code != 0 {
		t.Fatalf("RunStep in the new session = %+v, %v", r.res, r.err)
	}
}

// TestWriteTimeoutDefault: unset, the write timeout is 60s, or the
// session timeout when shorter.
func TestWriteTimeoutDefault(t *testing.T) {
	tests := []struct {
		opts Options
		want time.Duration
	}{
		{Options{}, 60 * time.Second},
		{Options{SessionTimeout: 10 * time.Second}, 10 * time.Second},
		{Options{SessionTimeout: time.Hour}, 60 * time.Second},
		{Options{SessionTimeout: time.Hour, WriteTimeout: 90 * time.Second}, 90 * time.Second},
	}
	for _, tt := range tests {
		if got := New(tt.opts).opts.WriteTimeout; got != tt.want {
			t.Errorf("New(session_timeout %s, write_timeout %s): write timeout %s, want %s",
				tt.opts.SessionTimeout, tt.opts.WriteTimeout, got, tt.want)
		}
	}
}
