package dockerprov

import (
	"fmt"
	"path"
	"strings"

	"github.com/moby/moby/client"

	"github.com/conveyor-ci/conveyor/sdk/hclspec"
	"github.com/conveyor-ci/conveyor/sdk/provisioner"
)

// DefaultNetworkMode is the containers' network when a pool names none:
// the host's, so that an agent reaches brokers on the host's loopback as
// well as anywhere the host can.
const DefaultNetworkMode = "host"

// globalConfig is the `provisioner "docker" {}` block.
type globalConfig struct {
	// Host is the engine's address (unix:///var/run/docker.sock,
	// tcp://10.0.0.5:2375); empty: $DOCKER_HOST, then the default socket.
	Host string `json:"host"`
}

// poolConfig is a pool's `docker {}` block.
type poolConfig struct {
	Image       string            `json:"image"`
	CPUs        *float64          `json:"cpus"`
	MemoryMB    *int64            `json:"memory_mb"`
	NetworkMode string            `json:"network_mode"`
	Env         map[string]string `json:"env"`
	Mounts      []mountConfig     `json:"mount"`
}

// mountConfig is one `mount {}` block of a pool.
type mountConfig struct {
	Type     string `json:"type"`
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only"`
}

func schema() *provisioner.Schema {
	return &provisioner.Schema{
		Global: hclspec.NewObject(map[string]*hclspec.Spec{
			"host": hclspec.NewAttr("host", "string", false),
		}),
		Pool: hclspec.NewObject(map[string]*hclspec.Spec{
			"image":        hclspec.NewAttr("image", "string", true),
			"cpus":         hclspec.NewAttr("cpus", "number", false),
			"memory_mb":    hclspec.NewAttr("memory_mb", "number", false),
			"network_mode": hclspec.NewDefault(hclspec.NewAttr("network_mode", "string", false), hclspec.NewLiteral(`"`+DefaultNetworkMode+`"`)),
			"env":          hclspec.NewAttr("env", "map(string)", false),
			"mount": hclspec.NewBlockList("mount", hclspec.NewObject(map[string]*hclspec.Spec{
				"type":      hclspec.NewDefault(hclspec.NewAttr("type", "string", false), hclspec.NewLiteral(`"bind"`)),
				"source":    hclspec.NewAttr("source", "string", false),
				"target":    hclspec.NewAttr("target", "string", true),
				"read_only": hclspec.NewDefault(hclspec.NewAttr("read_only", "bool", false), hclspec.NewLiteral(`false`)),
			}), 0, 0),
		}),
	}
}

// checkGlobal validates the global block.
func checkGlobal(g *globalConfig) provisioner.ConfigErrors {
	if g.Host == "" {
		return nil
	}
	u, err := client.ParseHostURL(g.Host)
	switch {
	case err != nil:
		return provisioner.ConfigErrors{{Path: []string{"host"}, Message: fmt.Sprintf("not a Docker engine address (unix:///PATH, tcp://HOST:PORT): %v", err)}}
	case u.Scheme != "unix" && u.Scheme != "tcp" && u.Scheme != "npipe":
		return provisioner.ConfigErrors{{Path: []string{"host"}, Message: fmt.Sprintf("%q: the engine is reached over unix://, tcp:// or npipe://, not %s://", g.Host, u.Scheme)}}
	}
	return nil
}

// checkPool validates one pool's block.
func checkPool(name string, p *poolConfig) provisioner.ConfigErrors {
	var es provisioner.ConfigErrors
	bad := func(msg string, p ...string) {
		es = append(es, provisioner.ConfigError{Pool: name, Path: p, Message: msg})
	}
	if strings.TrimSpace(p.Image) == "" {
		bad("must name an image present on the engine (this provisioner never pulls)", "image")
	}
	if p.CPUs != nil && *p.CPUs <= 0 {
		bad(fmt.Sprintf("must be positive, got %v", *p.CPUs), "cpus")
	}
	if p.MemoryMB != nil && *p.MemoryMB < 6 {
		bad(fmt.Sprintf("must be at least 6 (the engine's minimum), got %d", *p.MemoryMB), "memory_mb")
	}
	if p.NetworkMode == "" {
		bad(`must not be empty (host, bridge, none, container:NAME or a network's name)`, "network_mode")
	}
	for k := range p.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			bad(fmt.Sprintf("%q is not a variable name", k), "env")
		}
	}
	for i, m := range p.Mounts {
		at := fmt.Sprintf("mount[%d]", i)
		switch m.Type {
		case "bind":
			if !path.IsAbs(m.Source) {
				bad(fmt.Sprintf("a bind mount's source must be an absolute path on the engine's host, got %q", m.Source), at, "source")
			}
		case "volume":
			if m.Source == "" {
				bad("a volume mount names its volume", at, "source")
			}
		case "tmpfs":
			if m.Source != "" {
				bad("a tmpfs mount takes no source", at, "source")
			}
		default:
			bad(fmt.Sprintf("must be bind, volume or tmpfs, got %q", m.Type), at, "type")
		}
		if !path.IsAbs(m.Target) {
			bad(fmt.Sprintf("must be an absolute path in the container, got %q", m.Target), at, "target")
		}
	}
	return es
}
