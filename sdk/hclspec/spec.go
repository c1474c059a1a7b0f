package hclspec

// NewObject returns a spec for a body whose attributes and blocks are the
// entries of attrs, keyed by the name the decoded object value uses.
func NewObject(attrs map[string]*Spec) *Spec {
	return &Spec{Block: &Spec_Object{Object: &Object{Attributes: attrs}}}
}

// NewAttr returns a spec for the attribute name with the HCL type
// constraint typ ("string", "number", "bool", "list(string)", "map(string)", ...).
func NewAttr(name, typ string, required bool) *Spec {
	return &Spec{Block: &Spec_Attr{Attr: &Attr{Name: name, Type: typ, Required: required}}}
}

// NewBlock returns a spec for a single unlabeled nested block.
func NewBlock(name string, required bool, nested *Spec) *Spec {
	return &Spec{Block: &Spec_BlockValue{BlockValue: &Block{Name: name, Required: required, Nested: nested}}}
}

// NewBlockList returns a spec for a repeated unlabeled nested block; max 0 means unbounded.
func NewBlockList(name string, nested *Spec, min, max uint64) *Spec {
	return &Spec{Block: &Spec_BlockList{BlockList: &BlockList{Name: name, Nested: nested, MinItems: min, MaxItems: max}}}
}

// NewBlockMap returns a spec for a repeated nested block keyed by its labels.
func NewBlockMap(name string, labels []string, nested *Spec) *Spec {
	return &Spec{Block: &Spec_BlockMap{BlockMap: &BlockMap{Name: name, Labels: labels, Nested: nested}}}
}

// NewBlockAttrs returns a spec for a block whose arbitrary attributes all
// have the type typ, decoded as a map.
func NewBlockAttrs(name, typ string, required bool) *Spec {
	return &Spec{Block: &Spec_BlockAttrs{BlockAttrs: &BlockAttrs{Name: name, Type: typ, Required: required}}}
}

// NewDefault returns a spec that yields def when primary decodes to null.
func NewDefault(primary, def *Spec) *Spec {
	return &Spec{Block: &Spec_Default{Default: &Default{Primary: primary, DefaultValue: def}}}
}

// NewLiteral returns a spec for a constant written as an HCL expression,
// such as `22`, `"root"` or `["a", "b"]`.
func NewLiteral(expr string) *Spec {
	return &Spec{Block: &Spec_Literal{Literal: &Literal{Value: expr}}}
}
