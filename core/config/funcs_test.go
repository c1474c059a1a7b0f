package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

func TestFunctions(t *testing.T) {
	t.Setenv("CONVEYOR_TEST_SET", "value")
	t.Setenv("CONVEYOR_TEST_EMPTY", "")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ok.txt"), []byte("text\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "binary"), []byte{0xff, 0xfe}, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, text := range map[string]string{"name.txt": "CONVEYOR_TEST_SET\n", "unset.txt": "conveyor_test_surely_unset", "path.txt": "ok.txt\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx := newEvalContext(dir, &evalState{})
	tests := []struct {
		expr    string
		want    string // when wantErr is empty
		wantErr string // substring of the error detail
		from    string // the sources the value's marks name, ", "-separated
	}{
		{`env("CONVEYOR_TEST_SET")`, "value", "", `env("CONVEYOR_TEST_SET")`},
		{`env("CONVEYOR_TEST_SET", "fallback")`, "value", "", `env("CONVEYOR_TEST_SET")`},
		{`env("CONVEYOR_TEST_EMPTY", "fallback")`, "", "", `env("CONVEYOR_TEST_EMPTY")`},
		{`env("CONVEYOR_TEST_SURELY_UNSET", "fallback")`, "fallback", "", ""},
		{`env("CONVEYOR_TEST_SURELY_UNSET")`, "", "is not set", ""},
		{`env("")`, "", "must not be empty", ""},
		{`env("A", "b", "c")`, "", "too many arguments", ""},
		{`env(trimspace(file("name.txt")))`, "value", "", `env(named by file("name.txt")), file("name.txt")`},
		{`env(upper(file("unset.txt")))`, "", `the environment variable named by file("unset.txt") is not set`, ""},
		{`file("ok.txt")`, "text\n", "", `file("ok.txt")`},
		{`file("` + filepath.Join(dir, "ok.txt") + `")`, "text\n", "", `file("` + filepath.Join(dir, "ok.txt") + `")`},
		{`file("missing.txt")`, "", "no such file or directory", ""},
		{`file("binary")`, "", "not valid UTF-8", ""},
		{`file(trimspace(file("path.txt")))`, "text\n", "", `file("path.txt"), file(path from file("path.txt"))`},
		{`file("${file("ok.txt")}x")`, "", `cannot read the file named by file("ok.txt"): no such file`, ""},
		{`upper("a")`, "A", "", ""},
		{`upper(file("ok.txt"))`, "TEXT\n", "", `file("ok.txt")`},
		{`lower("A")`, "a", "", ""},
		{`trimspace("  a \n")`, "a", "", ""},
		{`"1${trimspace(file("ok.txt"))}"`, "1text", "", `file("ok.txt")`},
		{`join(",", ["a", "b"])`, "a,b", "", ""},
		{`join(",", ["a", lower(env("CONVEYOR_TEST_SET"))])`, "a,value", "", `env("CONVEYOR_TEST_SET")`},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			expr, diags := hclsyntax.ParseExpression([]byte(tt.expr), "expr.hcl", hcl.InitialPos)
			if diags.HasErrors() {
				t.Fatal(diags)
			}
			val, diags := expr.Value(ctx)
			if tt.wantErr != "" {
				if !diags.HasErrors() || !strings.Contains(diags.Error(), tt.wantErr) {
					t.Errorf("diags = %v, want an error containing %q", diags, tt.wantErr)
				}
				if strings.Contains(diags.Error(), "SURELY_UNSET") && !strings.Contains(tt.expr, "SURELY_UNSET") {
					t.Errorf("the error quotes a name read from a file: %v", diags)
				}
				return
			}
			if diags.HasErrors() {
				t.Fatal(diags)
			}
			if got := strings.Join(markSources(val), ", "); got != tt.from {
				t.Errorf("marks name %q, want %q", got, tt.from)
			}
			if val, _ = val.UnmarkDeep(); !val.RawEquals(cty.StringVal(tt.want)) {
				t.Errorf("got %#v, want %q", val, tt.want)
			}
		})
	}
}
