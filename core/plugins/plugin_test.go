package plugins

import (
	"bytes"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/zclconf/go-cty/cty"

	"github.com/conveyor-ci/conveyor/sdk/launcher"
	"github.com/conveyor-ci/conveyor/sdk/wire"
)

func TestManagerStartsLocalPlugin(t *testing.T) {
	m := newManager(t)
	p, err := m.Start(testContext(t), "local", localBin, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Info().Name; got != "local" {
		t.Errorf("Info().Name = %q, want local", got)
	}
	proc := p.Process()
	if proc.Protocol != launcher.ProtocolLatest {
		t.Errorf("negotiated protocol %d, want %d", proc.Protocol, launcher.ProtocolLatest)
	}
	if proc.Secrets != nil {
		t.Errorf("the local launcher has no secrets capability, yet a secret manager was dispensed")
	}
	// A real subprocess, not something in this process.
	if pid := proc.Pid(); pid <= 0 || pid == syscall.Getpid() || !processAlive(pid) {
		t.Errorf("plugin pid %d is not a live child process", pid)
	}
	if m.Get("local") != p || len(m.All()) != 1 {
		t.Errorf("manager does not hold the plugin: Get = %p, All = %v", m.Get("local"), m.All())
	}
	if m.Get("other") != nil {
		t.Errorf("Get of an unknown launcher is not nil")
	}
}

func TestLoadLocalPluginAndExchangeFrames(t *testing.T) {
	m := newManager(t)
	cfg := loadConfig(t, "local.hcl")
	mustLoad(t, cfg, m)

	// The blocks were decoded against the plugin's schema.
	n1 := cfg.Node("n1")
	wantCommand := cty.ListVal([]cty.Value{
		cty.StringVal("/bin/sh"), cty.StringVal("-c"),
		cty.StringVal(`test "$CONVEYOR_TEST_CONFIGURED" = yes && exec "$0"`),
		cty.StringVal(pongAgent),
	})
	if n1.Config == cty.NilVal || !n1.Config.Type().IsObjectType() {
		t.Fatalf("node config not decoded: %#v", n1.Config)
	}
	if got := n1.Config.GetAttr("command"); !got.RawEquals(wantCommand) {
		t.Errorf("node command = %#v, want %#v", got, wantCommand)
	}
	if got := n1.Config.GetAttr("dir"); !got.IsNull() {
		t.Errorf("unset dir decoded as %#v, want null", got)
	}
	wantEnv := cty.MapVal(map[string]cty.Value{"CONVEYOR_TEST_CONFIGURED": cty.StringVal("yes")})
	if got := cfg.Launcher("local").Config.GetAttr("env"); !got.RawEquals(wantEnv) {
		t.Errorf("launcher env = %#v, want %#v", got, wantEnv)
	}

	hc := HostConfig(cfg, cfg.Launcher("local"), LoadOptions{Version: "v9"})
	if want := filepath.Join(cfg.Server.DataDir, "plugins", "local"); hc.Host.DataDir != want {
		t.Errorf("host data dir %q, want %q", hc.Host.DataDir, want)
	}
	if hc.Host.Version != "v9" || len(hc.Nodes) != 1 || hc.Nodes[0].Name != "n1" || len(hc.Nodes[0].Labels) != 1 {
		t.Errorf("HostConfig = %+v, nodes %+v", hc.Host, hc.Nodes)
	}

	p := m.Get("local")
	if p == nil {
		t.Fatal("Load did not start the local plugin")
	}
	c := launchNode(t, p, cfg, "n1")
	if c.pid <= 0 || !processAlive(c.pid) {
		t.Fatalf("connection description does not name a live agent (pid %d)", c.pid)
	}

	t.Run("100 pings", func(t *testing.T) {
		pingPong(t, c, 1000, 100)
	})

	t.Run("big frame", func(t *testing.T) {
		// Over gRPC's default 4 MiB message limit, under wire.MaxPayloadSize.
		data := bytes.Repeat([]byte("0123456789abcdef"), (4<<20+4096)/16)
		big := wire.Marshal(&wire.Output{BuildID: "b1", StepIndex: 3, Stream: wire.StreamStdout, Data: data})
		if len(big) <= 4<<20 {
			t.Fatalf("frame of %d bytes is not over 4 MiB", len(big))
		}
		if err := c.Send(big); err != nil {
			t.Fatalf("send %d-byte frame: %v", len(big), err)
		}
		// The agent answers pings in order, so this pong proves it read
		// the whole big frame first.
		pingPong(t, c, 5000, 1)
	})

	t.Run("teardown ends the connection", func(t *testing.T) {
		if err := p.Launcher().Teardown(testContext(t), "n1"); err != nil {
			t.Fatal(err)
		}
		for {
			f, err := c.recv()
			if err != nil {
				break
			}
			t.Errorf("unexpected frame of %d bytes after teardown", len(f))
		}
		waitGone(t, "agent after teardown", c.pid)
	})
}

func TestKilledPluginIsRestarted(t *testing.T) {
	m := newManager(t)
	cfg := loadConfig(t, "local.hcl")
	mustLoad(t, cfg, m)
	p := m.Get("local")
	restarted := p.Subscribe()

	before := launchNode(t, p, cfg, "n1")
	pingPong(t, before, 1, 3)
	oldProc := p.Process()
	oldPid := oldProc.Pid()
	if before.pid <= 0 || !processAlive(before.pid) {
		t.Fatalf("agent pid %d from the connection description is not alive", before.pid)
	}
	if p.Restarts() != 0 {
		t.Fatalf("Restarts() = %d before any crash", p.Restarts())
	}

	if p.Restarting() != 0 {
		t.Fatalf("Restarting() = %d before any crash", p.Restarting())
	}
	if err := syscall.Kill(oldPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Until the new process is configured, the plugin says it restarts
	// (nodes show "launcher local restarting (attempt 1)").
	waitFor(t, "the plugin to report its restart under way", func() bool { return p.Restarting() == 1 })
	waitFor(t, "the plugin to be restarted", func() bool { return p.Restarts() >= 1 })
	if k := p.Restarting(); k != 0 {
		t.Errorf("Restarting() = %d once restarted", k)
	}
	select {
	case <-restarted:
	case <-time.After(waitTimeout):
		t.Fatal("subscriber was not told of the restart")
	}
	if n := p.Restarts(); n != 1 {
		t.Errorf("Restarts() = %d after one crash, want 1", n)
	}
	if err := p.LastError(); err != nil {
		t.Errorf("LastError() = %v after a successful restart", err)
	}
	newProc := p.Process()
	if newProc == oldProc || newProc.Pid() == oldPid {
		t.Fatalf("process not replaced: pid %d before and %d after", oldPid, newProc.Pid())
	}
	if !processAlive(newProc.Pid()) || newProc.Exited() {
		t.Fatalf("restarted plugin (pid %d) is not running", newProc.Pid())
	}
	if !oldProc.Exited() || processAlive(oldPid) {
		t.Errorf("killed plugin (pid %d) still counts as running", oldPid)
	}

	// What the old process started died with it.
	if _, err := before.recv(); err == nil {
		t.Errorf("connection through the killed plugin still delivers frames")
	}
	waitGone(t, "the killed plugin's agent", before.pid)

	// The new process got the configuration again: the agent command only
	// starts the pong agent when the launcher's global env reaches it.
	after := launchNode(t, p, cfg, "n1")
	if after.pid == before.pid || !processAlive(after.pid) {
		t.Errorf("new agent pid %d (old %d) is not a new live process", after.pid, before.pid)
	}
	pingPong(t, after, 100, 10)

	if n := p.Restarts(); n != 1 {
		t.Errorf("Restarts() = %d at the end, want 1", n)
	}
	select {
	case <-restarted:
		t.Errorf("subscriber told of a second restart")
	default:
	}
}

func TestStopKillsPluginsAndAgents(t *testing.T) {
	m := newManager(t)
	cfg := loadConfig(t, "protocols.hcl") // launchers old and local
	mustLoad(t, cfg, m)
	local, old := m.Get("local"), m.Get("old")
	c := launchNode(t, local, cfg, "n1")
	pingPong(t, c, 1, 1)
	oc := launchNode(t, old, cfg, "n2")
	pingPong(t, oc, 1, 1)

	pids := map[string]int{
		"local plugin": local.Process().Pid(),
		"old plugin":   old.Process().Pid(),
		"agent":        c.pid,
	}
	for what, pid := range pids {
		if pid <= 0 || !processAlive(pid) {
			t.Fatalf("%s pid %d is not alive before Stop", what, pid)
		}
	}

	m.Stop()

	for _, p := range m.All() {
		if !p.Process().Exited() {
			t.Errorf("plugin %s has not exited after Stop", p.Name)
		}
		if n := p.Restarts(); n != 0 {
			t.Errorf("plugin %s was restarted %d times by Stop", p.Name, n)
		}
	}
	for what, pid := range pids {
		waitGone(t, what, pid)
	}
	if _, err := c.recv(); err == nil {
		t.Errorf("connection still delivers frames after Stop")
	}

	// A stopped manager starts nothing, and stopping again is harmless.
	if p, err := m.Start(testContext(t), "local", localBin, nil); err == nil {
		t.Errorf("Start after Stop succeeded (pid %d)", p.Process().Pid())
	}
	if n := len(m.All()); n != 2 {
		t.Errorf("manager holds %d plugins after Stop, want 2", n)
	}
	m.Stop()
}

func TestProtocolVersions(t *testing.T) {
	m := newManager(t)
	cfg := loadConfig(t, "protocols.hcl")
	mustLoad(t, cfg, m)

	old, local := m.Get("old").Process(), m.Get("local").Process()
	if old.Protocol != launcher.ProtocolV1 {
		t.Errorf("v1-only plugin negotiated protocol %d, want %d", old.Protocol, launcher.ProtocolV1)
	}
	if !old.Info.Has(launcher.CapSecrets) {
		t.Fatalf("fixture plugin does not claim %q: capabilities %v", launcher.CapSecrets, old.Info.Capabilities)
	}
	if old.Secrets != nil {
		t.Errorf("a secret manager was dispensed from a protocol 1 plugin")
	}
	if local.Protocol != launcher.ProtocolV2 {
		t.Errorf("local plugin negotiated protocol %d, want %d", local.Protocol, launcher.ProtocolV2)
	}
	// The Launcher service is whole at version 1: configure (by Load)
	// and launch work, and frames flow.
	pingPong(t, launchNode(t, m.Get("old"), cfg, "n2"), 7, 20)
}

// TestProtocolV2DispensesSecrets is the counterpart of TestProtocolVersions:
// the same fixture binary, offering version 2 too, gets its secret manager
// dispensed, so the nil above is down to the protocol.
func TestProtocolV2DispensesSecrets(t *testing.T) {
	t.Setenv("OLDPLUGIN_PROTOCOLS", "1,2") // inherited by the plugin
	m := newManager(t)
	p, err := m.Start(testContext(t), "old", oldBin, nil)
	if err != nil {
		t.Fatal(err)
	}
	proc := p.Process()
	if proc.Protocol != launcher.ProtocolV2 {
		t.Fatalf("negotiated protocol %d, want %d", proc.Protocol, launcher.ProtocolV2)
	}
	if proc.Secrets == nil {
		t.Fatal("no secret manager dispensed from a protocol 2 plugin with the secrets capability")
	}
	s, err := proc.Secrets.NodeSecret(testContext(t), "n2")
	if err != nil {
		t.Fatal(err)
	}
	if string(s.Secret) != "secret-of-n2" {
		t.Errorf("NodeSecret = %q, want %q", s.Secret, "secret-of-n2")
	}
}
