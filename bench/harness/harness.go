// Package harness lets the benchmark command reuse the repository's test
// fixtures (core/e2e/cluster, plugins/ssh-launcher/sshdtest), which take a
// testing.TB, outside `go test`: T implements the part of testing.TB they
// use, turning Fatal into a panic that Run recovers, and running cleanups
// the way a test does.
package harness

import (
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
)

// T is a testing.TB for one benchmark section. Fatal and Skip must be
// called from the goroutine running Run's function, as in a test.
type T struct {
	// TB is nil: calling a method T does not implement panics, which
	// surfaces a fixture that started to need one.
	testing.TB

	name string
	log  io.Writer

	mu       sync.Mutex
	cleanups []func()
	dirs     []string
	failed   bool
}

// fatal is the panic value of Fatal and Skip.
type fatal struct{ msg string }

// Run runs fn with a T named name logging to log, then its cleanups (last
// registered first), and returns the message of a Fatal or Skip, if any.
func Run(name string, log io.Writer, fn func(t *T)) (err error) {
	t := &T{name: name, log: log}
	defer func() {
		t.runCleanups()
		for _, d := range t.dirs {
			os.RemoveAll(d)
		}
	}()
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatal)
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("%s: %s", name, f.msg)
		}
	}()
	fn(t)
	return nil
}

func (t *T) runCleanups() {
	for {
		t.mu.Lock()
		if len(t.cleanups) == 0 {
			t.mu.Unlock()
			return
		}
		f := t.cleanups[len(t.cleanups)-1]
		t.cleanups = t.cleanups[:len(t.cleanups)-1]
		t.mu.Unlock()
		f()
	}
}

// Name is the section's name.
func (t *T) Name() string { return t.name }

// Helper does nothing.
func (t *T) Helper() {}

// Cleanup registers f to run when the section ends.
func (t *T) Cleanup(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}

// TempDir is a new directory removed when the section ends.
func (t *T) TempDir() string {
	d, err := os.MkdirTemp("", "conveyor-bench-")
	if err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	t.mu.Lock()
	t.dirs = append(t.dirs, d)
	t.mu.Unlock()
	return d
}

// Failed reports whether Fatal, Error or Skip was called.
func (t *T) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

func (t *T) fail() {
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
}

// Log prints to the section's log.
func (t *T) Log(args ...any) { fmt.Fprintln(t.log, args...) }

// Logf prints to the section's log.
func (t *T) Logf(format string, args ...any) {
	fmt.Fprintf(t.log, format+"\n", args...)
}

// Error records a failure and goes on.
func (t *T) Error(args ...any) { t.fail(); t.Log(args...) }

// Errorf records a failure and goes on.
func (t *T) Errorf(format string, args ...any) { t.fail(); t.Logf(format, args...) }

// Fatal ends the section.
func (t *T) Fatal(args ...any) { t.fail(); panic(fatal{fmt.Sprint(args...)}) }

// Fatalf ends the section.
func (t *T) Fatalf(format string, args ...any) { t.fail(); panic(fatal{fmt.Sprintf(format, args...)}) }

// FailNow ends the section.
func (t *T) FailNow() { t.Fatal("failed") }

// Skip ends the section: a benchmark that cannot run a part fails it.
func (t *T) Skip(args ...any) { t.Fatal(args...) }

// Skipf ends the section.
func (t *T) Skipf(format string, args ...any) { t.Fatalf(format, args...) }
