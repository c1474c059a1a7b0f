package launcher_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/zclconf/go-cty/cty"

	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// binDir holds the plugins TestMain builds: the commander test plugin and
// the example local launcher, which has no commands.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "launcher-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := 0
	for name, pkg := range map[string]string{
		"conveyor-launcher-commander": "./testdata/commander",
		"conveyor-launcher-local":     "../examples/local-launcher",
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			code = 1
		}
	}
	if code == 0 {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func start(t *testing.T, name string) *launcher.Process {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := launcher.Start(ctx, launcher.ClientOptions{Path: filepath.Join(binDir, "conveyor-launcher-"+name)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p
}

func commander(t *testing.T, p *launcher.Process) launcher.Commander {
	t.Helper()
	c, ok := p.Launcher.(launcher.Commander)
	if !ok {
		t.Fatal("the host's launcher client does not implement launcher.Commander")
	}
	return c
}

// TestCommandsRoundTrip runs operator commands in a real plugin process:
// the list, the arguments and the nodes' decoded configuration reach the
// plugin, and its output and errors come back as it wrote them.
func TestCommandsRoundTrip(t *testing.T) {
	p := start(t, "commander")
	if !p.Info.Has(launcher.CapCommands) {
		t.Fatalf("capabilities %q lack %q: Serve must add it for a Commander", p.Info.Capabilities, launcher.CapCommands)
	}
	c := commander(t, p)
	ctx := context.Background()

	cmds, err := c.Commands(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, cmd := range cmds {
		names = append(names, cmd.Name)
		if cmd.Help == "" {
			t.Errorf("command %s has no help", cmd.Name)
		}
	}
	if want := []string{"nodes", "echo", "mode", "fail"}; !slices.Equal(names, want) {
		t.Errorf("commands %q, want %q", names, want)
	}

	args := []string{"-apply", "two words", "", "ünïcode", "--", "-config"}
	out, err := c.RunCommand(ctx, &launcher.CommandRequest{Name: "echo", Args: args})
	if err != nil {
		t.Fatal(err)
	}
	if want := "-apply\ntwo words\n\nünïcode\n--\n-config\n"; out != want {
		t.Errorf("echo: %q, want %q", out, want)
	}

	nodes := []*launcher.Node{
		{Name: "a", Labels: []string{"linux"}, Config: cty.ObjectVal(map[string]cty.Value{"greeting": cty.StringVal("hello")})},
		{Name: "b", Config: cty.ObjectVal(map[string]cty.Value{"greeting": cty.NullVal(cty.String)})},
	}
	out, err = c.RunCommand(ctx, &launcher.CommandRequest{Name: "nodes", Nodes: nodes})
	if err != nil {
		t.Fatal(err)
	}
	if want := "a: hello\nb: \n"; out != want {
		t.Errorf("nodes: %q, want %q", out, want)
	}

	out, err = c.RunCommand(ctx, &launcher.CommandRequest{Name: "fail", Args: []string{"x"}})
	if err == nil || err.Error() != `fail: failed as asked (args ["x"])` {
		t.Errorf("fail: error %v, want the plugin's own message", err)
	}
	if out != "half done\n" {
		t.Errorf("fail: output %q, want what the command wrote before failing", out)
	}

	if _, err := c.RunCommand(ctx, &launcher.CommandRequest{Name: "nope"}); err == nil || errors.Is(err, launcher.ErrNoCommands) {
		t.Errorf("unknown command: error %v, want the plugin's error", err)
	}
	// The plugin survived all of it.
	if _, err := c.Commands(ctx); err != nil {
		t.Errorf("commands after the runs: %v", err)
	}
}

// TestNoCommands: a plugin without the capability answers ErrNoCommands.
func TestNoCommands(t *testing.T) {
	p := start(t, "local")
	if p.Info.Has(launcher.CapCommands) {
		t.Fatalf("the local launcher declares %q", launcher.CapCommands)
	}
	c := commander(t, p)
	if _, err := c.Commands(context.Background()); !errors.Is(err, launcher.ErrNoCommands) {
		t.Errorf("Commands: %v, want ErrNoCommands", err)
	}
	if _, err := c.RunCommand(context.Background(), &launcher.CommandRequest{Name: "x"}); !errors.Is(err, launcher.ErrNoCommands) {
		t.Errorf("RunCommand: %v, want ErrNoCommands", err)
	}
}

// TestPermanentLaunchErrorCrossesTheBoundary: a launch error the plugin
// marks Permanent is permanent for the host, and the node's name prefixes
// the message once.
func TestPermanentLaunchErrorCrossesTheBoundary(t *testing.T) {
	p := start(t, "commander")
	for _, tc := range []struct {
		greeting  string
		want      string
		permanent bool
	}{
		{"refuse-permanent", `launch node "n": refused for good as asked`, true},
		{"refuse", `launch node "n": refused as asked`, false},
		{"approve", `launch node "n": host key SHA256:test waits for approval`, true},
	} {
		node := &launcher.Node{Name: "n", Config: cty.ObjectVal(map[string]cty.Value{"greeting": cty.StringVal(tc.greeting)})}
		_, err := p.Launcher.Launch(context.Background(), node)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: error %v, want %q", tc.greeting, err, tc.want)
		}
		if got := launcher.IsPermanent(err); got != tc.permanent {
			t.Errorf("%s: IsPermanent = %v, want %v", tc.greeting, got, tc.permanent)
		}
		fp, pending := launcher.PendingApproval(err)
		if want := tc.greeting == "approve"; pending != want || want && fp != "SHA256:test" {
			t.Errorf("%s: PendingApproval = %q, %v, want pending %v", tc.greeting, fp, pending, want)
		}
	}
	// The approved key crosses the boundary the other way.
	node := &launcher.Node{Name: "n", Config: cty.ObjectVal(map[string]cty.Value{"greeting": cty.StringVal("approve")}), ApprovedKeys: []string{"SHA256:test"}}
	conn, err := p.Launcher.Launch(context.Background(), node)
	if err != nil {
		t.Fatalf("launch with the key approved: %v", err)
	}
	conn.Close()
}
