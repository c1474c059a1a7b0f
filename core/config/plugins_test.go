package config

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

// testSpecs mimics what launcher plugins would report.
func testSpecs() map[string]PluginSpec {
	return map[string]PluginSpec{
		"local": {
			Global: &hcldec.ObjectSpec{
				"shell": &hcldec.AttrSpec{Name: "shell", Type: cty.String, Required: true},
				"parallel": &hcldec.DefaultSpec{
					Primary: &hcldec.AttrSpec{Name: "parallel", Type: cty.Number},
					Default: &hcldec.LiteralSpec{Value: cty.NumberIntVal(4)},
				},
				"limits": &hcldec.BlockSpec{
					TypeName: "limits",
					Required: true,
					Nested: &hcldec.ObjectSpec{
						"cpu": &hcldec.AttrSpec{Name: "cpu", Type: cty.Number, Required: true},
					},
				},
			},
			Node: &hcldec.ObjectSpec{
				"command": &hcldec.AttrSpec{Name: "command", Type: cty.List(cty.String), Required: true},
			},
		},
		"ssh": {
			Global: &hcldec.ObjectSpec{
				"user": &hcldec.AttrSpec{Name: "user", Type: cty.String},
			},
			Node: &hcldec.ObjectSpec{
				"host": &hcldec.AttrSpec{Name: "host", Type: cty.String, Required: true},
			},
		},
		"bare": {}, // nil specs: bodies must be empty
	}
}

func TestDecodePluginsGood(t *testing.T) {
	t.Setenv("CONVEYOR_TEST_SSH_USER", "builder")
	c, diags := Load("testdata/good.hcl")
	requireNoDiags(t, c.Files, diags)
	diags = c.DecodePlugins(testSpecs())
	requireNoDiags(t, c.Files, diags)

	tests := []struct {
		name string
		got  cty.Value
		want cty.Value
	}{
		{"launcher local", c.Launcher("local").Config, cty.ObjectVal(map[string]cty.Value{
			"shell":    cty.StringVal("/bin/sh"),
			"parallel": cty.NumberIntVal(4),
			"limits":   cty.ObjectVal(map[string]cty.Value{"cpu": cty.NumberIntVal(2)}),
		})},
		{"launcher ssh", c.Launcher("ssh").Config, cty.ObjectVal(map[string]cty.Value{
			"user": cty.StringVal("builder"),
		})},
		{"node linux-1", c.Node("linux-1").Config, cty.ObjectVal(map[string]cty.Value{
			"command": cty.ListVal([]cty.Value{cty.StringVal("cat")}),
		})},
		{"node mac.builder_2", c.Node("mac.builder_2").Config, cty.ObjectVal(map[string]cty.Value{
			"host": cty.StringVal("mac.example.com"),
		})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !tt.got.RawEquals(tt.want) {
				t.Errorf("got %#v\nwant %#v", tt.got, tt.want)
			}
		})
	}
}

func TestDecodePluginsSkipsUnknownLaunchers(t *testing.T) {
	c, diags := Load("testdata/good.hcl")
	requireNoDiags(t, c.Files, diags)
	specs := testSpecs()
	delete(specs, "ssh") // env("CONVEYOR_TEST_SSH_USER") would fail if evaluated
	requireNoDiags(t, c.Files, c.DecodePlugins(specs))
	if c.Launcher("ssh").Config != cty.NilVal || c.Node("mac.builder_2").Config != cty.NilVal {
		t.Errorf("ssh bodies were decoded without a spec")
	}
	if c.Launcher("local").Config == cty.NilVal {
		t.Errorf("local launcher was not decoded")
	}
}

func TestDecodePluginsBad(t *testing.T) {
	tests := []struct {
		file string // in testdata/plugins
		pos  string // LINE:COL of the first error's subject
		text string // substring of its summary or detail
	}{
		{"missing_required.hcl", "1:18", `The argument "shell" is required`},
		{"wrong_type.hcl", "3:14", "a number is required"},
		{"unknown_attribute.hcl", "12:5", `An argument named "colour" is not expected here`},
		{"missing_node_block.hcl", "8:1", `"command" is required, but this node has no local block`},
		{"missing_block.hcl", "1:18", `Missing limits block`},
		{"nil_spec_not_empty.hcl", "9:3", `An argument named "anything" is not expected here`},
		{"env_unset.hcl", "2:16", `"CONVEYOR_TEST_SURELY_UNSET_SHELL" is not set`},
	}
	for _, tt := range tests {
		t.Run(strings.TrimSuffix(tt.file, ".hcl"), func(t *testing.T) {
			name := "testdata/plugins/" + tt.file
			c, diags := Load(name)
			requireNoDiags(t, c.Files, diags)
			diags = c.DecodePlugins(testSpecs())
			if !diags.HasErrors() {
				t.Fatalf("no error diagnostics")
			}
			first := diags.Errs()[0].(*hcl.Diagnostic)
			if first.Subject == nil {
				t.Fatalf("first error %q has no subject", first.Summary)
			}
			at := fmt.Sprintf("%s:%d:%d", first.Subject.Filename, first.Subject.Start.Line, first.Subject.Start.Column)
			if want := name + ":" + tt.pos; at != want {
				t.Errorf("first error at %s, want %s (%s: %s)", at, want, first.Summary, first.Detail)
			}
			if !strings.Contains(first.Summary, tt.text) && !strings.Contains(first.Detail, tt.text) {
				t.Errorf("first error %q / %q does not contain %q", first.Summary, first.Detail, tt.text)
			}
			var buf bytes.Buffer
			if err := WriteDiagnostics(&buf, c.Files, diags); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(buf.String(), at+": Error: ") {
				t.Errorf("output lacks %s:\n%s", at, buf.String())
			}
		})
	}
}

// TestDecodePluginsDerivedSecret: plugin bodies get plain values computed
// from file() (hcldec and the plugins' msgpack take no marks), keep their
// hcl syntax (the plugin loader finds attributes' positions in it), and
// any diagnostic about such an attribute, hcldec's or a plugin's own
// quoting a part of the value, names the source instead.
func TestDecodePluginsDerivedSecret(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "tok"), "deadbeefcafe0123456789abcdef\n")
	p := write(t, dir, `launcher "local" {
  shell    = upper(file("tok"))
  parallel = "x${trimspace(file("tok"))}"
  limits { cpu = 1 }
}
node "n1" {
  launcher = "local"
  local { command = [lower(file("tok")), "x"] }
}
`)
	c, diags := Load(p)
	requireNoDiags(t, c.Files, diags)
	diags = c.DecodePlugins(testSpecs())
	if len(diags) != 1 || diags[0].Subject == nil || diags[0].Subject.Start.Line != 3 {
		t.Fatalf("diags = %v, want one about parallel on line 3", diags)
	}
	if d := diags[0].Detail; !strings.Contains(d, `file("tok")`) || strings.Contains(strings.ToLower(d), "cafe") {
		t.Errorf("parallel's diagnostic %q does not name file(\"tok\") only", d)
	}
	shell := c.Launcher("local").Config.GetAttr("shell")
	if shell.ContainsMarked() || !shell.RawEquals(cty.StringVal("DEADBEEFCAFE0123456789ABCDEF\n")) {
		t.Errorf("shell = %#v, want the plain upper-cased token", shell)
	}
	cmd := c.Node("n1").Config.GetAttr("command")
	if cmd.ContainsMarked() || !cmd.RawEquals(cty.ListVal([]cty.Value{cty.StringVal("deadbeefcafe0123456789abcdef\n"), cty.StringVal("x")})) {
		t.Errorf("command = %#v, want the plain token and x", cmd)
	}
	body, ok := c.Launcher("local").Body.(*hclsyntax.Body)
	if !ok {
		t.Fatalf("launcher body is a %T, want the *hclsyntax.Body", c.Launcher("local").Body)
	}
	rng := body.Attributes["shell"].Expr.Range()
	plugin := c.Redact(hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Invalid local configuration",
		Detail: "shell: BEEFCAFE0123 is not executable", Subject: &rng}})
	if d := plugin[0].Detail; !strings.Contains(d, `file("tok")`) || strings.Contains(strings.ToLower(d), "cafe") {
		t.Errorf("the plugin's diagnostic %q does not name file(\"tok\") only", d)
	}
}
