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
	ctx := newEvalContext(dir, &evalState{})
	tests := []struct {
		expr    string
		want    string // when wantErr is empty
		wantErr string // substring of the error detail
	}{
		{`env("CONVEYOR_TEST_SET")`, "value", ""},
		{`env("CONVEYOR_TEST_SET", "fallback")`, "value", ""},
		{`env("CONVEYOR_TEST_EMPTY", "fallback")`, "", ""},
		{`env("CONVEYOR_TEST_SURELY_UNSET", "fallback")`, "fallback", ""},
		{`env("CONVEYOR_TEST_SURELY_UNSET")`, "", "is not set"},
		{`env("")`, "", "must not be empty"},
		{`env("A", "b", "c")`, "", "too many arguments"},
		{`file("ok.txt")`, "text\n", ""},
		{`file("` + filepath.Join(dir, "ok.txt") + `")`, "text\n", ""},
		{`file("missing.txt")`, "", "no such file or directory"},
		{`file("binary")`, "", "not valid UTF-8"},
		{`upper("a")`, "A", ""},
		{`lower("A")`, "a", ""},
		{`trimspace("  a \n")`, "a", ""},
		{`join(",", ["a", "b"])`, "a,b", ""},
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
				return
			}
			if diags.HasErrors() {
				t.Fatal(diags)
			}
			if !val.RawEquals(cty.StringVal(tt.want)) {
				t.Errorf("got %#v, want %q", val, tt.want)
			}
		})
	}
}
