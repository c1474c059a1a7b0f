package config

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// mustAbs returns the absolute form of a path relative to the package.
func mustAbs(t *testing.T, p string) string {
	t.Helper()
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// requireNoDiags fails the test, printing them, if diags is not empty.
func requireNoDiags(t *testing.T, files map[string]*hcl.File, diags hcl.Diagnostics) {
	t.Helper()
	if len(diags) > 0 {
		var buf bytes.Buffer
		_ = WriteDiagnostics(&buf, files, diags)
		t.Fatalf("unexpected diagnostics:\n%s", buf.String())
	}
}

func TestLoadGood(t *testing.T) {
	c, diags := Load("testdata/good.hcl")
	requireNoDiags(t, c.Files, diags)

	if c.Files["testdata/good.hcl"] == nil {
		t.Errorf("Files = %v, want testdata/good.hcl in it", c.Files)
	}

	wantServer := Server{
		Name:      "ci-main",
		HTTPAddr:  "0.0.0.0:9090",
		DataDir:   mustAbs(t, "testdata/state"),
		PluginDir: mustAbs(t, "bin"),
		LogLevel:  "debug",
		LogJSON:   true,
	}
	gotServer := c.Server
	if gotServer.DefRange.Filename != "testdata/good.hcl" || gotServer.DefRange.Start.Line != 3 {
		t.Errorf("Server.DefRange = %v, want testdata/good.hcl line 3", gotServer.DefRange)
	}
	gotServer.DefRange = hcl.Range{}
	if gotServer != wantServer {
		t.Errorf("Server = %+v\nwant %+v", gotServer, wantServer)
	}

	// Launchers, in declaration order.
	if len(c.Launchers) != 2 {
		t.Fatalf("got %d launchers, want 2", len(c.Launchers))
	}
	local, ssh := c.Launcher("local"), c.Launcher("ssh")
	if local != c.Launchers[0] || ssh != c.Launchers[1] {
		t.Errorf("Launcher() lookups or order wrong: %v %v", local, ssh)
	}
	if want := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"; local.SHA256 != want {
		t.Errorf("local.SHA256 = %q, want %q (lowercased)", local.SHA256, want)
	}
	if ssh.SHA256 != "" {
		t.Errorf("ssh.SHA256 = %q, want empty", ssh.SHA256)
	}
	if local.DefRange.Start.Line != 12 || ssh.DefRange.Start.Line != 20 {
		t.Errorf("launcher DefRange lines = %d, %d; want 12, 20", local.DefRange.Start.Line, ssh.DefRange.Start.Line)
	}
	// The launcher body keeps the plugin's part (and hides sha256).
	attrs, _ := local.Body.JustAttributes()
	if _, ok := attrs["shell"]; !ok {
		t.Errorf("local launcher body lacks the plugin's shell attribute")
	}
	if _, ok := attrs["sha256"]; ok {
		t.Errorf("local launcher body still shows sha256")
	}
	if local.Config != cty.NilVal {
		t.Errorf("Launcher.Config set before DecodePlugins")
	}

	// Nodes.
	if len(c.Nodes) != 2 {
		t.Fatalf("got %d nodes, want 2", len(c.Nodes))
	}
	n1 := c.Node("linux-1")
	if n1 == nil || n1 != c.Nodes[0] {
		t.Fatalf("Node(linux-1) = %v", n1)
	}
	if n1.Launcher != "local" || !reflect.DeepEqual(n1.Labels, []string{"linux", "amd64"}) || n1.Executors != 2 {
		t.Errorf("linux-1 = %+v", n1)
	}
	if n1.DefRange.Start.Line != 24 || n1.BlockRange.Start.Line != 28 {
		t.Errorf("linux-1 DefRange line %d, BlockRange line %d; want 24, 28", n1.DefRange.Start.Line, n1.BlockRange.Start.Line)
	}
	if attrs, _ := n1.Body.JustAttributes(); attrs["command"] == nil {
		t.Errorf("linux-1 Body is not its local block")
	}
	mac := c.Node("mac.builder_2")
	if mac == nil || mac.Launcher != "ssh" || mac.Labels != nil || mac.Executors != 1 {
		t.Errorf("mac.builder_2 = %+v, want launcher ssh, no labels, 1 executor", mac)
	}
	if c.Node("nope") != nil {
		t.Errorf("Node(nope) != nil")
	}

	// Jobs.
	if len(c.Jobs) != 3 {
		t.Fatalf("got %d jobs, want 3", len(c.Jobs))
	}
	hello := c.Job("hello")
	if hello == nil || hello != c.Jobs[0] {
		t.Fatalf("Job(hello) = %v", hello)
	}
	if !reflect.DeepEqual(hello.Labels, []string{"linux"}) || hello.Timeout != 30*time.Minute {
		t.Errorf("hello = %+v", hello)
	}
	wantEnv := map[string]string{"GREETING": "Hello from a file!", "WHO": "WORLD", "SHOUT": "loud"}
	if !reflect.DeepEqual(hello.Env, wantEnv) {
		t.Errorf("hello.Env = %q, want %q", hello.Env, wantEnv)
	}
	if len(hello.Steps) != 2 {
		t.Fatalf("hello has %d steps, want 2", len(hello.Steps))
	}
	wantSteps := []struct{ name, run string }{{"greet", "echo $GREETING"}, {"done", "echo done"}}
	for i, w := range wantSteps {
		if s := hello.Steps[i]; s.Name != w.name || s.Run != w.run {
			t.Errorf("hello step %d = %q %q, want %q %q", i, s.Name, s.Run, w.name, w.run)
		}
	}
	if l := hello.Steps[1].DefRange.Start.Line; l != 52 {
		t.Errorf("step done DefRange line %d, want 52", l)
	}
	if j := c.Job("mac-only"); j == nil || j.Timeout != 90*time.Minute || len(j.Steps) != 1 || j.Steps[0].Run != "make" {
		t.Errorf("mac-only = %+v", j)
	}
	if j := c.Job("anywhere"); j == nil || j.Labels != nil || j.Timeout != 0 || j.Env != nil {
		t.Errorf("anywhere = %+v, want no labels, timeout or env", j)
	} else {
		if want := []string{"dist/**/*.tar.gz", "report.xml"}; !reflect.DeepEqual(j.Artifacts, want) {
			t.Errorf("anywhere artifacts = %q, want %q", j.Artifacts, want)
		}
		if j.ArtifactsMaxBytes != 512<<20 {
			t.Errorf("anywhere artifacts_max_mib = %d bytes, want 512 MiB", j.ArtifactsMaxBytes)
		}
		if len(j.Steps) != 2 || j.Steps[0].Stdin != nil || j.Steps[1].Stdin == nil || *j.Steps[1].Stdin != "Hello from a file!\n" {
			t.Errorf("anywhere steps = %+v, want no stdin, then the file's", j.Steps)
		}
	}
	if m := c.Job("hello").ArtifactsMaxBytes; m != DefaultArtifactsMaxMiB<<20 {
		t.Errorf("hello artifacts limit %d, want the default", m)
	}
	if c.Job("hello").Artifacts != nil {
		t.Errorf("hello has artifacts %q, want none", c.Job("hello").Artifacts)
	}
	if c.Job("nope") != nil {
		t.Errorf("Job(nope) != nil")
	}
}

func TestLoadDefaults(t *testing.T) {
	c, diags := Load("testdata/minimal.hcl")
	requireNoDiags(t, c.Files, diags)
	want := Server{
		Name:     "conveyor",
		HTTPAddr: "127.0.0.1:8080",
		DataDir:  mustAbs(t, "testdata/data"),
		LogLevel: "info",
	}
	if c.Server != want {
		t.Errorf("Server = %+v\nwant %+v", c.Server, want)
	}
	n := c.Node("n1")
	if n.Executors != 1 || n.BlockRange != n.DefRange {
		t.Errorf("n1 = %+v, want 1 executor and BlockRange = DefRange", n)
	}
	if _, ok := n.Body.(*emptyBody); !ok {
		t.Errorf("n1.Body = %T, want the empty body", n.Body)
	}
}

func TestLoadDirectory(t *testing.T) {
	c, diags := Load("testdata/multi")
	requireNoDiags(t, c.Files, diags)
	if len(c.Files) != 3 {
		t.Errorf("loaded %d files, want the 3 *.hcl files", len(c.Files))
	}
	if c.Server.DataDir != "/var/lib/conveyor" {
		t.Errorf("DataDir = %q, want the absolute path unchanged", c.Server.DataDir)
	}
	if c.Launcher("local") == nil || c.Node("n1") == nil || c.Job("build") == nil {
		t.Errorf("blocks from some files are missing: %+v", c)
	}
	if got := c.EvalContext().Functions["file"]; got.Params()[0].Name != "path" {
		t.Errorf("EvalContext lacks file()")
	}
}

func TestLoadDuplicateAcrossFiles(t *testing.T) {
	c, diags := Load("testdata/multi", "testdata/extra/dup_node.hcl")
	if len(diags) != 1 {
		t.Fatalf("got %d diagnostics, want 1: %v", len(diags), diags)
	}
	d := diags[0]
	if got := fmt.Sprintf("%s:%d:%d", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column); got != "testdata/extra/dup_node.hcl:3:1" {
		t.Errorf("subject = %s, want testdata/extra/dup_node.hcl:3:1", got)
	}
	if want := filepath.Join("testdata", "multi", "20-nodes.hcl") + ":1"; !strings.Contains(d.Detail, want) {
		t.Errorf("detail %q does not mention %s", d.Detail, want)
	}
	if len(c.Files) != 4 {
		t.Errorf("Files has %d entries, want 4", len(c.Files))
	}
}

func TestLoadPathErrors(t *testing.T) {
	empty := t.TempDir()
	tests := []struct {
		name    string
		paths   []string
		summary string
	}{
		{"no paths", nil, "No configuration files"},
		{"missing file", []string{"testdata/does-not-exist.hcl"}, "Failed to read configuration"},
		{"empty directory", []string{empty}, "No configuration files"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, diags := Load(tt.paths...)
			if c == nil || c.Files == nil {
				t.Fatalf("Load returned config %v, want a non-nil one with Files", c)
			}
			if !diags.HasErrors() || !strings.Contains(diags[0].Summary, tt.summary) {
				t.Fatalf("diags = %v, want an error %q", diags, tt.summary)
			}
			var buf bytes.Buffer
			if err := WriteDiagnostics(&buf, c.Files, diags); err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(buf.String(), "Error: "+tt.summary) {
				t.Errorf("output %q does not start with the error", buf.String())
			}
		})
	}
}

// TestNodeTimeouts: a node's session_timeout and write_timeout are read;
// unset, they are 0 (the session applies the defaults).
func TestNodeTimeouts(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir+"/c.hcl", `
launcher "local" {}

node "set" {
  launcher        = "local"
  session_timeout = "10m"
  write_timeout   = "90s"
}

node "unset" {
  launcher = "local"
}

job "j" {
  step "s" { run = "true" }
}
`)
	c, diags := Load(dir + "/c.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if n := c.Node("set"); n.SessionTimeout != 10*time.Minute || n.WriteTimeout != 90*time.Second {
		t.Errorf("node set: session_timeout %s, write_timeout %s; want 10m, 90s", n.SessionTimeout, n.WriteTimeout)
	}
	if n := c.Node("unset"); n.SessionTimeout != 0 || n.WriteTimeout != 0 {
		t.Errorf("node unset: session_timeout %s, write_timeout %s; want 0, 0", n.SessionTimeout, n.WriteTimeout)
	}
}

// TestNodeAvailability: availability defaults to always; on_demand takes
// an idle_timeout, 10m by default; a launcher launches 10 nodes at once
// unless max_concurrent_launches says otherwise.
func TestNodeAvailability(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir+"/c.hcl", `
launcher "local" {
  max_concurrent_launches = 3
}
launcher "other" {}

node "always" {
  launcher = "local"
}
node "demand" {
  launcher = "local"
  availability {
    mode         = "on_demand"
    idle_timeout = "90s"
  }
}
node "demand-default" {
  launcher = "other"
  availability { mode = "on_demand" }
}

job "j" {
  step "s" { run = "true" }
}
`)
	c, diags := Load(dir + "/c.hcl")
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	for _, tc := range []struct {
		node string
		want Availability
	}{
		{"always", Availability{Mode: AvailabilityAlways}},
		{"demand", Availability{Mode: AvailabilityOnDemand, IdleTimeout: 90 * time.Second}},
		{"demand-default", Availability{Mode: AvailabilityOnDemand, IdleTimeout: DefaultIdleTimeout}},
	} {
		if got := c.Node(tc.node).Availability; got != tc.want {
			t.Errorf("node %s: availability %+v, want %+v", tc.node, got, tc.want)
		}
	}
	if got := c.Launcher("local").MaxConcurrentLaunches; got != 3 {
		t.Errorf("local: max_concurrent_launches %d, want 3", got)
	}
	if got := c.Launcher("other").MaxConcurrentLaunches; got != DefaultMaxConcurrentLaunches {
		t.Errorf("other: max_concurrent_launches %d, want %d", got, DefaultMaxConcurrentLaunches)
	}
}

func TestLoadBad(t *testing.T) {
	tests := []struct {
		file string // in testdata/bad
		pos  string // LINE:COL of the first error's subject
		text string // substring of its summary or detail
	}{
		{"unknown_block.hcl", "11:1", `Blocks of type "pipeline" are not expected here`},
		{"unknown_attribute.hcl", "8:3", `An argument named "retries" is not expected here`},
		{"node_unknown_attribute.hcl", "5:3", `An argument named "colour" is not expected here`},
		{"wrong_type.hcl", "5:16", "a number is required"},
		{"missing_launcher_attr.hcl", "3:11", `The argument "launcher" is required`},
		{"missing_run.hcl", "8:12", `The argument "run" is required`},
		{"undeclared_launcher.hcl", "4:14", "Undeclared launcher"},
		{"empty_launcher.hcl", "4:14", "Empty launcher"},
		{"duplicate_node.hcl", "7:1", "already declared at testdata/bad/duplicate_node.hcl:3"},
		{"duplicate_job.hcl", "11:1", "already declared at testdata/bad/duplicate_job.hcl:7"},
		{"duplicate_launcher.hcl", "2:1", "already declared at testdata/bad/duplicate_launcher.hcl:1"},
		{"duplicate_step.hcl", "9:3", "already declared at testdata/bad/duplicate_step.hcl:8"},
		{"unrunnable_job.hcl", "9:12", "Job cannot run on any node"},
		{"no_nodes.hcl", "3:1", "no node is declared"},
		{"bad_timeout.hcl", "8:13", "Invalid timeout"},
		{"shell_interpolation.hcl", "9:19", "to pass ${...} to the shell, write $${...} (here $${HOME})"},
		{"empty_shell.hcl", "5:14", "Invalid shell"},
		{"job_shell_empty_program.hcl", "8:11", "Invalid shell"},
		{"negative_timeout.hcl", "8:13", "must be positive"},
		{"bad_log_level.hcl", "2:15", "Invalid log_level"},
		{"zero_executors.hcl", "5:15", "Invalid executors"},
		{"write_timeout_zero.hcl", "5:19", "The write_timeout must be positive"},
		{"write_timeout_exceeds_session.hcl", "6:21", "must not exceed the node's session_timeout (30s)"},
		{"write_timeout_exceeds_default_session.hcl", "5:19", "must not exceed the node's session_timeout (5m0s)"},
		{"no_steps.hcl", "7:1", "Job has no steps"},
		{"bad_name.hcl", "3:6", "Invalid node name"},
		{"bad_step_name.hcl", "8:8", "Invalid step name"},
		{"bad_sha256.hcl", "2:12", "Invalid sha256"},
		{"bad_env_key.hcl", "8:9", "cannot be an environment variable name"},
		{"env_unset.hcl", "8:24", `"CONVEYOR_TEST_SURELY_UNSET_TOKEN" is not set`},
		{"file_missing.hcl", "8:26", "no-such-script.sh: no such file or directory"},
		{"syntax_error.hcl", "6:1", "Invalid expression"},
		{"foreign_launcher_block.hcl", "6:3", `Blocks of type "ssh" are not expected here`},
		{"two_launcher_blocks.hcl", "6:3", "Duplicate local block"},
		{"two_servers.hcl", "4:1", "Duplicate server block"},
		{"bad_http_addr.hcl", "2:15", "Invalid http_addr"},
		{"api_token_short.hcl", "3:13", "needs at least 16"},
		{"api_token_space.hcl", "3:13", "printable ASCII characters without spaces"},
		{"api_public_read_type.hcl", "3:20", "a bool is required"},
		{"api_unknown_attribute.hcl", "3:5", `An argument named "tokens" is not expected here`},
		{"api_duplicate_block.hcl", "3:3", "Duplicate api block"},
		{"artifacts_absolute.hcl", "8:33", "cannot be used: an absolute path"},
		{"artifacts_dotdot.hcl", "10:5", `".." leads out of the build's workspace`},
		{"artifacts_max_mib.hcl", "9:23", "between 1 and 16777216 MiB"},
		{"max_concurrent_launches.hcl", "2:29", "Invalid max_concurrent_launches"},
		{"availability_mode.hcl", "6:12", `The mode "sometimes" is not one of "always"`},
		{"availability_idle_always.hcl", "6:20", `only applies to mode "on_demand"`},
		{"availability_idle_bad.hcl", "7:20", "Invalid idle_timeout"},
	}
	for _, tt := range tests {
		t.Run(strings.TrimSuffix(tt.file, ".hcl"), func(t *testing.T) {
			name := "testdata/bad/" + tt.file
			c, diags := Load(name)
			if c == nil || c.Files[name] == nil {
				t.Fatalf("Load did not return the parsed file")
			}
			if !diags.HasErrors() {
				t.Fatalf("no error diagnostics")
			}
			var first *hcl.Diagnostic
			for _, d := range diags {
				if d.Severity == hcl.DiagError {
					first = d
					break
				}
			}
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
			out := buf.String()
			if !strings.Contains(out, at+": Error: "+first.Summary) {
				t.Errorf("output lacks %q:\n%s", at+": Error: "+first.Summary, out)
			}
			src, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			line := strings.TrimSpace(strings.Split(string(src), "\n")[first.Subject.Start.Line-1])
			if !strings.Contains(out, line) {
				t.Errorf("output lacks the source line %q:\n%s", line, out)
			}
		})
	}
}

func TestSortDiags(t *testing.T) {
	at := func(file string, b int) *hcl.Range {
		return &hcl.Range{Filename: file, Start: hcl.Pos{Byte: b}}
	}
	diags := hcl.Diagnostics{
		{Summary: "b10", Subject: at("b.hcl", 10)},
		{Summary: "a20", Subject: at("a.hcl", 20)},
		{Summary: "none"},
		{Summary: "b5", Subject: at("b.hcl", 5)},
		{Summary: "a1", Subject: at("a.hcl", 1)},
	}
	var got []string
	for _, d := range sortDiags(diags, []string{"b.hcl", "a.hcl"}) {
		got = append(got, d.Summary)
	}
	if want := []string{"none", "b5", "b10", "a1", "a20"}; !reflect.DeepEqual(got, want) {
		t.Errorf("order = %v, want %v", got, want)
	}
}

func TestLoadAPI(t *testing.T) {
	tests := []struct {
		file string
		want API
	}{
		{"testdata/api.hcl", API{Token: "0123456789abcdef0123456789abcdef", PublicRead: true}},
		{"testdata/api_empty_token.hcl", API{}},
		{"testdata/minimal.hcl", API{}},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.file), func(t *testing.T) {
			c, diags := Load(tt.file)
			requireNoDiags(t, c.Files, diags)
			if c.Server.API != tt.want {
				t.Errorf("API = %+v, want %+v", c.Server.API, tt.want)
			}
		})
	}
}

// TestLoadAPITokenNotQuoted: a rejected token is a secret all the same; the
// diagnostic's message must not repeat it.
func TestLoadAPITokenNotQuoted(t *testing.T) {
	for _, tt := range []struct{ file, token string }{
		{"testdata/bad/api_token_short.hcl", "hunter2"},
		{"testdata/bad/api_token_space.hcl", "correct horse battery staple"},
	} {
		t.Run(filepath.Base(tt.file), func(t *testing.T) {
			_, diags := Load(tt.file)
			if !diags.HasErrors() {
				t.Fatal("no error")
			}
			for _, d := range diags {
				if strings.Contains(d.Summary, tt.token) || strings.Contains(d.Detail, tt.token) {
					t.Errorf("diagnostic %q / %q quotes the token", d.Summary, d.Detail)
				}
			}
		})
	}
}
