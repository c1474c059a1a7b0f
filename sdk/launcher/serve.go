package launcher

import (
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

// LogLevelEnv carries the host's log level to the plugin.
const LogLevelEnv = "CONVEYOR_PLUGIN_LOG_LEVEL"

// ServeOption adjusts Serve.
type ServeOption func(*serveConfig)

type serveConfig struct {
	versions []int
}

// WithProtocolVersions restricts the protocol versions the plugin offers.
// Plugins never need it; it exists so hosts can be tested against plugins
// of an older protocol.
func WithProtocolVersions(versions ...int) ServeOption {
	return func(c *serveConfig) { c.versions = versions }
}

// Serve runs a launcher plugin: the one call in a plugin's main. It must
// come before anything writes to stdout, which carries the go-plugin
// handshake. factory receives the logger whose output the host forwards
// into its own log. Serve returns when the host tells the plugin to stop;
// the plugin also exits when its host process dies.
func Serve(factory func(logger hclog.Logger) Launcher, opts ...ServeOption) {
	cfg := serveConfig{versions: []int{ProtocolV1, ProtocolV2}}
	for _, o := range opts {
		o(&cfg)
	}
	level := hclog.LevelFromString(os.Getenv(LogLevelEnv))
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	logger := hclog.New(&hclog.LoggerOptions{
		Level:      level,
		Output:     os.Stderr,
		JSONFormat: true,
	})
	go watchParent(logger)
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: pluginSets(factory(logger), cfg.versions),
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			opts = append(opts, serverOptions()...)
			return grpc.NewServer(opts...)
		},
		Logger: logger.Named("go-plugin"),
	})
}

// watchParent exits the plugin when the host that started it is gone. On
// Linux the host also sets a parent-death signal; this covers the rest
// (and a host that was itself re-parented before it died).
func watchParent(logger hclog.Logger) {
	parent := os.Getppid()
	if parent <= 1 {
		return // already orphaned: plugin.Serve refuses to run without a host anyway
	}
	for range time.Tick(500 * time.Millisecond) {
		if os.Getppid() != parent {
			logger.Warn("host process is gone, exiting")
			os.Exit(1)
		}
	}
}
