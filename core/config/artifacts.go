package config

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

// MaxStdin bounds a step's stdin attribute.
const MaxStdin = 16 << 20

// CheckArtifactPattern reports why p cannot be an artifacts pattern: a
// slash-separated glob relative to the build's workspace, each segment as
// in path.Match or "**" (any number of directories), with no empty, "."
// or ".." segment.
func CheckArtifactPattern(p string) error {
	switch {
	case p == "":
		return errors.New("a pattern must not be empty")
	case strings.HasPrefix(p, "/"):
		return errors.New("an absolute path: patterns are relative to the build's workspace")
	}
	for _, seg := range strings.Split(p, "/") {
		switch {
		case seg == "":
			return errors.New(`an empty path segment (a doubled or trailing "/"; "dir/**" matches everything under dir)`)
		case seg == "..":
			return errors.New(`".." leads out of the build's workspace`)
		case seg == ".":
			return errors.New(`"." segments are not allowed: write the path without them`)
		case seg != "**" && strings.Contains(seg, "**"):
			return fmt.Errorf(`"**" must be a path segment of its own, as in "dist/**/*.tar.gz", not part of %q`, seg)
		}
		if _, err := path.Match(seg, ""); err != nil {
			return fmt.Errorf("invalid glob syntax in %q", seg)
		}
	}
	return nil
}

// buildArtifacts evaluates and checks a job's artifacts attribute: a list
// of patterns, each reported at its own position.
func (c *Config) buildArtifacts(expr hcl.Expression) ([]string, hcl.Diagnostics) {
	if expr == nil {
		return nil, nil
	}
	ctx := c.fileEvalContext(expr.Range().Filename)
	v, diags := expr.Value(ctx)
	if diags.HasErrors() || v.IsNull() {
		return nil, diags
	}
	bad := func(rng hcl.Range, detail string) hcl.Diagnostics {
		return hcl.Diagnostics{errorAt(rng, "Invalid artifacts", detail)}
	}
	list, err := convert.Convert(v, cty.List(cty.String))
	if err != nil || !list.IsWhollyKnown() {
		return nil, bad(expr.Range(), `The artifacts attribute must be a list of glob patterns, such as ["dist/*.tar.gz", "report.xml"].`)
	}
	// Each pattern at its own position when the list is written out.
	ranges := make([]hcl.Range, list.LengthInt())
	elems, d := hcl.ExprList(expr)
	for i := range ranges {
		ranges[i] = expr.Range()
		if !d.HasErrors() && len(elems) == len(ranges) {
			ranges[i] = elems[i].Range()
		}
	}
	var out []string
	for i, e := range list.AsValueSlice() {
		if e.IsNull() {
			diags = append(diags, bad(ranges[i], "An artifacts pattern must not be null.")...)
			continue
		}
		p := e.AsString()
		if err := CheckArtifactPattern(p); err != nil {
			diags = append(diags, plainError(ranges[i], "Invalid artifacts",
				fmt.Sprintf("The artifacts pattern %q cannot be used: %s.", p, err), "The artifacts pattern cannot be used."))
			continue
		}
		out = append(out, p)
	}
	return out, diags
}
