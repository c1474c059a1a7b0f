package pluginrt

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

// ClientConfig says how the host starts a plugin of one kind.
type ClientConfig struct {
	// Path is the plugin binary.
	Path string
	// SHA256, when set, pins the binary: a binary with another checksum is
	// refused before it runs.
	SHA256 []byte
	// Logger receives the plugin's log lines (nil: discarded).
	Logger hclog.Logger
	// Env is added to the host's environment for the plugin.
	Env []string
	// Handshake is the kind's go-plugin handshake.
	Handshake plugin.HandshakeConfig
	// Plugins are the kind's plugin sets per protocol version (without
	// implementations: the host's side).
	Plugins map[int]plugin.PluginSet
	// GRPCDialOptions are added to the connection's options.
	GRPCDialOptions []grpc.DialOption
}

// Process is one running plugin process: go-plugin over gRPC with
// AutoMTLS, in its own process group, killed when the host dies.
type Process struct {
	// Client is the go-plugin client of the process.
	Client *plugin.Client
	cmd    *exec.Cmd
}

// Start starts the plugin binary and runs dispense, the kind's handshake
// (dispensing its services from rpc, at the negotiated protocol version).
// It returns when ctx ends, even while the plugin has not completed its
// handshake (go-plugin waits for it, up to its start timeout of a minute,
// without a context: a SIGTERM must end `conveyor validate` or a server's
// startup at once). A plugin that fails is killed; one abandoned at ctx's
// end is killed when its handshake ends, and with its host anyway
// (Pdeathsig).
func Start(ctx context.Context, cfg ClientConfig, dispense func(ctx context.Context, rpc plugin.ClientProtocol, version int) error) (*Process, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	cmd := exec.Command(cfg.Path)
	cmd.Env = append(os.Environ(), cfg.Env...)
	cmd.Env = append(cmd.Env, LogLevelEnv+"="+LevelName(logger))
	cmd.SysProcAttr = ProcessAttr()
	pc := &plugin.ClientConfig{
		HandshakeConfig:  cfg.Handshake,
		VersionedPlugins: cfg.Plugins,
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         true,
		Logger:           logger,
		GRPCDialOptions:  cfg.GRPCDialOptions,
	}
	if len(cfg.SHA256) > 0 {
		pc.SecureConfig = &plugin.SecureConfig{Checksum: cfg.SHA256, Hash: sha256.New()}
	}
	p := &Process{Client: plugin.NewClient(pc), cmd: cmd}
	done := make(chan error, 1)
	go func() {
		rpc, err := p.Client.Client()
		if err == nil {
			err = dispense(ctx, rpc, p.Client.NegotiatedVersion())
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			return p, nil
		}
		p.Kill()
		if err == plugin.ErrChecksumsDoNotMatch {
			return nil, ChecksumError(cfg.Path, cfg.SHA256)
		}
		return nil, fmt.Errorf("plugin %s: %w", cfg.Path, err)
	case <-ctx.Done():
		go func() {
			<-done
			p.Kill()
		}()
		return nil, context.Cause(ctx)
	}
}

// Pid is the plugin's process id.
func (p *Process) Pid() int {
	if p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Exited reports whether the plugin process has exited.
func (p *Process) Exited() bool { return p.Client.Exited() }

// Kill stops the plugin: gracefully first, then by killing its whole
// process group so nothing it started outlives it.
func (p *Process) Kill() {
	p.Client.Kill()
	if pid := p.Pid(); pid > 0 {
		KillGroup(pid)
	}
}
