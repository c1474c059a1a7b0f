package launcher

import (
	"context"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/conveyor-ci/conveyor/sdk/internal/pluginrt"
)

// ClientOptions says how the host starts a plugin.
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

// Process is one running plugin process, started the way the host starts
// every plugin: go-plugin over gRPC with AutoMTLS, in its own process group,
// killed when the host dies.
type Process struct {
	rt *pluginrt.Process
	// Launcher is the plugin's launcher.
	Launcher Launcher
	// Secrets is the plugin's secret manager, nil when it has none.
	Secrets SecretManager
	// Info is what the plugin reported at start.
	Info *Info
	// Protocol is the negotiated protocol version.
	Protocol int
}

// Start starts the plugin binary, negotiates the protocol and dispenses
// its launcher (and secret manager when the plugin has one). It returns
// when ctx ends, even while the plugin has not completed its handshake;
// the plugin is then killed.
func Start(ctx context.Context, opts ClientOptions) (*Process, error) {
	p := &Process{}
	rt, err := pluginrt.Start(ctx, pluginrt.ClientConfig{
		Path:            opts.Path,
		SHA256:          opts.SHA256,
		Logger:          opts.Logger,
		Env:             opts.Env,
		Handshake:       Handshake,
		Plugins:         pluginSets(nil, []int{ProtocolV1, ProtocolV2}),
		GRPCDialOptions: dialOptions(),
	}, p.dispense)
	if err != nil {
		return nil, err
	}
	p.rt = rt
	return p, nil
}

func (p *Process) dispense(ctx context.Context, rpc plugin.ClientProtocol, version int) error {
	raw, err := rpc.Dispense(launcherPluginName)
	if err != nil {
		return err
	}
	p.Launcher = raw.(Launcher)
	p.Protocol = version
	if p.Info, err = p.Launcher.Info(ctx); err != nil {
		return err
	}
	if p.Protocol >= ProtocolV2 && p.Info.Has(CapSecrets) {
		raw, err := rpc.Dispense(secretsPluginName)
		if err != nil {
			return err
		}
		p.Secrets = raw.(SecretManager)
	}
	return nil
}

// Pid is the plugin's process id.
func (p *Process) Pid() int { return p.rt.Pid() }

// Exited reports whether the plugin process has exited.
func (p *Process) Exited() bool { return p.rt.Exited() }

// Kill stops the plugin: gracefully first, then by killing its whole
// process group so nothing it started outlives it.
func (p *Process) Kill() { p.rt.Kill() }
