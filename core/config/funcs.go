package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
)

// newEvalContext returns the evaluation context used for expressions in a
// configuration file living in dir. There are no variables, only functions;
// file() resolves relative paths against dir.
func newEvalContext(dir string) *hcl.EvalContext {
	return &hcl.EvalContext{
		Functions: map[string]function.Function{
			"env":       envFunc,
			"file":      makeFileFunc(dir),
			"upper":     stdlib.UpperFunc,
			"lower":     stdlib.LowerFunc,
			"trimspace": stdlib.TrimSpaceFunc,
			"join":      stdlib.JoinFunc,
		},
	}
}

// envFunc implements env(name) and env(name, default). Without a default an
// unset variable is an error; a variable set to the empty string is set.
var envFunc = function.New(&function.Spec{
	Description: "Returns the value of an environment variable, or the default if given and the variable is unset.",
	Params: []function.Parameter{
		{Name: "name", Type: cty.String},
	},
	VarParam: &function.Parameter{Name: "default", Type: cty.String},
	Type: func(args []cty.Value) (cty.Type, error) {
		if len(args) > 2 {
			return cty.NilType, function.NewArgErrorf(2, "too many arguments; env takes a variable name and an optional default")
		}
		return cty.String, nil
	},
	RefineResult: func(b *cty.RefinementBuilder) *cty.RefinementBuilder { return b.NotNull() },
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		name := args[0].AsString()
		if name == "" {
			return cty.NilVal, function.NewArgErrorf(0, "environment variable name must not be empty")
		}
		if v, ok := os.LookupEnv(name); ok {
			return cty.StringVal(v), nil
		}
		if len(args) == 2 {
			return args[1], nil
		}
		return cty.NilVal, function.NewArgErrorf(0, "environment variable %q is not set and no default was given", name)
	},
})

// makeFileFunc returns file(path): the contents of a UTF-8 text file, with a
// relative path resolved against dir.
func makeFileFunc(dir string) function.Function {
	return function.New(&function.Spec{
		Description: "Returns the contents of a file, relative to the configuration file's directory.",
		Params: []function.Parameter{
			{Name: "path", Type: cty.String},
		},
		Type:         function.StaticReturnType(cty.String),
		RefineResult: func(b *cty.RefinementBuilder) *cty.RefinementBuilder { return b.NotNull() },
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			p := args[0].AsString()
			if p == "" {
				return cty.NilVal, function.NewArgErrorf(0, "path must not be empty")
			}
			if !filepath.IsAbs(p) {
				p = filepath.Join(dir, p)
			}
			b, err := os.ReadFile(p)
			if err != nil {
				var pe *os.PathError
				if errors.As(err, &pe) {
					err = pe.Err
				}
				return cty.NilVal, function.NewArgError(0, fmt.Errorf("cannot read %s: %w", p, err))
			}
			if !utf8.Valid(b) {
				return cty.NilVal, function.NewArgErrorf(0, "%s is not valid UTF-8 text", p)
			}
			return cty.StringVal(string(b)), nil
		},
	})
}
