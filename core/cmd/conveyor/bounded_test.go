//go:build linux

package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// promptly bounds how long conveyor may take to give up on an input that
// would block, or to end after SIGTERM: seconds, where it used to hang (a
// FIFO: for good; a plugin that never completes its handshake: a minute).
const promptly = 15 * time.Second

// startConveyor starts conveyor with args in dir; done is closed when it
// has exited.
func startConveyor(t *testing.T, dir string, args ...string) (cmd *exec.Cmd, out *bytes.Buffer, done chan struct{}) {
	t.Helper()
	cmd = exec.Command(conveyorBin, args...)
	cmd.Dir = dir
	cmd.Env = conveyorEnv()
	out = new(bytes.Buffer)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done = make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	return cmd, out, done
}

// TestValidateFIFO: `conveyor validate` of a FIFO, or of a configuration
// reading one with file(), answers at once with a diagnostic; it used to
// block for good, ignoring SIGTERM.
func TestValidateFIFO(t *testing.T) {
	checkNoLeftovers(t)
	tests := []struct {
		name string
		cfg  func(t *testing.T, dir string) string
		want string
	}{
		{"config", func(t *testing.T, dir string) string { return "conveyor.hcl" },
			"conveyor.hcl:1:1: Error: Failed to read configuration"},
		{"file", func(t *testing.T, dir string) string { return render(t, dir, "attack/file_fifo.hcl") },
			"cannot read fifo: not a regular file (a FIFO)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			fifo := filepath.Join(dir, "fifo")
			if tt.name == "config" {
				fifo = filepath.Join(dir, "conveyor.hcl")
			}
			if err := syscall.Mkfifo(fifo, 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := tt.cfg(t, dir)
			_, out, done := startConveyor(t, dir, "validate", cfg)
			select {
			case <-done:
			case <-time.After(promptly):
				t.Fatalf("validate still running after %v:\n%s", promptly, out)
			}
			if !strings.Contains(out.String(), tt.want) || !strings.Contains(out.String(), "not a regular file (a FIFO)") {
				t.Errorf("output lacks %q:\n%s", tt.want, out)
			}
		})
	}
}

// TestSIGTERMEndsStartup: SIGTERM ends `conveyor validate` and `conveyor
// server` while they wait for a plugin that never completes its handshake
// (go-plugin waits a minute for it, without a context), and the plugin
// goes with them.
func TestSIGTERMEndsStartup(t *testing.T) {
	checkNoLeftovers(t)
	for _, command := range [][]string{{"validate"}, {"server", "-config"}} {
		t.Run(command[0], func(t *testing.T) {
			dir := t.TempDir()
			plugins := filepath.Join(dir, "plugins")
			if err := os.Mkdir(plugins, 0o755); err != nil {
				t.Fatal(err)
			}
			pidFile := filepath.Join(dir, "hang.pid")
			sleep, err := exec.LookPath("sleep") // conveyor's PATH is empty
			if err != nil {
				t.Fatal(err)
			}
			script := fmt.Sprintf("#!/bin/sh\necho $$ > %s\nexec %s 300\n", pidFile, sleep)
			if err := os.WriteFile(filepath.Join(plugins, "conveyor-launcher-hang"), []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			cfg := render(t, dir, "attack/hang_plugin.hcl")
			cmd, out, done := startConveyor(t, dir, append(command, cfg)...)

			var pid int
			eventually(t, startTimeout, "the plugin to start", func() error {
				b, err := os.ReadFile(pidFile)
				if err != nil {
					return err
				}
				pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
				return err
			})
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			select {
			case <-done:
			case <-time.After(promptly):
				t.Fatalf("conveyor %s still running %v after SIGTERM:\n%s", command[0], promptly, out)
			}
			t.Logf("conveyor %s ended %v after SIGTERM", command[0], time.Since(start).Round(time.Millisecond))
			if code := cmd.ProcessState.ExitCode(); code != 1 {
				t.Errorf("exit code %d, want 1:\n%s", code, out)
			}
			if !strings.Contains(out.String(), "terminated signal received") {
				t.Errorf("output does not say startup was cancelled:\n%s", out)
			}
			waitEnded(t, pid, goneTimeout)
		})
	}
}

// TestValidateRedactsPluginMessages: a plugin quoting a value it rejects
// (the local launcher: `program "..." not found`) does not make validate
// print what file() read; the diagnostic names the file and the attribute
// instead.
func TestValidateRedactsPluginMessages(t *testing.T) {
	checkNoLeftovers(t)
	dir := t.TempDir()
	secret, err := os.ReadFile(filepath.Join("testdata", "attack", "secret.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secret.txt"), secret, 0o600); err != nil {
		t.Fatal(err)
	}
	r := runConveyor(t, dir, "validate", render(t, dir, "attack/secret_command.hcl"))
	if r.code != 1 {
		t.Errorf("exit code %d, want 1", r.code)
	}
	if strings.Contains(r.stderr, "s3cr3t") {
		t.Errorf("validate printed the file's contents:\n%s", r.stderr)
	}
	for _, want := range []string{`6:15: Error: Invalid local configuration`,
		`command: The local launcher rejects this value; its message is not shown, as it may quote the value. The value comes from file("secret.txt")`} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
}
