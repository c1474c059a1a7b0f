package builds

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/core/session"
	"github.com/conveyor-ci/conveyor/core/store"
)

// countingObserver records what the service tells its Observer.
type countingObserver struct {
	mu       sync.Mutex
	finished []string // statuses
	writes   map[string]int
}

func (o *countingObserver) Started(string, time.Duration) {}

func (o *countingObserver) Finished(_, status string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.finished = append(o.finished, status)
}

func (o *countingObserver) WriteFailed(kind string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.writes[kind]++
}

// TestFinishRecordRefused: a build's end the store refuses is saved again
// every finalSaveRetry; still refused past finalSaveBound, the build shows
// failed with "writing the build record: ..." (not the success it had),
// counts as a failure, and every refused save counts as a write error of
// kind store.
func TestFinishRecordRefused(t *testing.T) {
	defer func(r, b time.Duration) { finalSaveRetry, finalSaveBound = r, b }(finalSaveRetry, finalSaveBound)
	finalSaveRetry, finalSaveBound = 10*time.Millisecond, 100*time.Millisecond
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{Jobs: []*config.Job{{Name: "app"}}}
	obs := &countingObserver{writes: map[string]int{}}
	s := New(cfg, st, nil, obs, hclog.NewNullLogger())
	b := &store.Build{Job: "app", Status: store.StatusRunning, QueuedAt: time.Now().UTC(), Steps: []store.Step{}}
	if err := st.Create(b); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	a := &active{build: b, cancel: cancel, ctx: ctx, done: make(chan struct{})}
	s.active[Key("app", b.Number)] = a
	st.Close() // every Save fails from now on: "database not open"

	start := time.Now()
	size := int64(42)
	s.finish(a, store.StatusSuccess, "", &size)
	if took := time.Since(start); took < finalSaveBound {
		t.Errorf("finish gave up after %s, want the save retried for %s", took, finalSaveBound)
	}
	got, err := s.Get("app", b.Number)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != store.StatusFailure || !strings.HasPrefix(got.Reason, "writing the build record: ") ||
		!strings.Contains(got.Reason, "database not open") || got.FinishedAt == nil || got.LogSize != 42 {
		t.Errorf("build after its end could not be recorded: %+v; want failed, writing the build record", got)
	}
	select {
	case <-a.done:
	default:
		t.Error("the build is not released")
	}
	if a.ctx.Err() == nil {
		t.Error("the build's context is not cancelled")
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if n := obs.writes[session.KindStore]; n < 3 {
		t.Errorf("WriteFailed(store) counted %d times, want every refused save (>= 3)", n)
	}
	if len(obs.finished) != 1 || obs.finished[0] != store.StatusFailure {
		t.Errorf("Finished counted %v, want one failure", obs.finished)
	}
}
