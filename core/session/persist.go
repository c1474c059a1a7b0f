package session

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/conveyor-ci/conveyor/sdk/reliable"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// A session established on a resumable link is persisted (Options.Persist)
// so that a master killed mid-build resumes it after its restart:
//
//   - every master frame is persisted, with the outbox's highest number,
//     before it is sent (reliable.Endpoint.OnAdd), so a number is never
//     given out twice;
//   - the agent's frames are acknowledged only at checkpoints: every step's
//     log is synced and its durable size persisted with the highest frame
//     delivered, then that number goes out as the Ack. After a crash the
//     log is cut back to the checkpoint and the agent sends everything
//     after it again: the log ends byte-identical.

// startPersisting persists a session just established on a resumable
// link, and from then on every frame it numbers.
func (s *Session) startPersisting(ep *reliable.Endpoint) error {
	if s.opts.Persist == nil {
		return nil
	}
	id, last, kept := ep.Snapshot()
	acked := ep.Acked()
	s.mu.Lock()
	s.persisting = true
	s.ck = Record{ID: id, Acked: acked, Last: last, Outbox: encodeFrames(kept), Features: s.features}
	s.mu.Unlock()
	s.watchOutbox(ep)
	return s.persist()
}

// watchOutbox persists the outbox whenever ep numbers a frame.
func (s *Session) watchOutbox(ep *reliable.Endpoint) {
	ep.OnAdd(func(id, last uint64, kept []*wire.Frame) error {
		s.mu.Lock()
		s.ck.ID, s.ck.Last, s.ck.Outbox = id, last, encodeFrames(kept)
		s.mu.Unlock()
		return s.persist()
	})
}

func encodeFrames(frames []*wire.Frame) [][]byte {
	out := make([][]byte, 0, len(frames))
	for _, f := range frames {
		f.MAC = nil
		if b, err := f.Encode(); err == nil {
			out = append(out, b)
		}
	}
	return out
}

// persist writes the last checkpoint out; nothing when the session is not
// persisted.
func (s *Session) persist() error {
	s.persistMu.Lock()
	defer s.persistMu.Unlock()
	s.mu.Lock()
	if !s.persisting || s.opts.Persist == nil {
		s.mu.Unlock()
		return nil
	}
	rec := s.ck
	rec.Outbox = slices.Clone(s.ck.Outbox)
	rec.Exits = slices.Clone(s.ck.Exits)
	rec.Features = slices.Clone(s.ck.Features)
	rec.Steps = nil
	for k, st := range s.steps {
		rec.Steps = append(rec.Steps, StepRecord{Build: k.build, Index: k.index, LogSize: st.size})
	}
	for k, size := range s.restored {
		rec.Steps = append(rec.Steps, StepRecord{Build: k.build, Index: k.index, LogSize: size})
	}
	s.mu.Unlock()
	slices.SortFunc(rec.Steps, func(a, b StepRecord) int {
		if c := strings.Compare(a.Build, b.Build); c != 0 {
			return c
		}
		return int(a.Index) - int(b.Index)
	})
	if err := s.opts.Persist(&rec); err != nil {
		return fmt.Errorf("persist session %016x: %w", rec.ID, err)
	}
	return nil
}

// forget replaces the persisted session, once it ended, with a record of
// its end: a restarted master tells its agent at once (see Restore).
func (s *Session) forget() {
	s.persistMu.Lock()
	defer s.persistMu.Unlock()
	s.mu.Lock()
	was := s.persisting
	s.persisting = false
	id := s.ck.ID
	s.mu.Unlock()
	if was && s.opts.Persist != nil {
		if err := s.opts.Persist(&Record{ID: id, Ended: true}); err != nil {
			s.log.Error("forgetting the ended session", "error", err)
		}
	}
}

// isPersisting reports whether the current session is persisted.
func (s *Session) isPersisting() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.persisting
}

// checkpoint makes the output of every frame stored so far durable,
// persists it and acknowledges it. Only the serving goroutine calls it.
func (s *Session) checkpoint(ep *reliable.Endpoint) error {
	return s.checkpointThrough(ep, s.storedThrough(ep))
}

// checkpointThrough is checkpoint for the frames up to delivered, every
// one of them stored (the logs hold nothing of a later frame).
func (s *Session) checkpointThrough(ep *reliable.Endpoint, delivered uint64) error {
	s.mu.Lock()
	steps := make([]*step, 0, len(s.steps))
	for _, st := range s.steps {
		steps = append(steps, st)
	}
	s.mu.Unlock()
	sizes := make([]int64, len(steps))
	for i, st := range steps {
		n, err := syncOut(st.out)
		if err != nil {
			return &WriteError{Kind: KindLog, Err: err}
		}
		sizes[i] = n
	}
	s.mu.Lock()
	for i, st := range steps {
		st.size = sizes[i]
	}
	s.ck.Acked = delivered
	s.mu.Unlock()
	if err := s.persist(); err != nil {
		return err
	}
	if err := ep.HandledThrough(delivered); err != nil {
		return err
	}
	return ep.FlushAck()
}

// checkpointDue reports whether reliable.AckEvery frames or AckBytes were
// delivered since the last checkpoint (any: whether anything was).
func (s *Session) checkpointDue(ep *reliable.Endpoint, any bool) bool {
	delivered := s.storedThrough(ep)
	s.mu.Lock()
	defer s.mu.Unlock()
	if any {
		return delivered > s.ck.Acked
	}
	return delivered >= s.ck.Acked+reliable.AckEvery || (delivered > s.ck.Acked && ep.UnackedBytes() >= reliable.AckBytes)
}

// syncOut syncs a step's writer; -1 when it cannot say its durable size.
func syncOut(w any) (int64, error) {
	sy, ok := w.(Syncer)
	if !ok {
		return -1, nil
	}
	return sy.Sync()
}

// Restore makes rec, the persisted session of a master that stopped
// without ending it, the node's current session: held for the agent to
// resume it (for the session timeout), its steps waiting to be
// re-attached (Reattach, Wait).
//
// A record of an ended session restores nothing: its agent, which may
// still hold the session (the master stopped gracefully), is told on the
// first link that the session is over.
func (s *Session) Restore(rec *Record) error {
	owners.add(s.opts.Node, rec.ID)
	if rec.Ended {
		s.mu.Lock()
		s.endedID = rec.ID
		s.mu.Unlock()
		return nil
	}
	frames := make([]*wire.Frame, 0, len(rec.Outbox))
	for _, b := range rec.Outbox {
		f, err := wire.Decode(b, wire.MaxFrameSize)
		if err != nil {
			return fmt.Errorf("restore session %016x: %w", rec.ID, err)
		}
		frames = append(frames, f)
	}
	ep := reliable.RestoreEndpoint(DefaultOutboxBytes, rec.ID, rec.Last, frames, rec.Acked)
	s.mu.Lock()
	s.ep, s.ended, s.persisting, s.ck = ep, nil, true, *rec
	s.features = rec.Features
	s.restored = map[stepKey]int64{}
	for _, st := range rec.Steps {
		s.restored[stepKey{st.Build, st.Index}] = st.LogSize
	}
	s.hold(ep, errors.New("the master restarted"))
	s.mu.Unlock()
	s.watchOutbox(ep)
	s.log.Info("session restored: waiting for the agent to resume it", "session", fmt.Sprintf("%016x", rec.ID),
		"steps", len(rec.Steps), "acked", rec.Acked)
	return nil
}

// takeEnded returns the ended session Restore found, once; 0 when none.
func (s *Session) takeEnded() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.endedID
	s.endedID = 0
	return id
}

// Reattach looks up a step of a restored session: it reports how the step
// ended, if the agent said so before the master stopped, or else the
// durable size of its log at the last checkpoint (the log is to be cut
// back to it; the agent sends the rest again). ok is false when the
// session does not know the step.
func (s *Session) Reattach(build string, index uint32) (logSize int64, exit *StepResult, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended != nil {
		return 0, nil, false
	}
	for _, e := range s.ck.Exits {
		if e.Build == build && e.Index == index {
			return 0, &StepResult{Code: e.Code, Error: e.Error}, true
		}
	}
	size, ok := s.restored[stepKey{build, index}]
	if !ok || size < 0 {
		return 0, nil, false
	}
	return size, nil, true
}

// Recorded tells the session that the build service recorded a step's
// result: a persisted session need not remember it any more.
func (s *Session) Recorded(build string, index uint32) {
	s.mu.Lock()
	s.ck.Exits = slices.DeleteFunc(s.ck.Exits, func(e ExitRecord) bool { return e.Build == build && e.Index == index })
	s.mu.Unlock()
}
