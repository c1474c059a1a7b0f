// Command conveyor-launcher-kafka is the Kafka launcher plugin: agents and
// the master exchange frames over Kafka topics, through the configured
// brokers or a broker embedded in the plugin. See package kafkalauncher
// for its configuration.
package main

import (
	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkalauncher"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

func main() {
	var l *kafkalauncher.Launcher
	launcher.Serve(func(logger hclog.Logger) launcher.Launcher {
		l = kafkalauncher.New(logger)
		return l
	}, launcher.WithProtocolVersions(launcher.ProtocolV1, launcher.ProtocolV2))
	if l != nil {
		l.Close()
	}
}
