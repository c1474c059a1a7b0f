// Package builds triggers, runs, cancels and records builds: each build of
// a job is numbered, queued until a node can take it, runs its steps in
// order on that node's agent and keeps its status and log in the store.
package builds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/core/buildlog"
	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/scheduler"
	"github.com/conveyor-ci/conveyor/core/session"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// Errors of the service.
var (
	ErrUnknownJob = errors.New("no such job")
	ErrFinished   = errors.New("build already finished")
)

// Service runs builds.
type Service struct {
	cfg   atomic.Pointer[config.Config] // SetConfig swaps it (a reload)
	store *store.Store
	nodes *nodes.Manager
	sched *scheduler.Scheduler
	obs   Observer
	log   hclog.Logger

	mu     sync.Mutex
	active map[string]*active // queued or running, by key
	// unsaved holds the builds that finished but whose end the store
	// could not record (finalSaveBound): they show failed, with why,
	// until the server restarts (Recover then records them interrupted).
	unsaved map[string]*store.Build
}

// finalSaveRetry is how often a build's end the store refused is saved
// again; finalSaveBound, for how long before the build fails (60s: a
// node's default write_timeout, the bound of the other writes).
var (
	finalSaveRetry = time.Second
	finalSaveBound = 60 * time.Second
)

// active is a build that has not finished.
type active struct {
	build  *store.Build // guarded by Service.mu
	cancel context.CancelCauseFunc
	ctx    context.Context
	log    *buildlog.Log // set once running
	done   chan struct{}
}

// Observer is told when builds start and finish (core/metrics is one).
type Observer interface {
	// Started: a build of job left the queue after waiting there.
	Started(job string, waited time.Duration)
	// Finished: a build of job ended with status.
	Finished(job, status string)
	// WriteFailed: writing to storage of kind (session.KindStore: the
	// build's record) failed.
	WriteFailed(kind string)
}

// New returns a service over the store and nodes; obs, when not nil, is
// told of every build's start and end.
func New(cfg *config.Config, st *store.Store, nm *nodes.Manager, obs Observer, logger hclog.Logger) *Service {
	s := &Service{store: st, nodes: nm, sched: scheduler.New(nm), obs: obs, log: logger,
		active: map[string]*active{}, unsaved: map[string]*store.Build{}}
	s.cfg.Store(cfg)
	return s
}

// SetConfig makes cfg's jobs the ones builds are triggered of (a reload).
// Queued and running builds keep the job definition they were triggered
// with; a removed job's builds finish, then its history stays in the
// store, out of the API until the job comes back.
func (s *Service) SetConfig(cfg *config.Config) { s.cfg.Store(cfg) }

// Queued is how many builds wait in the queue.
func (s *Service) Queued() int { return len(s.sched.Queued()) }

// Key names a build: "job#12".
func Key(job string, n int) string { return job + "#" + strconv.Itoa(n) }

// Recover deals with the builds that were queued or running when the
// server last stopped: a running build whose node's agent session was
// persisted (a resumable launcher) re-attaches to its running step and
// goes on once the agent resumes the session; the others are marked failed,
// so history never shows a build that can't progress.
func (s *Service) Recover() error {
	unfinished, err := s.store.Unfinished()
	if err != nil {
		return fmt.Errorf("recover builds: %w", err)
	}
	now := time.Now()
	for _, b := range unfinished {
		if b.Status == store.StatusRunning {
			ok, err := s.reattach(b)
			if ok {
				continue
			}
			if err != nil {
				s.log.Warn("cannot re-attach to the running build", "build", Key(b.Job, b.Number), "error", err)
			}
		}
		b.Status, b.Reason, b.FinishedAt = store.StatusFailure, "the server stopped while the build was "+b.Status, &now
		if err := s.store.Save(b); err != nil {
			return fmt.Errorf("recover build %s: %w", Key(b.Job, b.Number), err)
		}
		s.log.Warn("build interrupted by a server stop", "build", Key(b.Job, b.Number))
	}
	return nil
}

// reattach resumes build b, which was running when the server stopped, if
// its node's session was restored and knows its running step.
func (s *Service) reattach(b *store.Build) (bool, error) {
	j, n := s.cfg.Load().Job(b.Job), s.nodes.Get(b.Node)
	if j == nil || n == nil || len(b.Steps) == 0 || len(b.Steps) > len(j.Steps) {
		return false, nil
	}
	sess := n.Session()
	if sess == nil {
		return false, nil
	}
	key := Key(b.Job, b.Number)
	idx := len(b.Steps) - 1
	// The step running, or else the artifact collection after the last
	// step that ran: it is collected again, from the start.
	at, collecting := uint32(idx), false
	if b.Steps[idx].Status != store.StatusRunning {
		if !collectionRan(j, b) {
			return false, nil
		}
		at, collecting = uint32(len(j.Steps)), true
	}
	size, exit, ok := sess.Reattach(key, at)
	if !ok {
		return false, errors.New("the agent session does not know its running step")
	}
	path := s.store.LogPath(b.Job, b.Number)
	if exit != nil {
		fi, err := os.Stat(path)
		if err != nil {
			return false, err
		}
		size = fi.Size()
	}
	logf, err := buildlog.Reopen(path, size)
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	a := &active{build: b, cancel: cancel, ctx: ctx, log: logf, done: make(chan struct{})}
	s.mu.Lock()
	s.active[key] = a
	s.mu.Unlock()
	s.nodes.Claim(n)
	first := func(ctx context.Context) (*session.StepResult, error) {
		if exit != nil {
			return exit, nil
		}
		return sess.Wait(ctx, key, uint32(idx), logf)
	}
	if collecting {
		first = func(ctx context.Context) (*session.StepResult, error) {
			// The interrupted transfer's files are lost with the master's
			// state: let it end, then the last step's result stands and
			// the artifacts are collected anew.
			if exit == nil {
				if _, err := sess.Wait(ctx, key, at, io.Discard); err != nil {
					return nil, err
				}
			}
			sess.Recorded(key, at)
			last := b.Steps[idx]
			return &session.StepResult{Code: *last.ExitCode, Error: last.Error}, nil
		}
	}
	s.log.Info("re-attached to the running build: it goes on when the agent resumes its session", "build", key, "node", n.Name(), "step", b.Steps[idx].Name, "artifacts_again", collecting, "log_checkpoint", size)
	go func() {
		defer s.nodes.Release(n)
		s.run(a, j, n, logf, idx, first)
	}()
	return true, nil
}

// Run schedules builds until ctx ends; running builds are cancelled then.
func (s *Service) Run(ctx context.Context) {
	s.sched.Run(ctx)
}

// Trigger queues a new build of job; params become environment variables.
// Only the parameters the job declares are taken, their defaults applied:
// anything else is a *config.ParamError and queues nothing.
func (s *Service) Trigger(job string, params map[string]string) (*store.Build, error) {
	j := s.cfg.Load().Job(job)
	if j == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownJob, job)
	}
	params, err := j.ResolveParams(params)
	if err != nil {
		return nil, err
	}
	b := &store.Build{Job: job, Status: store.StatusQueued, Params: params, QueuedAt: time.Now().UTC(), Steps: []store.Step{}}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.store.Create(b); err != nil {
		return nil, fmt.Errorf("trigger %s: %w", job, err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	a := &active{build: b, cancel: cancel, ctx: ctx, done: make(chan struct{})}
	key := Key(job, b.Number)
	s.active[key] = a
	s.sched.Enqueue(&scheduler.Item{Key: key, Labels: j.Labels, Run: func(n *nodes.Node) { s.execute(a, j, n) }})
	s.log.Info("build queued", "build", key)
	return copyBuild(b), nil
}

// Get returns a build.
func (s *Service) Get(job string, n int) (*store.Build, error) {
	s.mu.Lock()
	if a := s.active[Key(job, n)]; a != nil {
		defer s.mu.Unlock()
		return copyBuild(a.build), nil
	}
	if b := s.unsaved[Key(job, n)]; b != nil {
		defer s.mu.Unlock()
		return copyBuild(b), nil
	}
	s.mu.Unlock()
	if s.cfg.Load().Job(job) == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownJob, job)
	}
	return s.store.Get(job, n)
}

// List returns the builds of job, newest first.
func (s *Service) List(job string, limit int) ([]*store.Build, error) {
	if s.cfg.Load().Job(job) == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownJob, job)
	}
	list, err := s.store.List(job, limit)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, b := range list {
		if a := s.active[Key(b.Job, b.Number)]; a != nil {
			list[i] = copyBuild(a.build)
		} else if u := s.unsaved[Key(b.Job, b.Number)]; u != nil {
			list[i] = copyBuild(u)
		}
	}
	return list, nil
}

// Cancel cancels a queued or running build.
func (s *Service) Cancel(job string, n int, reason string) (*store.Build, error) {
	key := Key(job, n)
	s.mu.Lock()
	a := s.active[key]
	s.mu.Unlock()
	if a == nil {
		b, err := s.Get(job, n)
		if err != nil {
			return nil, err
		}
		return b, ErrFinished
	}
	if s.sched.Remove(key) {
		s.finish(a, store.StatusCancelled, "cancelled while queued: "+reason, nil)
	} else {
		a.cancel(errors.New("cancelled: " + reason))
		<-a.done
	}
	return s.Get(job, n)
}

// Follow copies build n of job's log to w from offset. With follow it
// streams live until the build ends (its end is recorded when Follow
// returns); without, it copies what is written so far.
func (s *Service) Follow(ctx context.Context, job string, n int, offset int64, follow bool, w io.Writer, flush func()) error {
	key := Key(job, n)
	for {
		s.mu.Lock()
		a := s.active[key]
		var live *buildlog.Log
		var done chan struct{}
		if a != nil {
			live, done = a.log, a.done
		}
		s.mu.Unlock()
		if a == nil || !follow {
			if _, err := s.Get(job, n); err != nil {
				return err
			}
			return buildlog.Follow(ctx, s.store.LogPath(job, n), nil, offset, w, flush)
		}
		if live != nil {
			if err := buildlog.Follow(ctx, s.store.LogPath(job, n), live, offset, w, flush); err != nil {
				return err
			}
			// The log is closed just before the build's end is recorded:
			// a follower that saw the whole log finds the build finished.
			select {
			case <-done:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		// Queued: wait for it to start (or end).
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-done:
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Wait blocks until build n of job is finished or ctx ends.
func (s *Service) Wait(ctx context.Context, job string, n int) (*store.Build, error) {
	s.mu.Lock()
	a := s.active[Key(job, n)]
	s.mu.Unlock()
	if a != nil {
		select {
		case <-a.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return s.Get(job, n)
}

func (s *Service) update(a *active, fn func(b *store.Build)) {
	s.mu.Lock()
	fn(a.build)
	b := copyBuild(a.build)
	s.mu.Unlock()
	if err := s.store.Save(b); err != nil {
		s.log.Error("saving build", "build", Key(b.Job, b.Number), "error", err)
		s.writeFailed()
	}
}

func (s *Service) writeFailed() {
	if s.obs != nil {
		s.obs.WriteFailed(session.KindStore)
	}
}

// finish records the final status and releases the build. The store
// refusing to record it, it is saved again every finalSaveRetry; still
// refused after finalSaveBound, the build fails with "writing the build
// record: ERROR" (kept in memory: the stored record says it still runs).
func (s *Service) finish(a *active, status, reason string, logSize *int64) {
	now := time.Now().UTC()
	s.mu.Lock()
	b := copyBuild(a.build)
	key := Key(b.Job, b.Number)
	s.mu.Unlock()
	b.Status, b.Reason, b.FinishedAt = status, reason, &now
	if logSize != nil {
		b.LogSize = *logSize
	}
	saved := s.saveFinal(b)
	if saved != nil {
		status, reason = store.StatusFailure, "writing the build record: "+saved.Error()
		b.Status, b.Reason = status, reason
		s.log.Error("cannot record the build's end: it shows failed until the server restarts, which records it interrupted",
			"build", key, "error", saved, "tried_for", finalSaveBound)
	}
	// Counted before the status shows: whoever sees the build finished
	// finds it in the metrics too.
	if s.obs != nil {
		s.obs.Finished(b.Job, status)
	}
	s.mu.Lock()
	*a.build = *b
	delete(s.active, key)
	if saved != nil {
		s.unsaved[key] = copyBuild(b)
	}
	s.mu.Unlock()
	a.cancel(errors.New("finished"))
	close(a.done)
	s.log.Info("build finished", "build", key, "status", status, "reason", reason)
}

// saveFinal saves b, a build's end, again every finalSaveRetry while the
// store refuses it, for finalSaveBound (not once the store is closed); it
// returns the last error.
func (s *Service) saveFinal(b *store.Build) error {
	deadline := time.Now().Add(finalSaveBound)
	var last string
	for {
		err := s.store.Save(b)
		if err == nil {
			if last != "" {
				s.log.Info("the build's end is recorded", "build", Key(b.Job, b.Number))
			}
			return nil
		}
		s.writeFailed()
		if errors.Is(err, store.ErrClosed) {
			// The server is stopping: no retry will do (a restarted
			// server records the build interrupted).
			return err
		}
		if msg := err.Error(); msg != last {
			last = msg
			s.log.Error("cannot record the build's end, retrying", "build", Key(b.Job, b.Number), "error", err,
				"every", finalSaveRetry, "give_up_after", finalSaveBound)
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			return err
		}
		time.Sleep(min(finalSaveRetry, wait))
	}
}

// execute runs a build's steps on node n.
func (s *Service) execute(a *active, job *config.Job, n *nodes.Node) {
	if a.ctx.Err() != nil {
		s.finish(a, store.StatusCancelled, context.Cause(a.ctx).Error(), nil)
		return
	}
	logf, err := buildlog.Create(s.store.LogPath(job.Name, a.build.Number))
	if err != nil {
		s.finish(a, store.StatusFailure, err.Error(), nil)
		return
	}
	now := time.Now().UTC()
	s.mu.Lock()
	a.log = logf
	s.mu.Unlock()
	if s.obs != nil {
		s.obs.Started(job.Name, now.Sub(a.build.QueuedAt))
	}
	s.update(a, func(b *store.Build) { b.Status, b.Node, b.StartedAt = store.StatusRunning, n.Name(), &now })
	s.log.Info("build started", "build", Key(job.Name, a.build.Number), "node", n.Name())
	s.run(a, job, n, logf, 0, nil)
}

// run runs the build's steps from step from on and finishes the build.
// With resumed set, step from is already running (re-attached after a
// server restart): resumed waits for its end instead of starting it.
func (s *Service) run(a *active, job *config.Job, n *nodes.Node, logf *buildlog.Log, from int, resumed func(context.Context) (*session.StepResult, error)) {
	key := Key(job.Name, a.build.Number)
	ctx := a.ctx
	var timeoutErr error
	if job.Timeout > 0 {
		timeoutErr = fmt.Errorf("timed out after %s", job.Timeout)
		deadline := time.Now().Add(job.Timeout)
		if a.build.StartedAt != nil {
			deadline = a.build.StartedAt.Add(job.Timeout)
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadlineCause(ctx, deadline, timeoutErr)
		defer cancel()
	}
	status, reason, ran := s.runSteps(ctx, a, job, n, logf, key, from, resumed)
	if len(job.Artifacts) > 0 && ran && ctx.Err() == nil {
		status, reason = s.collectArtifacts(ctx, a, job, n, logf, key, status, reason)
	}
	if cause := context.Cause(ctx); ctx.Err() != nil && status != store.StatusSuccess {
		status, reason = store.StatusCancelled, cause.Error()
		if cause == timeoutErr {
			status = store.StatusTimeout
		}
	}
	if err := logf.Close(); err != nil && status == store.StatusSuccess {
		status, reason = store.StatusFailure, err.Error()
	}
	size := logf.Size()
	s.finish(a, status, reason, &size)
}

// runSteps runs the steps in order; the first failing one ends the build.
// ran reports whether the steps ran to their end on the agent (they all
// succeeded, or one failed): not when the build was cancelled, timed out
// or lost its agent.
func (s *Service) runSteps(ctx context.Context, a *active, job *config.Job, n *nodes.Node, logf *buildlog.Log, key string, from int, resumed func(context.Context) (*session.StepResult, error)) (status, reason string, ran bool) {
	env := s.env(job, a.build, n)
	for i := from; i < len(job.Steps); i++ {
		st := job.Steps[i]
		sess := n.Session()
		if sess == nil {
			return store.StatusFailure, fmt.Sprintf("node %s went offline: %s", n.Name(), n.Status().Reason), false
		}
		var res *session.StepResult
		var err error
		if i == from && resumed != nil {
			res, err = resumed(ctx)
		} else {
			started := time.Now().UTC()
			s.update(a, func(b *store.Build) {
				b.Steps = append(b.Steps, store.Step{Name: st.Name, Status: store.StatusRunning, StartedAt: started, LogOffset: logf.Size()})
			})
			req := &wire.RunStep{BuildID: key, StepIndex: uint32(i), StepName: st.Name, Command: st.Run, Env: env,
				Workdir: workspace(job, a.build), Shell: config.StepShell(job, n.Config())}
			if dl, ok := ctx.Deadline(); ok {
				req.TimeoutMillis = uint64(max(time.Until(dl).Milliseconds(), 1))
			}
			var stdin []byte
			if st.Stdin != nil {
				stdin = []byte(*st.Stdin)
			}
			res, err = sess.RunStepInput(ctx, req, stdin, logf)
		}
		finished := time.Now().UTC()
		status, reason := store.StatusSuccess, ""
		var writeErr *session.WriteError
		switch {
		case errors.Is(err, session.ErrUnsupported):
			status, reason = store.StatusFailure, fmt.Sprintf("step %q on node %s: %v", st.Name, n.Name(), err)
			logf.Printf("conveyor: %s\n", reason)
		case errors.As(err, &writeErr):
			// What the step printed could not be stored: the build fails
			// with the file and the system's error.
			status, reason = store.StatusFailure, writeErr.Error()
		case err != nil:
			status, reason = store.StatusFailure, fmt.Sprintf("node %s went offline during step %q: %v", n.Name(), st.Name, err)
		case ctx.Err() != nil:
			status, reason = store.StatusCancelled, context.Cause(ctx).Error()
		case res.Code != 0:
			status, reason = store.StatusFailure, fmt.Sprintf("step %q exited with code %d", st.Name, res.Code)
			if res.Error != "" {
				reason = fmt.Sprintf("step %q failed: %s", st.Name, res.Error)
			}
		}
		s.update(a, func(b *store.Build) {
			rec := &b.Steps[len(b.Steps)-1]
			rec.Status, rec.FinishedAt = status, &finished
			if res != nil {
				code := res.Code
				rec.ExitCode, rec.Error = &code, res.Error
			} else {
				rec.Error = reason
			}
		})
		if res != nil {
			sess.Recorded(key, uint32(i))
		}
		if status != store.StatusSuccess {
			return status, reason, res != nil && ctx.Err() == nil
		}
	}
	return store.StatusSuccess, "", true
}

// collectionRan reports whether build b, whose last recorded step ended,
// was collecting its artifacts: its steps ran to their end (all
// succeeded, or the last one recorded failed with an exit status).
func collectionRan(j *config.Job, b *store.Build) bool {
	if len(j.Artifacts) == 0 {
		return false
	}
	last := b.Steps[len(b.Steps)-1]
	switch {
	case last.ExitCode == nil:
		return false
	case last.Status == store.StatusSuccess:
		return len(b.Steps) == len(j.Steps)
	}
	return last.Status == store.StatusFailure
}

// workspace is the build's workspace on the agent, relative to its workdir.
func workspace(job *config.Job, b *store.Build) string {
	return job.Name + "/" + strconv.Itoa(b.Number)
}

// env is the job's environment plus the build's parameters and facts.
func (s *Service) env(job *config.Job, b *store.Build, n *nodes.Node) []wire.EnvVar {
	vars := map[string]string{}
	maps.Copy(vars, job.Env)
	maps.Copy(vars, b.Params)
	vars["CONVEYOR_JOB"] = job.Name
	vars["CONVEYOR_BUILD_NUMBER"] = strconv.Itoa(b.Number)
	vars["CONVEYOR_NODE"] = n.Name()
	vars["CONVEYOR_SERVER"] = s.cfg.Load().Server.Name
	out := make([]wire.EnvVar, 0, len(vars))
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		out = append(out, wire.EnvVar{Name: k, Value: vars[k]})
	}
	return out
}

func copyBuild(b *store.Build) *store.Build {
	c := *b
	c.Steps = slices.Clone(b.Steps)
	c.Params = maps.Clone(b.Params)
	return &c
}
