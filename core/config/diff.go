package config

import (
	"fmt"
	"maps"
	"reflect"
	"slices"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

// Diff is what changes between a running configuration and a new one (a
// reload). Names are listed in the new configuration's order (removed
// ones in the old one's).
type Diff struct {
	// JobsAdded, JobsChanged and JobsRemoved name the jobs by what
	// happens to them. A changed job's running builds finish as they
	// started; its next builds run the new definition.
	JobsAdded, JobsChanged, JobsRemoved []string
	// NodesAdded and NodesRemoved name nodes that appear and go.
	NodesAdded, NodesRemoved []string
	// NodesRelaunched name the nodes whose agent must be launched again
	// for the change to apply: their launcher, their launcher's block,
	// one of their timeouts or their availability changed.
	NodesRelaunched []string
	// NodesUpdated name the nodes whose change applies in place: labels,
	// executors, shell.
	NodesUpdated []string
	// LaunchersAdded and LaunchersRemoved name launcher blocks that
	// appear and go; LaunchersChanged, those whose own settings (the
	// launcher block's body, its sha256 pin) changed: their plugin is
	// restarted.
	LaunchersAdded, LaunchersChanged, LaunchersRemoved []string
	// NeedsRestart names the settings that changed but only apply when
	// the server restarts (server.http_addr, a launcher's
	// max_concurrent_launches, ...).
	NeedsRestart []string
}

// Empty reports whether the new configuration changes nothing.
func (d *Diff) Empty() bool {
	return reflect.DeepEqual(*d, Diff{})
}

// Compare returns what changes from old to new. Both must be loaded
// without errors and have their plugin blocks decoded (DecodePlugins), so
// that a launcher or node block's settings compare by value: a file()
// whose content changed counts, a reformatted block does not. A block
// whose plugin gave no spec compares by its source text.
func Compare(old, new *Config) *Diff {
	d := &Diff{}
	d.NeedsRestart = ServerChanges(old.Server, new.Server)

	for _, l := range new.Launchers {
		switch o := old.Launcher(l.Name); {
		case o == nil:
			d.LaunchersAdded = append(d.LaunchersAdded, l.Name)
		case o.SHA256 != l.SHA256 || !sameSettings(old, o.Body, o.Config, new, l.Body, l.Config):
			d.LaunchersChanged = append(d.LaunchersChanged, l.Name)
		}
		if o := old.Launcher(l.Name); o != nil && o.MaxConcurrentLaunches != l.MaxConcurrentLaunches {
			// The launch slots are made once, at start.
			d.NeedsRestart = append(d.NeedsRestart, fmt.Sprintf("launcher.%s.max_concurrent_launches", l.Name))
		}
	}
	for _, l := range old.Launchers {
		if new.Launcher(l.Name) == nil {
			d.LaunchersRemoved = append(d.LaunchersRemoved, l.Name)
		}
	}

	for _, n := range new.Nodes {
		o := old.Node(n.Name)
		switch {
		case o == nil:
			d.NodesAdded = append(d.NodesAdded, n.Name)
		case o.Launcher != n.Launcher || o.HeartbeatTimeout != n.HeartbeatTimeout ||
			o.SessionTimeout != n.SessionTimeout || o.WriteTimeout != n.WriteTimeout || o.Availability != n.Availability ||
			!sameSettings(old, o.Body, o.Config, new, n.Body, n.Config):
			d.NodesRelaunched = append(d.NodesRelaunched, n.Name)
		case !slices.Equal(o.Labels, n.Labels) || o.Executors != n.Executors || !slices.Equal(o.Shell, n.Shell):
			d.NodesUpdated = append(d.NodesUpdated, n.Name)
		}
	}
	for _, n := range old.Nodes {
		if new.Node(n.Name) == nil {
			d.NodesRemoved = append(d.NodesRemoved, n.Name)
		}
	}

	for _, j := range new.Jobs {
		switch o := old.Job(j.Name); {
		case o == nil:
			d.JobsAdded = append(d.JobsAdded, j.Name)
		case !sameJob(o, j):
			d.JobsChanged = append(d.JobsChanged, j.Name)
		}
	}
	for _, j := range old.Jobs {
		if new.Job(j.Name) == nil {
			d.JobsRemoved = append(d.JobsRemoved, j.Name)
		}
	}
	return d
}

// ServerChanges names the server settings that differ. None of them
// applies without a restart: the listener, the data directory, the
// plugin directory, the loggers and the API's authenticator are set up
// once. Values are not quoted (the token is a secret).
func ServerChanges(old, new Server) []string {
	var out []string
	for _, c := range []struct {
		name    string
		changed bool
	}{
		{"server.name", old.Name != new.Name},
		{"server.http_addr", old.HTTPAddr != new.HTTPAddr},
		{"server.data_dir", old.DataDir != new.DataDir},
		{"server.plugin_dir", old.PluginDir != new.PluginDir},
		{"server.log_level", old.LogLevel != new.LogLevel},
		{"server.log_json", old.LogJSON != new.LogJSON},
		{"server.api.token", old.API.Token != new.API.Token},
		{"server.api.public_read", old.API.PublicRead != new.API.PublicRead},
	} {
		if c.changed {
			out = append(out, c.name)
		}
	}
	return out
}

// sameSettings compares two plugin-owned blocks: by decoded value when
// both were decoded, else by source text.
func sameSettings(oc *Config, ob hcl.Body, ov cty.Value, nc *Config, nb hcl.Body, nv cty.Value) bool {
	if ov != cty.NilVal && nv != cty.NilVal {
		a, _ := ov.UnmarkDeep()
		b, _ := nv.UnmarkDeep()
		return a.RawEquals(b)
	}
	if (ov == cty.NilVal) != (nv == cty.NilVal) {
		return false
	}
	return bodyText(oc, ob) == bodyText(nc, nb)
}

// bodyText is the source text of a block body, or "" when it has none (an
// absent block).
func bodyText(c *Config, b hcl.Body) string {
	sb, ok := b.(*hclsyntax.Body)
	if !ok {
		return ""
	}
	rng := sb.SrcRange
	f := c.Files[rng.Filename]
	if f == nil || rng.End.Byte > len(f.Bytes) || rng.Start.Byte > rng.End.Byte {
		return fmt.Sprintf("%s:%d", rng.Filename, rng.Start.Byte) // cannot tell: count as changed when it moved
	}
	return string(f.Bytes[rng.Start.Byte:rng.End.Byte])
}

// sameJob compares two jobs' definitions, not where they are written.
func sameJob(a, b *Job) bool {
	strip := func(j *Job) Job {
		c := *j
		c.DefRange = hcl.Range{}
		c.Steps = slices.Clone(j.Steps)
		for i := range c.Steps {
			c.Steps[i].DefRange = hcl.Range{}
		}
		c.Params = slices.Clone(j.Params)
		for i := range c.Params {
			c.Params[i].DefRange = hcl.Range{}
		}
		if len(c.Env) == 0 {
			c.Env = nil
		} else {
			c.Env = maps.Clone(c.Env)
		}
		return c
	}
	return reflect.DeepEqual(strip(a), strip(b))
}
