package config

import (
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

// sensitive is the cty mark that file() and env() put on what they return:
// source names the call, such as `file("tok")` (never the value). cty
// carries marks through every function and template interpolation, so any
// value computed from a file or a variable (upper(file("tok")),
// "1${trimspace(file("tok"))}") carries the mark of its sources.
type sensitive struct {
	source string
}

// markSources returns the sources named by the sensitive marks of v and
// of everything inside it, in order of first appearance.
func markSources(v cty.Value) []string {
	var srcs []string
	_, pvms := v.UnmarkDeepWithPaths()
	for _, pvm := range pvms {
		for m := range pvm.Marks {
			if s, ok := m.(sensitive); ok && !slices.Contains(srcs, s.source) {
				srcs = append(srcs, s.source)
			}
		}
	}
	slices.Sort(srcs)
	return srcs
}

// taint is the range of an expression whose value was derived from file()
// or env(), and the calls it was derived from.
type taint struct {
	rng     hcl.Range
	sources []string
}

// unmark returns v without marks, for decoding (gohcl and hcldec refuse
// marked values, and plugins receive plain values), recording rng as
// tainted by the sources of v's sensitive marks.
func (st *evalState) unmark(v cty.Value, rng hcl.Range) cty.Value {
	if !v.ContainsMarked() {
		return v
	}
	srcs := markSources(v)
	u, pvms := v.UnmarkDeepWithPaths()
	if len(srcs) > 0 {
		st.mu.Lock()
		st.taints = append(st.taints, taint{rng: rng, sources: srcs})
		st.mu.Unlock()
	}
	// For Redact's second net, which replaces the values it knows anywhere
	// in a diagnostic: every string computed from file() or env(), such as
	// "x${file("tok")}", quoted by a check placed elsewhere (a parameter's
	// default, checked against its choices).
	for _, pvm := range pvms {
		var from []string
		for m := range pvm.Marks {
			if s, ok := m.(sensitive); ok {
				from = append(from, s.source)
			}
		}
		if len(from) == 0 {
			continue
		}
		slices.Sort(from)
		at, err := pvm.Path.Apply(u)
		if err != nil {
			continue
		}
		_ = cty.Walk(at, func(_ cty.Path, x cty.Value) (bool, error) {
			if !x.IsKnown() || x.IsNull() {
				return false, nil
			}
			switch {
			case x.Type() == cty.String:
				st.remember(x.AsString(), strings.Join(from, ", "))
			case x.Type().IsMapType() || x.Type().IsObjectType():
				for it := x.ElementIterator(); it.Next(); {
					k, _ := it.Element()
					st.remember(k.AsString(), strings.Join(from, ", "))
				}
			}
			return true, nil
		})
	}
	return u
}

// taintOf returns the sources of the tainted expressions whose range holds
// rng, or nil.
func (st *evalState) taintOf(rng *hcl.Range) []string {
	if rng == nil {
		return nil
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	var srcs []string
	for _, t := range st.taints {
		if t.rng.Filename == rng.Filename && t.rng.Start.Byte <= rng.Start.Byte && rng.End.Byte <= t.rng.End.Byte {
			for _, s := range t.sources {
				if !slices.Contains(srcs, s) {
					srcs = append(srcs, s)
				}
			}
		}
	}
	return srcs
}

// redactTainted rewrites the detail of each diagnostic about an expression
// derived from file() or env(): such a detail may quote the value, or a
// part or transformation of it (a duration parser's "unknown unit"), so it
// is replaced by its value-free form when our check gave one (see
// plainError), or else by a note naming the sources only. Function call
// errors are kept: they quote no value derived from file() or env().
func (st *evalState) redactTainted(diags hcl.Diagnostics) {
	for _, d := range diags {
		if d == nil {
			continue
		}
		srcs := st.taintOf(d.Subject)
		if len(srcs) == 0 {
			continue
		}
		if _, ok := d.Extra.(hclsyntax.FunctionCallDiagExtra); ok {
			// A function's own error (a bound exceeded, a file not
			// found): file() and env() never quote a path or a name that
			// came from a file or a variable, and the other functions
			// quote no argument.
			continue
		}
		note := fmt.Sprintf("The value comes from %s; diagnostics never show it.", strings.Join(srcs, ", "))
		if own, ok := d.Extra.(ownCheck); ok && own.plain != "" {
			d.Detail = own.plain + " " + note
			continue
		}
		if plain, ok := d.Extra.(plainDetail); ok {
			d.Detail = string(plain) + " " + note
			continue
		}
		d.Detail = "This value is not valid here, and is not shown. " + note
	}
}

// plainDetail, in hcl.Diagnostic.Extra, is the detail shown instead of
// the diagnostic's own when that is about a value computed from file() or
// env() (see WithPlainDetail).
type plainDetail string

// WithPlainDetail sets what Redact shows instead of d's detail when d is
// about an expression whose value came from file() or env(), and d's
// detail (a plugin's message, say) may quote that value: plain says what
// is wrong without it. It returns d.
func WithPlainDetail(d *hcl.Diagnostic, plain string) *hcl.Diagnostic {
	d.Extra = plainDetail(plain)
	return d
}

// track wraps b so that each attribute's expression, when evaluated,
// returns its value unmarked and records in st where a value derived from
// file() or env() was used (see unmark). Nested blocks and the rest of a
// partial decode are tracked too.
func (st *evalState) track(b hcl.Body) hcl.Body {
	if b == nil {
		return nil
	}
	if _, ok := b.(*trackedBody); ok {
		return b
	}
	return &trackedBody{Body: b, st: st}
}

// untrack returns the body that b tracks (the hcl body itself, which
// callers such as the plugin loader inspect), or b.
func untrack(b hcl.Body) hcl.Body {
	if t, ok := b.(*trackedBody); ok {
		return t.Body
	}
	return b
}

type trackedBody struct {
	hcl.Body
	st *evalState
}

var _ hcl.Body = (*trackedBody)(nil)

// Content implements hcl.Body.
func (b *trackedBody) Content(schema *hcl.BodySchema) (*hcl.BodyContent, hcl.Diagnostics) {
	content, diags := b.Body.Content(schema)
	return b.content(content), diags
}

// PartialContent implements hcl.Body.
func (b *trackedBody) PartialContent(schema *hcl.BodySchema) (*hcl.BodyContent, hcl.Body, hcl.Diagnostics) {
	content, remain, diags := b.Body.PartialContent(schema)
	return b.content(content), b.st.track(remain), diags
}

// JustAttributes implements hcl.Body.
func (b *trackedBody) JustAttributes() (hcl.Attributes, hcl.Diagnostics) {
	attrs, diags := b.Body.JustAttributes()
	return b.attributes(attrs), diags
}

func (b *trackedBody) content(c *hcl.BodyContent) *hcl.BodyContent {
	if c == nil {
		return nil
	}
	out := *c
	out.Attributes = b.attributes(c.Attributes)
	out.Blocks = make(hcl.Blocks, len(c.Blocks))
	for i, blk := range c.Blocks {
		nb := *blk
		nb.Body = b.st.track(blk.Body)
		out.Blocks[i] = &nb
	}
	return &out
}

func (b *trackedBody) attributes(attrs hcl.Attributes) hcl.Attributes {
	if attrs == nil {
		return nil
	}
	out := make(hcl.Attributes, len(attrs))
	for name, a := range attrs {
		na := *a
		na.Expr = &trackedExpr{Expression: a.Expr, st: b.st}
		out[name] = &na
	}
	return out
}

// trackedExpr is an attribute's expression whose value is unmarked (see
// evalState.unmark).
type trackedExpr struct {
	hcl.Expression
	st *evalState
}

// Value implements hcl.Expression.
func (e *trackedExpr) Value(ctx *hcl.EvalContext) (cty.Value, hcl.Diagnostics) {
	v, diags := e.Expression.Value(ctx)
	return e.st.unmark(v, e.Expression.Range()), diags
}

// UnwrapExpression lets hcl.ExprList, hcl.ExprMap and the like see the
// expression's syntax.
func (e *trackedExpr) UnwrapExpression() hcl.Expression {
	return e.Expression
}
