package session

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/conveyor-ci/conveyor/sdk/reliable"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// What the agent sends to be stored (step output, artifact chunks) is
// acknowledged only once it is written (and, for a persisted session,
// durable at a checkpoint): a frame whose write failed is never
// acknowledged, so it stays in the agent's outbox. When the operating
// system refuses a write (the disk is full, say), the session keeps the
// frame and every later one of the agent, in order and unacknowledged,
// and writes them again every writeRetry; the agent's outbox filling up
// makes its steps wait. A disk that gets space back within the write
// timeout (Options.WriteTimeout) loses nothing: the log ends byte-identical. Past it, the steps
// whose writes fail end with a WriteError and are cancelled on the agent;
// the rest goes on (docs/sessions.md, "Disk full and write errors").

// writeRetry is how often the session writes again what the file system
// refused.
var writeRetry = time.Second

// maxBacklogBytes bounds the agent's frames the session keeps while a
// write fails: normally the agent's outbox (its -buffer-mib) bounds them
// first.
const maxBacklogBytes = 256 << 20

// Kinds of storage a write error is about (WriteError.Kind).
const (
	KindLog        = "log"
	KindArtifact   = "artifact"
	KindCheckpoint = "checkpoint"
	KindStore      = "store"
)

// WriteError: what the agent sent for a step could not be stored. Its text
// names the file and the operating system's error ("writing the log
// data/logs/x/9.log: no space left on device").
type WriteError struct {
	// Kind is what was written: KindLog, KindArtifact or KindCheckpoint.
	Kind string
	Err  error
}

func (e *WriteError) Error() string { return e.Err.Error() }
func (e *WriteError) Unwrap() error { return e.Err }

// pendingFrame is a numbered frame of the agent not stored yet.
type pendingFrame struct {
	seq uint64
	msg wire.Message
}

// writes is the state of a session's writes that failed.
type writes struct {
	mu       sync.Mutex // held while storing the agent's frames
	backlog  []pendingFrame
	bytes    int
	since    time.Time  // when the first write of the backlog failed
	failed   int        // failed attempts since
	logged   string     // the error logged last
	ckMu     sync.Mutex // guards what follows (the session timeout's goroutine resets it)
	ckSince  time.Time  // when checkpoints began to fail (zero: they work)
	ckFailed int

	head atomic.Uint64 // the number of the first frame of the backlog, 0 when none
}

// retryable reports whether a failed write may succeed later: the
// operating system refused it (no space, quota, I/O error), as opposed to
// data the master refuses (a bad artifact path, a limit).
func retryable(err error) bool {
	var errno syscall.Errno
	return errors.As(err, &errno)
}

// deliver stores what a numbered frame of the agent carries, or queues it
// behind the frames not stored yet. Only the serving goroutine calls it.
func (s *Session) deliver(ep *reliable.Endpoint, seq uint64, msg wire.Message) {
	w := &s.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.backlog) > 0 {
		if k, ok := frameStep(msg); ok && s.isAbandoned(k) {
			return
		}
		w.backlog = append(w.backlog, pendingFrame{seq: seq, msg: msg})
		w.bytes += payload(msg)
		if w.bytes > maxBacklogBytes {
			s.giveUp(ep, fmt.Errorf("more than %d MiB waits to be stored", maxBacklogBytes>>20))
		}
		return
	}
	err := s.store(ep, seq, msg)
	if err == nil {
		return
	}
	var we *WriteError
	if !errors.As(err, &we) || !retryable(err) {
		s.failStep(ep, msg, err)
		return
	}
	w.backlog = append(w.backlog, pendingFrame{seq: seq, msg: msg})
	w.bytes += payload(msg)
	w.head.Store(seq)
	w.since, w.failed = time.Now(), 1
	s.writeFailed(we)
}

// stalled reports whether writes or checkpoints wait to be retried. Only
// the serving goroutine calls it.
func (s *Session) stalled() bool {
	return s.w.pending() || !s.ckOK()
}

func (w *writes) pending() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.backlog) > 0
}

// retryWrites writes again what the file system refused, in order,
// until a write fails again; past the write timeout it gives up on the
// steps whose writes fail. It then acknowledges what got stored. Only the
// serving goroutine calls it.
func (s *Session) retryWrites(ep *reliable.Endpoint) error {
	w := &s.w
	w.mu.Lock()
	stored := false
	for len(w.backlog) > 0 {
		p := w.backlog[0]
		err := s.store(ep, p.seq, p.msg)
		if err == nil {
			w.pop()
			stored = true
			continue
		}
		var we *WriteError
		if !errors.As(err, &we) || !retryable(err) {
			s.failStep(ep, p.msg, err)
			continue
		}
		w.failed++
		s.writeFailed(we)
		if time.Since(w.since) < s.opts.WriteTimeout {
			break
		}
		s.failStep(ep, p.msg, err)
	}
	if len(w.backlog) == 0 && !w.since.IsZero() {
		if stored {
			s.log.Info("storing works again: what waited is stored and acknowledged",
				"waited", time.Since(w.since).Round(time.Millisecond), "failed_attempts", w.failed)
		}
		w.since, w.failed, w.logged = time.Time{}, 0, ""
	}
	w.mu.Unlock()
	if s.isPersisting() {
		if s.checkpointDue(ep, true) || !s.ckOK() {
			s.checkpointed(ep, s.checkpoint(ep))
		}
		return nil
	}
	if err := ep.HandledThrough(s.storedThrough(ep)); err != nil {
		return err
	}
	return ep.FlushAck()
}

// pop drops the first frame of the backlog; w.mu is held.
func (w *writes) pop() {
	w.bytes -= payload(w.backlog[0].msg)
	w.backlog = w.backlog[1:]
	w.setHead()
}

func (w *writes) setHead() {
	if len(w.backlog) == 0 {
		w.backlog, w.bytes = nil, 0
		w.head.Store(0)
		return
	}
	w.head.Store(w.backlog[0].seq)
}

// storedThrough is the highest number of the agent's frames stored: all
// delivered but those of the backlog. Only the serving goroutine calls it.
func (s *Session) storedThrough(ep *reliable.Endpoint) uint64 {
	if h := s.w.head.Load(); h != 0 {
		return h - 1
	}
	return ep.Delivered()
}

// writeFailed counts a failed write and logs it when its error changed;
// s.w.mu is held.
func (s *Session) writeFailed(we *WriteError) {
	if s.opts.OnWriteError != nil {
		s.opts.OnWriteError(we.Kind)
	}
	if msg := we.Error(); msg != s.w.logged {
		s.w.logged = msg
		s.log.Error("cannot store what the agent sent: it stays unacknowledged in the agent's outbox, retrying",
			"error", we, "every", writeRetry, "give_up_after", s.opts.WriteTimeout)
	}
}

// giveUp fails every step with frames in the backlog; s.w.mu is held.
func (s *Session) giveUp(ep *reliable.Endpoint, why error) {
	for len(s.w.backlog) > 0 {
		msg := s.w.backlog[0].msg
		s.failStep(ep, msg, &WriteError{Kind: kindOf(msg), Err: why})
	}
}

// store writes what msg carries; s.w.mu is held.
func (s *Session) store(ep *reliable.Endpoint, seq uint64, msg wire.Message) error {
	switch m := msg.(type) {
	case *wire.Output:
		st := s.step(m.BuildID, m.StepIndex, false)
		if st == nil {
			s.dropUnknown(stepKey{m.BuildID, m.StepIndex})
			return nil
		}
		if _, err := st.out.Write(m.Data); err != nil {
			return &WriteError{Kind: KindLog, Err: err}
		}
	case *wire.FileChunk:
		st := s.collecting(m.BuildID)
		if st == nil {
			s.dropUnknown(chunkKey(m.BuildID))
			return nil
		}
		if err := st.files.Chunk(m.Path, fs.FileMode(m.Mode), int64(m.Offset), m.Data, m.Final); err != nil {
			return &WriteError{Kind: KindArtifact, Err: err}
		}
	case *wire.Exit:
		st := s.step(m.BuildID, m.StepIndex, false)
		if st == nil {
			s.dropUnknown(stepKey{m.BuildID, m.StepIndex})
			return nil
		}
		persisting := s.isPersisting()
		if persisting {
			// The result is durable before anyone acts on it.
			if _, err := syncOut(st.out); err != nil {
				return &WriteError{Kind: KindLog, Err: err}
			}
		}
		// The step is taken out of the session under s.mu, as end() and a
		// give-up take all of them: whoever takes it is the only one to
		// end it. The session may have ended since the lookup (the agent
		// restarted during the sync): its exit is closed, nothing to do.
		// Its result goes in the checkpoint under the same lock: a
		// checkpoint written meanwhile has the step or its result.
		k := stepKey{m.BuildID, m.StepIndex}
		s.mu.Lock()
		if s.steps[k] != st {
			s.mu.Unlock()
			return nil
		}
		delete(s.steps, k)
		if persisting {
			s.ck.Exits = append(s.ck.Exits, ExitRecord{Build: m.BuildID, Index: m.StepIndex, Code: int(m.Code), Error: m.Error})
		}
		s.mu.Unlock()
		if persisting {
			s.checkpointed(ep, s.checkpointThrough(ep, seq))
		}
		st.exit <- m
	}
	return nil
}

// dropUnknown drops a frame of a step the session does not run: quietly
// when the step failed for a write error (the agent sent its output
// before the cancel reached it).
func (s *Session) dropUnknown(k stepKey) {
	if !s.isAbandoned(k) {
		s.unexpected.Add(1)
	}
}

// abandon makes the session drop the frames of a step failed for a write
// error quietly (the agent sent them before the cancel reached it).
func (s *Session) abandon(k stepKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.abandoned == nil {
		s.abandoned = map[stepKey]bool{}
	}
	s.abandoned[k] = true
}

func (s *Session) isAbandoned(k stepKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.abandoned[k]
}

// frameStep is the step a frame of the agent is about.
func frameStep(msg wire.Message) (stepKey, bool) {
	switch m := msg.(type) {
	case *wire.Output:
		return stepKey{m.BuildID, m.StepIndex}, true
	case *wire.Exit:
		return stepKey{m.BuildID, m.StepIndex}, true
	case *wire.FileChunk:
		return chunkKey(m.BuildID), true
	}
	return stepKey{}, false
}

// chunkKey stands for the artifact collection of build in s.w.abandoned:
// a chunk does not name its step.
func chunkKey(build string) stepKey { return stepKey{build, ^uint32(0)} }

// kindOf is the storage msg's data goes to.
func kindOf(msg wire.Message) string {
	if _, ok := msg.(*wire.FileChunk); ok {
		return KindArtifact
	}
	return KindLog
}

func payload(msg wire.Message) int {
	switch m := msg.(type) {
	case *wire.Output:
		return len(m.Data)
	case *wire.FileChunk:
		return len(m.Data)
	}
	return 0
}

// failStep ends the step msg is about with err (its RunStep or Collect
// returns it), drops its frames from the backlog and cancels it on the
// agent; s.w.mu is held.
func (s *Session) failStep(ep *reliable.Endpoint, msg wire.Message, err error) {
	k, _ := frameStep(msg)
	s.mu.Lock()
	st := s.steps[k]
	if fc, ok := msg.(*wire.FileChunk); ok {
		for key, c := range s.steps {
			if key.build == fc.BuildID && c.files != nil {
				k, st = key, c
			}
		}
	}
	if st != nil {
		delete(s.steps, k)
	}
	s.mu.Unlock()
	s.abandon(k)
	files := st != nil && st.files != nil
	if files {
		s.abandon(chunkKey(k.build))
	}
	s.w.backlog = slices.DeleteFunc(s.w.backlog, func(p pendingFrame) bool {
		pk, _ := frameStep(p.msg)
		if _, chunk := p.msg.(*wire.FileChunk); chunk {
			return files && pk.build == k.build
		}
		return pk == k
	})
	s.w.bytes = 0
	for _, p := range s.w.backlog {
		s.w.bytes += payload(p.msg)
	}
	s.w.setHead()
	if st == nil {
		return
	}
	var we *WriteError
	if !errors.As(err, &we) {
		we = &WriteError{Kind: kindOf(msg), Err: err}
	}
	s.log.Error("giving up storing what the agent sends: the step fails and is cancelled",
		"build", k.build, "step", k.index, "error", we, "failed_attempts", s.w.failed)
	st.err = we
	close(st.exit)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), cancelGrace)
		defer cancel()
		if err := ep.Send(ctx, &wire.Cancel{BuildID: k.build, Reason: we.Error()}); err != nil {
			s.log.Warn("cancelling the step on the agent", "build", k.build, "error", err)
		}
	}()
}

// checkpointed handles a checkpoint's outcome: a failed one is retried
// (nothing more is acknowledged meanwhile) until the write timeout, then
// every step of the session fails with its error and, once its stale
// checkpoint is deleted, the session is no longer persisted (acknowledged
// once stored, as on a link that cannot resume: a master restart loses
// it). Only the serving goroutine calls it.
func (s *Session) checkpointed(ep *reliable.Endpoint, err error) {
	w := &s.w
	w.ckMu.Lock()
	since, failed := w.ckSince, w.ckFailed
	if err == nil {
		w.ckSince, w.ckFailed = time.Time{}, 0
		w.ckMu.Unlock()
		if !since.IsZero() {
			s.log.Info("checkpoints work again", "waited", time.Since(since).Round(time.Millisecond), "failed_attempts", failed)
		}
		return
	}
	first := since.IsZero()
	if first {
		since = time.Now()
		w.ckSince = since
	}
	w.ckFailed++
	failed = w.ckFailed
	giveUp := time.Since(since) >= s.opts.WriteTimeout
	if giveUp {
		w.ckSince, w.ckFailed = time.Time{}, 0
	}
	w.ckMu.Unlock()
	we := &WriteError{Kind: KindCheckpoint, Err: err}
	if !errors.As(err, &we) {
		we = &WriteError{Kind: KindCheckpoint, Err: fmt.Errorf("writing the session checkpoint: %w", err)}
	}
	if s.opts.OnWriteError != nil {
		s.opts.OnWriteError(we.Kind)
	}
	if first {
		s.log.Error("cannot checkpoint the session: what the agent sent stays unacknowledged, retrying",
			"error", we, "every", writeRetry, "give_up_after", s.opts.WriteTimeout)
	}
	if !giveUp {
		return
	}
	s.mu.Lock()
	steps := s.steps
	s.steps = map[stepKey]*step{}
	s.mu.Unlock()
	// The session goes on unpersisted only once its stale checkpoint is
	// deleted: a restarted master must not restore it. Until then nothing
	// more is acknowledged, and the checkpoint is tried again.
	s.persistMu.Lock()
	var ferr error
	if s.opts.Persist != nil {
		ferr = s.opts.Persist(nil)
	}
	if ferr == nil {
		s.mu.Lock()
		s.persisting = false
		s.mu.Unlock()
	}
	s.persistMu.Unlock()
	s.log.Error("giving up checkpointing the session: its steps fail and are cancelled",
		"steps", len(steps), "error", we, "failed_attempts", failed, "persisted_no_more", ferr == nil)
	for k, st := range steps {
		s.abandon(k)
		if st.files != nil {
			s.abandon(chunkKey(k.build))
		}
		st.err = we
		close(st.exit)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), cancelGrace)
			defer cancel()
			_ = ep.Send(ctx, &wire.Cancel{BuildID: k.build, Reason: we.Error()})
		}()
	}
}

// ckOK reports whether the last checkpoint worked.
func (s *Session) ckOK() bool {
	s.w.ckMu.Lock()
	defer s.w.ckMu.Unlock()
	return s.w.ckSince.IsZero()
}

// resetWrites forgets the failed writes of a session that ended.
func (s *Session) resetWrites() {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	s.w.backlog, s.w.bytes, s.w.since, s.w.failed, s.w.logged = nil, 0, time.Time{}, 0, ""
	s.w.head.Store(0)
	s.w.ckMu.Lock()
	s.w.ckSince, s.w.ckFailed = time.Time{}, 0
	s.w.ckMu.Unlock()
	s.mu.Lock()
	s.abandoned = nil
	s.mu.Unlock()
}
