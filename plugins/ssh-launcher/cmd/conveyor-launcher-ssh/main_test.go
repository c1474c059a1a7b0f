package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/plugins/ssh-launcher/sshdtest"
	"github.com/conveyor-ci/conveyor/sdk/launchertest"
)

// TestConformance runs the SDK's conformance kit against the built plugin,
// launching the SDK's stdio pong agent on a real sshd.
func TestConformance(t *testing.T) {
	bin := t.TempDir()
	for name, pkg := range map[string]string{
		"conveyor-launcher-ssh": ".",
		"pongagent":             "github.com/conveyor-ci/conveyor/sdk/launchertest/testdata/pongagent",
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, name), pkg)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, out)
		}
	}
	srv := sshdtest.Start(t, sshdtest.Options{})
	remote := t.TempDir()
	node := fmt.Sprintf(`
host             = "127.0.0.1"
port             = %d
user             = %q
private_key_file = %q
agent_path       = %q
workdir          = %q
host_key_verification {
  known_hosts_file = %q
}
`, srv.Port, srv.User, srv.ClientKeyFile, filepath.Join(remote, "conveyor-agent"), filepath.Join(remote, "work"), srv.KnownHostsFile)
	w := &testWriter{t: t}
	t.Cleanup(w.stop)
	logger := hclog.New(&hclog.LoggerOptions{Name: "conformance", Output: w, Level: hclog.Info})
	launchertest.Run(t, launchertest.Options{
		Plugin: filepath.Join(bin, "conveyor-launcher-ssh"),
		Global: fmt.Sprintf("agent_binary = %q", filepath.Join(bin, "pongagent")),
		Node:   node,
		BadConfigs: []launchertest.BadConfig{
			{Name: "no host", Node: `user = "root"`},
			{Name: "unknown attribute", Node: node + "port_typo = 1"},
			{Name: "bad port", Node: fmt.Sprintf(`
host = "127.0.0.1"
port = 0
private_key_file = %q`, srv.ClientKeyFile)},
			{Name: "unknown strategy", Node: fmt.Sprintf(`
host = "127.0.0.1"
private_key_file = %q
host_key_verification {
  strategy = "maybe"
}`, srv.ClientKeyFile)},
			{Name: "no credentials", Node: `host = "127.0.0.1"`},
			{Name: "missing agent binary", Global: `agent_binary = "/nonexistent/conveyor-agent"`},
		},
		Timeout: 30 * time.Second,
		Logger:  logger,
	})
	if _, err := os.Stat(filepath.Join(remote, "conveyor-agent")); err != nil {
		t.Errorf("agent not uploaded: %v", err)
	}
}

// testWriter sends log lines to the test log until the test ends (the
// plugin's output may still trickle in after that).
type testWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}
