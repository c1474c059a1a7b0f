// Package runner runs one build step as a shell command in its own process
// group, streaming its output as it is produced and killing the whole
// group on cancel or timeout.
package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// ChunkSize bounds one output callback's data.
const ChunkSize = 32 << 10

// DefaultGrace is how long a cancelled step may take to exit after SIGTERM
// before its process group is killed.
const DefaultGrace = 5 * time.Second

// Stream names an output stream.
type Stream int

// Output streams.
const (
	Stdout Stream = 1
	Stderr Stream = 2
)

// Spec is one step to run.
type Spec struct {
	// Command runs as `sh -c Command`.
	Command string
	// Dir is the working directory; it is created when missing.
	Dir string
	// Env is the whole environment, KEY=VALUE.
	Env []string
	// Timeout cancels the step after this long; zero means none.
	Timeout time.Duration
	// Grace is the time between SIGTERM and SIGKILL (DefaultGrace when 0).
	Grace time.Duration
}

// Result is how a step ended.
type Result struct {
	// Code is the exit status; -1 when the step could not start, was
	// cancelled, timed out or was killed by a signal.
	Code int
	// Error says why Code is -1 (empty for a normal exit).
	Error string
}

// ErrTimeout is the cancellation cause of a step that ran past its timeout.
var ErrTimeout = errors.New("timed out")

// Run runs the step and calls out with its output as it is produced (from
// two goroutines, one per stream; out must be safe for that). It returns
// once the step ended and all of its output was delivered. Cancelling ctx
// (with a cause, see context.WithCancelCause) stops the step: SIGTERM to
// its process group, SIGKILL after the grace period. Processes the step
// left in the background are killed when it exits.
func Run(ctx context.Context, spec Spec, out func(Stream, []byte)) Result {
	if spec.Grace <= 0 {
		spec.Grace = DefaultGrace
	}
	if spec.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, spec.Timeout, fmt.Errorf("%w after %s", ErrTimeout, spec.Timeout))
		defer cancel()
	}
	if err := os.MkdirAll(spec.Dir, 0o755); err != nil {
		return Result{Code: -1, Error: fmt.Sprintf("create workspace: %v", err)}
	}
	stdoutR, stdoutW, err := os.Pipe()
	if err != nil {
		return Result{Code: -1, Error: err.Error()}
	}
	stderrR, stderrW, err := os.Pipe()
	if err != nil {
		stdoutR.Close()
		stdoutW.Close()
		return Result{Code: -1, Error: err.Error()}
	}
	cmd := exec.Command("/bin/sh", "-c", spec.Command)
	cmd.Dir, cmd.Env = spec.Dir, spec.Env
	cmd.Stdin = nil // /dev/null
	cmd.Stdout, cmd.Stderr = stdoutW, stderrW
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	stdoutW.Close()
	stderrW.Close()
	if err != nil {
		stdoutR.Close()
		stderrR.Close()
		return Result{Code: -1, Error: fmt.Sprintf("start: %v", err)}
	}
	pgid := cmd.Process.Pid

	var readers sync.WaitGroup
	for _, p := range []struct {
		r *os.File
		s Stream
	}{{stdoutR, Stdout}, {stderrR, Stderr}} {
		readers.Add(1)
		go func() {
			defer readers.Done()
			defer p.r.Close()
			pump(p.r, p.s, out)
		}()
	}

	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var cause error
	var werr error
	select {
	case werr = <-waited:
	case <-ctx.Done():
		cause = context.Cause(ctx)
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case werr = <-waited:
		case <-time.After(spec.Grace):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			werr = <-waited
		}
	}
	// Whatever the step left running in its group goes with it, so that
	// its pipes close and nothing outlives the step.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	readers.Wait()

	switch {
	case cause != nil && errors.Is(cause, ErrTimeout):
		return Result{Code: -1, Error: cause.Error()}
	case cause != nil:
		return Result{Code: -1, Error: "cancelled: " + cause.Error()}
	}
	var ee *exec.ExitError
	if errors.As(werr, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return Result{Code: -1, Error: "killed by signal " + ws.Signal().String()}
		}
		return Result{Code: ee.ExitCode()}
	}
	if werr != nil {
		return Result{Code: -1, Error: werr.Error()}
	}
	return Result{Code: 0}
}

// pump delivers what r yields in chunks of at most ChunkSize, as soon as
// it is read.
func pump(r io.Reader, s Stream, out func(Stream, []byte)) {
	buf := make([]byte, ChunkSize)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			out(s, append([]byte(nil), buf[:n]...))
		}
		if err != nil {
			return
		}
	}
}
