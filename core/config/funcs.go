package config

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
)

// evalState is shared by the evaluation contexts of one configuration: it
// counts what the functions returned (bounded by MaxFuncOutputBytes) and
// remembers each value file() and env() returned, with the call it came
// from, so that diagnostics can name the source instead of echoing the value
// (see redact).
type evalState struct {
	mu      sync.Mutex
	output  int64
	secrets map[string]string // value -> the call it came from, file("x")
	taints  []taint           // expressions whose values came from file() or env()
}

// charge accounts for n more bytes of function output.
func (st *evalState) charge(n int) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.output+int64(n) > MaxFuncOutputBytes {
		return fmt.Errorf("the configuration's functions would return more than %s in all", byteSize(MaxFuncOutputBytes))
	}
	st.output += int64(n)
	return nil
}

// remember records that v came from source (such as `file("x")`); the
// empty string tells nothing and is not recorded.
func (st *evalState) remember(v, source string) {
	if v == "" {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.secrets == nil {
		st.secrets = map[string]string{}
	}
	if _, ok := st.secrets[v]; !ok {
		st.secrets[v] = source
	}
}

// sourceOf returns the sources of the recorded values among vals, joined
// with ", ", or "" when none was recorded.
func (st *evalState) sourceOf(vals ...string) string {
	st.mu.Lock()
	defer st.mu.Unlock()
	var srcs []string
	for _, v := range vals {
		if s, ok := st.secrets[v]; ok && !slices.Contains(srcs, s) {
			srcs = append(srcs, s)
		}
	}
	return strings.Join(srcs, ", ")
}

// newEvalContext returns the evaluation context used for expressions in a
// configuration file living in dir. There are no variables, only functions;
// file() resolves relative paths against dir. st is shared by every context
// of one configuration.
func newEvalContext(dir string, st *evalState) *hcl.EvalContext {
	return &hcl.EvalContext{
		Functions: map[string]function.Function{
			"env":       makeEnvFunc(st),
			"file":      makeFileFunc(dir, st),
			"upper":     charged(stdlib.UpperFunc, st),
			"lower":     charged(stdlib.LowerFunc, st),
			"trimspace": charged(stdlib.TrimSpaceFunc, st),
			"join":      makeJoinFunc(st),
		},
	}
}

// makeEnvFunc returns env(name) and env(name, default). Without a default
// an unset variable is an error; a variable set to the empty string is set.
// The value of a set variable is remembered in st as coming from
// env("NAME").
func makeEnvFunc(st *evalState) function.Function {
	return function.New(&function.Spec{
		Description: "Returns the value of an environment variable, or the default if given and the variable is unset.",
		Params: []function.Parameter{
			{Name: "name", Type: cty.String, AllowMarked: true},
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
			nameVal, marks := args[0].Unmark()
			name := nameVal.AsString()
			if name == "" {
				return cty.NilVal, function.NewArgErrorf(0, "environment variable name must not be empty")
			}
			// A name computed from file() or env() is itself never shown.
			shown, from := strconv.Quote(name), markSources(args[0])
			if len(from) > 0 {
				shown = "named by " + strings.Join(from, ", ")
			}
			if v, ok := os.LookupEnv(name); ok {
				if err := st.charge(len(v)); err != nil {
					return cty.NilVal, err
				}
				src := fmt.Sprintf("env(%s)", shown)
				st.remember(v, src)
				return cty.StringVal(v).WithMarks(marks).Mark(sensitive{source: src}), nil
			}
			if len(args) == 2 {
				return args[1].WithMarks(marks), nil
			}
			if len(from) > 0 {
				return cty.NilVal, function.NewArgErrorf(0, "the environment variable %s is not set and no default was given", shown)
			}
			return cty.NilVal, function.NewArgErrorf(0, "environment variable %q is not set and no default was given", name)
		},
	})
}

// makeFileFunc returns file(path): the contents of a UTF-8 text file, with a
// relative path resolved against dir. Only a regular file of at most
// MaxFileFuncBytes is read (never a FIFO or a device, which could block or
// never end); its contents are remembered in st as coming from
// file("PATH").
func makeFileFunc(dir string, st *evalState) function.Function {
	return function.New(&function.Spec{
		Description: "Returns the contents of a file, relative to the configuration file's directory.",
		Params: []function.Parameter{
			{Name: "path", Type: cty.String, AllowMarked: true},
		},
		Type:         function.StaticReturnType(cty.String),
		RefineResult: func(b *cty.RefinementBuilder) *cty.RefinementBuilder { return b.NotNull() },
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			argVal, marks := args[0].Unmark()
			arg := argVal.AsString()
			if arg == "" {
				return cty.NilVal, function.NewArgErrorf(0, "path must not be empty")
			}
			p := arg
			if !filepath.IsAbs(p) {
				p = filepath.Join(dir, p)
			}
			// A path computed from file() or env() is itself never shown.
			shown, quoted, from := p, strconv.Quote(arg), markSources(args[0])
			if len(from) > 0 {
				shown = "the file named by " + strings.Join(from, ", ")
				quoted = "path from " + strings.Join(from, ", ")
			}
			b, err := readRegular(p, MaxFileFuncBytes)
			if err != nil {
				return cty.NilVal, function.NewArgError(0, fmt.Errorf("cannot read %s: %w", shown, err))
			}
			if !utf8.Valid(b) {
				return cty.NilVal, function.NewArgErrorf(0, "%s is not valid UTF-8 text", shown)
			}
			if err := st.charge(len(b)); err != nil {
				return cty.NilVal, err
			}
			s := string(b)
			src := fmt.Sprintf("file(%s)", quoted)
			st.remember(s, src)
			return cty.StringVal(s).WithMarks(marks).Mark(sensitive{source: src}), nil
		},
	})
}

// charged wraps a function of one string (upper, lower, trimspace) so that
// its result counts against st's bound, and a result computed from a value
// of file() or env() is remembered as coming from there too (for Redact's
// second net; the function framework carries the marks of the arguments
// over to the result, as it does for join).
func charged(fn function.Function, st *evalState) function.Function {
	return function.New(&function.Spec{
		Description:  fn.Description(),
		Params:       fn.Params(),
		Type:         function.StaticReturnType(cty.String),
		RefineResult: func(b *cty.RefinementBuilder) *cty.RefinementBuilder { return b.NotNull() },
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			v, err := fn.Call(args)
			if err != nil || !v.IsKnown() || v.IsNull() {
				return v, err
			}
			out := v.AsString()
			if err := st.charge(len(out)); err != nil {
				return cty.NilVal, err
			}
			if src := st.sourceOf(args[0].AsString()); src != "" {
				st.remember(out, src)
			}
			return v, nil
		},
	})
}

// makeJoinFunc returns join(separator, lists...), which refuses to build a
// result beyond st's bound (a long separator joining many items would
// otherwise multiply the configuration's size).
func makeJoinFunc(st *evalState) function.Function {
	join := stdlib.JoinFunc
	return function.New(&function.Spec{
		Description: join.Description(),
		Params:      join.Params(),
		VarParam:    join.VarParam(),
		Type:        function.StaticReturnType(cty.String),
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			sep := args[0].AsString()
			size, items := 0, 0
			var parts []string
			for _, list := range args[1:] {
				if !list.IsKnown() || list.IsNull() {
					continue
				}
				for it := list.ElementIterator(); it.Next(); {
					_, v := it.Element()
					items++
					if v.IsKnown() && !v.IsNull() {
						size += len(v.AsString())
						parts = append(parts, v.AsString())
					}
				}
			}
			if items > 1 {
				size += (items - 1) * len(sep)
			}
			if err := st.charge(size); err != nil {
				return cty.NilVal, err
			}
			v, err := join.Call(args)
			if err != nil || !v.IsKnown() || v.IsNull() {
				return v, err
			}
			if src := st.sourceOf(append(parts, sep)...); src != "" {
				st.remember(v.AsString(), src)
			}
			return v, nil
		},
	})
}
