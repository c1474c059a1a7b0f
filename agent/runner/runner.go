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
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ChunkSize bounds one output callback's data (the largest Output frame
// the protocol allows is 32 KiB of data). It leaves 1 KiB below 32 KiB for
// the frame's header and MAC and a plugin's gRPC envelope: gRPC pools
// message buffers in power-of-two tiers (32 KiB, then 1 MiB) and zeroes a
// pooled buffer's whole capacity on each use, so a frame just over 32 KiB
// cost a 1 MiB clear on each side of the plugin hop (streaming through the
// local launcher ran 56% slower than without the plugin; 5% once frames
// fit).
const ChunkSize = 31 << 10

// DefaultGrace is how long a cancelled step may take to exit after SIGTERM
// before its process group is killed.
const DefaultGrace = 5 * time.Second

// outputLinger is how long a step's output pipe may stay idle, once the
// step's process group is gone, before the runner stops reading it: only
// a process that left the group (setsid, say) can still hold it open.
var outputLinger = 2 * time.Second

// Stream names an output stream.
type Stream int

// Output streams.
const (
	Stdout Stream = 1
	Stderr Stream = 2
)

// String returns "stdout" or "stderr".
func (s Stream) String() string {
	if s == Stderr {
		return "stderr"
	}
	return "stdout"
}

// DefaultShell is what a step runs under when its Spec names no shell: not
// a login shell, so /etc/profile and ~/.profile are not read.
var DefaultShell = []string{"/bin/sh", "-c"}

// Spec is one step to run.
type Spec struct {
	// Command runs as `/bin/sh -c Command`, or under Shell.
	Command string
	// Shell, when set, is the command line Command runs under, Command
	// appended as its last argument (["bash", "-l", "-c"] for a login
	// shell); empty means DefaultShell. Shell[0] is looked up in the
	// agent's PATH when it holds no slash.
	Shell []string
	// Root is the directory holding every workspace (the agent's workdir).
	Root string
	// Workdir is the step's workspace, relative to Root, which it must not
	// leave; it is created when missing. Empty means Root itself.
	Workdir string
	// Env is the whole environment, KEY=VALUE; nothing else is inherited.
	// Of variables given twice, the last wins.
	Env []string
	// Timeout cancels the step after this long; zero means none.
	Timeout time.Duration
	// Grace is the time between SIGTERM and SIGKILL (DefaultGrace when 0).
	Grace time.Duration
	// Stdin, when set, is copied to the step's standard input, which is
	// closed at its end; nil gives the step /dev/null. Run does not wait
	// for the copy: once the step ended, a Read blocked waiting for more
	// input is the caller's to end (by closing what Stdin reads from).
	Stdin io.Reader
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

// ErrWorkspace reports a workspace that is not a relative path inside the
// agent's workdir.
var ErrWorkspace = errors.New("workspace must be a relative path inside the agent's workdir")

// Workspace returns the directory of workspace rel under root, creating
// it. It refuses absolute paths, paths escaping root with "..", and
// symbolic links leading out of root.
func Workspace(root, rel string) (string, error) {
	if rel == "" {
		rel = "."
	}
	if !filepath.IsLocal(rel) {
		return "", fmt.Errorf("workspace %q: %w", rel, ErrWorkspace)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("create workdir: %w", err)
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return "", fmt.Errorf("open workdir: %w", err)
	}
	defer r.Close()
	if err := r.MkdirAll(rel, 0o755); err != nil {
		return "", fmt.Errorf("create workspace %q: %w", rel, err)
	}
	return filepath.Join(root, rel), nil
}

// Run runs the step and calls out with its output as it is produced, each
// read as soon as it returns (from two goroutines, one per stream; out
// must be safe for that). It returns once the step ended and all of its
// output was delivered. Cancelling ctx (with a cause, see
// context.WithCancelCause) stops the step: SIGTERM to its process group,
// SIGKILL after the grace period. Processes the step left in the
// background are killed when it exits.
func Run(ctx context.Context, spec Spec, out func(Stream, []byte)) Result {
	if spec.Grace <= 0 {
		spec.Grace = DefaultGrace
	}
	if spec.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, spec.Timeout, fmt.Errorf("%w after %s", ErrTimeout, spec.Timeout))
		defer cancel()
	}
	if err := context.Cause(ctx); err != nil {
		return Result{Code: -1, Error: "cancelled: " + err.Error()}
	}
	dir, err := Workspace(spec.Root, spec.Workdir)
	if err != nil {
		return Result{Code: -1, Error: err.Error()}
	}
	var pumps [2]*pump
	for i, s := range []Stream{Stdout, Stderr} {
		r, w, err := os.Pipe()
		if err != nil {
			for _, p := range pumps[:i] {
				p.r.Close()
				p.w.Close()
			}
			return Result{Code: -1, Error: fmt.Sprintf("create pipe: %v", err)}
		}
		pumps[i] = &pump{r: r, w: w, s: s}
	}
	shell := spec.Shell
	if len(shell) == 0 {
		shell = DefaultShell
	}
	cmd := exec.Command(shell[0], append(slices.Clone(shell[1:]), spec.Command)...)
	cmd.Dir, cmd.Env = dir, append([]string{}, spec.Env...)
	cmd.Stdin = nil    // /dev/null
	var stdin *os.File // the parent's end of the step's stdin pipe
	if spec.Stdin != nil {
		// A pipe of our own rather than exec's: exec's Wait would wait for
		// the copy, which may wait for input that never comes.
		r, w, err := os.Pipe()
		if err != nil {
			for _, p := range pumps {
				p.r.Close()
				p.w.Close()
			}
			return Result{Code: -1, Error: fmt.Sprintf("create pipe: %v", err)}
		}
		cmd.Stdin, stdin = r, w
	}
	cmd.Stdout, cmd.Stderr = pumps[0].w, pumps[1].w
	cmd.SysProcAttr = sysProcAttr()
	err = cmd.Start()
	for _, p := range pumps {
		p.w.Close()
	}
	if stdin != nil {
		cmd.Stdin.(*os.File).Close() // the step holds its end
	}
	if err != nil {
		for _, p := range pumps {
			p.r.Close()
		}
		if stdin != nil {
			stdin.Close()
		}
		return Result{Code: -1, Error: fmt.Sprintf("start: %v", err)}
	}
	pgid := cmd.Process.Pid
	if stdin != nil {
		var once sync.Once
		closeStdin := func() { once.Do(func() { stdin.Close() }) }
		defer closeStdin()
		go func() {
			// A step that stops reading early makes the copy fail (EPIPE):
			// what it did not read is dropped, as a shell pipe drops it.
			_, _ = io.Copy(stdin, spec.Stdin)
			closeStdin()
		}()
	}

	var readers sync.WaitGroup
	for _, p := range pumps {
		readers.Add(1)
		go func() {
			defer readers.Done()
			defer p.r.Close()
			p.run(out)
		}()
	}

	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var cause, werr error
	select {
	case werr = <-waited:
	case <-ctx.Done():
		cause = context.Cause(ctx)
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		grace := time.NewTimer(spec.Grace)
		select {
		case werr = <-waited:
		case <-grace.C:
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			werr = <-waited
		}
		grace.Stop()
	}
	// Whatever the step left running in its group goes with it, so that
	// its pipes close and nothing outlives the step.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	if abandoned := drain(&readers, pumps[:]); abandoned {
		out(Stderr, []byte("\nconveyor-agent: stopped reading the step's output: a process that left the step's process group still holds it open\n"))
	}

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
		return Result{Code: -1, Error: fmt.Sprintf("wait: %v", werr)}
	}
	return Result{Code: 0}
}

// drain waits for the pumps to reach the end of their pipes once the
// step's process group is gone. A pump that stays blocked in one read for
// outputLinger is stopped: the pipe is empty and only a process outside
// the group can still hold it. It reports whether it stopped one.
func drain(readers *sync.WaitGroup, pumps []*pump) bool {
	done := make(chan struct{})
	go func() { readers.Wait(); close(done) }()
	tick := time.NewTicker(outputLinger)
	defer tick.Stop()
	last := make([]uint64, len(pumps))
	for i, p := range pumps {
		last[i] = p.state()
	}
	abandoned := false
	for {
		select {
		case <-done:
			return abandoned
		case <-tick.C:
		}
		for i, p := range pumps {
			st := p.state()
			if st == last[i] && st&blockedBit != 0 {
				_ = p.r.SetReadDeadline(time.Now())
				abandoned = true
			}
			last[i] = st
		}
	}
}

// blockedBit is set in a pump's state while it waits in a read.
const blockedBit = 1

// pump copies one output pipe to the callback.
type pump struct {
	r, w *os.File
	s    Stream
	// st is the number of reads started, times two, plus blockedBit while
	// one is under way: equal snapshots with the bit set mean one read
	// blocked all along.
	st atomic.Uint64
}

func (p *pump) state() uint64 { return p.st.Load() }

// run delivers what the pipe yields in chunks of at most ChunkSize, as
// soon as it is read, until its end (or a read deadline).
func (p *pump) run(out func(Stream, []byte)) {
	buf := make([]byte, ChunkSize)
	for {
		p.st.Add(2 + blockedBit)
		n, err := p.r.Read(buf)
		p.st.Add(^uint64(blockedBit - 1)) // minus blockedBit: the read is over
		if n > 0 {
			out(p.s, append([]byte(nil), buf[:n]...))
		}
		if err != nil {
			return
		}
	}
}
