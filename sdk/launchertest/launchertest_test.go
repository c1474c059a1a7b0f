package launchertest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "launchertest-bin-")
	if err != nil {
		panic(err)
	}
	binDir = dir
	code := build(map[string]string{
		"conveyor-launcher-local":  "../examples/local-launcher",
		"pongagent":                "./testdata/pongagent",
		"conveyor-launcher-broken": "./testdata/broken",
		// A conformant plugin with operator commands.
		"conveyor-launcher-commander": "../launcher/testdata/commander",
	})
	if code == 0 {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func build(pkgs map[string]string) int {
	for name, pkg := range pkgs {
		cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, name), pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return 1
		}
	}
	return 0
}

func localOptions() Options {
	return Options{
		Plugin: filepath.Join(binDir, "conveyor-launcher-local"),
		Global: `env = { CONFORMANCE = "1" }`,
		Node:   `command = [` + strconv.Quote(filepath.Join(binDir, "pongagent")) + `]`,
		BadConfigs: []BadConfig{
			{Name: "missing command", Node: `dir = "/"`},
			{Name: "wrong type", Node: `command = "pongagent"`},
			{Name: "unknown program", Node: `command = ["/nonexistent/agent"]`},
			{Name: "not a directory", Node: `command = ["true"]` + "\n" + `dir = "/nonexistent"`},
		},
		Timeout: 30 * time.Second,
	}
}

func TestLocalLauncherConforms(t *testing.T) {
	Run(t, localOptions())
}

func TestCommanderConforms(t *testing.T) {
	Run(t, Options{
		Plugin:     filepath.Join(binDir, "conveyor-launcher-commander"),
		Node:       `greeting = "hi"`,
		BadConfigs: []BadConfig{{Name: "wrong type", Node: `greeting = ["hi"]`}},
		Command:    []string{"nodes"},
		Timeout:    30 * time.Second,
	})
}

// TestCommandCheckFails: the commands check fails when Options.Command
// fails, and for a plugin without commands that is asked to run one.
func TestCommandCheckFails(t *testing.T) {
	for name, opts := range map[string]Options{
		"failing command":  {Plugin: filepath.Join(binDir, "conveyor-launcher-commander"), Command: []string{"fail"}},
		"unlisted command": {Plugin: filepath.Join(binDir, "conveyor-launcher-commander"), Command: []string{"frobnicate"}},
		"no commands":      func() Options { o := localOptions(); o.Command = []string{"nodes"}; return o }(),
	} {
		t.Run(name, func(t *testing.T) {
			opts.Timeout = 30 * time.Second
			for _, r := range Check(context.Background(), opts) {
				if r.Name == CheckCommands {
					if r.Err == nil {
						t.Fatal("commands check passed")
					}
					t.Logf("%s: %v", r.Name, r.Err)
					return
				}
			}
			t.Fatal("commands check did not run")
		})
	}
}

func TestBrokenLauncherFails(t *testing.T) {
	opts := localOptions()
	opts.Plugin = filepath.Join(binDir, "conveyor-launcher-broken")
	opts.Node = `command = ["pongagent"]`
	opts.BadConfigs = []BadConfig{{Name: "empty command", Node: `command = []`}}
	opts.Timeout = 10 * time.Second
	results := Check(context.Background(), opts)

	want := map[string]bool{ // check name -> must fail
		CheckHandshake:    false,
		CheckSchema:       false,
		CheckConfigure:    true, // the valid global block has an attribute the plugin does not declare
		CheckConfigErrors: true,
		CheckCommands:     true, // declared, not implemented
		CheckRoundTrip:    true,
	}
	got := map[string]error{}
	for _, r := range results {
		got[r.Name] = r.Err
		t.Logf("%s: %v", r.Name, r.Err)
	}
	for name, mustFail := range want {
		if err, ok := got[name]; !ok {
			t.Errorf("check %s did not run", name)
		} else if mustFail != (err != nil) {
			t.Errorf("check %s: err = %v, want failure = %v", name, err, mustFail)
		}
	}

	// With a global block it accepts, the broken plugin gets past
	// configuration and fails where it really is broken.
	opts.Global = ``
	results = Check(context.Background(), opts)
	for _, r := range results {
		t.Logf("%s: %v", r.Name, r.Err)
		switch r.Name {
		case CheckConfigure, CheckLaunch, CheckHandshake:
			if r.Err != nil {
				t.Errorf("%s should pass: %v", r.Name, r.Err)
			}
		case CheckConfigErrors, CheckCommands, CheckRoundTrip, CheckTeardown:
			if r.Err == nil {
				t.Errorf("%s passed against a broken plugin", r.Name)
			}
		}
	}
}

func TestMissingPluginFailsHandshake(t *testing.T) {
	opts := localOptions()
	opts.Plugin = filepath.Join(binDir, "does-not-exist")
	results := Check(context.Background(), opts)
	if results[0].Name != CheckHandshake || results[0].Err == nil {
		t.Fatalf("first result = %+v, want a failed handshake", results[0])
	}
	for _, r := range results[1 : len(results)-1] {
		if r.Err == nil {
			t.Errorf("%s passed without a plugin", r.Name)
		}
	}
}
