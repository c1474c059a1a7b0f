//go:build linux

package main

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// commanderList is what `conveyor commander` prints.
const commanderList = `Usage: conveyor commander COMMAND -config FILE [ARGS...]

Commands of launcher "commander":
  nodes  list the configured nodes and their greetings
  echo   print the arguments, one per line
  mode   say how the plugin was configured
  fail   print a line, then fail
`

// TestLauncherCommands: `conveyor LAUNCHER [COMMAND]` reaches the plugin of
// a configured launcher with the commands capability, with the command's
// arguments and the launcher's nodes; everything else stays an unknown
// command or a usage error, and no plugin outlives the command.
func TestLauncherCommands(t *testing.T) {
	checkNoLeftovers(t)
	dir := t.TempDir()
	cfg := render(t, dir, "commands.hcl")
	unknown := func(name string) string {
		return "conveyor: unknown command \"" + name + "\" (and " + cfg + " declares no launcher \"" + name + "\")\n\n" + usage
	}
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string // exact
		stderr string // exact unless part
		part   bool   // stderr only needs to contain stderr
	}{
		{"list", []string{"commander", "-config", cfg}, 0, commanderList, "", false},
		{"help lists", []string{"commander", "-h", "-config", cfg}, 0, commanderList, "", false},
		// Only the launcher's own nodes, with their decoded blocks.
		{"nodes", []string{"commander", "nodes", "-config", cfg}, 0, "a: hello\nb: \n", "", false},
		// -config is the host's wherever it stands; the rest, flags and
		// all, is the command's, in order, "--" included.
		{"args", []string{"commander", "--config=" + cfg, "echo", "-apply", "two words", "--", "-config", "x"}, 0,
			"-apply\ntwo words\n--\n-config\nx\n", "", false},
		{"validate-only", []string{"commander", "mode", "-config", cfg}, 0, "validate_only=true\n", "", false},
		{"failure", []string{"commander", "fail", "-config", cfg, "now"}, 1, "half done\n",
			"conveyor commander fail: fail: failed as asked (args [\"now\"])\n", false},
		{"unknown command", []string{"commander", "frobnicate", "-config", cfg}, 2, "",
			"conveyor commander: unknown command \"frobnicate\"\n\n" + commanderList, false},
		{"no commands", []string{"local", "x", "-config", cfg}, 2, "",
			"conveyor local: the launcher's plugin (" + pluginBin + ") has no commands\n", false},
		{"no such launcher", []string{"kafka", "acls", "-config", cfg}, 2, "", unknown("kafka"), false},
		{"no config", []string{"commander", "nodes"}, 2, "", "conveyor: unknown command \"commander\"\n\n" + usage, false},
		{"config without file", []string{"commander", "nodes", "-config"}, 2, "", "conveyor commander: -config needs a file\n", false},
		{"config twice", []string{"commander", "-config", cfg, "nodes", "-config", cfg}, 2, "", "conveyor commander: -config is given twice\n", false},
		{"bad config", []string{"commander", "-config", "nonexistent.hcl"}, 1, "", "nonexistent.hcl", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runConveyor(t, dir, tt.args...)
			if r.code != tt.code {
				t.Errorf("exit code %d, want %d", r.code, tt.code)
			}
			if r.stdout != tt.stdout {
				t.Errorf("stdout:\n%q\nwant:\n%q", r.stdout, tt.stdout)
			}
			if tt.part && !strings.Contains(r.stderr, tt.stderr) || !tt.part && r.stderr != tt.stderr {
				t.Errorf("stderr:\n%q\nwant:\n%q", r.stderr, tt.stderr)
			}
		})
	}
	if !slices.ContainsFunc(strings.Split(usage, "\n"), func(l string) bool { return strings.Contains(l, "LAUNCHER [COMMAND] -config FILE") }) {
		t.Error("the usage does not mention launcher commands")
	}
	// Commands run with the plugins in validate-only mode: nothing is
	// created on disk.
	if _, err := os.Stat(filepath.Join(dir, "data")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a launcher command created the data_dir (stat: %v)", err)
	}
}
