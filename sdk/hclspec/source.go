package hclspec

import (
	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/zclconf/go-cty/cty"
)

// DecodeSource parses src, the body of a block in HCL, and decodes it
// against spec as the host decodes a plugin's block. filename names the
// source in diagnostics. The conformance kits and plugin tests use it.
func DecodeSource(filename, src string, spec hcldec.Spec) (cty.Value, error) {
	f, diags := hclparse.NewParser().ParseHCL([]byte(src), filename)
	if diags.HasErrors() {
		return cty.NilVal, diags
	}
	v, diags := hcldec.Decode(f.Body, spec, nil)
	if diags.HasErrors() {
		return cty.NilVal, diags
	}
	return v, nil
}
