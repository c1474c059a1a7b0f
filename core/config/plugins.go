package config

import (
	"fmt"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hcldec"
)

// PluginSpec is what the host obtained from a launcher plugin: the hcldec
// specs of its global block (the rest of the launcher block) and of its
// per-node block. A nil spec means the corresponding body must be empty.
type PluginSpec struct {
	// Global is the spec of the launcher block's remaining body.
	Global hcldec.Spec
	// Node is the spec of the block named after the launcher inside a node.
	Node hcldec.Spec
}

// DecodePlugins decodes each launcher's Body and each node's Body with hcldec
// against the spec of its launcher, storing the values in Launcher.Config and
// Node.Config. Launchers missing from specs, and their nodes, are skipped:
// reporting unknown launchers is the caller's business. Expressions are
// evaluated with the same functions and bounds as Load, and the diagnostics
// are redacted the same way (see Redact).
func (c *Config) DecodePlugins(specs map[string]PluginSpec) hcl.Diagnostics {
	var diags hcl.Diagnostics
	for _, l := range c.Launchers {
		spec, ok := specs[l.Name]
		if !ok || l.Body == nil {
			continue
		}
		ctx := c.fileEvalContext(l.DefRange.Filename)
		val, d := hcldec.Decode(c.state.track(l.Body), orEmpty(spec.Global), ctx)
		diags = append(diags, d...)
		l.Config = val
	}
	for _, n := range c.Nodes {
		spec, ok := specs[n.Launcher]
		if !ok || n.Body == nil {
			continue
		}
		ctx := c.fileEvalContext(n.DefRange.Filename)
		val, d := hcldec.Decode(c.state.track(n.Body), orEmpty(spec.Node), ctx)
		diags = append(diags, d...)
		n.Config = val
	}
	return c.Redact(sortDiags(diags, c.order))
}

// orEmpty returns spec, or a spec that accepts only an empty body.
func orEmpty(spec hcldec.Spec) hcldec.Spec {
	if spec == nil {
		return hcldec.ObjectSpec{}
	}
	return spec
}

// emptyBody stands for a node's launcher block when the node has none: it has
// no content, and reports required arguments as missing at rng (the node's
// header) instead of at a meaningless position.
type emptyBody struct {
	rng       hcl.Range
	blockType string
}

var _ hcl.Body = (*emptyBody)(nil)

// Content implements hcl.Body.
func (b *emptyBody) Content(schema *hcl.BodySchema) (*hcl.BodyContent, hcl.Diagnostics) {
	content, _, diags := b.PartialContent(schema)
	return content, diags
}

// PartialContent implements hcl.Body.
func (b *emptyBody) PartialContent(schema *hcl.BodySchema) (*hcl.BodyContent, hcl.Body, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	for _, a := range schema.Attributes {
		if a.Required {
			diags = diags.Append(errorAt(b.rng, "Missing required argument",
				fmt.Sprintf("The argument %q is required, but this node has no %s block to set it in.", a.Name, b.blockType)))
		}
	}
	return &hcl.BodyContent{Attributes: hcl.Attributes{}, MissingItemRange: b.rng}, b, diags
}

// JustAttributes implements hcl.Body.
func (b *emptyBody) JustAttributes() (hcl.Attributes, hcl.Diagnostics) {
	return hcl.Attributes{}, nil
}

// MissingItemRange implements hcl.Body.
func (b *emptyBody) MissingItemRange() hcl.Range {
	return b.rng
}
