package hclspec

import (
	"fmt"
	"sort"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/ext/typeexpr"
	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

// Convert turns a declared Spec into the hcldec.Spec the host decodes
// configuration bodies with. A nil spec converts to an empty object, so the
// block must be empty.
func Convert(s *Spec) (hcldec.Spec, error) {
	if s == nil {
		return hcldec.ObjectSpec{}, nil
	}
	return convert(s, "")
}

func convert(s *Spec, path string) (hcldec.Spec, error) {
	if s == nil {
		return nil, fmt.Errorf("%s: empty spec", where(path))
	}
	switch b := s.Block.(type) {
	case *Spec_Object:
		obj := hcldec.ObjectSpec{}
		keys := make([]string, 0, len(b.Object.Attributes))
		for k := range b.Object.Attributes {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			inner, err := convert(b.Object.Attributes[k], path+"."+k)
			if err != nil {
				return nil, err
			}
			obj[k] = inner
		}
		return obj, nil
	case *Spec_Attr:
		ty, err := parseType(b.Attr.Type, path)
		if err != nil {
			return nil, err
		}
		if b.Attr.Name == "" {
			return nil, fmt.Errorf("%s: attribute without a name", where(path))
		}
		return &hcldec.AttrSpec{Name: b.Attr.Name, Type: ty, Required: b.Attr.Required}, nil
	case *Spec_BlockValue:
		nested, err := convert(b.BlockValue.Nested, path+"."+b.BlockValue.Name)
		if err != nil {
			return nil, err
		}
		return &hcldec.BlockSpec{TypeName: b.BlockValue.Name, Nested: nested, Required: b.BlockValue.Required}, nil
	case *Spec_BlockList:
		nested, err := convert(b.BlockList.Nested, path+"."+b.BlockList.Name)
		if err != nil {
			return nil, err
		}
		return &hcldec.BlockListSpec{TypeName: b.BlockList.Name, Nested: nested,
			MinItems: int(b.BlockList.MinItems), MaxItems: int(b.BlockList.MaxItems)}, nil
	case *Spec_BlockMap:
		nested, err := convert(b.BlockMap.Nested, path+"."+b.BlockMap.Name)
		if err != nil {
			return nil, err
		}
		if len(b.BlockMap.Labels) == 0 {
			return nil, fmt.Errorf("%s: block map %q needs at least one label", where(path), b.BlockMap.Name)
		}
		return &hcldec.BlockMapSpec{TypeName: b.BlockMap.Name, LabelNames: b.BlockMap.Labels, Nested: nested}, nil
	case *Spec_BlockAttrs:
		ty, err := parseType(b.BlockAttrs.Type, path)
		if err != nil {
			return nil, err
		}
		return &hcldec.BlockAttrsSpec{TypeName: b.BlockAttrs.Name, ElementType: ty, Required: b.BlockAttrs.Required}, nil
	case *Spec_Default:
		primary, err := convert(b.Default.Primary, path)
		if err != nil {
			return nil, err
		}
		def, err := convert(b.Default.DefaultValue, path)
		if err != nil {
			return nil, err
		}
		return &hcldec.DefaultSpec{Primary: primary, Default: def}, nil
	case *Spec_Literal:
		expr, diags := hclsyntax.ParseExpression([]byte(b.Literal.Value), "literal", hcl.InitialPos)
		if diags.HasErrors() {
			return nil, fmt.Errorf("%s: literal %q: %s", where(path), b.Literal.Value, diags.Error())
		}
		val, diags := expr.Value(nil)
		if diags.HasErrors() {
			return nil, fmt.Errorf("%s: literal %q: %s", where(path), b.Literal.Value, diags.Error())
		}
		return &hcldec.LiteralSpec{Value: val}, nil
	default:
		return nil, fmt.Errorf("%s: unknown spec kind %T", where(path), s.Block)
	}
}

func parseType(typ, path string) (cty.Type, error) {
	expr, diags := hclsyntax.ParseExpression([]byte(typ), "type", hcl.InitialPos)
	if diags.HasErrors() {
		return cty.NilType, fmt.Errorf("%s: type %q: %s", where(path), typ, diags.Error())
	}
	ty, diags := typeexpr.TypeConstraint(expr)
	if diags.HasErrors() {
		return cty.NilType, fmt.Errorf("%s: type %q: %s", where(path), typ, diags.Error())
	}
	return ty, nil
}

func where(path string) string {
	if path == "" {
		return "spec"
	}
	return "spec " + path[1:]
}
