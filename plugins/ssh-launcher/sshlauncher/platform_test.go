package sshlauncher

import (
	"strings"
	"testing"
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

func TestAgentCommand(t *testing.T) {
	s := &settings{Node: "it's", Env: map[string]string{"B": "2", "A": "x'y"}}
	got := agentCommand(s, "/a b/agent", "/w")
	want := `mkdir -p '/w' && cd '/w' && export A='x'\''y' B='2' && exec '/a b/agent' -transport stdio -name 'it'\''s' -workdir '/w'`
	if got != want {
		t.Errorf("agentCommand =\n%s\nwant\n%s", got, want)
	}
	s = &settings{Node: "n", PrefixCommand: "sudo -u build", SuffixCommand: "2>>/tmp/agent.log"}
	got = agentCommand(s, "/agent", "/w")
	if !strings.HasSuffix(got, "&& sudo -u build '/agent' -transport stdio -name 'n' -workdir '/w' 2>>/tmp/agent.log") {
		t.Errorf("agentCommand with prefix and suffix = %s", got)
	}
}
