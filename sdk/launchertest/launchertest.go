// Package launchertest is the conformance kit for launcher plugins. A
// plugin author builds the plugin binary and runs the kit against it from
// an ordinary Go test:
//
//	func TestConformance(t *testing.T) {
//		launchertest.Run(t, launchertest.Options{
//			Plugin: "../bin/conveyor-launcher-mine",
//			Global: `endpoint = "127.0.0.1:9000"`,
//			Node:   `host = "127.0.0.1"`,
//			BadConfigs: []launchertest.BadConfig{{Name: "no host", Node: ``}},
//		})
//	}
//
// The kit loads the plugin exactly the way the host does and checks the
// handshake, the schema, configuration errors, launch, a frame round trip
// with the launched agent, teardown, relaunch, purge (for plugins with the
// purge capability), operator commands (for plugins with the commands
// capability) and kill.
package launchertest

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl/v2/hcldec"

	"github.com/conveyor-ci/conveyor/sdk/hclspec"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

// Options configures a conformance run.
type Options struct {
	// Plugin is the path of the plugin binary.
	Plugin string
	// Global is the body of a valid `launcher "NAME" {}` block, in HCL.
	Global string
	// Node is the body of a valid per-node block, in HCL. The agent it
	// launches must answer wire Ping frames with Pong frames.
	Node string
	// BadConfigs must each be rejected, by schema decoding or by Configure.
	BadConfigs []BadConfig
	// Command, for a plugin with the commands capability, is a command
	// name and its arguments that must succeed against the valid
	// configuration (pick one without side effects). Empty: no command
	// runs, only the list and an unknown command are checked.
	Command []string
	// NodeName names the node launched (default "conformance").
	NodeName string
	// DataDir is handed to the plugin as its data directory (default: a
	// temporary directory).
	DataDir string
	// Timeout bounds each check (default 60s).
	Timeout time.Duration
	// Logger receives the plugin's logs (default: discarded).
	Logger hclog.Logger
}

// BadConfig is a configuration the plugin must reject. An empty Global or
// Node means the valid one from Options.
type BadConfig struct {
	Name   string
	Global string
	Node   string
}

// Result is the outcome of one check.
type Result struct {
	Name string
	Err  error
}

// Check names, in the order they run.
const (
	CheckHandshake     = "handshake"
	CheckSchema        = "schema"
	CheckConfigure     = "configure"
	CheckConfigErrors  = "configure-errors"
	CheckLaunch        = "launch"
	CheckRoundTrip     = "frame-round-trip"
	CheckTeardown      = "teardown"
	CheckRelaunch      = "relaunch"
	CheckLinkStats     = "link-stats"
	CheckPurge         = "purge"
	CheckCommands      = "commands"
	CheckKill          = "kill"
	pingsPerRoundTrip  = 16
	defaultNodeName    = "conformance"
	defaultTimeoutSecs = 60
)

// Run runs every check as a subtest of t.
func Run(t *testing.T, opts Options) {
	t.Helper()
	if opts.DataDir == "" {
		opts.DataDir = t.TempDir()
	}
	for _, r := range Check(context.Background(), opts) {
		t.Run(r.Name, func(t *testing.T) {
			if r.Err != nil {
				t.Fatal(r.Err)
			}
		})
	}
}

// Check runs every check and returns their results. A check whose
// prerequisite failed is reported as failed with the reason.
func Check(ctx context.Context, opts Options) []Result {
	k := &kit{opts: opts}
	if k.opts.NodeName == "" {
		k.opts.NodeName = defaultNodeName
	}
	if k.opts.Timeout == 0 {
		k.opts.Timeout = defaultTimeoutSecs * time.Second
	}
	if k.opts.Logger == nil {
		k.opts.Logger = hclog.NewNullLogger()
	}
	if k.opts.DataDir == "" {
		dir, err := os.MkdirTemp("", "launchertest-")
		if err == nil {
			defer os.RemoveAll(dir)
		}
		k.opts.DataDir = dir
	}
	defer k.cleanup()

	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{CheckHandshake, k.handshake},
		{CheckSchema, k.schema},
		{CheckConfigure, k.configure},
		{CheckConfigErrors, k.configErrors},
		{CheckCommands, k.commands},
		{CheckLaunch, k.launch},
		{CheckRoundTrip, k.roundTrip},
		{CheckTeardown, k.teardown},
		{CheckRelaunch, k.relaunch},
		{CheckLinkStats, k.linkStats},
		{CheckPurge, k.purge},
		{CheckKill, k.kill},
	}
	var results []Result
	var blocked error
	for _, s := range steps {
		if blocked != nil && s.name != CheckKill {
			results = append(results, Result{s.name, fmt.Errorf("not run: %w", blocked)})
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, k.opts.Timeout)
		err := s.fn(cctx)
		cancel()
		results = append(results, Result{s.name, err})
		// Later checks need a working plugin, configuration and launch.
		if err != nil && blocked == nil && (s.name == CheckHandshake || s.name == CheckSchema || s.name == CheckConfigure || s.name == CheckLaunch) {
			blocked = fmt.Errorf("%s failed", s.name)
		}
	}
	return results
}

type kit struct {
	opts       Options
	proc       *launcher.Process
	globalSpec hcldec.Spec
	nodeSpec   hcldec.Spec
	conn       launcher.Conn
}

func (k *kit) cleanup() {
	if k.conn != nil {
		_ = k.conn.Close()
	}
	if k.proc != nil {
		k.proc.Kill()
	}
}

func (k *kit) handshake(ctx context.Context) error {
	p, err := launcher.Start(ctx, launcher.ClientOptions{Path: k.opts.Plugin, Logger: k.opts.Logger})
	if err != nil {
		return fmt.Errorf("load plugin: %w", err)
	}
	k.proc = p
	if p.Protocol != launcher.ProtocolLatest {
		return fmt.Errorf("plugin negotiated protocol %d, this SDK's latest is %d", p.Protocol, launcher.ProtocolLatest)
	}
	if p.Info.Name == "" {
		return errors.New("Info returned an empty name")
	}
	if p.Info.Version == "" {
		return errors.New("Info returned an empty version")
	}
	return nil
}

func (k *kit) schema(ctx context.Context) error {
	s, err := k.proc.Launcher.Schema(ctx)
	if err != nil {
		return err
	}
	if k.globalSpec, err = hclspec.Convert(s.Global); err != nil {
		return fmt.Errorf("global schema: %w", err)
	}
	if k.nodeSpec, err = hclspec.Convert(s.Node); err != nil {
		return fmt.Errorf("node schema: %w", err)
	}
	return nil
}

// config builds a launcher.Config from HCL sources.
func (k *kit) config(global, node string) (*launcher.Config, error) {
	g, err := hclspec.DecodeSource("global.hcl", global, k.globalSpec)
	if err != nil {
		return nil, fmt.Errorf("global block: %w", err)
	}
	n, err := hclspec.DecodeSource("node.hcl", node, k.nodeSpec)
	if err != nil {
		return nil, fmt.Errorf("node block: %w", err)
	}
	return &launcher.Config{
		Host:   launcher.Host{ServerName: "launchertest", DataDir: k.opts.DataDir, Version: "test"},
		Global: g,
		Nodes:  []*launcher.Node{{Name: k.opts.NodeName, Labels: []string{"conformance"}, Config: n}},
	}, nil
}

func (k *kit) configure(ctx context.Context) error {
	cfg, err := k.config(k.opts.Global, k.opts.Node)
	if err != nil {
		return fmt.Errorf("valid configuration does not match the plugin's schema: %w", err)
	}
	if err := k.proc.Launcher.Configure(ctx, cfg); launcher.ConfigureFailed(err) {
		return fmt.Errorf("valid configuration refused: %w", err)
	}
	return nil
}

func (k *kit) configErrors(ctx context.Context) error {
	for _, bad := range k.opts.BadConfigs {
		global, node := bad.Global, bad.Node
		if global == "" {
			global = k.opts.Global
		}
		if node == "" {
			node = k.opts.Node
		}
		cfg, err := k.config(global, node)
		if err != nil {
			continue // rejected by the schema: good
		}
		err = k.proc.Launcher.Configure(ctx, cfg)
		if !launcher.ConfigureFailed(err) {
			return fmt.Errorf("bad configuration %q was accepted", bad.Name)
		}
		var ces launcher.ConfigErrors
		if !errors.As(err, &ces) {
			return fmt.Errorf("bad configuration %q: Configure must return launcher.ConfigErrors, got %v", bad.Name, err)
		}
		for _, ce := range ces {
			if ce.Message == "" {
				return fmt.Errorf("bad configuration %q: a ConfigError has no message", bad.Name)
			}
		}
	}
	// Leave the plugin configured with the valid configuration.
	return k.configure(ctx)
}

func (k *kit) nodeConfig() (*launcher.Node, error) {
	cfg, err := k.config(k.opts.Global, k.opts.Node)
	if err != nil {
		return nil, err
	}
	return cfg.Nodes[0], nil
}

func (k *kit) launch(ctx context.Context) error {
	node, err := k.nodeConfig()
	if err != nil {
		return err
	}
	conn, err := k.proc.Launcher.Launch(ctx, node)
	if err != nil {
		return err
	}
	k.conn = conn
	return nil
}

// roundTrip sends pings and expects the pongs back, in order.
func (k *kit) roundTrip(ctx context.Context) error {
	return pingPong(ctx, k.conn, pingsPerRoundTrip)
}

func pingPong(ctx context.Context, conn launcher.Conn, n int) error {
	var seed [8]byte
	_, _ = rand.Read(seed[:])
	base := binary.BigEndian.Uint64(seed[:]) >> 1
	for i := 0; i < n; i++ {
		if err := conn.Send(wire.Marshal(&wire.Ping{Nonce: base + uint64(i), UnixNano: time.Now().UnixNano()})); err != nil {
			return fmt.Errorf("send ping %d: %w", i, err)
		}
	}
	for i := 0; i < n; {
		raw, err := recv(ctx, conn)
		if err != nil {
			return fmt.Errorf("waiting for pong %d of %d: %w", i+1, n, err)
		}
		_, msg, err := wire.Unmarshal(raw)
		if err != nil {
			return fmt.Errorf("frame from agent does not decode: %w", err)
		}
		pong, ok := msg.(*wire.Pong)
		if !ok {
			continue // agents may send other frames (a hello, say) first
		}
		if pong.Nonce != base+uint64(i) {
			return fmt.Errorf("pong %d carries nonce %d, want %d (lost, reordered or altered frame)", i+1, pong.Nonce, base+uint64(i))
		}
		i++
	}
	return nil
}

// recv waits for one frame, giving up when ctx ends.
func recv(ctx context.Context, conn launcher.Conn) ([]byte, error) {
	type res struct {
		b   []byte
		err error
	}
	c := make(chan res, 1)
	go func() {
		b, err := conn.Recv()
		c <- res{b, err}
	}()
	select {
	case r := <-c:
		return r.b, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (k *kit) teardown(ctx context.Context) error {
	if err := k.proc.Launcher.Teardown(ctx, k.opts.NodeName); err != nil {
		return err
	}
	// The connection must end: drain until Recv fails.
	for {
		_, err := recv(ctx, k.conn)
		if err == nil {
			continue
		}
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return errors.New("connection still open after Teardown")
		}
		break // io.EOF is the clean end; any other error ends the stream too
	}
	_ = k.conn.Close()
	k.conn = nil
	if err := k.proc.Launcher.Teardown(ctx, k.opts.NodeName); err != nil {
		return fmt.Errorf("second Teardown of a stopped node: %w", err)
	}
	return nil
}

func (k *kit) relaunch(ctx context.Context) error {
	if err := k.launch(ctx); err != nil {
		return fmt.Errorf("launch after teardown: %w", err)
	}
	return pingPong(ctx, k.conn, 1)
}

// linkStats checks a plugin with the stats capability: the relaunched
// node's link is connected since a moment in the past, its topics name a
// direction each and their lag is known or -1. Plugins without the
// capability must answer launcher.ErrNoStats.
func (k *kit) linkStats(ctx context.Context) error {
	ls, ok := k.proc.Launcher.(launcher.LinkStater)
	if !ok {
		return errors.New("host client does not expose LinkStats")
	}
	st, err := ls.LinkStats(ctx, k.opts.NodeName)
	if !k.proc.Info.Has(launcher.CapStats) {
		if !errors.Is(err, launcher.ErrNoStats) {
			return fmt.Errorf("LinkStats without the %q capability: %v, want ErrNoStats", launcher.CapStats, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("link stats of a launched node: %w", err)
	}
	if !st.Connected || st.Since.IsZero() || st.Since.After(time.Now()) || st.Reconnects < 0 {
		return fmt.Errorf("link stats of a launched node: connected %v since %v, reconnects %d", st.Connected, st.Since, st.Reconnects)
	}
	for _, t := range st.Topics {
		if t.Name == "" || (t.Direction != launcher.ToAgent && t.Direction != launcher.ToMaster) || t.Lag < -1 {
			return fmt.Errorf("link stats: bad topic %+v", t)
		}
	}
	return nil
}

// purge checks a plugin with the purge capability: purging a torn-down
// node works, and purging it again (nothing left) is no error. Plugins
// without the capability must answer launcher.ErrNoPurge.
func (k *kit) purge(ctx context.Context) error {
	p, ok := k.proc.Launcher.(launcher.Purger)
	if !ok {
		return errors.New("host client does not expose Purge")
	}
	if !k.proc.Info.Has(launcher.CapPurge) {
		if err := p.Purge(ctx, k.opts.NodeName); !errors.Is(err, launcher.ErrNoPurge) {
			return fmt.Errorf("Purge without the %q capability: %v, want ErrNoPurge", launcher.CapPurge, err)
		}
		return nil
	}
	if k.conn != nil {
		_ = k.conn.Close()
		k.conn = nil
	}
	if err := k.proc.Launcher.Teardown(ctx, k.opts.NodeName); err != nil {
		return err
	}
	for i := range 2 {
		if err := p.Purge(ctx, k.opts.NodeName); err != nil {
			return fmt.Errorf("purge #%d: %w", i+1, err)
		}
	}
	return nil
}

// unknownCommand is a command name no plugin has.
const unknownCommand = "conformance-no-such-command"

// commands checks a plugin with the commands capability: it lists at least
// one command, each named by one word that is no flag, unique, with a
// one-line help; an unknown command is an error and leaves the plugin
// working; Options.Command, when set, succeeds. Plugins without the
// capability must answer launcher.ErrNoCommands.
func (k *kit) commands(ctx context.Context) error {
	c, ok := k.proc.Launcher.(launcher.Commander)
	if !ok {
		return errors.New("host client does not expose commands")
	}
	if !k.proc.Info.Has(launcher.CapCommands) {
		if _, err := c.Commands(ctx); !errors.Is(err, launcher.ErrNoCommands) {
			return fmt.Errorf("Commands without the %q capability: %v, want ErrNoCommands", launcher.CapCommands, err)
		}
		if len(k.opts.Command) > 0 {
			return fmt.Errorf("Options.Command is set but the plugin lacks the %q capability", launcher.CapCommands)
		}
		return nil
	}
	cmds, err := c.Commands(ctx)
	if err != nil {
		return fmt.Errorf("list commands: %w", err)
	}
	if len(cmds) == 0 {
		return fmt.Errorf("the plugin declares the %q capability but lists no command", launcher.CapCommands)
	}
	seen := map[string]bool{}
	for _, cmd := range cmds {
		switch {
		case cmd.Name == "" || strings.ContainsFunc(cmd.Name, unicode.IsSpace) || strings.HasPrefix(cmd.Name, "-"):
			return fmt.Errorf("command name %q is not one word (no spaces, no leading '-')", cmd.Name)
		case seen[cmd.Name]:
			return fmt.Errorf("command %q is listed twice", cmd.Name)
		case strings.TrimSpace(cmd.Help) == "" || strings.Contains(cmd.Help, "\n"):
			return fmt.Errorf("command %q: help %q is not one line", cmd.Name, cmd.Help)
		}
		seen[cmd.Name] = true
	}
	node, err := k.nodeConfig()
	if err != nil {
		return err
	}
	nodes := []*launcher.Node{node}
	_, err = c.RunCommand(ctx, &launcher.CommandRequest{Name: unknownCommand, Nodes: nodes})
	if err == nil {
		return fmt.Errorf("unknown command %q succeeded", unknownCommand)
	}
	if errors.Is(err, launcher.ErrNoCommands) {
		return fmt.Errorf("unknown command %q: the plugin answered as if it had no commands", unknownCommand)
	}
	if len(k.opts.Command) > 0 {
		name := k.opts.Command[0]
		if !seen[name] {
			return fmt.Errorf("Options.Command %q is not among the listed commands", name)
		}
		out, err := c.RunCommand(ctx, &launcher.CommandRequest{Name: name, Args: k.opts.Command[1:], Nodes: nodes})
		if err != nil {
			return fmt.Errorf("command %q: %w (output: %q)", strings.Join(k.opts.Command, " "), err, out)
		}
	}
	// The plugin still answers after the failed command.
	if _, err := c.Commands(ctx); err != nil {
		return fmt.Errorf("list commands after a failed command: %w", err)
	}
	return nil
}

func (k *kit) kill(ctx context.Context) error {
	if k.proc == nil {
		return errors.New("no plugin process")
	}
	if k.conn != nil {
		_ = k.conn.Close()
		k.conn = nil
	}
	k.proc.Kill()
	if !k.proc.Exited() {
		return errors.New("plugin process still running after Kill")
	}
	k.proc = nil
	return nil
}
