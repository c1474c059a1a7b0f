//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// buildTimeout bounds one `conveyor build -follow` run: the build waits for
// the local agent to come online, then runs a step or two.
const buildTimeout = 2 * time.Minute

// extraBins are the binaries beyond TestMain's that some tests need, built
// into binDir on first use (so that leftovers watches them too).
var extraBins = struct {
	mu    sync.Mutex
	built map[string]error
}{built: map[string]error{}}

// builtBinary builds the package pkg (relative to this directory) into
// binDir/name once per test binary and returns its path.
func builtBinary(t *testing.T, name, pkg string) string {
	t.Helper()
	path := filepath.Join(binDir, name)
	extraBins.mu.Lock()
	defer extraBins.mu.Unlock()
	err, done := extraBins.built[name]
	if !done {
		cmd := exec.Command("go", "build", "-o", path, pkg)
		if out, berr := cmd.CombinedOutput(); berr != nil {
			err = fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), berr, out)
		}
		extraBins.built[name] = err
	}
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// syncBuf is a process's output, safe to read while the process writes.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestBuildFollow runs `conveyor build JOB -follow` against a real server
// whose node is a real conveyor-agent behind the local launcher: the CLI
// prints the step's output while the step still runs (it waits for a file
// the test creates only after it saw the first line), then exits 0 on
// success; a failing build's log is printed too and the CLI exits 1.
func TestBuildFollow(t *testing.T) {
	checkNoLeftovers(t)
	agent := builtBinary(t, "conveyor-agent", "../../../agent/cmd/conveyor-agent")
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	cfg := fmt.Sprintf(`
server {
  http_addr = "127.0.0.1:0"
  data_dir  = "%s"
}

launcher "local" {}

node "n1" {
  launcher = "local"
  labels   = ["linux"]
  local {
    command = ["%s", "-transport", "stdio", "-name", "n1", "-workdir", "%s"]
  }
}

job "gated" {
  labels = ["linux"]
  # The conveyor processes of these tests run with an empty PATH, which
  # the agent and its steps inherit.
  env = { PATH = "/usr/bin:/bin" }
  step "first" { run = "echo before the gate" }
  step "second" {
    run = "while [ ! -e '%s' ]; do sleep 0.05; done; echo after the gate"
  }
}

job "failing" {
  labels = ["linux"]
  step "fails" { run = "echo about to fail; exit 3" }
  step "skipped" { run = "echo never printed" }
}
`, hclEscape(filepath.Join(dir, "data")), hclEscape(agent), hclEscape(filepath.Join(dir, "work")), hclEscape(gate))
	if err := os.WriteFile(filepath.Join(dir, "conveyor.hcl"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, dir, "conveyor.hcl")
	follow := func(job string) (*exec.Cmd, *syncBuf, *syncBuf) {
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		t.Cleanup(cancel)
		cmd := exec.CommandContext(ctx, conveyorBin, "build", job, "-follow", "-address", s.url, "-token-file", s.tokenFile)
		cmd.Dir, cmd.Env, cmd.WaitDelay = dir, conveyorEnv(), 5*time.Second
		stdout, stderr := &syncBuf{}, &syncBuf{}
		cmd.Stdout, cmd.Stderr = stdout, stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, stdout, stderr
	}
	exitCode := func(err error) int {
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("conveyor build: %v", err)
		}
		if ee != nil {
			return ee.ExitCode()
		}
		return 0
	}

	t.Run("success", func(t *testing.T) {
		cmd, stdout, stderr := follow("gated")
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		// Live: the first step's line arrives while the second step still
		// waits for the gate, so the build cannot have finished yet.
		eventually(t, buildTimeout, "the first line while the build runs", func() error {
			select {
			case err := <-done:
				t.Fatalf("conveyor build exited (%v) before the gate opened; stdout %q, stderr %q", err, stdout, stderr)
			default:
			}
			if got := stdout.String(); got != "before the gate\n" {
				return fmt.Errorf("stdout so far %q", got)
			}
			return nil
		})
		if err := os.WriteFile(gate, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		var err error
		select {
		case err = <-done:
		case <-time.After(buildTimeout):
			t.Fatalf("conveyor build still following %v after the gate opened; stdout %q", buildTimeout, stdout)
		}
		if code := exitCode(err); code != 0 {
			t.Fatalf("exit %d, want 0; stderr %q", code, stderr)
		}
		if got, want := stdout.String(), "before the gate\nafter the gate\n"; got != want {
			t.Errorf("stdout %q, want %q", got, want)
		}
		if got := stderr.String(); !strings.Contains(got, "Build gated#1 queued\n") || !strings.Contains(got, "Build gated#1: success") {
			t.Errorf("stderr %q, want the queued and success lines", got)
		}
	})

	t.Run("failure", func(t *testing.T) {
		cmd, stdout, stderr := follow("failing")
		if code := exitCode(cmd.Wait()); code != 1 {
			t.Fatalf("exit %d, want 1; stdout %q, stderr %q", code, stdout, stderr)
		}
		if got, want := stdout.String(), "about to fail\n"; got != want {
			t.Errorf("stdout %q, want %q (the failing step's output, not the skipped step's)", got, want)
		}
		if got := stderr.String(); !strings.Contains(got, "Build failing#1: failure") {
			t.Errorf("stderr %q, want the failure line", got)
		}
	})

	// The server stops its plugin, whose agent ends with its stdin.
	if err := s.signal(t, syscall.SIGTERM); err != nil {
		t.Fatalf("server exit after SIGTERM: %v", err)
	}
	eventually(t, goneTimeout, "the agent to end with the server", func() error {
		if left := leftovers(); len(left) > 0 {
			return fmt.Errorf("still running: %s", strings.Join(left, "; "))
		}
		return nil
	})
}
