package provisioner

import (
	"context"

	"github.com/hashicorp/go-plugin"

	"github.com/conveyor-ci/conveyor/sdk/internal/pluginrt"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// ClientOptions says how the host starts a plugin: the same as for a
// launcher.
type ClientOptions = launcher.ClientOptions

// Process is one running provisioner plugin, started the way the host
// starts every plugin (launcher.Start): go-plugin over gRPC with AutoMTLS,
// in its own process group, killed when the host dies. What the plugin
// created lives in the backend, not in the process: killing the plugin
// deletes no instance.
type Process struct {
	rt *pluginrt.Process
	// Provisioner is the plugin's provisioner.
	Provisioner Provisioner
	// Info is what the plugin reported at start.
	Info *Info
}

// Start starts the plugin binary, completes the handshake and dispenses
// its provisioner. It returns when ctx ends, even while the plugin has not
// completed its handshake; the plugin is then killed.
func Start(ctx context.Context, opts ClientOptions) (*Process, error) {
	p := &Process{}
	rt, err := pluginrt.Start(ctx, pluginrt.ClientConfig{
		Path:      opts.Path,
		SHA256:    opts.SHA256,
		Logger:    opts.Logger,
		Env:       opts.Env,
		Handshake: Handshake,
		Plugins:   pluginSets(nil),
	}, p.dispense)
	if err != nil {
		return nil, err
	}
	p.rt = rt
	return p, nil
}

func (p *Process) dispense(ctx context.Context, rpc plugin.ClientProtocol, _ int) error {
	raw, err := rpc.Dispense(pluginName)
	if err != nil {
		return err
	}
	p.Provisioner = raw.(Provisioner)
	p.Info, err = p.Provisioner.Info(ctx)
	return err
}

// Pid is the plugin's process id.
func (p *Process) Pid() int { return p.rt.Pid() }

// Exited reports whether the plugin process has exited.
func (p *Process) Exited() bool { return p.rt.Exited() }

// Kill stops the plugin: gracefully first, then by killing its whole
// process group. The instances it created stay.
func (p *Process) Kill() { p.rt.Kill() }
