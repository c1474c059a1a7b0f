package kafkalauncher

import (
	"fmt"
	"testing"

	"github.com/conveyor-ci/conveyor/sdk/launchertest"

	"github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkatransport"
)

func TestConformance(t *testing.T) {
	addr := freeAddr(t)
	// The kit launches node "conformance"; its agent runs here and reaches
	// the plugin's embedded broker once Configure has created the topics.
	startPongAgent(t, kafkatransport.Config{Brokers: []string{addr}}, "conformance")
	global := fmt.Sprintf("embedded_addr = %q", addr)
	launchertest.Run(t, launchertest.Options{
		Plugin: pluginBin,
		Global: global,
		Node:   ``,
		BadConfigs: []launchertest.BadConfig{
			{Name: "partitions 0", Global: global + "\npartitions = 0"},
			{Name: "fractional replication", Global: global + "\nreplication_factor = 1.5"},
			{Name: "unknown SASL mechanism", Global: global + "\nsasl {\n mechanism = \"GSSAPI\"\n username = \"u\"\n}"},
			{Name: "embedded not on loopback", Global: `embedded_addr = "192.0.2.1:9092"`},
			{Name: "bad broker", Global: `brokers = ["no-port"]`},
			{Name: "unreadable CA", Global: "brokers = [\"127.0.0.1:1\"]\ntls {\n ca_file = \"/nonexistent/ca.pem\"\n}"},
			{Name: "bad topic prefix", Global: global + "\ntopic_prefix = \"a/b\""},
			{Name: "node settings", Node: `unknown = 1`},
		},
		// Prints the ACLs; -apply would only explain that the embedded
		// broker takes them from its configuration.
		Command: []string{"acls"},
		Logger:  testLogger(t),
	})
}
