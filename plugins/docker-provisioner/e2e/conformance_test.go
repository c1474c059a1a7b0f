package e2e

import (
	"fmt"
	"testing"

	"github.com/conveyor-ci/conveyor/plugins/docker-provisioner/dockertest"
	"github.com/conveyor-ci/conveyor/sdk/provisioner"
	"github.com/conveyor-ci/conveyor/sdk/provisionertest"
)

func TestConformance(t *testing.T) {
	eng := dockertest.Start(t)
	image := eng.AgentImage(t, "conveyor-agent:conformance")
	global := fmt.Sprintf("host = %q", eng.Host)
	pool := fmt.Sprintf("image = %q", image)
	provisionertest.Run(t, provisionertest.Options{
		Plugin: pluginBin,
		Global: global,
		Pool:   pool,
		// The agent prints its version and exits: the instances are
		// created, listed (stopped) and deleted; no broker is needed.
		Bootstrap: provisioner.Bootstrap{Command: []string{"conveyor-agent", "-version"}, Secret: []byte{1, 2, 3}, SecretFile: "/run/conveyor/secret"},
		BadConfigs: []provisionertest.BadConfig{
			{Name: "no image", Pool: `cpus = 1`, Field: []string{"image"}},
			{Name: "empty image", Pool: `image = " "`, Field: []string{"image"}},
			{Name: "no cpus", Pool: pool + "\ncpus = 0", Field: []string{"cpus"}},
			{Name: "tiny memory", Pool: pool + "\nmemory_mb = 1", Field: []string{"memory_mb"}},
			{Name: "empty network", Pool: pool + "\nnetwork_mode = \"\"", Field: []string{"network_mode"}},
			{Name: "bad mount type", Pool: pool + "\nmount {\n type = \"nfs\"\n target = \"/x\"\n}", Field: []string{"mount[0]", "type"}},
			{Name: "relative mount target", Pool: pool + "\nmount {\n type = \"tmpfs\"\n target = \"x\"\n}", Field: []string{"mount[0]", "target"}},
			{Name: "relative bind source", Pool: pool + "\nmount {\n source = \"data\"\n target = \"/data\"\n}", Field: []string{"mount[0]", "source"}},
			{Name: "bad engine address", Global: `host = "ftp://x"`, Field: []string{"host"}},
			{Name: "unknown attribute", Pool: pool + "\nprivileged = true", Field: []string{"privileged"}},
		},
		Logger: testLogger(t),
	})
}
