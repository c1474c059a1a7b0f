// Command conveyor-launcher-local is the example launcher plugin: it runs a
// node's agent as a local subprocess and carries frames over its stdin and
// stdout. It is small on purpose; copy it to start a launcher of your own.
//
//	launcher "local" {}
//
//	node "builder" {
//	  launcher = "local"
//	  local {
//	    command = ["conveyor-agent", "-transport", "stdio", "-workdir", "/tmp/ws"]
//	  }
//	}
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"sync"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/sdk/hclspec"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// version is set by the build.
var version = "0.1.0"

func main() {
	launcher.Serve(func(logger hclog.Logger) launcher.Launcher {
		return &local{logger: logger, running: map[string]*agent{}}
	})
}

// globalConfig is the `launcher "local" {}` block.
type globalConfig struct {
	Env map[string]string `json:"env"`
}

// nodeConfig is a node's `local {}` block.
type nodeConfig struct {
	Command []string          `json:"command"`
	Dir     string            `json:"dir"`
	Env     map[string]string `json:"env"`
}

type local struct {
	logger hclog.Logger

	mu      sync.Mutex
	global  globalConfig
	running map[string]*agent
}

// agent is one running agent process.
type agent struct {
	cmd  *exec.Cmd
	conn *launcher.StreamConn
}

func (l *local) Info(context.Context) (*launcher.Info, error) {
	return &launcher.Info{
		Name:        "local",
		Version:     version,
		Description: "runs each node's agent as a local subprocess over stdio",
	}, nil
}

func (l *local) Schema(context.Context) (*launcher.Schema, error) {
	return &launcher.Schema{
		Global: hclspec.NewObject(map[string]*hclspec.Spec{
			"env": hclspec.NewAttr("env", "map(string)", false),
		}),
		Node: hclspec.NewObject(map[string]*hclspec.Spec{
			"command": hclspec.NewAttr("command", "list(string)", true),
			"dir":     hclspec.NewAttr("dir", "string", false),
			"env":     hclspec.NewAttr("env", "map(string)", false),
		}),
	}, nil
}

func (l *local) Configure(_ context.Context, cfg *launcher.Config) error {
	var g globalConfig
	if err := cfg.DecodeGlobal(&g); err != nil {
		return err
	}
	var errs launcher.ConfigErrors
	for _, n := range cfg.Nodes {
		var nc nodeConfig
		if err := n.Decode(&nc); err != nil {
			return err
		}
		errs = append(errs, validate(n.Name, nc)...)
	}
	if len(errs) > 0 {
		return errs
	}
	l.mu.Lock()
	l.global = g
	l.mu.Unlock()
	return nil
}

func validate(node string, nc nodeConfig) launcher.ConfigErrors {
	var errs launcher.ConfigErrors
	if len(nc.Command) == 0 || nc.Command[0] == "" {
		errs = append(errs, launcher.ConfigError{Node: node, Path: []string{"command"}, Message: "command must name the program to run"})
	} else if _, err := exec.LookPath(nc.Command[0]); err != nil {
		errs = append(errs, launcher.ConfigError{Node: node, Path: []string{"command"}, Message: fmt.Sprintf("program %q not found", nc.Command[0])})
	}
	if nc.Dir != "" {
		if st, err := os.Stat(nc.Dir); err != nil || !st.IsDir() {
			errs = append(errs, launcher.ConfigError{Node: node, Path: []string{"dir"}, Message: fmt.Sprintf("%q is not a directory", nc.Dir)})
		}
	}
	return errs
}

func (l *local) Launch(_ context.Context, node *launcher.Node) (launcher.Conn, error) {
	var nc nodeConfig
	if err := node.Decode(&nc); err != nil {
		return nil, err
	}
	if errs := validate(node.Name, nc); len(errs) > 0 {
		return nil, errs
	}
	// A node runs one agent: a relaunch replaces the previous one.
	l.stop(node.Name)

	l.mu.Lock()
	env := mergeEnv(os.Environ(), l.global.Env, nc.Env)
	l.mu.Unlock()
	cmd := exec.Command(nc.Command[0], nc.Command[1:]...)
	cmd.Dir = nc.Dir
	cmd.Env = env
	// Own process group, so stopping the agent stops its steps too; killed
	// with the plugin.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = l.logger.Named(node.Name).StandardWriter(&hclog.StandardLoggerOptions{InferLevels: true})
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %q: %w", nc.Command[0], err)
	}
	pid := cmd.Process.Pid
	l.logger.Info("agent started", "node", node.Name, "pid", pid)
	a := &agent{cmd: cmd}
	a.conn = launcher.NewStreamConn(stdout, stdin, func() error {
		_ = stdin.Close()
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		err := cmd.Wait()
		l.logger.Info("agent stopped", "node", node.Name, "pid", pid, "status", err)
		l.mu.Lock()
		if l.running[node.Name] == a {
			delete(l.running, node.Name)
		}
		l.mu.Unlock()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return nil // killed or exited: either way it is stopped
		}
		return err
	}, fmt.Sprintf("pid %d", pid))
	l.mu.Lock()
	l.running[node.Name] = a
	l.mu.Unlock()
	return a.conn, nil
}

func (l *local) Teardown(_ context.Context, node string) error {
	l.stop(node)
	return nil
}

func (l *local) stop(node string) {
	l.mu.Lock()
	a := l.running[node]
	l.mu.Unlock()
	if a != nil {
		_ = a.conn.Close()
	}
}

// mergeEnv appends the maps to base in a stable order; later entries win.
func mergeEnv(base []string, maps ...map[string]string) []string {
	env := append([]string(nil), base...)
	for _, m := range maps {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			env = append(env, k+"="+m[k])
		}
	}
	return env
}
