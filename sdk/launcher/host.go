package launcher

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
	client *plugin.Client
	cmd    *exec.Cmd
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
	logger := opts.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	cmd := exec.Command(opts.Path)
	cmd.Env = append(os.Environ(), opts.Env...)
	cmd.Env = append(cmd.Env, LogLevelEnv+"="+pluginrt.LevelName(logger))
	cmd.SysProcAttr = pluginrt.ProcessAttr()

	cfg := &plugin.ClientConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: pluginSets(nil, []int{ProtocolV1, ProtocolV2}),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		Logger:           logger,
		GRPCDialOptions:  dialOptions(),
	}
	if len(opts.SHA256) > 0 {
		cfg.SecureConfig = &plugin.SecureConfig{Checksum: opts.SHA256, Hash: sha256.New()}
	}
	c := plugin.NewClient(cfg)
	p := &Process{client: c, cmd: cmd}
	if err := p.dispenseContext(ctx); err != nil {
		if err == plugin.ErrChecksumsDoNotMatch {
			return nil, pluginrt.ChecksumError(opts.Path, opts.SHA256)
		}
		return nil, fmt.Errorf("plugin %s: %w", opts.Path, err)
	}
	return p, nil
}

// dispenseContext is dispense, killing the plugin when that fails, and
// returning when ctx ends even if the plugin has not completed its
// handshake yet (go-plugin waits for it, up to its start timeout of a
// minute, without a context): a SIGTERM must end `conveyor validate` or a
// server's startup at once. The abandoned plugin is killed when its
// handshake ends (go-plugin holds the client's lock until then), and with
// its host process anyway (Pdeathsig).
func (p *Process) dispenseContext(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- p.dispense(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			p.Kill()
		}
		return err
	case <-ctx.Done():
		go func() {
			<-done
			p.Kill()
		}()
		return context.Cause(ctx)
	}
}

func (p *Process) dispense(ctx context.Context) error {
	rpc, err := p.client.Client()
	if err != nil {
		return err
	}
	raw, err := rpc.Dispense(launcherPluginName)
	if err != nil {
		return err
	}
	p.Launcher = raw.(Launcher)
	p.Protocol = p.client.NegotiatedVersion()
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
func (p *Process) Pid() int {
	if p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Exited reports whether the plugin process has exited.
func (p *Process) Exited() bool { return p.client.Exited() }

// Kill stops the plugin: gracefully first, then by killing its whole
// process group so nothing it started outlives it.
func (p *Process) Kill() {
	p.client.Kill()
	if pid := p.Pid(); pid > 0 {
		pluginrt.KillGroup(pid)
	}
}
