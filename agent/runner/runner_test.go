package runner

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/conveyor-ci/conveyor/sdk/testenv"
)

// collector gathers a step's output per stream.
type collector struct {
	mu       sync.Mutex
	out, err bytes.Buffer
	chunks   int
	changed  chan struct{}
}

func newCollector() *collector { return &collector{changed: make(chan struct{}, 1)} }

func (c *collector) write(s Stream, p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(p) > ChunkSize {
		panic("chunk larger than ChunkSize")
	}
	c.chunks++
	if s == Stdout {
		c.out.Write(p)
	} else {
		c.err.Write(p)
	}
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

func (c *collector) stdout() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.String()
}

func (c *collector) stderr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err.String()
}

// waitStdout waits until stdout contains want.
func (c *collector) waitStdout(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for !strings.Contains(c.stdout(), want) {
		select {
		case <-c.changed:
		case <-deadline:
			t.Fatalf("stdout %q never contained %q", c.stdout(), want)
		}
	}
}

func TestRun(t *testing.T) {
	outside := t.TempDir()
	for _, tc := range []struct {
		name      string
		cmd       string
		workdir   string
		env       []string
		timeout   time.Duration
		shell     []string
		code      int
		errPrefix string
		stdout    string
		stderr    string
	}{
		{name: "success", cmd: "echo hello", code: 0, stdout: "hello\n"},
		{name: "exit code", cmd: "echo out; echo err >&2; exit 7", code: 7, stdout: "out\n", stderr: "err\n"},
		{name: "env", cmd: `echo "$A-$B"`, env: []string{"A=1", "B=two", "A=3"}, stdout: "3-two\n"},
		{name: "no env beyond the spec's", cmd: `echo "[$HOME]"`, stdout: "[]\n"},
		{name: "workdir created", cmd: "pwd", workdir: "job/1", stdout: "ROOT/job/1\n"},
		{name: "workdir root", cmd: "pwd", stdout: "ROOT\n"},
		{name: "workdir cleaned", cmd: "pwd", workdir: "job/./2/../3", stdout: "ROOT/job/3\n"},
		{name: "absolute workdir", cmd: "echo pwned", workdir: outside, code: -1, errPrefix: "workspace"},
		{name: "escaping workdir", cmd: "echo pwned", workdir: "../x", code: -1, errPrefix: "workspace"},
		{name: "escaping workdir inside", cmd: "echo pwned", workdir: "job/../../x", code: -1, errPrefix: "workspace"},
		{name: "workdir through a symlink out", cmd: "echo pwned", workdir: "link/x", code: -1, errPrefix: "create workspace"},
		{name: "stdin is empty", cmd: "cat; echo end", stdout: "end\n"},
		{name: "stdin is /dev/null", cmd: "readlink /proc/self/fd/0", stdout: "/dev/null\n"},
		{name: "timeout", cmd: "echo started; sleep 60", timeout: 200 * time.Millisecond, code: -1, errPrefix: "timed out after 200ms", stdout: "started\n"},
		{name: "killed by a signal", cmd: "kill -9 $$", code: -1, errPrefix: "killed by signal"},
		{name: "command not found", cmd: "no-such-command-xyz", code: 127},
		{name: "shell bash", cmd: `a=(x y z); echo "${a[2]} ${BASH_VERSION:+bash}"`, shell: []string{"bash", "-c"}, stdout: "z bash\n"},
		{name: "shell args before the script", cmd: `case $- in *e*) echo errexit;; esac`, shell: []string{"/bin/sh", "-e", "-c"}, stdout: "errexit\n"},
		{name: "shell not found", cmd: "true", shell: []string{"no-such-shell-xyz", "-c"}, code: -1, errPrefix: "start"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "ws")
			if err := os.MkdirAll(root, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, filepath.Join(root, "link")); err != nil {
				t.Fatal(err)
			}
			c := newCollector()
			res := Run(context.Background(), Spec{Command: tc.cmd, Root: root, Workdir: tc.workdir, Env: tc.env, Timeout: tc.timeout, Shell: tc.shell, Grace: time.Second}, c.write)
			if res.Code != tc.code || !strings.HasPrefix(res.Error, tc.errPrefix) || (tc.errPrefix == "" && res.Error != "") {
				t.Fatalf("result %+v, want code %d, error starting with %q", res, tc.code, tc.errPrefix)
			}
			want := strings.ReplaceAll(tc.stdout, "ROOT", root)
			if got := c.stdout(); got != want {
				t.Errorf("stdout %q, want %q", got, want)
			}
			if tc.stderr != "" && c.stderr() != tc.stderr {
				t.Errorf("stderr %q, want %q", c.stderr(), tc.stderr)
			}
			if entries, _ := os.ReadDir(outside); len(entries) != 0 {
				t.Errorf("a step created %v outside the workdir", entries)
			}
		})
	}
}

// TestOutputStreamsBeforeExit: output arrives while the step still runs.
func TestOutputStreamsBeforeExit(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "go")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	c := newCollector()
	done := make(chan Result, 1)
	go func() {
		done <- Run(context.Background(), Spec{Command: "echo first; read x < " + fifo + "; echo second", Root: dir}, c.write)
	}()
	c.waitStdout(t, "first\n")
	select {
	case r := <-done:
		t.Fatalf("step ended before it was released: %+v", r)
	default:
	}
	if err := os.WriteFile(fifo, []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.Code != 0 || c.stdout() != "first\nsecond\n" {
		t.Fatalf("result %+v, stdout %q", r, c.stdout())
	}
}

// TestCancelKillsTheProcessGroup: cancelling stops the step and the
// processes it started in the background, whether they heed SIGTERM or
// need SIGKILL after the grace period.
func TestCancelKillsTheProcessGroup(t *testing.T) {
	for _, tc := range []struct{ name, cmd string }{
		{"sleep and wait", "sleep 1000 & echo child=$!; wait"},
		{"ignoring SIGTERM", "trap '' TERM; sleep 1000 & echo child=$!; wait"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCollector()
			ctx, cancel := context.WithCancelCause(context.Background())
			done := make(chan Result, 1)
			go func() {
				done <- Run(ctx, Spec{Command: tc.cmd, Root: t.TempDir(), Grace: 300 * time.Millisecond}, c.write)
			}()
			c.waitStdout(t, "\n")
			pid, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(c.stdout(), "child=")))
			if err != nil {
				t.Fatalf("child pid from %q: %v", c.stdout(), err)
			}
			cancel(errors.New("by request"))
			r := <-done
			if r.Code != -1 || r.Error != "cancelled: by request" {
				t.Fatalf("result %+v", r)
			}
			waitGone(t, pid)
		})
	}
}

// TestExitKillsLeftovers: a background process the step did not wait for
// goes with it.
func TestExitKillsLeftovers(t *testing.T) {
	c := newCollector()
	r := Run(context.Background(), Spec{Command: "sleep 1000 >/dev/null 2>&1 & echo $!", Root: t.TempDir()}, c.write)
	if r.Code != 0 {
		t.Fatalf("result %+v", r)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(c.stdout()))
	if err != nil {
		t.Fatalf("pid from %q: %v", c.stdout(), err)
	}
	waitGone(t, pid)
}

// TestEscapedProcessDoesNotHang: a process that left the step's process
// group while holding its output does not keep the step running.
func TestEscapedProcessDoesNotHang(t *testing.T) {
	testenv.Command(t, "setsid", "util-linux")
	defer func(d time.Duration) { outputLinger = d }(outputLinger)
	outputLinger = 100 * time.Millisecond
	c := newCollector()
	r := Run(context.Background(), Spec{Command: "setsid sh -c 'echo $$ > escaped; exec sleep 1000' & until [ -s escaped ]; do sleep 0.01; done; cat escaped", Root: t.TempDir()}, c.write)
	pid, err := strconv.Atoi(strings.TrimSpace(c.stdout()))
	if err != nil {
		t.Fatalf("pid from %q: %v", c.stdout(), err)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	if r.Code != 0 || !strings.Contains(c.stderr(), "left the step's process group") {
		t.Fatalf("result %+v, stderr %q", r, c.stderr())
	}
}

// waitGone waits until process pid is gone (a zombie at most, until its
// reaper runs).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || strings.Contains(string(b), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("background process %d survived the step: %s", pid, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLargeOutputInBoundedChunks: every byte arrives, in chunks of at most
// ChunkSize.
func TestLargeOutputInBoundedChunks(t *testing.T) {
	c := newCollector()
	r := Run(context.Background(), Spec{Command: "seq 1 200000", Root: t.TempDir()}, c.write)
	if r.Code != 0 {
		t.Fatal(r)
	}
	var want strings.Builder
	for i := 1; i <= 200000; i++ {
		want.WriteString(strconv.Itoa(i))
		want.WriteByte('\n')
	}
	if c.stdout() != want.String() {
		t.Fatalf("output differs: %d bytes, want %d", len(c.stdout()), want.Len())
	}
}
