package launcher

import (
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/conveyor-ci/conveyor/sdk/internal/pluginrt"
)

// LogLevelEnv carries the host's log level to the plugin.
const LogLevelEnv = pluginrt.LogLevelEnv

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
	pluginrt.Serve(pluginrt.ServeConfig{
		Handshake: Handshake,
		Plugins: func(logger hclog.Logger) map[int]plugin.PluginSet {
			return pluginSets(factory(logger), cfg.versions)
		},
		GRPCOptions: serverOptions(),
	})
}
