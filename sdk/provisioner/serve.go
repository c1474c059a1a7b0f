package provisioner

import (
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/conveyor-ci/conveyor/sdk/internal/pluginrt"
)

// Serve runs a provisioner plugin: the one call in a plugin's main, the
// same machinery as launcher.Serve (logging forwarded to the host, exit
// when the host dies). It must come before anything writes to stdout,
// which carries the go-plugin handshake. factory receives the logger
// whose output the host forwards into its own log. Serve returns when the
// host tells the plugin to stop.
func Serve(factory func(logger hclog.Logger) Provisioner) {
	pluginrt.Serve(pluginrt.ServeConfig{
		Handshake: Handshake,
		Plugins: func(logger hclog.Logger) map[int]plugin.PluginSet {
			return pluginSets(factory(logger))
		},
	})
}
