package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/conveyor-ci/conveyor/core/plugins"
	"github.com/conveyor-ci/conveyor/core/version"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// cmdLauncher runs an operator command of a launcher plugin:
// `conveyor LAUNCHER [COMMAND [ARGS...]] -config FILE`, where LAUNCHER
// names a launcher block of FILE whose plugin has the commands capability.
// Without COMMAND it lists the plugin's commands. -config belongs to the
// host and may stand anywhere; every other argument goes to the plugin.
// A name that is no launcher of FILE (or comes without -config) is an
// unknown command.
func cmdLauncher(ctx context.Context, name string, args []string, stdout, stderr io.Writer) int {
	path, args, err := cutConfigFlag(args)
	if err != nil {
		fmt.Fprintf(stderr, "conveyor %s: %v\n", name, err)
		return 2
	}
	if path == "" || strings.HasPrefix(name, "-") {
		fmt.Fprintf(stderr, "conveyor: unknown command %q\n\n%s", name, usage)
		return 2
	}
	cfg, ok := loadConfig(ctx, stderr, path)
	if !ok {
		return 1
	}
	l := cfg.Launcher(name)
	if l == nil {
		fmt.Fprintf(stderr, "conveyor: unknown command %q (and %s declares no launcher %q)\n\n%s", name, path, name, usage)
		return 2
	}
	m, ok := startPlugins(ctx, stderr, cfg)
	if !ok {
		return 1
	}
	defer m.Stop()
	p := m.Get(name)
	if !p.Info().Has(launcher.CapCommands) {
		fmt.Fprintf(stderr, "conveyor %s: the launcher's plugin (%s) has no commands\n", name, p.Path)
		return 2
	}
	c, ok := p.Launcher().(launcher.Commander)
	if !ok {
		fmt.Fprintf(stderr, "conveyor %s: the plugin client cannot run commands\n", name)
		return 1
	}
	cmds, err := c.Commands(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "conveyor %s: %v\n", name, err)
		return 1
	}
	listed := func(cmd string) bool {
		return slices.ContainsFunc(cmds, func(c launcher.Command) bool { return c.Name == cmd })
	}
	if len(args) == 0 || !listed(args[0]) && slices.Contains([]string{"help", "-h", "-help", "--help"}, args[0]) {
		listCommands(stdout, name, cmds)
		return 0
	}
	cmd := args[0]
	if !listed(cmd) {
		fmt.Fprintf(stderr, "conveyor %s: unknown command %q\n\n", name, cmd)
		listCommands(stderr, name, cmds)
		return 2
	}
	nodes := plugins.HostConfig(cfg, l, plugins.LoadOptions{Version: version.Version, ValidateOnly: true}).Nodes
	out, err := c.RunCommand(ctx, &launcher.CommandRequest{Name: cmd, Args: args[1:], Nodes: nodes})
	fmt.Fprint(stdout, out)
	if err != nil {
		fmt.Fprintf(stderr, "conveyor %s %s: %v\n", name, cmd, err)
		return 1
	}
	return 0
}

// listCommands prints a plugin's commands with their help.
func listCommands(w io.Writer, launcherName string, cmds []launcher.Command) {
	fmt.Fprintf(w, "Usage: conveyor %s COMMAND -config FILE [ARGS...]\n\nCommands of launcher %q:\n", launcherName, launcherName)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range cmds {
		fmt.Fprintf(tw, "  %s\t%s\n", c.Name, c.Help)
	}
	_ = tw.Flush()
}

// cutConfigFlag takes the host's -config FILE (also --config, -config=FILE)
// out of args, wherever it stands before a "--", and returns the file and
// the other arguments in order; path is empty without the flag.
func cutConfigFlag(args []string) (path string, rest []string, err error) {
	found := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = append(rest, args[i:]...)
			break
		}
		flagName, value, hasValue := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-"), "=")
		if !strings.HasPrefix(a, "-") || flagName != "config" {
			rest = append(rest, a)
			continue
		}
		if found {
			return "", nil, errors.New("-config is given twice")
		}
		found = true
		if !hasValue {
			if i+1 == len(args) {
				return "", nil, errors.New("-config needs a file")
			}
			i++
			value = args[i]
		}
		if value == "" {
			return "", nil, errors.New("-config needs a file")
		}
		path = value
	}
	return path, rest, nil
}
