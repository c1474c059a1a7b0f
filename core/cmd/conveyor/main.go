// Command conveyor is the Conveyor master: a CI controller that connects
// build agents through launcher plugins.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl/v2"

	"github.com/conveyor-ci/conveyor/core/client"
	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/core/plugins"
	"github.com/conveyor-ci/conveyor/core/server"
	"github.com/conveyor-ci/conveyor/core/version"
)

const usage = `Usage: conveyor <command> [options]

Commands:
  server -config FILE     run the master
  validate FILE           check a configuration, plugins included
  plugins -config FILE    list the configured launcher plugins
  build [-follow] JOB     trigger a build (and follow its log)
  artifacts [-o DIR] JOB N
                          list build N's artifacts, or download them into DIR
  nodes                   list the nodes and their state
  secret NODE             print a node's agent secret and command line
  node show NAME          a node's state and history
  node drain [-reason TEXT] NAME
                          take no new build on the node (running ones finish)
  node online NAME        let a drained node take builds again
  node disconnect [-reason TEXT] NAME
                          end the node's link to its agent now
  node launch NAME        launch the node now, skipping its backoff
  node approve-key NAME FINGERPRINT
                          approve the host key the node's launch waits for
  node delete NAME [-purge]
                          forget a node removed from the configuration;
                          -purge also deletes its launcher data (Kafka topics)
  token create -name NAME -role read|trigger|admin
                          issue an API token (printed once); token list,
                          token revoke NAME (an admin token may)
  reload [-force]         have the server load its configuration again
                          (admin; also on SIGHUP): a bad file changes
                          nothing; nodes relaunch and launchers restart
                          once their running builds finish, or at once
                          with -force
  version                 print the version
  LAUNCHER [COMMAND] -config FILE
                          run an operator command of a configured launcher's
                          plugin (conveyor kafka acls); without COMMAND,
                          list the plugin's commands

Commands that talk to a server take -address (default $CONVEYOR_ADDR,
else http://127.0.0.1:8080) and the API token: -token-file FILE (default
$CONVEYOR_TOKEN_FILE) or -token TOKEN (default $CONVEYOR_TOKEN). Unless
server.api.token is set, the server generates its bootstrap token (admin
role) into DATA_DIR/api-token at first start.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command and returns the process exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "server":
		return cmdServer(ctx, rest, stderr)
	case "validate":
		return cmdValidate(ctx, rest, stdout, stderr)
	case "plugins":
		return cmdPlugins(ctx, rest, stdout, stderr)
	case "build":
		return cmdBuild(ctx, rest, stdout, stderr)
	case "artifacts":
		return cmdArtifacts(ctx, rest, stdout, stderr)
	case "nodes":
		return cmdNodes(ctx, rest, stdout, stderr)
	case "node":
		return cmdNode(ctx, rest, stdout, stderr)
	case "secret":
		return cmdSecret(ctx, rest, stdout, stderr)
	case "token":
		return cmdToken(ctx, rest, stdout, stderr)
	case "reload":
		return cmdReload(ctx, rest, stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintf(stdout, "conveyor %s\n", version.Version)
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		return cmdLauncher(ctx, cmd, rest, stdout, stderr)
	}
}

// loadConfig loads files and prints diagnostics; ok is false on errors,
// and when ctx ends first (SIGINT, SIGTERM).
func loadConfig(ctx context.Context, stderr io.Writer, paths ...string) (*config.Config, bool) {
	cfg, diags := config.LoadContext(ctx, paths...)
	if len(diags) > 0 {
		_ = config.WriteDiagnostics(stderr, cfg.Files, diags)
	}
	return cfg, !diags.HasErrors()
}

// newLogger builds the root logger from the server block, logging at
// least at level floor (one-shot commands only want warnings).
func newLogger(cfg *config.Config, out io.Writer, floor hclog.Level) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       "conveyor",
		Level:      max(hclog.LevelFromString(cfg.Server.LogLevel), floor),
		JSONFormat: cfg.Server.LogJSON,
		Output:     out,
	})
}

func cmdServer(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file or directory")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" {
		fmt.Fprintln(stderr, "conveyor server: -config is required")
		return 2
	}
	hup := notifySIGHUP()
	defer signal.Stop(hup)
	cfg, ok := loadConfig(ctx, stderr, *path)
	if !ok {
		return 1
	}
	// The configuration may have taken the API token from the environment
	// (env("CONVEYOR_TOKEN")): plugins, the agents they start and their
	// build steps inherit the environment, and must not get it.
	for _, name := range []string{client.TokenEnv, client.TokenFileEnv} {
		_ = os.Unsetenv(name)
	}
	logger := newLogger(cfg, stderr, hclog.Trace)
	srv, err := server.New(ctx, cfg, server.Options{ConfigPaths: []string{*path}}, logger)
	if err != nil {
		var de *server.DiagnosticsError
		if errors.As(err, &de) {
			_ = config.WriteDiagnostics(stderr, cfg.Files, de.Diagnostics.(hcl.Diagnostics))
		} else {
			logger.Error("server failed to start", "error", err)
		}
		return 1
	}
	reloadOnSIGHUP(ctx, hup, srv, logger)
	if err := srv.Serve(ctx); err != nil {
		logger.Error("server stopped", "error", err)
		return 1
	}
	return 0
}

// loadPlugins loads a configuration and its plugins in validate-only mode.
func loadPlugins(ctx context.Context, stderr io.Writer, path string) (*plugins.Manager, bool) {
	cfg, ok := loadConfig(ctx, stderr, path)
	if !ok {
		return nil, false
	}
	return startPlugins(ctx, stderr, cfg)
}

// startPlugins starts and configures the plugins of a loaded configuration
// in validate-only mode.
func startPlugins(ctx context.Context, stderr io.Writer, cfg *config.Config) (*plugins.Manager, bool) {
	m := plugins.NewManager(newLogger(cfg, stderr, hclog.Warn).Named("launcher"))
	diags := plugins.Load(ctx, cfg, m, plugins.LoadOptions{Version: version.Version, ValidateOnly: true})
	if len(diags) > 0 {
		_ = config.WriteDiagnostics(stderr, cfg.Files, diags)
	}
	if diags.HasErrors() {
		m.Stop()
		return nil, false
	}
	return m, true
}

func cmdValidate(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(stderr, "Usage: conveyor validate FILE")
		return 2
	}
	m, ok := loadPlugins(ctx, stderr, args[0])
	if !ok {
		return 1
	}
	m.Stop()
	fmt.Fprintf(stdout, "%s: configuration is valid\n", args[0])
	return 0
}

func cmdPlugins(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("plugins", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file or directory")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" {
		fmt.Fprintln(stderr, "conveyor plugins: -config is required")
		return 2
	}
	m, ok := loadPlugins(ctx, stderr, *path)
	if !ok {
		return 1
	}
	defer m.Stop()
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tPROTOCOL\tCAPABILITIES\tPATH")
	for _, p := range m.All() {
		proc := p.Process()
		caps := strings.Join(proc.Info.Capabilities, ",")
		if caps == "" {
			caps = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", p.Name, proc.Info.Version, proc.Protocol, caps, p.Path)
	}
	_ = tw.Flush()
	return 0
}
