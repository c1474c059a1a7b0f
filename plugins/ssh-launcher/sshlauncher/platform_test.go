package sshlauncher

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/conveyor-ci/conveyor/plugins/ssh-launcher/upload"
)

func TestParseUname(t *testing.T) {
	for in, want := range map[string]Platform{
		"Linux x86_64\n": {"linux", "amd64"},
		"Linux aarch64":  {"linux", "arm64"},
		"Darwin arm64":   {"darwin", "arm64"},
		"Linux armv7l":   {"linux", "arm"},
		"FreeBSD amd64":  {"freebsd", "amd64"},
		"Linux i686":     {"linux", "386"},
	} {
		got, err := ParseUname(in)
		if err != nil || got != want {
			t.Errorf("ParseUname(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "Linux", "Plan9 x86_64", "Linux vax"} {
		if _, err := ParseUname(in); err == nil {
			t.Errorf("ParseUname(%q) succeeded", in)
		}
	}
}

func TestBinaryPlatform(t *testing.T) {
	p, err := BinaryPlatform(pongAgent)
	if err != nil || p != LocalPlatform() {
		t.Fatalf("BinaryPlatform(pongagent) = %v, %v; want %v", p, err, LocalPlatform())
	}
	if !(Platform{}).Runs(Platform{"linux", "arm64"}) || p.Runs(Platform{"linux", "riscv64"}) {
		t.Error("Runs is wrong")
	}
}

func TestExpandRemote(t *testing.T) {
	for in, want := range map[string]string{
		"~":                  "/home/b",
		"~/.conveyor/agent":  "/home/b/.conveyor/agent",
		"/opt/agent":         "/opt/agent",
		"bin/agent":          "/home/b/bin/agent",
		"~other/not-special": "/home/b/~other/not-special",
	} {
		if got := expandRemote(in, "/home/b/"); got != want {
			t.Errorf("expandRemote(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestAgentCommand: the remote command starts the watchdog, reads the env
// from stdin and runs the agent; env values never appear in it.
func TestAgentCommand(t *testing.T) {
	s := &settings{Node: "it's", Env: map[string]string{"B": "2", "SECRET_TOKEN": "x'y-s3cr3t"}}
	got := agentCommand(s, "/a b/agent", "/w", "END1")
	if strings.Contains(got, "s3cr3t") || strings.Contains(got, "SECRET_TOKEN") {
		t.Errorf("the command line carries the env: %s", got)
	}
	q := upload.Quote
	inner := "mkdir -p " + q("/w") + " && cd " + q("/w") + " && exec " + q("/a b/agent") + " -transport stdio -name " + q("it's") + " -workdir " + q("/w")
	for _, want := range []string{"conveyor-ssh-watchdog $$ $PPID", "read -r l", "END1", q(inner)[1 : len(q(inner))-1]} {
		if !strings.Contains(got, want) {
			t.Errorf("agentCommand =\n%s\nlacks %s", got, want)
		}
	}
	if !strings.HasPrefix(got, "exec /bin/sh -c '") {
		t.Errorf("agentCommand does not run /bin/sh: %s", got)
	}
	if script, want := envScript(s.Env, "END1"), "export B='2' SECRET_TOKEN="+q("x'y-s3cr3t")+"\nEND1\n"; script != want {
		t.Errorf("envScript = %q, want %q", script, want)
	}
	s = &settings{Node: "n", PrefixCommand: "sudo -u build", SuffixCommand: "2>>/tmp/agent.log"}
	got = agentCommand(s, "/agent", "/w", "END2")
	if strings.Contains(got, "read -r") {
		t.Errorf("without env the command reads no stdin: %s", got)
	}
	tail := "&& sudo -u build " + q("/agent") + " -transport stdio -name " + q("n") + " -workdir " + q("/w") + " 2>>/tmp/agent.log"
	if qt := q(tail); !strings.Contains(got, qt[1:len(qt)-1]) {
		t.Errorf("agentCommand with prefix and suffix = %s", got)
	}
}

// TestAgentCommandInSh runs the remote command in this machine's /bin/sh
// as sshd would (a session leader, stdin carrying the env then the
// frames): the agent gets every value byte for byte, and every byte of
// stdin after the env.
func TestAgentCommandInSh(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	out := filepath.Join(dir, "out")
	if err := os.WriteFile(agent, []byte(fmt.Sprintf("#!/bin/sh\n{ printf '%%s|' \"$A\" \"$B\" \"$C\"; cat; } > %q\n", out)), 0o755); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"A": "two\nlines\n", "B": `it's "quoted" $HOME \n \\ ` + "`x`", "C": ""}
	s := &settings{Node: "n", Env: env}
	end := envTerminator()
	cmd := exec.Command("/bin/sh", "-c", agentCommand(s, agent, filepath.Join(dir, "work"), end))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Stdin = strings.NewReader(envScript(env, end) + "frames\x00after\n")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v: %s", err, stderr.String())
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // the watchdog
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if want := env["A"] + "|" + env["B"] + "||frames\x00after\n"; string(got) != want {
		t.Errorf("the agent saw %q, want %q", got, want)
	}
	if !strings.HasPrefix(stderr.String(), startMarker+"\n") {
		t.Errorf("stderr %q does not start with the marker", stderr.String())
	}
}
