package builds

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/core/internal/tmpfstest"
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

// TestFinishRecordRefused: a build's end the store refuses (its disk is
// full) is saved again every finalSaveRetry: space back in time, the build
// is recorded as it ended; never, past finalSaveBound the build shows
// failed with "writing the build record: ..." (not the success it had) and
// counts as a failure. Every refused save counts as a write error of kind
// store.
func TestFinishRecordRefused(t *testing.T) {
	defer func(r, b time.Duration) { finalSaveRetry, finalSaveBound = r, b }(finalSaveRetry, finalSaveBound)
	finalSaveRetry = 10 * time.Millisecond
	for _, back := range []bool{true, false} {
		t.Run(fmt.Sprintf("space back %v", back), func(t *testing.T) {
			finalSaveBound = 300 * time.Millisecond
			if back {
				finalSaveBound = time.Minute
			}
			dir := t.TempDir()
			tmpfstest.Mount(t, dir, "1m")
			st, err := store.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			cfg := &config.Config{Jobs: []*config.Job{{Name: "app"}}}
			obs := &countingObserver{writes: map[string]int{}}
			s := New(cfg, st, nil, obs, hclog.NewNullLogger())
			// A record larger than the space left: its save needs pages the
			// file system refuses.
			big := strings.Repeat("x", 256<<10)
			b := &store.Build{Job: "app", Status: store.StatusRunning, QueuedAt: time.Now().UTC(), Steps: []store.Step{},
				Params: map[string]string{"BIG": big}}
			if err := st.Create(b); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancelCause(context.Background())
			a := &active{build: b, cancel: cancel, ctx: ctx, done: make(chan struct{})}
			s.active[Key("app", b.Number)] = a
			filler := filepath.Join(dir, "filler")
			fill(t, filler)

			size := int64(42)
			finished := make(chan struct{})
			go func() {
				defer close(finished)
				s.finish(a, store.StatusSuccess, "", &size)
			}()
			eventually(t, "a save to be refused", func() bool { return obs.count(session.KindStore) >= 3 })
			if back {
				if err := os.Remove(filler); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case <-finished:
			case <-time.After(2 * time.Minute):
				t.Fatal("finish did not return")
			}
			got, err := s.Get("app", b.Number)
			if err != nil {
				t.Fatal(err)
			}
			stored, err := st.Get("app", b.Number)
			if err != nil {
				t.Fatal(err)
			}
			if back {
				if got.Status != store.StatusSuccess || stored.Status != store.StatusSuccess || stored.LogSize != 42 {
					t.Errorf("after space came back: shown %s, stored %+v; want success recorded", got.Status, stored)
				}
			} else {
				if got.Status != store.StatusFailure || !strings.HasPrefix(got.Reason, "writing the build record: ") ||
					!strings.Contains(got.Reason, "no space left on device") || got.FinishedAt == nil || got.LogSize != 42 {
					t.Errorf("build after its end could not be recorded: %s %q; want failed, writing the build record", got.Status, got.Reason)
				}
				if stored.Status != store.StatusRunning {
					t.Errorf("stored status %s; want the record as it was (running)", stored.Status)
				}
				list, err := s.List("app", 10)
				if err != nil || len(list) != 1 || list[0].Status != store.StatusFailure {
					t.Errorf("List = %+v, %v; want the build failed", list, err)
				}
			}
			select {
			case <-a.done:
			default:
				t.Error("the build is not released")
			}
			want := store.StatusSuccess
			if !back {
				want = store.StatusFailure
			}
			obs.mu.Lock()
			defer obs.mu.Unlock()
			if len(obs.finished) != 1 || obs.finished[0] != want {
				t.Errorf("Finished counted %v, want one %s", obs.finished, want)
			}
		})
	}
}

// TestFinishStoreClosed: once the store is closed (the server stops), a
// build's end is not saved again: the build shows failed at once.
func TestFinishStoreClosed(t *testing.T) {
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := New(&config.Config{Jobs: []*config.Job{{Name: "app"}}}, st, nil, nil, hclog.NewNullLogger())
	b := &store.Build{Job: "app", Status: store.StatusRunning, QueuedAt: time.Now().UTC(), Steps: []store.Step{}}
	if err := st.Create(b); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	a := &active{build: b, cancel: cancel, ctx: ctx, done: make(chan struct{})}
	s.active[Key("app", b.Number)] = a
	st.Close()
	start := time.Now()
	s.finish(a, store.StatusSuccess, "", nil)
	if took := time.Since(start); took >= finalSaveBound {
		t.Errorf("finish took %s: retried a closed store", took)
	}
	if got, err := s.Get("app", b.Number); err != nil || got.Status != store.StatusFailure || !strings.Contains(got.Reason, store.ErrClosed.Error()) {
		t.Errorf("Get = %+v, %v; want failed: writing the build record: %v", got, err, store.ErrClosed)
	}
}

func (o *countingObserver) count(kind string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.writes[kind]
}

// fill writes to name until the file system is full.
func fill(t *testing.T, name string) {
	t.Helper()
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return
		}
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
