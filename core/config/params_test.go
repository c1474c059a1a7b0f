package config

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

func TestLoadParams(t *testing.T) {
	c, diags := Load("testdata/params.hcl")
	requireNoDiags(t, c.Files, diags)
	j := c.Job("deploy")
	if len(j.Params) != 3 {
		t.Fatalf("got %d params, want 3", len(j.Params))
	}
	target := j.Param("TARGET")
	if target == nil || target.Description != "where to deploy" || *target.Default != "staging" ||
		!reflect.DeepEqual(target.Choices, []string{"staging", "production"}) || target.DefRange.Start.Line != 8 {
		t.Errorf("TARGET = %+v", target)
	}
	if v := j.Param("VERSION"); v == nil || v.Default != nil || v.Description != "the version to deploy" {
		t.Errorf("VERSION = %+v, want a required parameter", v)
	}
	if len(c.Job("plain").Params) != 0 {
		t.Errorf("plain has params %v", c.Job("plain").Params)
	}
}

// TestLoadBadParams: a parameter whose name the shell, the loader or the
// agent interprets is refused at validate, at the name's file:line:col.
func TestLoadBadParams(t *testing.T) {
	tests := []struct {
		file string // in testdata/bad
		pos  string // LINE:COL of the first error's subject
		text string // substring of its summary or detail
	}{
		{"param_lower.hcl", "8:9", "Invalid parameter name"},
		{"param_empty.hcl", "8:9", "Invalid parameter name"},
		{"param_path.hcl", "8:9", "PATH cannot be a parameter: the shell looks commands up in it"},
		{"param_ld_preload.hcl", "8:9", "dynamic loader"},
		{"param_bash_env.hcl", "8:9", "Reserved parameter name"},
		{"param_ifs.hcl", "8:9", "Reserved parameter name"},
		{"param_conveyor.hcl", "8:9", "the agent reads its settings"},
		{"param_duplicate.hcl", "9:3", "already declared at testdata/bad/param_duplicate.hcl:8"},
		{"param_default_choice.hcl", "10:15", `The default "prod" of parameter TARGET is not one of its choices`},
		{"param_empty_choices.hcl", "9:15", "Empty choices"},
		{"param_unknown_attr.hcl", "9:5", `An argument named "values" is not expected here`},
	}
	for _, tt := range tests {
		t.Run(strings.TrimSuffix(tt.file, ".hcl"), func(t *testing.T) {
			name := "testdata/bad/" + tt.file
			_, diags := Load(name)
			var first *hcl.Diagnostic
			for _, d := range diags {
				if d.Severity == hcl.DiagError {
					first = d
					break
				}
			}
			if first == nil || first.Subject == nil {
				t.Fatalf("no located error: %v", diags)
			}
			at := fmt.Sprintf("%s:%d:%d", first.Subject.Filename, first.Subject.Start.Line, first.Subject.Start.Column)
			if want := name + ":" + tt.pos; at != want {
				t.Errorf("first error at %s, want %s (%s: %s)", at, want, first.Summary, first.Detail)
			}
			if !strings.Contains(first.Summary, tt.text) && !strings.Contains(first.Detail, tt.text) {
				t.Errorf("first error %q / %q does not contain %q", first.Summary, first.Detail, tt.text)
			}
		})
	}
}

func TestReservedParam(t *testing.T) {
	for _, name := range []string{"PATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "DYLD_INSERT_LIBRARIES", "BASH_ENV", "ENV",
		"IFS", "PS4", "PROMPT_COMMAND", "SHELLOPTS", "BASHOPTS", "HOME", "SHELL", "GCONV_PATH", "GLIBC_TUNABLES",
		"CONVEYOR_JOB", "CONVEYOR_AGENT_SECRET_FILE", "BASH_FUNC_X",
		// Interpreters and tools that load code or take options from the
		// environment.
		"NODE_OPTIONS", "NODE_PATH", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PERL5OPT", "PERL5LIB", "PERLLIB",
		"RUBYOPT", "RUBYLIB", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH",
		"GIT_SSH_COMMAND", "GIT_SSH", "GIT_PROXY_COMMAND", "GIT_EXEC_PATH", "GIT_EXTERNAL_DIFF", "GIT_TEMPLATE_DIR",
		"GIT_CONFIG", "GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0", "GIT_CONFIG_VALUE_0", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_PARAMETERS",
		"GIT_ASKPASS", "SSH_ASKPASS", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "TMPDIR"} {
		if ReservedParam(name) == "" {
			t.Errorf("%s is not reserved", name)
		}
	}
	for _, name := range []string{"NAME", "TARGET", "LD", "PATHS", "MY_PATH", "CONVEYOR", "_X", "TZ", "GIT_BRANCH", "GIT_CONFIGURE", "PYTHON", "NODE_ENV", "PROXY"} {
		if why := ReservedParam(name); why != "" {
			t.Errorf("%s is reserved: %s", name, why)
		}
	}
}

func TestResolveParams(t *testing.T) {
	c, diags := Load("testdata/params.hcl")
	requireNoDiags(t, c.Files, diags)
	deploy, plain := c.Job("deploy"), c.Job("plain")
	tests := []struct {
		name    string
		job     *Job
		given   map[string]string
		want    map[string]string
		refused []string // substrings of the error
	}{
		{"defaults applied", deploy, map[string]string{"VERSION": "1.2"}, map[string]string{"TARGET": "staging", "VERSION": "1.2", "NOTE": ""}, nil},
		{"choice", deploy, map[string]string{"VERSION": "1", "TARGET": "production", "NOTE": "x"}, map[string]string{"TARGET": "production", "VERSION": "1", "NOTE": "x"}, nil},
		{"no params", plain, nil, nil, nil},
		{"required missing", deploy, nil, nil, []string{"VERSION is required"}},
		{"outside choices", deploy, map[string]string{"VERSION": "1", "TARGET": "prod"}, nil, []string{`TARGET="prod" is not one of the choices ["staging" "production"]`}},
		{"undeclared", deploy, map[string]string{"VERSION": "1", "BASH_ENV": "$(id)"}, nil, []string{"BASH_ENV is not a parameter of the job (it declares TARGET, VERSION, NOTE)"}},
		{"undeclared on a job without params", plain, map[string]string{"PATH": "/tmp"}, nil, []string{"PATH is not a parameter", "declares none"}},
		{"invalid name", plain, map[string]string{"A=B": "x", "": "y", "lower": "z"}, nil, []string{`"A=B" is no parameter name`, `"" is no parameter name`, `"lower" is no parameter name`}},
		{"NUL", deploy, map[string]string{"VERSION": "a\x00b"}, nil, []string{"VERSION: a value cannot hold a NUL byte"}},
		{"too long", deploy, map[string]string{"VERSION": strings.Repeat("x", MaxParamValue+1)}, nil, []string{"at most"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.job.ResolveParams(tt.given)
			if tt.refused == nil {
				if err != nil || !reflect.DeepEqual(got, tt.want) {
					t.Fatalf("ResolveParams = %v, %v; want %v", got, err, tt.want)
				}
				return
			}
			var pe *ParamError
			if !errors.As(err, &pe) || got != nil {
				t.Fatalf("ResolveParams = %v, %v; want a *ParamError", got, err)
			}
			for _, s := range tt.refused {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
		})
	}
}
