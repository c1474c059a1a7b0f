// Package docker holds the tests of the Docker demo in this directory: the
// compose file, the scripts and the configuration are checked here (there
// is no Docker engine on CI), and the same topology runs natively.
package docker

import (
	"testing"

	"github.com/conveyor-ci/conveyor/core/e2e/cluster"
)

// bin holds the binaries cluster.Main builds.
var bin string

func TestMain(m *testing.M) { cluster.Main(m, &bin) }
