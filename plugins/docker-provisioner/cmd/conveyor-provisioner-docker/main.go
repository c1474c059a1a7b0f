// Command conveyor-provisioner-docker is Conveyor's Docker provisioner
// plugin: it runs pooled agents as containers of a Docker engine.
//
//	provisioner "docker" {
//	  host = "unix:///var/run/docker.sock" # default: $DOCKER_HOST, then this
//	}
//
//	pool "linux" {
//	  provisioner = "docker"
//	  docker {
//	    image        = "conveyor-agent:latest"
//	    network_mode = "host"
//	    cpus         = 2
//	    memory_mb    = 4096
//	  }
//	}
package main

import (
	"github.com/hashicorp/go-hclog"

	"github.com/conveyor-ci/conveyor/plugins/docker-provisioner/dockerprov"
	"github.com/conveyor-ci/conveyor/sdk/provisioner"
)

// version is set by the build (-X main.version=...).
var version = ""

func main() {
	if version != "" {
		dockerprov.Version = version
	}
	provisioner.Serve(func(logger hclog.Logger) provisioner.Provisioner {
		return dockerprov.New(logger)
	})
}
