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
	for _, tc := range []struct {
		name      string
		cmd       string
		env       []string
		timeout   time.Duration
		code      int
		errPrefix string
		stdout    string
		stderr    string
	}{
		{name: "success", cmd: "echo hello", code: 0, stdout: "hello\n"},
		{name: "exit code", cmd: "echo out; echo err >&2; exit 7", code: 7, stdout: "out\n", stderr: "err\n"},
		{name: "env", cmd: `echo "$A-$B"`, env: []string{"A=1", "B=two"}, stdout: "1-two\n"},
		{name: "workdir", cmd: "pwd", stdout: "WORKDIR\n"},
		{name: "timeout", cmd: "echo started; sleep 60", timeout: 200 * time.Millisecond, code: -1, errPrefix: "timed out after 200ms", stdout: "started\n"},
		{name: "killed by a signal", cmd: "kill -9 $$", code: -1, errPrefix: "killed by signal"},
		{name: "command not found", cmd: "no-such-command-xyz", code: 127},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ws", "job", "1")
			c := newCollector()
			res := Run(context.Background(), Spec{Command: tc.cmd, Dir: dir, Env: tc.env, Timeout: tc.timeout, Grace: time.Second}, c.write)
			if res.Code != tc.code || !strings.HasPrefix(res.Error, tc.errPrefix) || (tc.errPrefix == "" && res.Error != "") {
				t.Fatalf("result %+v, want code %d, error starting with %q", res, tc.code, tc.errPrefix)
			}
			want := strings.ReplaceAll(tc.stdout, "WORKDIR", dir)
			if got := c.stdout(); got != want {
				t.Errorf("stdout %q, want %q", got, want)
			}
			if tc.stderr != "" && c.err.String() != tc.stderr {
				t.Errorf("stderr %q, want %q", c.err.String(), tc.stderr)
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
		done <- Run(context.Background(), Spec{Command: "echo first; read x < " + fifo + "; echo second", Dir: dir}, c.write)
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
// processes it started in the background.
func TestCancelKillsTheProcessGroup(t *testing.T) {
	dir := t.TempDir()
	c := newCollector()
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan Result, 1)
	go func() {
		done <- Run(ctx, Spec{Command: "sleep 1000 & echo child=$!; trap '' TERM; wait", Dir: dir, Grace: 300 * time.Millisecond}, c.write)
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
	// The grandchild is gone (a zombie at most, until its reaper runs).
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || strings.Contains(string(b), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("background process %d survived the cancel: %s", pid, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLargeOutputInBoundedChunks: every byte arrives, in chunks of at most
// ChunkSize.
func TestLargeOutputInBoundedChunks(t *testing.T) {
	c := newCollector()
	r := Run(context.Background(), Spec{Command: "seq 1 200000", Dir: t.TempDir()}, c.write)
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
