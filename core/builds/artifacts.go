package builds

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/conveyor-ci/conveyor/core/buildlog"
	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/core/nodes"
	"github.com/conveyor-ci/conveyor/core/session"
	"github.com/conveyor-ci/conveyor/core/store"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// ErrNoArtifact: the build archived no file at that path.
var ErrNoArtifact = errors.New("no such artifact")

// collectArtifacts has the agent send the files of the job's artifacts
// patterns once the steps ran (successfully or not), writes them under
// data_dir and records them in the build; it returns the build's status
// and reason updated. A pattern that matched nothing is reported in the
// log and the reason but does not fail the build; a file that could not
// be sent or stored, or an agent that cannot send files, fails it: the
// build did not deliver what it was asked to keep.
func (s *Service) collectArtifacts(ctx context.Context, a *active, job *config.Job, n *nodes.Node, logf *buildlog.Log, key, status, reason string) (string, string) {
	fail := func(what string) (string, string) {
		logf.Printf("conveyor: artifacts: %s\n", what)
		return store.StatusFailure, joinReason(reason, "artifacts: "+what)
	}
	sess := n.Session()
	if sess == nil {
		return fail(fmt.Sprintf("not collected: node %s went offline: %s", n.Name(), n.Status().Reason))
	}
	w, err := s.store.NewArtifactWriter(job.Name, a.build.Number, job.ArtifactsMaxBytes)
	if err != nil {
		return fail(err.Error())
	}
	idx := uint32(len(job.Steps))
	req := &wire.Collect{BuildID: key, StepIndex: idx, Workdir: workspace(job, a.build), Patterns: job.Artifacts}
	res, err := sess.Collect(ctx, req, logf, w)
	if res != nil {
		sess.Recorded(key, idx)
	}
	list, cerr := w.Close()
	s.update(a, func(b *store.Build) { b.Artifacts = list })
	for _, f := range list {
		logf.Printf("conveyor: artifact %s: %d bytes, mode %04o, sha256 %s\n", f.Path, f.Size, f.Mode, f.SHA256)
	}
	switch {
	case ctx.Err() != nil:
		// Cancelled or timed out while collecting: run says which.
		return store.StatusCancelled, context.Cause(ctx).Error()
	case errors.Is(err, session.ErrUnsupported):
		return fail(err.Error())
	case errors.As(err, new(*session.WriteError)):
		// A file that could not be stored (the session retried a full
		// disk's refusals for the session timeout), or refused.
		return fail("storing them: " + err.Error())
	case err != nil:
		return fail(fmt.Sprintf("node %s went offline: %v", n.Name(), err))
	case cerr != nil:
		return fail("storing them: " + cerr.Error())
	case res.Code == 1:
		// Only patterns that matched nothing (the agent logged which).
		return status, joinReason(reason, "artifacts: "+res.Error)
	case res.Code != 0:
		return store.StatusFailure, joinReason(reason, "artifacts: "+res.Error)
	}
	return status, reason
}

func joinReason(reason, more string) string {
	if reason == "" {
		return more
	}
	return reason + "; " + more
}

// Artifacts lists the files build n of job archived.
func (s *Service) Artifacts(job string, n int) ([]store.Artifact, error) {
	b, err := s.Get(job, n)
	if err != nil {
		return nil, err
	}
	if b.Artifacts == nil {
		return []store.Artifact{}, nil
	}
	return b.Artifacts, nil
}

// OpenArtifact opens the file build n of job archived at path: only a
// path the build recorded is served.
func (s *Service) OpenArtifact(job string, n int, path string) (*store.Artifact, *os.File, error) {
	list, err := s.Artifacts(job, n)
	if err != nil {
		return nil, nil, err
	}
	for i := range list {
		if list[i].Path == path {
			f, err := s.store.OpenArtifact(job, n, path)
			if err != nil {
				return nil, nil, fmt.Errorf("artifact %s of %s: %w", path, Key(job, n), err)
			}
			return &list[i], f, nil
		}
	}
	return nil, nil, fmt.Errorf("%w: %s in %s", ErrNoArtifact, path, Key(job, n))
}
