package provisioner

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/conveyor-ci/conveyor/sdk/internal/pluginrt"
)

// ClientOptions says how the host starts a provisioner plugin.
type ClientOptions struct {
	// Path is the plugin binary.
	Path string
	// SHA256, when set, pins the binary: a binary with another checksum is
	// refused before it runs.
	SHA256 []byte
	// Logger receives the plugin's log lines.
	Logger hclog.Logger
	// Env is added to the host's environment for the plugin.
	Env []string
}

// Process is one running provisioner plugin, started the way the host
// starts every plugin (launcher.Start): go-plugin over gRPC with AutoMTLS,
// in its own process group, killed when the host dies. What the plugin
// created lives in the backend, not in the process: killing the plugin
// deletes no instance.
type Process struct {
	client *plugin.Client
	cmd    *exec.Cmd
	// Provisioner is the plugin's provisioner.
	Provisioner Provisioner
	// Info is what the plugin reported at start.
	Info *Info
}

// Start starts the plugin binary, completes the handshake and dispenses
// its provisioner. It returns when ctx ends, even while the plugin has not
// completed its handshake; the plugin is then killed.
func Start(ctx context.Context, opts ClientOptions) (*Process, error) {
	logger := opts.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	cmd := exec.Command(opts.Path)
	cmd.Env = append(os.Environ(), opts.Env...)
	cmd.Env = append(cmd.Env, pluginrt.LogLevelEnv+"="+pluginrt.LevelName(logger))
	cmd.SysProcAttr = pluginrt.ProcessAttr()
	cfg := &plugin.ClientConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: pluginSets(nil),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		Logger:           logger,
	}
	if len(opts.SHA256) > 0 {
		cfg.SecureConfig = &plugin.SecureConfig{Checksum: opts.SHA256, Hash: sha256.New()}
	}
	p := &Process{client: plugin.NewClient(cfg), cmd: cmd}
	done := make(chan error, 1)
	go func() { done <- p.dispense(ctx) }()
	select {
	case err := <-done:
		if err == nil {
			return p, nil
		}
		p.Kill()
		if err == plugin.ErrChecksumsDoNotMatch {
			return nil, pluginrt.ChecksumError(opts.Path, opts.SHA256)
		}
		return nil, fmt.Errorf("provisioner plugin %s: %w", opts.Path, err)
	case <-ctx.Done():
		go func() {
			<-done
			p.Kill()
		}()
		return nil, fmt.Errorf("provisioner plugin %s: %w", opts.Path, context.Cause(ctx))
	}
}

func (p *Process) dispense(ctx context.Context) error {
	rpc, err := p.client.Client()
	if err != nil {
		return err
	}
	raw, err := rpc.Dispense(pluginName)
	if err != nil {
		return err
	}
	p.Provisioner = raw.(Provisioner)
	p.Info, err = p.Provisioner.Info(ctx)
	return err
}

// Pid is the plugin's process id.
func (p *Process) Pid() int {
	if p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Exited reports whether the plugin process has exited.
func (p *Process) Exited() bool { return p.client.Exited() }

// Kill stops the plugin: gracefully first, then by killing its whole
// process group. The instances it created stay.
func (p *Process) Kill() {
	p.client.Kill()
	if pid := p.Pid(); pid > 0 {
		pluginrt.KillGroup(pid)
	}
}
