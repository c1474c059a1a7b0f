// Command conveyor-launcher-ssh is Conveyor's SSH launcher plugin: it starts
// each node's agent on a build machine over SSH (uploading the agent binary
// when needed) and carries the wire protocol over the session's stdin and
// stdout.
//
//	launcher "ssh" {
//	  agent_binary = "/usr/lib/conveyor/conveyor-agent" # default: next to the plugin, then PATH
//	}
//
//	node "builder-1" {
//	  launcher = "ssh"
//	  ssh {
//	    host             = "10.0.0.7"
//	    user             = "build"
//	    private_key_file = "/etc/conveyor/id_ed25519"
//	    host_key_verification {
//	      strategy = "known_hosts"
//	    }
//	  }
//	}
package main

import (
	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/plugins/ssh-launcher/sshlauncher"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// version is set by the build (-X main.version=...).
var version = ""

func main() {
	if version != "" {
		sshlauncher.Version = version
	}
	launcher.Serve(func(logger hclog.Logger) launcher.Launcher {
		return sshlauncher.New(logger)
	})
}
