package plugins

import (
	"context"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/conveyor-ci/conveyor/core/config"
	"github.com/conveyor-ci/conveyor/sdk/hclspec"
	"github.com/conveyor-ci/conveyor/sdk/launcher"
)

// LoadOptions adjusts Load.
type LoadOptions struct {
	// Version is the server's version, told to plugins.
	Version string
	// ValidateOnly asks plugins to check their configuration and start
	// nothing (validate, plugins subcommands).
	ValidateOnly bool
}

// Load starts the plugin of every launcher block through m, decodes the
// launcher and node blocks against the plugins' schemas and configures
// each plugin. Every problem is a diagnostic pointing into the
// configuration; none quotes a value that file() or env() returned, not
// even in a plugin's own messages (see config.Config.Redact). Plugins that
// started stay with m even when diagnostics are returned; the caller stops
// m.
func Load(ctx context.Context, cfg *config.Config, m *Manager, opts LoadOptions) hcl.Diagnostics {
	return cfg.Redact(load(ctx, cfg, m, opts))
}

func load(ctx context.Context, cfg *config.Config, m *Manager, opts LoadOptions) hcl.Diagnostics {
	var diags hcl.Diagnostics
	specs := map[string]config.PluginSpec{}
	for _, l := range cfg.Launchers {
		spec, d := startOne(ctx, cfg, m, l)
		diags = append(diags, d...)
		if spec != nil {
			specs[l.Name] = *spec
		}
	}
	diags = append(diags, cfg.DecodePlugins(specs)...)
	if diags.HasErrors() {
		return diags
	}
	for _, l := range cfg.Launchers {
		diags = append(diags, configureOne(ctx, cfg, m.Get(l.Name), l, opts)...)
	}
	return diags
}

// Add starts and configures the plugin of launcher l of cfg through m (a
// reload added the launcher block); cfg's plugin blocks are decoded
// already. On errors the plugin is stopped and forgotten.
func Add(ctx context.Context, cfg *config.Config, m *Manager, l *config.Launcher, opts LoadOptions) hcl.Diagnostics {
	_, diags := startOne(ctx, cfg, m, l)
	if !diags.HasErrors() {
		diags = append(diags, configureOne(ctx, cfg, m.Get(l.Name), l, opts)...)
	}
	if diags.HasErrors() {
		m.Remove(l.Name)
	}
	return cfg.Redact(diags)
}

// Reconfigure hands launcher l's running plugin the configuration of cfg
// (a reload added, changed or removed some of its nodes), as Load did.
func Reconfigure(ctx context.Context, cfg *config.Config, p *Plugin, l *config.Launcher, opts LoadOptions) hcl.Diagnostics {
	return cfg.Redact(configureOne(ctx, cfg, p, l, opts))
}

func startOne(ctx context.Context, cfg *config.Config, m *Manager, l *config.Launcher) (*config.PluginSpec, hcl.Diagnostics) {
	fail := func(summary string, err error) (*config.PluginSpec, hcl.Diagnostics) {
		return nil, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: summary,
			Detail: fmt.Sprintf("Launcher %q: %v.", l.Name, err), Subject: l.DefRange.Ptr()}}
	}
	path, err := Find(l.Name, cfg.Server.PluginDir)
	if err != nil {
		return fail("Unknown launcher", err)
	}
	var sha []byte
	if l.SHA256 != "" {
		if sha, err = hex.DecodeString(l.SHA256); err != nil {
			return fail("Invalid sha256 pin", err)
		}
	}
	p, err := m.Start(ctx, l.Name, path, sha)
	if err != nil {
		return fail("Launcher plugin failed to start", err)
	}
	schema, err := p.Launcher().Schema(ctx)
	if err != nil {
		return fail("Launcher plugin has no schema", err)
	}
	global, err := hclspec.Convert(schema.Global)
	if err != nil {
		return fail("Launcher plugin declares an invalid schema", err)
	}
	node, err := hclspec.Convert(schema.Node)
	if err != nil {
		return fail("Launcher plugin declares an invalid schema", err)
	}
	return &config.PluginSpec{Global: global, Node: node}, nil
}

// HostConfig builds the configuration handed to launcher l's plugin.
func HostConfig(cfg *config.Config, l *config.Launcher, opts LoadOptions) *launcher.Config {
	lc := &launcher.Config{
		Host: launcher.Host{
			ServerName:   cfg.Server.Name,
			DataDir:      filepath.Join(cfg.Server.DataDir, "plugins", l.Name),
			Version:      opts.Version,
			ValidateOnly: opts.ValidateOnly,
		},
		Global: l.Config,
	}
	for _, n := range cfg.Nodes {
		if n.Launcher == l.Name {
			lc.Nodes = append(lc.Nodes, &launcher.Node{Name: n.Name, Labels: n.Labels, Config: n.Config})
		}
	}
	return lc
}

func configureOne(ctx context.Context, cfg *config.Config, p *Plugin, l *config.Launcher, opts LoadOptions) hcl.Diagnostics {
	err := p.Configure(ctx, HostConfig(cfg, l, opts))
	if err == nil {
		return nil
	}
	ces, ok := err.(launcher.ConfigErrors)
	if !ok {
		return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Launcher configuration failed",
			Detail: fmt.Sprintf("Launcher %q: %v.", l.Name, err), Subject: l.DefRange.Ptr()}}
	}
	var diags hcl.Diagnostics
	for _, ce := range ces {
		body, rng := l.Body, l.DefRange
		if ce.Node != "" {
			if n := cfg.Node(ce.Node); n != nil {
				body, rng = n.Body, n.BlockRange
			}
		}
		if r, ok := pathRange(body, ce.Path); ok {
			rng = r
		}
		detail := ce.Message
		if len(ce.Path) > 0 {
			detail = fmt.Sprintf("%s: %s", strings.Join(ce.Path, "."), ce.Message)
		}
		// Should the value come from file() or env(), the plugin's message
		// may quote it: Redact then shows this instead.
		plain := fmt.Sprintf("The %s launcher rejects this value; its message is not shown, as it may quote the value.", l.Name)
		if len(ce.Path) > 0 {
			plain = fmt.Sprintf("%s: %s", strings.Join(ce.Path, "."), plain)
		}
		d := config.WithPlainDetail(&hcl.Diagnostic{Severity: hcl.DiagError,
			Summary: fmt.Sprintf("Invalid %s configuration", l.Name), Detail: detail, Subject: rng.Ptr()}, plain)
		if ce.Warning {
			d.Severity, d.Summary = hcl.DiagWarning, fmt.Sprintf("Suspicious %s configuration", l.Name)
		}
		diags = append(diags, d)
	}
	return diags
}

// pathRange finds the range of the attribute (or block) path names inside
// body, descending through nested blocks by type.
func pathRange(body hcl.Body, path []string) (hcl.Range, bool) {
	sb, ok := body.(*hclsyntax.Body)
	if !ok || len(path) == 0 {
		return hcl.Range{}, false
	}
	if len(path) == 1 {
		if a, ok := sb.Attributes[path[0]]; ok {
			return a.Expr.Range(), true
		}
	}
	for _, b := range sb.Blocks {
		if b.Type == path[0] {
			if len(path) == 1 {
				return b.DefRange(), true
			}
			if r, ok := pathRange(b.Body, path[1:]); ok {
				return r, true
			}
			return b.DefRange(), true
		}
	}
	return hcl.Range{}, false
}
